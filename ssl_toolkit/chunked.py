"""``trainer.backbone_chunk``: the loss sees the whole batch, the backbone a few inputs at a time.

Gradient caching, Gao, Zhang, Han & Callan, 2021, "Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup" (RepL4NLP). A contrastive loss needs every embedding of the
batch at once: NT-Xent contrasts each view against the other ``2B - 2``, so gradient
accumulation over smaller batches would change the loss. What fills memory is not the
embeddings but the backbone's activations, kept for the backward pass. So:

1. forward: the backbone runs ``chunk`` inputs at a time without keeping activations, and
   the ``(N, D)`` outputs (or feature maps) go on to the task's heads and loss as usual;
2. backward: the loss's gradient with respect to those outputs arrives; each chunk runs
   through the backbone again, this time recording, and is back-propagated at once with
   its slice of that gradient, so one chunk's activations live at a time.

The parameter gradients are the sums over chunks, which are the full batch's gradients for
any backbone that treats inputs independently (LayerNorm ViTs: tested to float tolerance).
A BatchNorm normalises each chunk with that chunk's statistics ("ghost" batch norm) in both
passes, so its function is consistent; its running statistics take one momentum step per
chunk in the first pass and none in the second. The second pass costs one more backbone
forward per step, like ``trainer.grad_checkpointing``, and the two combine. Autocast and the
random state of each chunk (drop-path) are replayed in the second pass. The parameters are
inputs of one autograd function, so each receives its gradient once per step, as DDP's
gradient hooks expect.

``auto`` (the default on a CPU, :func:`auto_chunk`) measures, at the first training step,
how many bytes of activations autograd keeps per input (saved-tensor hooks on a forward of 2
and of 4 inputs: the difference is per input, what does not grow with the batch cancels),
and chunks only when the whole batch would keep more than ``trainer.activation_memory_mb``,
in chunks that keep at most an eighth of it (:func:`auto_chunk` says why).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn

from ssl_toolkit.api import caller_terms


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm layers of ``module`` normalise with batch statistics but update no running statistics."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            tracked = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            saved.append((m, m.momentum, tracked))
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class _ChunkedCall(torch.autograd.Function):
    """``fn(x)`` computed ``chunk`` rows at a time, recomputed chunk by chunk in the backward pass."""

    @staticmethod
    def forward(
        ctx: Any, fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, chunk: int, x: torch.Tensor, *params: torch.Tensor
    ):
        dev = x.device.type
        ctx.fn, ctx.module, ctx.chunk = fn, module, chunk
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.rng = []
        outs = []
        for piece in x.split(chunk):  # (<= chunk, ...) rows
            ctx.rng.append(_rng_state(x.device))
            outs.append(fn(piece))
        ctx.save_for_backward(x, *params)
        return torch.cat(outs)  # (N, ...) no activations kept

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, *params = ctx.saved_tensors
        dev, enabled, dtype = ctx.autocast
        want_x = ctx.needs_input_grad[3]
        sums: list[torch.Tensor | None] = [None] * len(params)
        grad_x = []
        after = _rng_state(x.device)
        with frozen_running_stats(ctx.module), torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
            for piece, g, rng in zip(x.split(ctx.chunk), grad.split(ctx.chunk), ctx.rng):
                _set_rng_state(x.device, rng)
                inp = piece.detach().requires_grad_(want_x)
                out = ctx.fn(inp)  # (<= chunk, ...) this chunk's activations, recorded
                got = torch.autograd.grad(out, [inp, *params] if want_x else params, g, allow_unused=True)
                if want_x:
                    grad_x.append(got[0])
                    got = got[1:]
                for i, gp in enumerate(got):
                    acc = sums[i]
                    if gp is not None:
                        sums[i] = gp if acc is None else acc.add_(gp)
        _set_rng_state(x.device, after)
        gx = torch.cat(grad_x) if want_x else None
        return (None, None, None, gx, *sums)


AUTO_MIN_CHUNK = 8  # fewer inputs per chunk would leave each BatchNorm too few samples for its statistics


def saved_bytes_per_input(fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor) -> float:
    """Bytes of activations that autograd keeps for the backward pass of ``fn``, per row of ``x``.

    ``fn`` runs on 2 and on 4 rows of ``x`` under saved-tensor hooks that add up the storages
    saved (parameters excluded); the difference of the two, halved, is what each more input
    costs, so weights cast for autocast and other batch-independent tensors cancel. Running
    statistics and the random state are left as they were. Tensors saved inside checkpointed
    blocks (``trainer.grad_checkpointing``) are recomputed, not kept, and are not counted.

    Args:
        fn: The backbone call, ``(N, ...) -> (N, ...)``.
        module: The backbone, whose BatchNorm running statistics must not move.
        x: A batch of at least 4 inputs ``(N, ...)``, in the step's dtype and layout.
    """
    totals = []
    state = _rng_state(x.device)
    with frozen_running_stats(module), torch.enable_grad():
        for rows in (2, 4):
            storages: dict[int, int] = {}

            def pack(t: torch.Tensor, storages: dict[int, int] = storages) -> torch.Tensor:
                if not isinstance(t, nn.Parameter):
                    s = t.untyped_storage()
                    storages[s.data_ptr()] = s.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                fn(x[:rows].detach().clone())  # own storage, not the batch's; the graph and what it saved live until the output is dropped
            totals.append(sum(storages.values()))
    _set_rng_state(x.device, state)
    return max(0.0, (totals[1] - totals[0]) / 2)


def auto_chunk(per_input: float, n: int, budget: float) -> int | None:
    """Inputs per chunk when ``n`` inputs would keep more than ``budget`` bytes of activations; ``None``: no need.

    The whole batch runs when it keeps at most ``budget``: chunking costs a quarter to a half
    more wall time (resnet18 at 224 px, bf16, 20 steps: 92 s whole, 118 s in chunks of 16,
    131 s in chunks of 8; ``docs/benchmarks.md``), so the default budget leaves every
    task's default batch on 28-32 px images whole, even in float32. Past it, a chunk keeps
    at most an eighth of the budget: once chunked, the step's peak is the batch-level
    tensors (the views, the optimiser) plus a chunk's recomputation, which holds the chunk's
    activations and their gradients at once, and chunks of 8 there peaked about 100 MB
    lower than chunks of 16, which sometimes crossed 2 GB. Chunks are made as equal as
    ``ceil(n / chunks)`` allows and never smaller than ``AUTO_MIN_CHUNK``.
    """
    if per_input * n <= budget:
        return None
    pieces = math.ceil(n / max(AUTO_MIN_CHUNK, int(budget / 8 // max(per_input, 1.0))))
    return max(AUTO_MIN_CHUNK, math.ceil(n / pieces))


class ChunkedBackbone:
    """A timm backbone called at most ``chunk`` inputs at a time when gradients are recorded.

    Tasks call it as they call the backbone: ``backbone(x)`` (pooled features) and
    ``backbone.forward_features(x)`` (feature maps) are chunked; every other attribute is
    the backbone's own. Without gradients, or for batches of at most ``chunk`` inputs, it
    is a plain call. It is not an ``nn.Module``: it holds no parameters of its own.

    Args:
        backbone: The timm backbone.
        chunk: Inputs per pass through the backbone; ``None`` with ``budget``: chosen at the
            first call that records gradients (:func:`auto_chunk`), which may be the whole batch.
        budget: Bytes of activations the whole batch may keep before ``auto`` chunks it.
        announce: Called with one line when ``auto`` decides to chunk.
    """

    def __init__(
        self, backbone: nn.Module, chunk: int | None, budget: float | None = None, announce: Callable[[str], None] | None = None
    ) -> None:
        if chunk is None and budget is None:
            raise ValueError("ChunkedBackbone needs a chunk or a budget to choose one")
        self.backbone = backbone
        self.chunk = chunk
        self.budget = budget
        self.announce = announce

    def __getattr__(self, name: str) -> Any:
        if name in ("backbone", "chunk", "budget", "announce"):
            raise AttributeError(name)
        return getattr(self.backbone, name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, D)`` pooled features."""
        return self._run(self.backbone, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> the backbone's unpooled features (maps or tokens)."""
        return self._run(cast("Callable[[torch.Tensor], torch.Tensor]", self.backbone.forward_features), x)

    def _choose(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
        n, budget = x.shape[0], cast(float, self.budget)
        per_input = saved_bytes_per_input(fn, self.backbone, x)
        chunk = auto_chunk(per_input, n, budget)
        if chunk is None:
            return sys.maxsize
        if self.announce is not None:
            mib = 2**20
            self.announce(
                f"trainer.backbone_chunk auto: the backbone keeps {per_input / mib:.1f} MiB of activations per input, "
                f"{per_input * n / mib:,.0f} MiB for the batch's {n} inputs, over trainer.activation_memory_mb="
                f"{budget / mib:g}; it runs {chunk} inputs at a time (one more forward per step; "
                + caller_terms("--set trainer.backbone_chunk=null", "trainer.backbone_chunk=None in the config")
                + " keeps the whole batch)"
            )
        return chunk

    @property
    def chunks(self) -> bool:
        """Whether the backbone runs a chunk at a time (``False`` until ``auto`` has decided, or when it chose the whole batch)."""
        return self.chunk is not None and self.chunk != sys.maxsize

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        if not torch.is_grad_enabled() or not (params or x.requires_grad):
            return fn(x)
        if self.chunk is None:  # auto: decided once, at the first call that records gradients on at least 4 inputs
            if x.shape[0] < 4:
                return fn(x)
            self.chunk = self._choose(fn, x)
        if x.shape[0] <= self.chunk:
            return fn(x)
        return _ChunkedCall.apply(fn, self.backbone, self.chunk, x, *params)
