"""Does ``trainer.compile`` (torch.compile, inductor) pay for a run of a given length?

Trains our SimCLR (the Lightning engine, as in ``throughput.py``) for ``--steps`` steps,
eager and compiled, in each precision, and prints the end-to-end fit time (compilation
included), the first step (where compilation happens), the median steady step, and the
break-even: the number of steps after which compiling wins end to end. ``auto`` in
``ssl_toolkit/compile.py`` is set from these figures.

``--small-map-conv`` keeps ``trainer.small_map_conv`` on in the compiled run too (under
``auto`` a compiled backbone's convolutions are left to inductor). ``--bn-relu`` times, instead
of a fit, a ``BatchNorm2d`` + ReLU in training mode (forward and backward, bf16 autocast,
channels-last) on the map sizes of resnet10t's stages at 28 px, eager against compiled: the
memory-bound part of the step that a compiler could fuse.

Usage::

    python benchmarks/compile_speed.py --steps 300 --precisions 32-true,bf16-mixed
    python benchmarks/compile_speed.py --steps 60 --precisions bf16-mixed --backbone resnet10t --size 28 --batch-size 256 --no-stem-pool --small-map-conv
    python benchmarks/compile_speed.py --bn-relu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import IMAGES, benchmark_images, build_module  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.arguments import ACCELERATORS, PRECISIONS, check_accelerator, int_range, names, positive_int, timm_backbone  # noqa: E402
from ssl_toolkit.data.loaders import make_loader  # noqa: E402


class StepClock(Callback):
    """Seconds of every training step, the first one (compilation) included."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def fit_times(images: torch.Tensor, args, compiled: bool) -> list[float]:
    """Per-step seconds of ``args.steps`` SimCLR steps, eager or compiled."""
    torch.manual_seed(0)
    module = build_module("simclr", images, args, {"num_classes": 0})  # without the stem's max-pool under --no-stem-pool
    update: dict = {"compile": compiled}
    if args.small_map_conv is not None:
        update["small_map_conv"] = args.small_map_conv
    module.cfg = module.cfg.model_copy(update=update)
    clock = StepClock()
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, make_loader(images, None, args.batch_size, shuffle=True, num_workers=0))
    return clock.times


def bn_relu_times(batch: int = 512, repeats: int = 9) -> None:
    """Eager against compiled ``BatchNorm2d`` + ReLU, forward and backward, at resnet10t's map sizes."""
    print(
        f"# BatchNorm2d + ReLU, training, bf16 autocast, channels-last, batch {batch}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| channels | map | compile s | eager ms | compiled ms | compiled / eager |")
    print("|---:|---|---:|---:|---:|---:|")
    for channels, side in [(64, 14), (128, 7), (256, 4), (512, 2)]:
        x = torch.randn(batch, channels, side, side).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn_like(x)
        eager = torch.nn.Sequential(torch.nn.BatchNorm2d(channels), torch.nn.ReLU()).train()
        compiled = torch.compile(torch.nn.Sequential(torch.nn.BatchNorm2d(channels), torch.nn.ReLU()).train(), backend="inductor")

        def once(module: torch.nn.Module, x: torch.Tensor = x, grad: torch.Tensor = grad) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = module(x)
            y.backward(grad)

        t = time.perf_counter()
        once(compiled)
        compile_s = time.perf_counter() - t
        ms = {}
        for name, module in (("eager", eager), ("compiled", compiled)):
            for _ in range(2):
                once(module)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                once(module)
                times.append(time.perf_counter() - t)
            ms[name] = 1e3 * statistics.median(times)
        print(
            f"| {channels} | {side}x{side} | {compile_s:.1f} | {ms['eager']:.2f} | {ms['compiled']:.2f} | {ms['compiled'] / ms['eager']:.2f}x |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", type=timm_backbone, default="resnet18", help="a timm model")
    ap.add_argument("--size", type=int_range(8, 1024), default=32, help="image side in pixels (8-1024)")
    ap.add_argument("--batch-size", type=int_range(1, IMAGES), default=128)
    ap.add_argument("--steps", type=positive_int, default=300)
    ap.add_argument("--precisions", type=names(PRECISIONS, "precision"), default="32-true,bf16-mixed", help="comma-separated")
    ap.add_argument("--accelerator", choices=ACCELERATORS, default="cpu")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: the engine's auto")
    ap.add_argument(
        "--stem-pool",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep timm's stem max-pool (--no-stem-pool: total stride 16, the toolkit's default at 32 px and less)",
    )
    ap.add_argument(
        "--small-map-conv",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="trainer.small_map_conv for both runs (default: the engine's auto, which leaves a compiled backbone to inductor)",
    )
    ap.add_argument("--bn-relu", action="store_true", help="time eager against compiled BatchNorm2d + ReLU on the CPU instead of a fit")
    args = ap.parse_args()
    check_accelerator(ap, args.accelerator)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.bn_relu:
        bn_relu_times()
        return
    images, data_name = benchmark_images(args.size, limit=8192)
    print(
        f"# {data_name}, {args.size} px, {args.backbone} (timm stem{'' if args.stem_pool else ' without its max-pool'}), batch {args.batch_size}, {args.steps} steps, "
        f"{args.accelerator}, small_map_conv {'auto' if args.small_map_conv is None else args.small_map_conv}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| precision | mode | fit s | first step s | steady step s (median) | break-even steps |")
    print("|---|---|---:|---:|---:|---:|")
    for precision in args.precisions:
        run_args = argparse.Namespace(**{**vars(args), "precision": precision})
        rows = {}
        for compiled in (False, True):
            t = fit_times(images, run_args, compiled)
            rows[compiled] = (sum(t), t[0], statistics.median(t[len(t) // 2 :]))
        saving = rows[False][2] - rows[True][2]  # seconds saved per steady step
        overhead = rows[True][1] - rows[False][1]  # extra seconds of the first step
        even = f"{overhead / saving:.0f}" if saving > 0 else "never"
        for compiled, (total, first, steady) in rows.items():
            print(
                f"| {precision} | {'compiled' if compiled else 'eager'} | {total:.1f} | {first:.2f} | {steady:.3f} | {even if compiled else '-'} |"
            )


if __name__ == "__main__":
    main()
