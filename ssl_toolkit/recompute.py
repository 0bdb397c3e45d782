"""``trainer.grad_checkpointing``: keep fewer activations, recompute them in the backward pass.

Activation (gradient) checkpointing, Chen et al., 2016, "Training Deep Nets with Sublinear
Memory Cost": the forward pass keeps only the input of each residual block (ResNet), stage
block (ConvNeXt) or transformer block (ViT), and each block's forward runs again during the
backward pass. Memory for activations then grows with one block instead of the whole
network, for about one more forward pass of compute (a third more per step).

timm's models implement it (``set_grad_checkpointing``); this module turns it on, and
refuses, before anything is written, a backbone that lacks it. Parameter names, state dicts
and checkpoints are unchanged, so a run may turn it on or off on ``--resume``. Gradients are
those of the plain run (tested); one difference remains: a BatchNorm inside a checkpointed
block sees each batch twice in training mode, so its running statistics take the momentum
step twice per optimiser step (an average over about 5 steps instead of 10). Training uses
batch statistics and is unaffected; evaluation uses the slightly fresher average.

Measured (``docs/benchmarks.md``, streaming data): SimCLR on resnet18 at 224 px, batch 64,
float32 on the CPU peaks at 3.2 GB instead of 4.2 GB (a two-step run: 50.4 s instead of 45.1 s).
"""

from __future__ import annotations

from torch import nn

from ssl_toolkit.errors import UserError


def check_grad_checkpointing(model: nn.Module, name: str) -> None:
    """Raise a one-line :class:`UserError` when the timm model ``name`` cannot checkpoint its blocks."""
    setter = getattr(model, "set_grad_checkpointing", None)
    if not callable(setter):
        raise UserError(
            f"backbone '{name}' has no gradient checkpointing (timm's set_grad_checkpointing); --set trainer.grad_checkpointing=false"
        )
    try:
        setter(True)
        setter(False)
    except AssertionError as e:  # timm's models without it assert (e.g. inception_v3)
        raise UserError(
            f"backbone '{name}' does not support gradient checkpointing ({e or type(e).__name__}); --set trainer.grad_checkpointing=false"
        ) from None


def set_grad_checkpointing(model: nn.Module, enable: bool) -> None:
    """Turn block-wise activation checkpointing of a timm ``model`` on or off (in place)."""
    model.set_grad_checkpointing(enable)  # type: ignore[operator]
