"""ResNet, ConvNeXt and ViT on the same small budget: what each family gives on Fashion-MNIST.

For every backbone and task (rotation, SimCLR): pretrain on ``--limit`` training images at
32 px for ``--minutes`` of wall clock (each family with its small-image rule), then the
linear probe and kNN (k = 200) trained on the same ``--limit`` images (their labels) and
scored on the 10,000 test images. Prints a Markdown table with the
parameters, the steps fitted into the budget, training images per second and the
accuracies; ``docs/backbones.md`` records a run.

Usage::

    python benchmarks/backbone_families.py                      # about 15 minutes on 2 busy cores
    python benchmarks/backbone_families.py --minutes 1 --limit 5000 --backbones test_resnet,convnext_atto
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import ssl_toolkit as st
from ssl_toolkit.backbones import create_backbone
from ssl_toolkit.config import BackboneConfig

ROOT = Path(__file__).resolve().parents[1]


def parameters(name: str) -> float:
    model, _ = create_backbone(BackboneConfig(name=name), 1, 32)
    return sum(p.numel() for p in model.parameters()) / 1e6


def run(backbone: str, task: str, minutes: float, limit: int, tmp: str) -> dict:
    data = {"name": "fashion-mnist", "image_size": 32, "limit": limit}
    cfg = {
        "task": task,
        "data": data,
        "backbone": {"name": backbone},
        "trainer": {"epochs": 1000, "batch_size": 256, "max_minutes": minutes, "progress_bar": False, "online_probe": False},
    }
    start = time.time()
    meta = st.pretrain(cfg, out=f"{tmp}/{backbone}-{task}")
    run_dir = meta["run_dir"]
    views = 4 if task == "rotation" else 2  # images through the backbone per training image
    linear = st.probe(run_dir, {"mode": "linear", "data": data})
    knn = st.probe(run_dir, {"mode": "knn", "data": data})
    return {
        "backbone": backbone,
        "task": task,
        "params_m": round(parameters(backbone), 2),
        "steps": meta["steps"],
        "images_per_s": round(meta["steps"] * 256 / max(meta["wall_seconds"], 1e-9), 1),
        "backbone_inputs_per_s": round(meta["steps"] * 256 * views / max(meta["wall_seconds"], 1e-9), 1),
        "precision": meta["precision"],
        "linear": linear["top1"],
        "knn": knn["top1"],
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="resnet18,convnext_atto,vit_tiny_patch16_224")
    ap.add_argument("--tasks", default="rotation,simclr")
    ap.add_argument("--minutes", type=float, default=0.75)
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backbone_families.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones.split(","):
            for task in args.tasks.split(","):
                rows.append(run(backbone, task, args.minutes, args.limit, tmp))
                print(json.dumps(rows[-1]), flush=True)
    result = {"minutes": args.minutes, "limit": args.limit, "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| backbone | params (M) | task | steps in budget | images/s | linear top-1 | kNN top-1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['params_m']} | {r['task']} | {r['steps']} | {r['images_per_s']} | {100 * r['linear']:.1f} | {100 * r['knn']:.1f} |")


if __name__ == "__main__":
    main()
