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
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.small_map_conv import SmallMapConv2d, dense_conv2d

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    ap.add_argument("--mode", default="train", choices=["train", "eval"], help="forward + backward, or forward only")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, not {args.repeats}")
    torch.manual_seed(0)
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
