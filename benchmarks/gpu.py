"""GPU benchmark: one table of images/s, MFU and peak GPU memory, in under 8 minutes.

Rows (resnet50 at 224 px, bf16, channels-last for ours, by default):

* SimCLR, ours: the public API (``ssl_toolkit.pretrain`` with a generated folder of
  photo-sized JPEGs as ``data.name``), and the Lightning engine on in-memory uint8 tensors;
* SimCLR, lightly's reference pipeline (``SimCLRTransform`` on PIL images in as many
  DataLoader workers as the machine has cores, ``SimCLRProjectionHead``, ``NTXentLoss``),
  reading the same JPEG folder and the same in-memory tensors;
* rotation (RotNet), ours, on the folder and on tensors;
* linear-probe feature extraction (``ssl_toolkit.eval.features.extract``), from the folder
  (decode included) and from tensors.

img/s counts source images (a SimCLR pair, a RotNet image seen at 4 rotations). MFU is the
step's FLOPs (torch's FLOP counter, forward + backward) times steps/s over the GPU's dense
bf16 peak (a table of known cards, or ``--peak-tflops``); on a CPU the peak is a measured
bf16 GEMM. Folder pretraining rates come from two runs of different length through the
public API ((steps_b - steps_a) x batch / (fit_b - fit_a)), so one-time costs (decoding an
in-memory folder, DataLoader start, cuDNN warm-up) cancel; ``setup s`` is what the short
run spent outside ``fit``.

Usage::

    python benchmarks/gpu.py              # on a CUDA machine (refused without one)
    python benchmarks/gpu.py --dry-run    # every row on the CPU with tiny sizes (the test suite runs this)
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
import warnings
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_toolkit.precision import resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.arguments import PRECISIONS, int_range, positive_float, positive_int, timm_backbone  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # noqa: E402
    gemm_flops_per_second,
    lightly_pairs_per_second,
    lightly_simclr_rate,
    lightly_transform,
    ours_images_per_second,
    step_flops,
)

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets; the
# longest pattern found in torch.cuda.get_device_name() wins.
BF16_PEAK_TFLOPS = {
    r"B200": 2250.0,
    r"H200": 989.4,
    r"H100 NVL": 835.0,
    r"H100 PCIe": 756.0,
    r"H100": 989.4,
    r"A100": 312.0,
    r"L40S": 362.1,
    r"L40\b": 181.0,
    r"L4\b": 121.0,
    r"A10\b": 125.0,
    r"RTX A6000": 154.8,
    r"RTX 4090": 165.2,
    r"RTX 3090": 71.0,
}


def known_peak(device_name: str) -> float | None:
    """bf16 peak TFLOP/s of a card from :data:`BF16_PEAK_TFLOPS`, or ``None`` if unknown."""
    hits = [(len(p), v) for p, v in BF16_PEAK_TFLOPS.items() if re.search(p, device_name)]
    return max(hits)[1] if hits else None


# ---------------------------------------------------------------------------------------
# data: a folder of photo-sized JPEGs, and the same images decoded in memory
# ---------------------------------------------------------------------------------------
def _write_jpeg(job: tuple[Path, int, int, int]) -> None:
    path, seed, w, h = job
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (h, w, 3))  # texture, so JPEG decoding costs what a photo does
    Image.fromarray(np.clip(np.asarray(coarse, np.float32) + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpeg_folder(root: Path, n: int, max_side: int, workers: int) -> Path:
    """``n`` JPEGs of 0.75-1 x ``max_side`` wide, 3:4 aspect, smooth colour plus noise."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    widths = rng.integers(int(0.75 * max_side), max_side + 1, n)
    jobs = [(root / f"{i:06d}.jpg", i, int(w), int(w) * 3 // 4) for i, w in enumerate(widths)]
    with Pool(workers) as pool:
        pool.map(_write_jpeg, jobs)
    return root


class JpegPairs(torch.utils.data.Dataset):
    """lightly's two views of each JPEG of a folder, decoded in the DataLoader worker."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.transform = paths, lightly_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            return tuple(self.transform(im.convert("RGB")))


# ---------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------
def with_peak_memory(fn):
    """``(fn(), peak GPU GiB allocated during it)``; GiB is ``None`` off CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out = fn()
    return out, (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None)


def streaming(args, on: bool) -> dict:
    """``data`` options of a folder read by DataLoader workers (``on``) or decoded in memory first.

    Uses the ``stream`` and ``workers`` options where ``DataConfig`` has them; without them a
    folder is always decoded into memory before training.
    """
    from ssl_toolkit.config import DataConfig

    fields = DataConfig.model_fields
    opts = {"stream": on} if "stream" in fields else {}
    return {**opts, "workers": args.workers} if on and "workers" in fields else opts


def folder_pretrain_rate(task: str, folder: Path, args, batch: int, overrides: list[str]) -> tuple[float, float, float | None]:
    """Images/s of ``ssl_toolkit.pretrain`` on ``folder``: (rate, setup s of the short run, peak GiB)."""
    import ssl_toolkit as st
    from ssl_toolkit.config import apply_overrides

    def run(steps: int, tag: str) -> tuple[float, float]:
        cfg = {
            "task": task,
            "data": {
                "name": str(folder),
                "image_size": args.size,
                "test_fraction": 0.05,
                **streaming(args, True),
            },  # timed steps in epoch 0
            "backbone": {"name": args.backbone, "small_stem": False},
            "trainer": {
                "max_steps": steps,
                "epochs": 10_000,
                "batch_size": batch,
                "precision": args.precision,
                "accelerator": args.accelerator,
                "devices": 1,
                "progress_bar": False,
                "online_probe": False,
                "checkpoint_every_n_steps": 10**9,
                "channels_last": args.channels_last,
            },
        }
        apply_overrides(cfg, overrides)
        t = time.perf_counter()
        meta = st.pretrain(cfg, out=Path(args.tmp) / f"run-{task}-{tag}", overwrite=True)
        return meta["wall_seconds"], time.perf_counter() - t - meta["wall_seconds"]

    fit_a, setup_a = run(args.warmup, "a")
    (fit_b, _), mem = with_peak_memory(lambda: run(args.warmup + args.steps, "b"))
    if fit_b - fit_a < 0.1 * fit_b:  # timing noise exceeds the extra steps (tiny dry runs): whole long run, a lower bound
        print(f"# {task} on the folder: the short run's time was too close to the long one's; rate of the long run as a whole")
        return (args.warmup + args.steps) * batch / fit_b, setup_a, mem
    return args.steps * batch / (fit_b - fit_a), setup_a, mem


def extraction_rate(images_fn, args) -> tuple[float, float, float | None]:
    """Images/s of the linear probe's feature extraction on ``images_fn()`` (its time included)."""
    import timm

    from ssl_toolkit.eval.features import Preprocess, extract

    dev = "cuda" if args.accelerator == "gpu" else "cpu"
    model = timm.create_model(args.backbone, num_classes=0)
    pre = Preprocess(3, (0.5,) * 3, (0.25,) * 3)

    def run():
        t = time.perf_counter()
        images = images_fn()
        loaded = time.perf_counter() - t
        extract(model, images, pre, batch_size=args.batch_size, device=dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        return images.shape[0], loaded, time.perf_counter() - t

    extract(model, images_fn()[: args.batch_size], pre, batch_size=args.batch_size, device=dev)  # warm-up
    (n, loaded, total), mem = with_peak_memory(run)
    return n / total, loaded, mem


def forward_flops(args, n: int) -> int:
    """FLOPs of the backbone's forward pass on ``n`` images."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model(args.backbone, num_classes=0).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, args.size, args.size))
    return counter.get_total_flops() * n


# ---------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------
def simclr_rows(folder: Path, images: torch.Tensor, args, kw: dict) -> list[tuple]:
    """SimCLR: ours and lightly's, from the JPEG folder and from tensors."""
    flops = step_flops("simclr", images, args, kw)
    rate, setup, mem = folder_pretrain_rate("simclr", folder, args, args.batch_size, args.set)
    rows = [("simclr", "ours", "JPEG folder", rate, flops / args.batch_size, mem, setup)]
    rate, mem = with_peak_memory(lambda: ours_images_per_second("simclr", images, args, kw))
    rows.append(("simclr", "ours", "tensors", rate, flops / args.batch_size, mem, None))
    paths = sorted(folder.glob("*.jpg"))
    rate, mem = with_peak_memory(lambda: lightly_simclr_rate(JpegPairs(paths, args.size), args, kw))
    rows.append(("simclr", "lightly", "JPEG folder", rate, flops / args.batch_size, mem, None))
    rate, mem = with_peak_memory(lambda: lightly_pairs_per_second(images, args, kw))
    rows.append(("simclr", "lightly", "tensors", rate, flops / args.batch_size, mem, None))
    return rows


def rotation_rows(folder: Path, images: torch.Tensor, args, kw: dict) -> list[tuple]:
    """RotNet, ours, from the JPEG folder and from tensors (``--rotation-batch`` images x 4 rotations)."""
    rot_args = argparse.Namespace(**{**vars(args), "batch_size": args.rotation_batch})
    flops = step_flops("rotation", images, rot_args, kw) / args.rotation_batch
    rate, setup, mem = folder_pretrain_rate("rotation", folder, rot_args, args.rotation_batch, args.set)
    rows = [("rotation", "ours", "JPEG folder", rate, flops, mem, setup)]
    rate, mem = with_peak_memory(lambda: ours_images_per_second("rotation", images, rot_args, kw))
    return rows + [("rotation", "ours", "tensors", rate, flops, mem, None)]


def feature_rows(folder: Path, images: torch.Tensor, args) -> list[tuple]:
    """Linear-probe feature extraction: from the folder (decoding timed) and from tensors."""
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source

    flops = forward_flops(args, 1)
    rate, loaded, mem = extraction_rate(
        lambda: load_source(DataConfig(name=str(folder), image_size=args.size, **streaming(args, False))).train.images, args
    )
    rows = [("features", "ours", "JPEG folder", rate, flops, mem, loaded)]
    rate, _, mem = extraction_rate(lambda: images, args)
    return rows + [("features", "ours", "tensors", rate, flops, mem, None)]


def print_table(rows: list[tuple], peak_flops: float) -> None:
    print("| workload | pipeline | data | img/s | MFU | peak GPU GiB | setup s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for work, pipe, data, rate, flops_per_image, mem, setup in rows:
        mem_s = f"{mem:.1f}" if mem is not None else "-"
        setup_s = f"{setup:.1f}" if setup is not None else "-"
        mfu = f"{rate * flops_per_image / peak_flops:.3f}" if peak_flops else "-"
        print(f"| {work} | {pipe} | {data} | {rate:.1f} | {mfu} | {mem_s} | {setup_s} |")
    ours = {(r[0], r[2]): r[3] for r in rows if r[1] == "ours"}
    for work, pipe, data, rate, *_rest in rows:
        if pipe == "lightly" and (work, data) in ours:
            print(f"{work}, {data}: ours / lightly = {ours[(work, data)] / rate:.2f}x")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, test_resnet at 64 px, 40 small JPEGs, 1 + 2 steps (< 60 s)")
    ap.add_argument("--backbone", type=timm_backbone, default="resnet50", help="a timm model")
    ap.add_argument("--size", type=int_range(8, 1024), default=224, help="image side in pixels (8-1024)")
    ap.add_argument("--batch-size", type=positive_int, default=256, help="SimCLR pairs and extraction images per batch")
    ap.add_argument("--rotation-batch", type=positive_int, default=128, help="RotNet images per batch (x4 rotations)")
    ap.add_argument(
        "--images", type=positive_int, default=12288, help="JPEGs in the generated folder (enough for warmup + steps in one epoch)"
    )
    ap.add_argument("--jpeg-side", type=int_range(16, 8192), default=500, help="largest JPEG width (photo-sized: 375-500 x 281-375)")
    ap.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed")
    ap.add_argument("--warmup", type=positive_int, default=10)
    ap.add_argument("--steps", type=positive_int, default=30, help="timed steps (at least --window)")
    ap.add_argument("--window", type=positive_int, default=10)
    ap.add_argument(
        "--workers", type=positive_int, default=os.cpu_count() or 1, help="DataLoader workers (lightly's, and ours streaming the folder)"
    )
    ap.add_argument("--peak-tflops", type=positive_float, default=None, help="bf16 peak of this GPU (overrides the table)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--set", action="append", default=[], help="extra key=value for the folder pretraining runs (e.g. data.stream=true)")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device on this machine; --dry-run runs every row on the CPU with tiny sizes")
    if args.steps < args.window:
        ap.error(f"--steps ({args.steps}) must be at least --window ({args.window})")
    args.accelerator = "cpu" if args.dry_run else "gpu"
    if args.dry_run:
        args.backbone, args.size, args.batch_size, args.rotation_batch = "test_resnet", 64, 8, 4
        args.images, args.jpeg_side, args.warmup, args.steps, args.window = 40, 96, 1, 2, 1
        args.workers = min(args.workers, 2)
        args.precision = resolve_precision("auto", "cpu")  # bf16 only where this CPU computes it natively
    return args


def stop_on_sigterm() -> None:
    """Turn SIGTERM and SIGHUP (``timeout``, a closed terminal) into ``SystemExit`` in this process.

    The temporary folder (about 110 MB of JPEGs and runs) is then removed on the way out, as on
    Ctrl-C; forked workers keep the default action.
    """
    main_pid = os.getpid()

    def stop(signum: int, _frame) -> None:
        if os.getpid() != main_pid:  # a forked worker: die as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


def main() -> None:
    from ssl_toolkit.errors import Interrupted

    try:
        run(parse_args())
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C, or SIGTERM inside a run of the toolkit's
        print("gpu.py: interrupted; the temporary folder was removed", file=sys.stderr)
        sys.exit(130)


def run(args: argparse.Namespace) -> None:
    """The whole table: a throwaway folder of JPEGs, every row, the table."""
    from ssl_toolkit.trainer import quiet_lightning

    quiet_lightning()  # no "GPU available", no logger tips: one table only
    warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's advice on loggers and workers
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    stop_on_sigterm()
    started = time.perf_counter()
    torch.manual_seed(0)
    kw = {"num_classes": 0}
    with tempfile.TemporaryDirectory(prefix="ssl-gpu-bench-") as tmp:  # removed on any exit, SIGTERM included
        args.tmp = tmp
        os.environ["SSL_TOOLKIT_HOME"] = str(Path(tmp) / "home")  # runs register in a throwaway library
        if args.accelerator == "gpu":
            device = torch.cuda.get_device_name()
            tflops = args.peak_tflops or known_peak(device)
            peak_src = "--peak-tflops" if args.peak_tflops else ("data sheet" if tflops else "unknown card: pass --peak-tflops")
        else:
            device = f"CPU ({os.cpu_count()} cores, dry run)"
            tflops = args.peak_tflops or gemm_flops_per_second("cpu", args.precision) / 1e12
            peak_src = "--peak-tflops" if args.peak_tflops else f"measured 2048^3 GEMM in {args.precision}"
        folder = make_jpeg_folder(Path(tmp) / "jpegs", args.images, args.jpeg_side, args.workers)
        from ssl_toolkit.config import DataConfig
        from ssl_toolkit.data.sources import load_source

        images = load_source(DataConfig(name=str(folder), image_size=args.size, **streaming(args, False))).train.images  # the same JPEGs
        print(f"# {device}; peak {tflops or 0:.2f} TFLOP/s ({peak_src}); torch {torch.__version__}")
        print(
            f"# {args.backbone} at {args.size} px, {args.precision}, {'channels-last' if args.channels_last else 'NCHW'} (ours); "
            f"SimCLR batch {args.batch_size} pairs, RotNet batch {args.rotation_batch} x 4; {args.images} JPEGs up to "
            f"{args.jpeg_side} px wide; {args.workers} DataLoader workers; {args.steps} timed steps after {args.warmup}"
        )
        print(
            f"# ours on the JPEG folder: ssl_toolkit.pretrain with data {streaming(args, True) or 'decoded in memory (no stream option)'}"
        )
        rows = simclr_rows(folder, images, args, kw) + rotation_rows(folder, images, args, kw) + feature_rows(folder, images, args)
        print()
        print_table(rows, (tflops or 0) * 1e12)
    print(f"\n# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
