"""Convolutions on small maps as one dense matrix product (``trainer.small_map_conv``).

A ResNet trained on small images ends on tiny maps: resnet18 or resnet10t at 28 px without
the stem's max-pool runs its last stage on 2x2 maps, at 32 px with the pool on 1x1. oneDNN's
convolution kernels are built for large maps; on a CPU with AMX its 3x3 convolution of 512
channels over a 2x2 map (batch 512, forward and backward in bf16) ran at about 7% of
the machine's matrix-multiply rate, and that one layer took a third of resnet10t's SimCLR
step (``docs/benchmarks.md``, "Convolutions on small maps").

A convolution is a linear map. On a map of ``P`` input and ``O`` output positions it is one
``(C_out * O, P * C_in)`` matrix whose ``(C_out, C_in)`` blocks are the kernel's taps (or zero
where a tap falls in the padding): block ``(o, p)`` is tap ``tap_index[o, p]``, a fixed table of
which tap joins input position ``p`` to output position ``o``, and the dense matrix is one
gather of the taps along that table. The forward pass is then one large matrix product of the
flattened batch, and autograd's backward two more (and a scatter-add of the dense gradient back
onto the taps); building the dense matrix copies each weight up to ``P * O / taps`` times,
cheap while the map is small. The
result is the convolution's, up to floating-point summation order, and the parameters, their
names and the state dict are untouched: a converted module is an ``nn.Conv2d`` whose forward
takes the dense path when its input map is small enough (:data:`MAX_IN_POSITIONS`,
:data:`MAX_POSITION_PAIRS_BF16`, :data:`MAX_POSITION_PAIRS_FP32`) and oneDNN's path otherwise.

One step larger (outputs of up to 4x4 positions, e.g. resnet10t's layer3 at 28 px), the dense
matrix multiplies too many zeros, and oneDNN's forward pass and input gradient are fast, but
its weight gradient is not: in bf16 it took 35 ms for a 3x3 convolution of 256 channels on 4x4
maps (batch 512) whose forward pass takes under 10. There, in bf16, the converted module keeps
oneDNN's forward pass and input gradient and computes the weight gradient as one matrix product
of the output gradient with the input's patches (im2col, :func:`patch_weight_grad`): 1.4-2.8x
faster on those shapes (:data:`MAX_PATCH_OUT_POSITIONS`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SmallMapSetting = Literal["auto"] | bool

# Dense-path limits, from a sweep of map sizes on a 2-core CPU with AMX (docs/benchmarks.md,
# "Convolutions on small maps"), forward + backward at batch 512. In bf16 the dense product won
# up to 3x3 output maps fed by up to 4x4 input maps (2x2 -> 2x2: 7.8x; 4x4 -> 2x2, stride 2:
# 2.8x; 3x3 -> 3x3: 1.7x) and lost beyond (5x5 -> 3x3: 0.8x; 4x4 -> 4x4: 0.45x). In float32 the
# machine's matrix products are slower and the break-even comes sooner: it won up to P * O = 16
# (2x2 -> 2x2: 3.1x) and tied at 64 (4x4 -> 2x2: 0.96x). A 1x1 kernel without padding (a
# ResNet's downsample) multiplies no zeros on the dense path and won at every size tried.
MAX_IN_POSITIONS = 16  # P, input positions
MAX_POSITION_PAIRS_BF16 = 81  # P * O, the dense matrix's size in blocks of C_out x C_in
MAX_POSITION_PAIRS_FP32 = 16

# Patch (im2col) weight-gradient limits, from the same machine (docs/benchmarks.md, "Convolutions
# on small maps", ``--weight-grad``), bf16, channels-last, 3x3 kernels: against oneDNN's weight
# gradient it won wherever the output map had at most 4x4 positions (7x7 -> 4x4, stride 2:
# 2.4x; 4x4 -> 4x4 with 256 channels: 2.4x, with 128: 1.45x; 8x8 -> 4x4, stride 2: 1.4-2.4x)
# and lost at 7x7 outputs (0.3-0.85x), where the patch matrix's copies outweigh the product.
# In float32 (no AMX for the product) it lost on every shape, so float32 keeps oneDNN's.
MAX_PATCH_OUT_POSITIONS = 16  # O, output positions
MAX_PATCH_IN_POSITIONS = 64  # P, input positions (the largest measured: 8x8, stride 2)


def use_small_map_conv(setting: SmallMapSetting, device_type: str) -> bool:
    """Whether ``trainer.small_map_conv`` converts the backbone's convolutions.

    ``auto`` converts on a CPU only: GPU convolution libraries handle small maps well and
    nothing has been measured there.

    Args:
        setting: ``true``, ``false`` or ``"auto"``.
        device_type: ``cpu`` or ``cuda``.
    """
    if setting != "auto":
        return bool(setting)
    return device_type == "cpu"


@functools.lru_cache(maxsize=128)
def tap_index(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """Which kernel tap joins which input position to which output position.

    Args:
        in_hw: Input map height and width.
        kernel: Kernel height and width.
        stride: Stride (height, width).
        padding: Zero padding (height, width).

    Returns:
        ``(O * P,)`` int64, ``O`` output positions and ``P = H * W`` input positions, both
        row-major: entry ``o * P + p`` is the tap (``ki * kw + kj``) through which output
        position ``o`` reads input position ``p``, or ``kh * kw`` (no tap: a zero block) where
        its window does not cover ``p``.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = in_hw, kernel, stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    index = torch.full((ho * wo, h * w), kh * kw, dtype=torch.int64)
    for oi in range(ho):
        for oj in range(wo):
            for ki in range(kh):
                for kj in range(kw):
                    i, j = oi * sh - ph + ki, oj * sw - pw + kj
                    if 0 <= i < h and 0 <= j < w:
                        index[oi * wo + oj, i * w + j] = ki * kw + kj
    return index.view(-1)


def dense_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (groups 1, dilation 1) as one matrix product.

    Args:
        x: ``(N, C_in, H, W)`` input, any memory layout.
        weight: ``(C_out, C_in, kh, kw)`` kernel.
        bias: ``(C_out,)`` or ``None``.
        stride: Stride (height, width).
        padding: Zero padding (height, width).

    Returns:
        ``(N, C_out, H_out, W_out)``, channels-last when ``x`` is, else contiguous NCHW.
    """
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    p, o = h * w, ho * wo
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if (kh, kw) == (1, 1) and tuple(padding) == (0, 0):  # a 1x1 kernel reads one position: subsample, then one product
        x_sub = x[:, :, :: stride[0], :: stride[1]].permute(0, 2, 3, 1).reshape(n * o, c_in)  # (N*O, C_in)
        y = F.linear(x_sub, weight.reshape(c_out, c_in), bias).view(n, ho, wo, c_out).permute(0, 3, 1, 2)
        return y if channels_last else y.contiguous()
    if torch.is_autocast_enabled(x.device.type):  # cast the taps, not the (up to P * O / taps times larger) dense matrix
        weight = weight.to(torch.get_autocast_dtype(x.device.type))
    taps = weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw, c_in)  # (C_out, taps, C_in): a view of a channels-last kernel
    taps = torch.cat([taps, taps.new_zeros(c_out, 1, c_in)], dim=1)  # (C_out, taps + 1, C_in), the last one zero
    index = tap_index((h, w), (kh, kw), tuple(stride), tuple(padding)).to(x.device)
    w_dense = taps.index_select(1, index).view(c_out * o, p * c_in)  # rows (c_out, o), columns (p, c_in)
    x_flat = x.permute(0, 2, 3, 1).reshape(n, p * c_in)  # (N, P*C_in), a view of a channels-last batch
    y = F.linear(x_flat, w_dense, None if bias is None else bias.repeat_interleave(o))  # (N, C_out*O)
    y = y.view(n, c_out, ho, wo)  # (N, C_out, H_out, W_out), contiguous NCHW
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def patch_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """A convolution's weight gradient as one matrix product with the input's patches (im2col).

    Args:
        grad: ``(N, C_out, H_out, W_out)`` gradient of the convolution's output.
        x: ``(N, C_in, H, W)`` the convolution's input, any memory layout.
        kernel: Kernel height and width.
        stride: Stride (height, width).
        padding: Zero padding (height, width).

    Returns:
        ``(C_out, C_in, kh, kw)`` gradient of the weight (groups 1, dilation 1), with
        channels-last strides.
    """
    n, c_in = x.shape[:2]
    c_out, ho, wo = grad.shape[1:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x_pad = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # (N, H+2ph, W+2pw, C_in)
    patches = x.new_empty(n, ho, wo, kh * kw, c_in)  # (N, H_out, W_out, taps, C_in)
    for i in range(kh):
        for j in range(kw):
            patches[:, :, :, i * kw + j] = x_pad[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
    g = grad.permute(0, 2, 3, 1).reshape(n * ho * wo, c_out)  # (N*O, C_out), a view of a channels-last gradient
    grad_w = g.t() @ patches.view(n * ho * wo, kh * kw * c_in)  # (C_out, taps*C_in)
    return grad_w.view(c_out, kh, kw, c_in).permute(0, 3, 1, 2)


class PatchWeightGradConv2d(torch.autograd.Function):
    """``F.conv2d`` whose backward takes the weight gradient from :func:`patch_weight_grad`.

    The forward pass and the input gradient are oneDNN's (``F.conv2d`` and
    ``aten.convolution_backward``); groups 1, dilation 1. Call it outside autocast, with the
    input and weight already in the compute dtype.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = tuple(stride), tuple(padding), bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = patch_weight_grad(grad, x, tuple(weight.shape[-2:]), ctx.stride, ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def patch_grad_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """``F.conv2d`` (groups 1, dilation 1) with the weight gradient of :func:`patch_weight_grad`.

    Under autocast the input, weight and bias are cast to the autocast dtype first, as
    ``F.conv2d`` would; the casts stay in the graph, so float32 parameters get float32 gradients.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    with torch.autocast(device_type, enabled=False):
        return PatchWeightGradConv2d.apply(x, weight, bias, stride, padding)


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes small maps with :func:`dense_conv2d` or :func:`patch_grad_conv2d`, the rest as usual.

    Made from an ``nn.Conv2d`` in place by :func:`convert_small_map_convs` (its class is
    swapped back by :func:`restore_convs`); it has no state of its own.
    """

    def _path(self, x: torch.Tensor) -> str:
        """``dense``, ``patches`` or ``onednn``: how this convolution computes ``x``."""
        if x.dim() != 4 or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return "onednn"
        if tuple(self.dilation) != (1, 1):
            return "onednn"
        h, w = x.shape[-2:]
        ho = (h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        if ho < 1 or wo < 1:
            return "onednn"
        one_by_one = tuple(self.kernel_size) == (1, 1) and tuple(self.padding) == (0, 0)
        if h * w <= MAX_IN_POSITIONS and one_by_one:  # subsample + one product: no zero taps
            return "dense"
        low_precision = x.dtype == torch.bfloat16 or (
            torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) == torch.bfloat16
        )
        if h * w <= MAX_IN_POSITIONS and h * w * ho * wo <= (MAX_POSITION_PAIRS_BF16 if low_precision else MAX_POSITION_PAIRS_FP32):
            return "dense"
        if low_precision and not one_by_one and ho * wo <= MAX_PATCH_OUT_POSITIONS and h * w <= MAX_PATCH_IN_POSITIONS:
            return "patches"
        return "onednn"

    def _dense_applies(self, x: torch.Tensor) -> bool:
        return self._path(x) == "dense"

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        path = self._path(input)
        if path == "dense":
            return dense_conv2d(input, weight, bias, self.stride, self.padding)  # type: ignore[arg-type]
        if path == "patches" and torch.is_grad_enabled() and weight.requires_grad:
            return patch_grad_conv2d(input, weight, bias, self.stride, self.padding)  # type: ignore[arg-type]
        return super()._conv_forward(input, weight, bias)


def convert_small_map_convs(module: nn.Module) -> list[nn.Conv2d]:
    """Make every plain ``nn.Conv2d`` of ``module`` take the dense path on small maps.

    The modules keep their identity, parameters and hooks: only their class is swapped, to
    :class:`SmallMapConv2d`. :func:`restore_convs` swaps it back.

    Returns:
        The converted convolutions.
    """
    convs = [m for m in module.modules() if type(m) is nn.Conv2d]
    for m in convs:
        m.__class__ = SmallMapConv2d
    return convs


def restore_convs(convs: list[nn.Conv2d]) -> None:
    """Give the convolutions of :func:`convert_small_map_convs` back their class (``repr``, fingerprints)."""
    for m in convs:
        m.__class__ = nn.Conv2d


@contextmanager
def small_map_convs(module: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, :func:`convert_small_map_convs` holds for ``module`` (when ``enabled``).

    Yields:
        How many convolutions were converted.
    """
    convs = convert_small_map_convs(module) if enabled else []
    try:
        yield len(convs)
    finally:
        restore_convs(convs)
