"""Convolutions on small maps: oneDNN's kernel against the dense matrix product of ``trainer.small_map_conv``.

For each map shape a ResNet meets in its last stages at 28-32 px (and the sizes around the
dense path's limits), the median time of one convolution's forward and backward pass (or the
forward pass alone, ``--mode eval``) with ``F.conv2d`` and with
``ssl_toolkit.small_map_conv.dense_conv2d`` on the same input, and whether the toolkit's rule
takes the dense path there. Both paths run in the same process, alternated.

Usage::

    python benchmarks/small_map_conv.py                       # bf16 autocast, channels-last, training
    python benchmarks/small_map_conv.py --precision 32-true   # float32, NCHW (the engine's layout for it)
    python benchmarks/small_map_conv.py --mode eval --precision 32-true
    python benchmarks/small_map_conv.py --weight-grad         # the weight gradient alone, three ways

``--weight-grad`` times, on the map sizes where the toolkit leaves oneDNN in charge (resnet10t's
stages at 28 px: 14x14 to 4x4), the part of oneDNN's convolution backward that is slow on these
maps, the weight gradient, against two ways of writing it as matrix products: im2col (the
input's patches gathered into one ``(N * O, taps * C_in)`` matrix, then one product with the
output gradient) and shifted products (on the zero-padded map flattened over the whole batch,
tap ``(ki, kj)`` of a stride-1 convolution reads the rows ``ki * W_padded + kj`` further on, so
each tap's gradient is one product of two views, at the cost of also multiplying the padding's
positions). In the engine's layout for the precision (bf16 channels-last, float32 NCHW).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.small_map_conv import SmallMapConv2d, dense_conv2d, patch_weight_grad

# (batch, C_in, input side, C_out, kernel, stride)
SHAPES = [
    (512, 512, 1, 512, 3, 1),  # resnet18 at 32 px with the stem's pool: layer4
    (512, 256, 2, 512, 3, 2),  #   its layer4's first conv
    (512, 256, 2, 512, 1, 2),  #   and its 1x1 downsample
    (512, 512, 2, 512, 3, 1),  # resnet10t / resnet18 at 28 px without the pool: layer4
    (512, 256, 4, 512, 3, 2),  #   layer4's first conv
    (512, 256, 4, 512, 1, 2),  #   resnet18's 1x1 downsample
    (64, 512, 2, 512, 3, 1),  # a small batch
    (512, 256, 3, 256, 3, 1),  # around the limits
    (512, 128, 5, 256, 3, 2),
    (512, 256, 4, 256, 3, 1),  # layer3 at 28 px without the pool
]


def median_ms(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def one_pass(x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int, dense: bool, mode: str, bf16: bool) -> None:
    """One convolution of ``x`` (forward, and backward in ``train`` mode), by oneDNN or the dense product."""
    with torch.set_grad_enabled(mode == "train"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = dense_conv2d(x, weight, None, (stride, stride), (pad, pad)) if dense else F.conv2d(x, weight, None, stride, pad)
    if mode == "train":
        y.float().sum().backward()


# (batch, C_in, input side, C_out, stride), 3x3 kernels: resnet10t's stages at 28 px without the stem's pool
# (14x14 to 4x4), resnet18's at 32 px with it (8x8, 4x4), larger widths, a small batch
WEIGHT_GRAD_SHAPES = [
    (512, 64, 14, 64, 1),
    (512, 64, 14, 128, 2),
    (512, 128, 7, 128, 1),
    (512, 128, 7, 256, 2),
    (512, 256, 4, 256, 1),
    (512, 64, 8, 128, 2),
    (512, 128, 4, 128, 1),
    (512, 128, 8, 256, 2),
    (512, 512, 4, 512, 1),
    (64, 256, 4, 256, 1),
]
WEIGHT_ONLY = [False, True, False]  # convolution_backward's output mask: the weight gradient alone


def weight_grad_shifted(grad: torch.Tensor, x: torch.Tensor, k: int, pad: int) -> torch.Tensor:
    """Stride-1 weight gradient as ``k * k`` products of views of the padded, flattened batch."""
    n, c_in, h, w = x.shape
    c_out, ho, wo = grad.shape[1:]
    hp, wp = h + 2 * pad, w + 2 * pad
    x_flat = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1).contiguous().view(n * hp * wp, c_in)
    g_pad = grad.new_zeros(n, hp, wp, c_out)
    g_pad[:, :ho, :wo] = grad.permute(0, 2, 3, 1)  # output (oi, oj) at the row of its window's first input
    rows = n * hp * wp - (k - 1) * (wp + 1)
    g_t = g_pad.view(n * hp * wp, c_out)[:rows].t()  # (C_out, rows)
    out = grad.new_empty(c_out, k, k, c_in)
    for i in range(k):
        for j in range(k):
            out[:, i, j] = g_t @ x_flat[i * wp + j : i * wp + j + rows]
    return out.permute(0, 3, 1, 2)


def weight_grad_table(repeats: int, bf16: bool) -> None:
    dtype, layout = (torch.bfloat16, torch.channels_last) if bf16 else (torch.float32, torch.contiguous_format)
    print(
        f"# weight gradient only, {'bf16, channels-last' if bf16 else 'float32, NCHW'}, torch {torch.__version__}, {torch.get_num_threads()} threads; median of {repeats} runs"
    )
    print("| batch | C_in | map | C_out | stride | oneDNN ms | im2col ms | shifted ms |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n, c_in, side, c_out, stride in WEIGHT_GRAD_SHAPES:
        x = torch.randn(n, c_in, side, side).to(dtype).contiguous(memory_format=layout)
        weight = (0.05 * torch.randn(c_out, c_in, 3, 3)).to(dtype).contiguous(memory_format=layout)
        grad = torch.randn_like(F.conv2d(x, weight, None, stride, 1))
        ref = torch.ops.aten.convolution_backward(grad, x, weight, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1, WEIGHT_ONLY)[1]
        ways = {"im2col": functools.partial(patch_weight_grad, grad, x, (3, 3), (stride, stride), (1, 1))}  # the toolkit's
        if stride == 1:
            ways["shifted"] = functools.partial(weight_grad_shifted, grad, x, 3, 1)
        for fn in ways.values():  # the same gradient, up to bf16 rounding of the sums
            torch.testing.assert_close(fn().float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
        onednn = median_ms(
            lambda g=grad, x=x, w=weight, s=stride: torch.ops.aten.convolution_backward(
                g, x, w, None, [s] * 2, [1, 1], [1, 1], False, [0, 0], 1, WEIGHT_ONLY
            ),
            repeats,
        )
        ms = {name: median_ms(fn, repeats) for name, fn in ways.items()}
        print(
            f"| {n} | {c_in} | {side}x{side} | {c_out} | {stride} | {onednn:.1f} | {ms['im2col']:.1f} | "
            + (f"{ms['shifted']:.1f} |" if "shifted" in ms else "- |")
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    ap.add_argument("--mode", default="train", choices=["train", "eval"], help="forward + backward, or forward only")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--weight-grad", action="store_true", help="the weight gradient alone: oneDNN, im2col, shifted products")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, not {args.repeats}")
    torch.manual_seed(0)
    if args.weight_grad:
        weight_grad_table(args.repeats, args.precision == "bf16-mixed")
        return
    bf16 = args.precision == "bf16-mixed"
    layout = torch.channels_last if bf16 else torch.contiguous_format  # the engine's auto layout on a CPU
    print(
        f"# {args.precision}, {'channels-last' if bf16 else 'NCHW'}, {args.mode}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} runs per cell"
    )
    print("| batch | C_in | map | C_out | kernel, stride | oneDNN ms | dense ms | speed-up | dense path taken |")
    print("|---:|---:|---|---:|---|---:|---:|---:|---|")
    for n, c_in, side, c_out, k, stride in SHAPES:
        pad = k // 2
        conv = nn.Conv2d(c_in, c_out, k, stride, pad, bias=False).to(memory_format=layout)
        x = torch.randn(n, c_in, side, side).contiguous(memory_format=layout).requires_grad_(args.mode == "train")
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
        onednn = median_ms(functools.partial(one_pass, x, conv.weight, stride, pad, False, args.mode, bf16), args.repeats)
        dense = median_ms(functools.partial(one_pass, x, conv.weight, stride, pad, True, args.mode, bf16), args.repeats)
        probe = nn.Conv2d(c_in, c_out, k, stride, pad, bias=False)
        probe.__class__ = SmallMapConv2d
        with autocast:
            taken = probe._dense_applies(x)
        ho = (side + 2 * pad - k) // stride + 1
        print(
            f"| {n} | {c_in} | {side}x{side} -> {ho}x{ho} | {c_out} | {k}x{k}, {stride} | {onednn:.1f} | {dense:.1f} | "
            f"{onednn / dense:.2f}x | {'yes' if taken else 'no'} |"
        )


if __name__ == "__main__":
    main()
