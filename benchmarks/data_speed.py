"""Streaming-data figures on a folder of photo-sized JPEGs (make one with benchmarks/make_photos.py).

Parts (``--parts``, default all):

0. ``loader`` / ``model``: peak memory of the streaming data path alone (20 batches of SimCLR
   views at 224 px) at each folder size, and of the same pretraining on in-memory tensors
   (the model's own share: activations of 2 x 64 images at 224 px).

1. ``memory``: ``ssl pretrain --task simclr --image-size 224 --batch-size 64 --set trainer.max_steps=20``
   on the folder and on hard-linked subsets of 5k and 10k images: peak memory of the whole
   process tree (the sum of PSS over the training process and its DataLoader workers, so
   pages shared by forked workers count once, sampled every 0.2 s) and the wall time of a
   one-step run (an upper bound on the time to the first step) on a cold and a warm index.
2. ``commands``: the same peak memory for ``ssl probe --mode linear``, ``ssl embed`` and
   ``ssl report`` on the 20k folder.
3. ``decode``: decode + crop throughput of one process (what one DataLoader worker does):
   ours (reduced-size JPEG decoding, crops from the original) against torchvision's
   ``ImageFolder`` + ``RandomResizedCrop(224)`` + ``PILToTensor``, same files, same scale range.
4. ``step``: resnet18 SimCLR step time at 224 px fed by the streaming loader with the default
   worker count, against in-memory uint8 tensors of the same shape (median of timed steps).

    python benchmarks/data_speed.py --folder /tmp/photos20k --work /tmp/data_speed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.arguments import existing_folder, int_list, int_range, names, output_folder, positive_int  # noqa: E402

PARTS = ("loader", "model", "decode", "memory", "commands", "step")


# ----------------------------------------------------------------------------- measuring a process tree


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def startup_seconds(run: Path) -> float | None:
    """``startup_seconds`` of a run's meta.json: from the process start to its first training batch."""
    try:
        return json.loads((run / "meta.json").read_text()).get("startup_seconds")
    except (OSError, ValueError):
        return None


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd``; return its wall seconds, exit code and the peak PSS (MB) of its process tree."""
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, sum(_pss_kb(p) for p in _tree(proc.pid)))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
    return {"seconds": round(time.time() - start, 1), "peak_mb": round(peak / 1024, 0), "rc": proc.returncode}


def ssl(*args: str) -> list[str]:
    return [sys.executable, "-m", "ssl_toolkit", *map(str, args)]


# ----------------------------------------------------------------------------- parts


def part_memory(
    folder: Path,
    work: Path,
    sizes: list[int],
    steps: int = 20,
    first_step_sizes: tuple[int, ...] = (5000, 10000, 20000),
    overrides: tuple[str, ...] = (),
) -> list[dict]:
    from benchmarks.make_photos import link_subset

    rows = []
    for n in sizes:
        data = folder if n >= 20000 else work / f"photos{n // 1000}k"
        if not data.exists():
            link_subset(folder, data, n)
        home = work / f"home{n}"
        env = {**os.environ, "SSL_TOOLKIT_HOME": str(home)}
        common = ["--task", "simclr", "--data", data, "--image-size", "224", "--batch-size", "64", "--quiet", "--overwrite"]
        common += [a for o in overrides for a in ("--set", o)]
        row: dict = {"images": n, "set": list(overrides)}
        if n in first_step_sizes:
            shutil.rmtree(home / "cache" / "index", ignore_errors=True)  # a cold index (and statistics)
            first = work / f"first{n}"
            cold = run_measured(ssl("pretrain", *common, "--set", "trainer.max_steps=1", "--out", first), env)
            cold_start = startup_seconds(first)
            warm = run_measured(ssl("pretrain", *common, "--set", "trainer.max_steps=1", "--out", first), env)
            row.update(
                one_step_cold_s=cold["seconds"],
                one_step_warm_s=warm["seconds"],
                first_step_cold_s=cold_start,
                first_step_warm_s=startup_seconds(first),
            )
        full = run_measured(ssl("pretrain", *common, "--set", f"trainer.max_steps={steps}", "--out", work / f"run{n}"), env)
        row.update({f"peak_mb_{steps}_steps": full["peak_mb"], f"seconds_{steps}_steps": full["seconds"], "rc": full["rc"]})
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    return rows


LOADER_SCRIPT = """
import sys
from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.loaders import split_loader
from ssl_toolkit.data.sources import load_source
from ssl_toolkit.pretext import DataFacts
from ssl_toolkit.pretext.contrastive import SimCLRTask
src = load_source(DataConfig(name=sys.argv[1], image_size=224, stream=True))
stage = SimCLRTask.worker_stage(SimCLRTask.Config(), DataFacts(3, 224, src.mean, src.std))
for i, (x, y) in enumerate(split_loader(src.train, 64, True, stage=stage)):
    if i == 19:
        break
"""


def part_loader(folder: Path, work: Path, sizes: list[int]) -> list[dict]:
    """Peak PSS of the streaming data path alone (index, statistics, workers, 20 batches of SimCLR views), per folder size."""
    from benchmarks.make_photos import link_subset

    rows = []
    for n in sizes:
        data = folder if n >= 20000 else work / f"photos{n // 1000}k"
        if not data.exists():
            link_subset(folder, data, n)
        env = {**os.environ, "SSL_TOOLKIT_HOME": str(work / f"home{n}"), "PYTHONPATH": str(REPO)}
        r = run_measured([sys.executable, "-c", LOADER_SCRIPT, str(data)], env)
        rows.append({"images": n, "loader_peak_mb": r["peak_mb"], "seconds": r["seconds"], "rc": r["rc"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def part_model(work: Path) -> dict:
    """Peak PSS of the same pretraining (SimCLR, resnet18, 224 px, batch 64) on in-memory tensors: the model's own share."""
    env = {**os.environ, "SSL_TOOLKIT_HOME": str(work / "home-model")}
    cmd = ssl(
        "pretrain",
        "--task",
        "simclr",
        "--data",
        "synthetic",
        "--image-size",
        "224",
        "--batch-size",
        "64",
        "--quiet",
        "--overwrite",
        "--set",
        "data.synthetic_train=640",
        "--set",
        "data.synthetic_test=64",
        "--set",
        "trainer.max_steps=3",
        "--out",
        work / "model-only",
    )
    row = {"in_memory_3_steps": run_measured(cmd, env)}
    print(json.dumps(row), flush=True)
    return row


def part_commands(folder: Path, work: Path) -> list[dict]:
    env = {**os.environ, "SSL_TOOLKIT_HOME": str(work / "home20000")}
    run = work / "run20000"
    rows = []
    for name, cmd in (
        ("probe linear", ssl("probe", run, "--data", folder, "--mode", "linear")),
        ("embed", ssl("embed", run, "--data", folder, "--out", work / "emb.npy")),
        ("report", ssl("report", run, "--data", folder, "--out", work / "report.html")),
    ):
        r = run_measured(cmd, env)
        rows.append({"command": name, **r})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def part_decode(folder: Path, n: int) -> dict:
    import numpy as np
    import torch
    from torchvision import datasets, transforms

    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.data.stage import Crop, WorkerStage

    torch.set_num_threads(1)
    scale = (0.08, 1.0)
    src = load_source(DataConfig(name=str(folder), image_size=224, stream=True))
    stage = WorkerStage(crops=(Crop("random_resized", scale),))
    rng = np.random.default_rng(0)
    idx = np.random.default_rng(1).permutation(len(src.train))[:n]
    t0 = time.perf_counter()
    for i in idx:
        src.train.decode(int(i), stage, rng)
    ours = n / (time.perf_counter() - t0)
    tv = datasets.ImageFolder(
        str(folder / "train"), transform=transforms.Compose([transforms.RandomResizedCrop(224, scale=scale), transforms.PILToTensor()])
    )
    t0 = time.perf_counter()
    for i in idx:
        tv[int(i)]
    theirs = n / (time.perf_counter() - t0)
    row = {"images": int(n), "ours_img_s": round(ours, 1), "torchvision_img_s": round(theirs, 1), "ratio": round(ours / theirs, 2)}
    print(json.dumps(row), flush=True)
    return row


def part_step(folder: Path, steps: int) -> dict:
    import lightning as L
    import torch

    from ssl_toolkit.backbones import create_backbone, feature_dim
    from ssl_toolkit.config import BackboneConfig, DataConfig, TrainerConfig
    from ssl_toolkit.data.base import Split
    from ssl_toolkit.data.loaders import split_loader
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.data.stream import default_workers
    from ssl_toolkit.engine import PretrainModule
    from ssl_toolkit.pretext import DataFacts, build_task
    from ssl_toolkit.pretext.contrastive import SimCLRTask

    src = load_source(DataConfig(name=str(folder), image_size=224, stream=True))
    facts = DataFacts(3, 224, src.mean, src.std, src.name)
    cfg = SimCLRTask.Config()
    stage = SimCLRTask.worker_stage(cfg, facts)
    bs = 64

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t = 0.0

        def on_train_batch_start(self, *a) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, *a) -> None:
            self.times.append(time.perf_counter() - self.t)

    def timed(loader) -> float:
        backbone, _ = create_backbone(BackboneConfig(name="resnet18"), 3, 224)
        task = build_task("simclr", feature_dim(backbone), {}, facts)
        tcfg = TrainerConfig(batch_size=bs, precision="32-true", accelerator="cpu", online_probe=False, progress_bar=False)
        module = PretrainModule(backbone, task, tcfg, 1e-3, 1e-4, "adamw")
        timer, start = Timer(), time.perf_counter()
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module, loader)
        wall = time.perf_counter() - start
        return statistics.median(timer.times[2:]), wall / steps  # per step: the step itself, and wall including waits for data

    stream_step, stream_wall = timed(split_loader(src.train, bs, True, stage=stage, workers=default_workers()))
    images = src.train.sample(bs * 4)  # (4B, C, 224, 224) decoded centre squares
    views = torch.stack([images, images.flip(-1)], 1)  # (4B, 2, C, S, S): the same shape the workers hand over
    mem = Split(views, None, [])
    mem_loader = split_loader(mem, bs, True)
    mem_step, mem_wall = timed(mem_loader)
    row = {
        "workers": default_workers(),
        "stream_wall_s_per_step": round(stream_wall, 3),
        "memory_wall_s_per_step": round(mem_wall, 3),
        "ratio": round(stream_wall / mem_wall, 3),
        "stream_step_median_s": round(stream_step, 3),
        "memory_step_median_s": round(mem_step, 3),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=existing_folder, required=True, help="a folder of JPEGs with train/ (benchmarks/make_photos.py)")
    ap.add_argument("--work", type=output_folder, default="/tmp/data_speed", help="folder of the subsets, runs and data_speed.json")
    ap.add_argument("--parts", type=names(PARTS, "part"), default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument(
        "--sizes", type=int_list(minimum=1), default="5000,10000,20000", help="folder sizes (images) of the loader and memory parts"
    )
    ap.add_argument("--decode-images", type=positive_int, default=300)
    ap.add_argument("--steps", type=int_range(3, 10**6), default=12, help="timed steps of the step part (the first two are left out)")
    ap.add_argument("--memory-steps", type=positive_int, default=20, help="max_steps of the memory runs")
    ap.add_argument("--first-step-sizes", type=int_list(minimum=1), default="5000,10000,20000", help="sizes whose one-step runs are timed")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set KEY=VALUE of the memory part's ssl pretrain")
    a = ap.parse_args()
    if not (a.folder / "train").is_dir():
        ap.error(f"--folder {a.folder} has no train/ folder; make one with benchmarks/make_photos.py")
    bad = [o for o in a.overrides if "=" not in o]
    if bad:
        ap.error(f"--set {bad[0]!r}: give KEY=VALUE")
    a.work.mkdir(parents=True, exist_ok=True)
    parts = a.parts
    results: dict = {}
    if "loader" in parts:
        results["loader"] = part_loader(a.folder, a.work, a.sizes)
    if "model" in parts:
        results["model"] = part_model(a.work)
    if "decode" in parts:
        results["decode"] = part_decode(a.folder, a.decode_images)
    if "memory" in parts:
        results["memory"] = part_memory(a.folder, a.work, a.sizes, a.memory_steps, tuple(a.first_step_sizes), tuple(a.overrides))
    if "commands" in parts:
        results["commands"] = part_commands(a.folder, a.work)
    if "step" in parts:
        results["step"] = part_step(a.folder, a.steps)
    (a.work / "data_speed.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
