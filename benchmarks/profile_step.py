"""Where a training step's time goes: torch.profiler over SimCLR and RotNet steps.

For each task, a few steps of the Lightning engine (as in ``throughput.py``) run under
``torch.profiler`` after warm-up. Printed per task: the median step time, the host
synchronisations per step (``aten::_local_scalar_dense`` is what ``.item()``,
``float(tensor)`` and ``bool(tensor)`` dispatch to; ``aten::nonzero`` is boolean-mask
indexing, whose output size the host must wait for), the ops launched per step, and the top
ops by self CPU time.

``--roofline`` adds, per task, the split of the step between matrix products (convolutions
forward and backward, ``mm``, ``bmm``, ``addmm``) and everything else (batch norm, activations,
residual adds, copies, the optimiser), and what a model FLOP utilisation of 0.5 would ask:
the step's FLOPs (torch's counter) at half the rate of a 2048^3 matrix product in the run's
precision, against the time the other ops alone took.

Usage::

    python benchmarks/profile_step.py                      # simclr and rotation, resnet18 at 32 px
    python benchmarks/profile_step.py --tasks rotation --top 20
    python benchmarks/profile_step.py --tasks simclr --backbone resnet10t --size 28 --batch-size 256 --no-stem-pool --roofline
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
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import benchmark_images, build_module, gemm_flops_per_second, layout_name, step_flops  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.arguments import (  # noqa: E402
    ACCELERATORS,
    PRECISIONS,
    check_accelerator,
    int_range,
    names,
    non_negative_int,
    positive_int,
    task_names,
    timm_backbone,
)

IMAGES = 2048  # the benchmark's training images

from ssl_toolkit.data.loaders import make_loader  # noqa: E402
from ssl_toolkit.precision import resolve_precision  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")
MATRIX_OPS = ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::convolution", "aten::_convolution")
MATRIX_OPS += ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::linear")


class ProfiledSteps(Callback):
    """Steps the profiler's schedule and times every step after ``warmup``."""

    def __init__(self, prof: profile, warmup: int) -> None:
        self.prof, self.warmup = prof, warmup
        self.times: list[float] = []
        self._last = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.times.append(now - self._last)
        self._last = now
        self.prof.step()


def profile_task(task: str, images: torch.Tensor, args) -> None:
    module = build_module(task, images, args, {"num_classes": 0})
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.accelerator == "gpu" else [])
    with profile(activities=activities, schedule=schedule(wait=args.warmup, warmup=1, active=args.steps)) as prof:
        steps = ProfiledSteps(prof, args.warmup + 1)
        trainer = L.Trainer(
            accelerator=args.accelerator,
            devices=1,
            precision=args.precision,
            max_steps=args.warmup + 1 + args.steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[steps],
        )
        trainer.fit(module, make_loader(images, None, args.batch_size, shuffle=True, num_workers=0))
    events = prof.key_averages()
    syncs = {op: sum(e.count for e in events if e.key == op) / args.steps for op in SYNC_OPS}
    launched = sum(e.count for e in events if e.key.startswith("aten::")) / args.steps
    print(
        f"\n## {task}: median step {statistics.median(steps.times) * 1e3:.1f} ms; host syncs per step: "
        + ", ".join(f"{op} {n:g}" for op, n in syncs.items())
        + f"; aten ops per step {launched:.0f}"
    )
    print(events.table(sort_by="self_cuda_time_total" if args.accelerator == "gpu" else "self_cpu_time_total", row_limit=args.top))
    if args.roofline:
        roofline(task, images, args, events, statistics.median(steps.times))


def roofline(task: str, images: torch.Tensor, args, events, step_s: float) -> None:
    """Matrix products against the rest of the step, and the step time an MFU of 0.5 would need."""
    self_ms = {e.key: e.self_cpu_time_total / 1e3 / args.steps for e in events}  # per step
    total = sum(self_ms.values())
    matrix = sum(ms for key, ms in self_ms.items() if key in MATRIX_OPS)
    others = sorted(((ms, key) for key, ms in self_ms.items() if key not in MATRIX_OPS), reverse=True)
    flops = step_flops(task, images, args, {"num_classes": 0})
    peak = gemm_flops_per_second(args.accelerator, args.precision)
    print(
        f"\n### {task}: roofline (profiled step {total:.1f} ms of self time; median wall-clock step under the profiler {step_s * 1e3:.1f} ms)\n"
        f"matrix products {matrix:.1f} ms ({matrix / total:.0%}), everything else {total - matrix:.1f} ms ({1 - matrix / total:.0%}); "
        f"largest others: " + ", ".join(f"{key} {ms:.1f}" for ms, key in others[:6]) + "\n"
        f"step {flops / 1e9:.2f} GFLOP; 2048^3 GEMM {peak / 1e9:.1f} GFLOP/s; matrix products ran at "
        f"{flops / (matrix / 1e3) / 1e9:.0f} GFLOP/s ({flops / (matrix / 1e3) / peak:.2f} of the GEMM)\n"
        f"MFU 0.5 needs a step of {flops / (0.5 * peak) * 1e3:.1f} ms; the ops that are not matrix products took "
        f"{total - matrix:.1f} ms; MFU if the matrix products ran at the GEMM's rate and the rest stayed: "
        f"{flops / peak / (flops / peak + (total - matrix) / 1e3):.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=names(task_names, "task"), default="simclr,rotation", help="comma-separated pretext tasks")
    ap.add_argument("--backbone", type=timm_backbone, default="resnet18", help="a timm model")
    ap.add_argument("--size", type=int_range(8, 1024), default=32, help="image side in pixels (8-1024)")
    ap.add_argument("--batch-size", type=int_range(1, IMAGES), default=128)
    ap.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto")
    ap.add_argument("--accelerator", choices=ACCELERATORS, default="cpu")
    ap.add_argument("--warmup", type=non_negative_int, default=2)
    ap.add_argument("--steps", type=positive_int, default=5, help="profiled steps")
    ap.add_argument("--top", type=positive_int, default=12, help="rows of the profile table")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: the engine's auto")
    ap.add_argument("--roofline", action="store_true", help="matrix products against the rest, and what MFU 0.5 would need")
    ap.add_argument(
        "--stem-pool",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep timm's stem max-pool (--no-stem-pool: total stride 16, the toolkit's default at 32 px and less)",
    )
    args = ap.parse_args()
    if args.roofline and args.accelerator != "cpu":
        ap.error("--roofline splits the CPU ops' self time; on a GPU use the profile table's device times")
    check_accelerator(ap, args.accelerator)
    args.precision = resolve_precision(args.precision, args.accelerator)
    warnings.filterwarnings("ignore", category=UserWarning)
    images, data_name = benchmark_images(args.size, limit=IMAGES)
    print(
        f"# {data_name}, {args.size} px, {args.backbone}{'' if args.stem_pool else ' (stem without its max-pool)'}, batch {args.batch_size}, {args.precision}, "
        f"{layout_name(args.channels_last)}, {args.accelerator}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for task in args.tasks:
        profile_task(task, images, args)


if __name__ == "__main__":
    main()
