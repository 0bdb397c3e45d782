"""Seconds and peak memory of each stage of ``ssl report`` on Fashion-MNIST's test split.

Stages, each in this process, one after the other:

1. ``features``: the backbone's features of the 10,000 test images (extracted once into the
   feature cache; not part of the report target);
2. ``embed``: ``ssl embed --split test`` into an ``.npz`` (served by the cache);
3. ``faiss``: kNN accuracy, Recall@k, mAP@R and k-means (3 seeds) on all 10,000 points,
   leave-one-out within the split;
4. ``umap compile``: UMAP's first call on 100 points (numba compiles its kernels once per process);
5. ``umap``: UMAP of a stratified 5,000-point subsample;
6. ``report``: the whole ``ssl report --split test`` (features from the cache, FAISS, UMAP,
   figures, HTML), which is the figure held against the 60 s target.

Peak memory is the process's resident-set high-water mark during the stage (reset before
each stage through ``/proc/self/clear_refs``).

Run::

    python benchmarks/report_speed.py --data fashion-mnist
    python benchmarks/report_speed.py --target runs/rot --data fashion-mnist   # a trained run instead
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_toolkit.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.arguments import data_name, output_folder, positive_int, toolkit_backbone  # noqa: E402


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_mib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage(name: str, fn: Callable[[], Any], rows: list[tuple[str, float, float, float]]) -> Any:
    reset_peak()
    before = rss_mib("VmRSS")
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = rss_mib("VmHWM")
    rows.append((name, wall, cpu, peak))
    print(f"{name:<14} {wall:8.2f} s  (cpu {cpu:7.2f} s)  peak RSS {peak:8.1f} MiB  (+{max(peak - before, 0):.1f})", flush=True)
    return out


def random_backbone(folder: Path, data: str, backbone: str) -> None:
    """A random-init backbone folder sized for ``data`` (the report needs a target, not a trained one)."""
    from ssl_toolkit.backbones import create_backbone
    from ssl_toolkit.checkpoints import save_backbone
    from ssl_toolkit.config import BackboneConfig, DataConfig
    from ssl_toolkit.data.sources import load_source

    src = load_source(DataConfig(name=data))
    torch.manual_seed(0)
    model, spec = create_backbone(BackboneConfig(name=backbone), src.channels, src.image_size)
    save_backbone(
        folder,
        model,
        {
            "task": "random-init",
            "backbone": spec.to_dict(),
            "in_chans": src.channels,
            "image_size": src.image_size,
            "mean": list(src.mean),
            "std": list(src.std),
            "dataset": src.describe(),
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=data_name, default="fashion-mnist", help="A built-in dataset or an image folder.")
    ap.add_argument("--target", help="Run folder / backbone file / library name (default: a random-init --backbone).")
    ap.add_argument("--backbone", type=toolkit_backbone, default="test_resnet", help="timm model of the random-init target.")
    ap.add_argument("--umap-max-points", type=positive_int, default=5000)
    ap.add_argument("--out", type=output_folder, default=None, help="Folder for the outputs (default: a temp folder).")
    args = ap.parse_args()
    try:
        run(args)
    except UserError as e:  # a --target that cannot be read, data it does not fit: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(args: argparse.Namespace) -> None:
    """Every stage, one after the other, then the verdict against the 60 s target."""
    from ssl_toolkit.eval.analysis import UmapParams, analyze
    from ssl_toolkit.eval.embed import embed, load_target_source
    from ssl_toolkit.eval.features import FeatureCache, model_fingerprint
    from ssl_toolkit.eval.projection import umap_projection
    from ssl_toolkit.eval.report import report

    work = Path(args.out or tempfile.mkdtemp(prefix="report-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SSL_TOOLKIT_HOME", str(work / "home"))
    target = args.target
    if target is None:
        target = str(work / "backbone")
        random_backbone(Path(target), args.data, args.backbone)
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, target {target}, data {args.data} (test split)")
    rows: list[tuple[str, float, float, float]] = []

    model, meta, _, source, pre = load_target_source(target, args.data)
    fp = model_fingerprint(model)
    feats = stage("features", lambda: np.asarray(FeatureCache().features(model, source, "test", pre, fp)[0]), rows)
    labels = source.test.labels.numpy()
    print(f"{len(feats):,} images, {feats.shape[1]}-d features")
    res = stage("embed", lambda: embed(target, args.data, work / "test.npz", split="test"), rows)
    assert res["cached"] == ["test"], res
    an = stage("faiss", lambda: analyze(feats, labels, None, None, source.num_classes, project=False), rows)
    s = an.summary()
    print(
        f"  search {s['search']['description']}; kNN {s['knn']}; Recall {s['recall']}; mAP@R {s['map_at_r']:.4f} (R<={s['map_r_cap']}); "
        f"NMI {s['clusters']['nmi_mean']:.4f} ARI {s['clusters']['ari_mean']:.4f}"
    )
    stage("umap compile", lambda: umap_projection(np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)), rows)
    params = UmapParams(max_points=args.umap_max_points)
    stage("umap", lambda: umap_projection(feats, labels, params), rows)
    out = stage("report", lambda: report(target, args.data, work / "report.html", umap=params, split="test"), rows)
    print(f"  report stages (s): {out['seconds']}")
    print(f"  {out['path']} ({out['bytes'] / 1e6:.2f} MB)")
    total = rows[-1][1]
    print(f"whole report after features exist: {total:.1f} s (target < 60 s) -> {'OK' if total < 60 else 'SLOW'}")
    sys.exit(0)


if __name__ == "__main__":
    main()
