"""Choosing the training precision: ``auto`` and the CPU bfloat16 convolution check.

``auto`` means ``bf16-mixed`` where the device computes bfloat16 natively and ``32-true``
elsewhere. On CPUs, one case is excluded: the bfloat16 weight gradient of a strided,
padded convolution whose input is 1x1 comes back wrong (values off by up to 1e35, or
NaN, where float32 gives the exact gradient; see ``docs/scaling.md``). Small inputs reach
that case in timm ResNets: an 8 px jigsaw tile or patch is 1x1 by ``layer3``. Such runs
get ``32-true`` under ``auto``, and an explicit ``bf16-mixed`` is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ssl_toolkit.errors import UserError


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting puts training on a CUDA device."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}  # Lightning's short names, recorded by their full ones


def on_cpu(accelerator: str) -> bool:
    """Whether a run with this Lightning accelerator setting trains on the CPU."""
    if accelerator == "cpu":
        return True
    mps = getattr(torch.backends, "mps", None)
    return accelerator == "auto" and not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` where the device computes bfloat16 natively, else ``32-true``.

    Short names are given their full ones (``bf16`` -> ``bf16-mixed``), and ``16-mixed`` on a
    CPU is ``bf16-mixed``, which Lightning trains in there.

    bf16 autocast kept the linear-probe accuracy of a digits RotNet run within 0.6 points
    of float32 and trained it several times faster on an AVX-512 BF16 CPU (``docs/benchmarks.md``).
    """
    precision = ALIASES.get(precision, precision)
    if precision == "16-mixed" and on_cpu(accelerator):
        return "bf16-mixed"  # a CPU has no float16 autocast: Lightning runs 16-mixed in bfloat16 there, so that is recorded
    if precision != "auto":
        return precision
    if uses_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def emulated_bf16_note(precision: str, accelerator: str) -> str | None:
    """One line when a run trains in ``bf16-mixed`` on a CPU without native bfloat16, where torch emulates it, slowly."""
    if precision != "bf16-mixed" or not on_cpu(accelerator) or cpu_has_bf16():
        return None
    return (
        "note: this CPU has no native bfloat16 (AVX-512 BF16 or AMX): bf16-mixed is emulated here and trains several times "
        "slower than 32-true, which precision auto chooses on it"
    )


@torch.no_grad()
def strided_convs_on_1x1(backbone: nn.Module, in_chans: int, size: int) -> list[str]:
    """Names of the strided, padded ``Conv2d`` layers that see a 1x1 map for ``size`` px input."""
    found: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: found.append(name) if args[0].shape[-2:] == (1, 1) else None)
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and any(p > 0 for p in m.padding if isinstance(p, int))
    ]
    was_training = backbone.training
    try:
        backbone.eval()(torch.zeros(1, in_chans, size, size))  # (1, C, s, s): shapes only
    finally:
        backbone.train(was_training)
        for h in hooks:
            h.remove()
    return found


def choose_precision(precision: str, accelerator: str, backbone: nn.Module, in_chans: int, input_size: int) -> str:
    """The precision a run trains in: :func:`resolve_precision`, then the CPU bfloat16 check.

    Args:
        precision: The configured precision (``auto``, ``32-true``, ``bf16-mixed``, ...).
        accelerator: Lightning accelerator setting.
        backbone: The backbone to train (on the CPU; a dry forward pass reads its map sizes).
        in_chans: Its input channels.
        input_size: Side of what the task feeds the backbone (a tile or patch may be
            smaller than the image).

    Raises:
        UserError: ``bf16-mixed`` was asked for explicitly on a CPU where it would compute
            wrong gradients for this backbone and input size.
    """
    resolved = resolve_precision(precision, accelerator)
    if resolved != "bf16-mixed" or uses_gpu(accelerator):
        return resolved
    bad = strided_convs_on_1x1(backbone, in_chans, input_size)
    if not bad:
        return resolved
    if precision == "auto":
        return "32-true"
    asked = "" if ALIASES.get(precision, precision) == "bf16-mixed" else f" ({precision} on a CPU is bf16-mixed)"
    raise UserError(
        f"bf16-mixed{asked} on the CPU computes wrong gradients for strided convolutions on 1x1 maps "
        f"({', '.join(bad)} at {input_size} px input); use precision 32-true, larger images or backbone.small_stem"
    )
