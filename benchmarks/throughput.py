"""Pretraining throughput, measured side by side in one run.

1. SimCLR end to end against lightly's reference pipeline: lightly's ``SimCLRTransform``
   on PIL images in a DataLoader worker + ``SimCLRProjectionHead`` + ``NTXentLoss``, versus
   this toolkit's Lightning engine with batched on-device views. Same backbone, batch,
   optimiser, image size, augmentation parameters; ratio of training pairs per second.
2. Model FLOP utilisation of our SimCLR step: FLOPs of one training step (torch's FLOP
   counter) per second, as a fraction of this machine's measured large-GEMM FLOP/s in the
   same precision.
3. Images per second of every registered pretext task with the same backbone, batch and
   image size, and the share of the step spent building the task's inputs and targets.

Every figure is the median of several timed windows after warm-up.

Usage::

    python benchmarks/throughput.py                      # Fashion-MNIST if installed, else synthetic
    python benchmarks/throughput.py --accelerator gpu    # the same on a CUDA machine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import timm
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode

from ssl_toolkit.config import DataConfig, TrainerConfig
from ssl_toolkit.data.loaders import make_loader
from ssl_toolkit.data.sources import load_source
from ssl_toolkit.engine import PretrainModule
from ssl_toolkit.pretext import TASKS, DataFacts, build_task
from ssl_toolkit.pretext.base import INPUTS_SECTION

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

IMAGES = 8192  # the benchmark's training images (Fashion-MNIST's first, or synthetic ones)

# relative-position's default half-patch gap needs 34 px; a quarter-patch gap fits 32 px
SMALL_IMAGE_TASK_CONFIG = {"relative-position": {"gap": 0.25}}


class StepTimer(Callback):
    """Wall time of each training step (batch fetch included), after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":  # time the GPU's work, not the launch queue
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._last is not None and trainer.global_step > self.warmup:
            self.times.append(now - self._last)
        self._last = now


def windows(times: list[float], size: int) -> list[float]:
    """Seconds per step of consecutive windows of ``size`` steps."""
    return [sum(times[i : i + size]) / size for i in range(0, len(times) - size + 1, size)]


def device_of(accelerator: str) -> torch.device:
    return torch.device("cuda" if accelerator == "gpu" else "cpu")


# ---------------------------------------------------------------------------------------
# data: uint8 images as 3-channel 32 px, the same for both pipelines
# ---------------------------------------------------------------------------------------
def benchmark_images(size: int, limit: int) -> tuple[torch.Tensor, str]:
    try:
        src = load_source(DataConfig(name="fashion-mnist", image_size=size, limit=limit))
        name = "fashion-mnist"
    except Exception:  # noqa: BLE001  (no Debian package: fall back to the synthetic set)
        src = load_source(DataConfig(name="synthetic", image_size=size, synthetic_train=limit))
        name = "synthetic"
    x = src.train.images
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x, name


def create_backbone(args, backbone_kwargs: dict) -> torch.nn.Module:
    """timm's ``args.backbone`` with its own stem; without the stem's max-pool when ``args.stem_pool`` is false.

    Dropping the pool is the toolkit's default for a ResNet at 32 px and less
    (``backbone.stem_pool``); both pipelines get the same backbone.
    """
    model = timm.create_model(args.backbone, **backbone_kwargs)
    if not getattr(args, "stem_pool", True):
        model.maxpool = torch.nn.Identity()  # total stride 32 -> 16
    return model


# ---------------------------------------------------------------------------------------
# 1. lightly's reference pipeline
# ---------------------------------------------------------------------------------------
def lightly_transform(size: int):
    """lightly's ``SimCLRTransform`` with the augmentation parameters our views use at small sizes."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(input_size=size, cj_strength=0.5, min_scale=0.2, gaussian_blur=0.0)


def lightly_pairs_per_second(images: torch.Tensor, args, backbone_kwargs: dict) -> float:
    """lightly's pipeline on in-memory uint8 images (PIL images made in the workers)."""
    from PIL import Image

    transform = lightly_transform(args.size)
    arrays = images.permute(0, 2, 3, 1).numpy()

    class PILDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(arrays)

        def __getitem__(self, i):
            v0, v1 = transform(Image.fromarray(arrays[i]))
            return v0, v1

    return lightly_simclr_rate(PILDataset(), args, backbone_kwargs)


def lightly_simclr_rate(dataset: torch.utils.data.Dataset, args, backbone_kwargs: dict) -> float:
    """Pairs per second of lightly's SimCLR training loop over ``dataset`` (items: two views)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0
    )
    dev = device_of(args.accelerator)
    backbone = create_backbone(args, backbone_kwargs).to(dev)
    head = SimCLRProjectionHead(backbone.num_features, 512, 128).to(dev)
    loss_fn = NTXentLoss(temperature=0.2)
    opt = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=2e-3)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    times, last, step = [], None, 0
    while step < args.warmup + args.steps:
        for v0, v1 in loader:
            v0, v1 = v0.to(dev, non_blocking=True), v1.to(dev, non_blocking=True)
            with autocast:
                z = head(backbone(torch.cat([v0, v1])))
                loss = loss_fn(*z.float().chunk(2))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if last is not None and step >= args.warmup:
                times.append(now - last)
            last, step = now, step + 1
            if step >= args.warmup + args.steps:
                break
    return args.batch_size / statistics.median(windows(times, args.window))


def layout_name(channels_last: bool | None) -> str:
    """How the header names our layout setting (``None``: the engine's ``auto``)."""
    if channels_last is None:
        return "layout auto (NCHW for float32 on a CPU, else channels-last)"
    return "channels-last" if channels_last else "NCHW"


# ---------------------------------------------------------------------------------------
# ours: the Lightning engine with a registered task
# ---------------------------------------------------------------------------------------
def build_module(task_name: str, images: torch.Tensor, args, backbone_kwargs: dict, task_config: dict | None = None):
    facts = DataFacts(channels=3, image_size=args.size, mean=(0.3,) * 3, std=(0.3,) * 3, name="bench")
    task_cls = TASKS.get(task_name)
    cfg = task_cls.Config.model_validate(task_config or {})
    in_chans = task_cls.backbone_in_chans(cfg, facts) if hasattr(task_cls, "backbone_in_chans") else 3
    backbone = create_backbone(args, {**backbone_kwargs, "in_chans": in_chans})
    task = build_task(task_name, backbone.num_features, task_config or {}, facts)
    if hasattr(task, "fit_data_prior"):
        task.fit_data_prior(images[:2048])
    if hasattr(task, "attach"):
        task.attach(backbone)
    tcfg = TrainerConfig(
        precision=args.precision,
        progress_bar=False,
        online_probe=False,
        batch_size=args.batch_size,
        channels_last="auto" if args.channels_last is None else args.channels_last,
    )
    return PretrainModule(backbone, task, tcfg, lr=task_cls.default_lr, weight_decay=1e-4, optimizer="adamw", seed=0)


def ours_images_per_second(task_name: str, images: torch.Tensor, args, backbone_kwargs: dict, task_config=None) -> float:
    module = build_module(task_name, images, args, backbone_kwargs, task_config)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = make_loader(images, None, args.batch_size, shuffle=True, num_workers=0)
    trainer.fit(module, loader)
    return args.batch_size / statistics.median(windows(timer.times, args.window))


# ---------------------------------------------------------------------------------------
# 2. FLOPs and the machine's GEMM rate
# ---------------------------------------------------------------------------------------
def gemm_flops_per_second(accelerator: str, precision: str, n: int = 2048, repeats: int = 10) -> float:
    dev = device_of(accelerator)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * n**3 / (time.perf_counter() - t))
    return statistics.median(rates)


def step_flops(task_name: str, images: torch.Tensor, args, backbone_kwargs: dict) -> int:
    """FLOPs of one forward + backward of the task on one batch."""
    dev = device_of(args.accelerator)
    module = build_module(task_name, images, args, backbone_kwargs).to(dev)
    x = images[: args.batch_size].to(dev).float().div(255)
    counter = FlopCounterMode(display=False)
    autocast = torch.autocast(
        dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"
    )  # as in training; counts are dtype-free
    with counter, autocast:
        loss, _ = module.task(module.backbone, x)
        loss.backward()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------
# 3. input-building share of the step
# ---------------------------------------------------------------------------------------
def input_share(task_name: str, images: torch.Tensor, args, backbone_kwargs: dict, task_config=None, repeats: int = 5) -> float:
    """Share of a forward + backward spent in the task's input/target building (profiler sections)."""
    module = build_module(task_name, images, args, backbone_kwargs, task_config)
    if hasattr(module.task, "seed_views"):
        module.task.seed_views(0, torch.device("cpu"))
    x = images[: args.batch_size].float().div(255)
    shares = []
    for i in range(repeats + 1):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            loss, _ = module.task(module.backbone, x)
            loss.backward()
            total = time.perf_counter() - t
        inputs = sum(e.cpu_time_total for e in prof.key_averages() if e.key == INPUTS_SECTION) / 1e6
        if i:
            shares.append(inputs / total)
    return statistics.median(shares)


def versus_lightly(images: torch.Tensor, args, backbone_kwargs: dict) -> None:
    print("\n## SimCLR end to end: ours vs lightly's reference pipeline")
    for precision in dict.fromkeys(["32-true", args.precision]):
        run_args = argparse.Namespace(**{**vars(args), "precision": precision})
        ratios = []
        for _ in range(args.repeats):  # alternated, so that a change in machine speed hits both pipelines
            ref = lightly_pairs_per_second(images, run_args, backbone_kwargs)
            ours = ours_images_per_second("simclr", images, run_args, backbone_kwargs)
            ratios.append(ours / ref)
            print(f"{precision:<11} lightly {ref:7.1f} pairs/s | ours {ours:7.1f} pairs/s | ratio {ours / ref:5.2f}x (target >= 2.0)")
        if args.repeats > 1:
            print(f"{precision:<11} median ratio of {args.repeats} runs: {statistics.median(ratios):.2f}x")


def model_flop_utilisation(images: torch.Tensor, args, backbone_kwargs: dict) -> None:
    print("\n## Model FLOP utilisation (SimCLR step)")
    flops = step_flops("simclr", images, args, backbone_kwargs)
    ours = ours_images_per_second("simclr", images, args, backbone_kwargs)
    achieved = flops * ours / args.batch_size
    peak = gemm_flops_per_second(args.accelerator, args.precision, args.gemm_size)
    print(
        f"step {flops / 1e9:.2f} GFLOP x {ours / args.batch_size:.2f} steps/s = {achieved / 1e9:.1f} GFLOP/s; "
        f"{args.gemm_size}^3 GEMM {peak / 1e9:.1f} GFLOP/s; MFU {achieved / peak:.2f} (target >= 0.5)"
    )


def every_task(images: torch.Tensor, args, backbone_kwargs: dict) -> None:
    print("\n## Every pretext task: images/s and input-building share of the step")
    print(f"{'task':<18} {'img/s':>8} {'inputs share':>13}")
    for name in args.tasks:
        task_config = SMALL_IMAGE_TASK_CONFIG.get(name) if args.size < 64 else None
        ips = ours_images_per_second(name, images, args, backbone_kwargs, task_config)
        share = input_share(name, images, args, backbone_kwargs, task_config)
        print(f"{name:<18} {ips:8.1f} {100 * share:12.1f}%  (target <= 15%)")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (bfloat16 figures depend on it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", type=timm_backbone, default="resnet18", help="a timm model")
    ap.add_argument("--size", type=int_range(8, 1024), default=32, help="image side in pixels (8-1024)")
    ap.add_argument("--batch-size", type=int_range(1, IMAGES), default=128)
    ap.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed")
    ap.add_argument("--accelerator", choices=ACCELERATORS, default="cpu")
    ap.add_argument("--workers", type=non_negative_int, default=1, help="DataLoader workers of lightly's pipeline")
    ap.add_argument("--warmup", type=non_negative_int, default=3)
    ap.add_argument("--steps", type=positive_int, default=15, help="timed steps (at least --window)")
    ap.add_argument("--window", type=positive_int, default=5)
    ap.add_argument("--tasks", type=names(task_names, "task", every="all"), default="all", help="comma-separated tasks for part 3, or all")
    ap.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="our backbone's layout: channels-last, or --no-channels-last for NCHW (default: the engine's auto, NCHW for float32 on a CPU, else channels-last)",
    )
    ap.add_argument(
        "--stem-pool",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep timm's stem max-pool in both pipelines (--no-stem-pool: total stride 16, the toolkit's default at 32 px and less)",
    )
    ap.add_argument(
        "--gemm-size",
        type=positive_int,
        default=2048,
        help="part 2: side of the square matrix product that measures the machine's peak (smaller for a quick check)",
    )
    ap.add_argument(
        "--parts", type=names(("1", "2", "3"), "part"), default="1,2,3", help="which parts to run (1: vs lightly, 2: MFU, 3: every task)"
    )
    ap.add_argument(
        "--repeats", type=positive_int, default=1, help="part 1: measure each pipeline this many times, alternated; print the median ratio"
    )
    args = ap.parse_args()
    if args.steps < args.window:
        ap.error(f"--steps ({args.steps}) must be at least --window ({args.window})")
    check_accelerator(ap, args.accelerator)
    torch.manual_seed(0)
    backbone_kwargs = {"num_classes": 0}
    images, data_name = benchmark_images(args.size, limit=IMAGES)
    from ssl_toolkit.precision import cpu_has_bf16

    print(f"# CPU: {cpu_model()}, native bfloat16 (AVX-512 BF16 / AMX): {'yes' if cpu_has_bf16() else 'no'}")
    print(
        f"# {data_name}, {args.size} px, backbone {args.backbone} (timm stem{'' if args.stem_pool else ' without its max-pool'}), batch {args.batch_size}, precision {args.precision}, "
        f"{layout_name(args.channels_last)} (ours), "
        f"{args.accelerator}, torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.steps // args.window} windows of {args.window} steps"
    )

    if "1" in args.parts:
        versus_lightly(images, args, backbone_kwargs)
    if "2" in args.parts:
        model_flop_utilisation(images, args, backbone_kwargs)
    if "3" in args.parts:
        every_task(images, args, backbone_kwargs)


if __name__ == "__main__":
    main()
