"""ResNet, ConvNeXt and ViT on the same small budget: what each family gives on Fashion-MNIST.

For every backbone and task (rotation, SimCLR): pretrain on ``--limit`` training images at
28 px for ``--steps`` optimiser steps of 128 images (each family with its small-image
rule; a step count, not a time budget, so a busy machine changes the speed column only), then the
linear probe and kNN (k = 200) trained on the same ``--limit`` images (their labels) and
scored on the 10,000 test images. Prints a Markdown table with the
parameters, training images per second and the
accuracies; ``docs/backbones.md`` records a run.

Usage::

    python benchmarks/backbone_families.py --backbones test_resnet,test_convnext,test_vit
    python benchmarks/backbone_families.py --steps 200 --limit 5000 --backbones resnet18,convnext_atto,vit_tiny_patch16_224
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import ssl_toolkit as st
from ssl_toolkit.backbones import create_backbone
from ssl_toolkit.config import BackboneConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.arguments import names, output_file, positive_int, task_names, timm_backbones  # noqa: E402


def parameters(name: str) -> float:
    model, _ = create_backbone(BackboneConfig(name=name), 1, 32)
    return sum(p.numel() for p in model.parameters()) / 1e6


def run(backbone: str, task: str, steps: int, limit: int, tmp: str) -> dict:
    data = {"name": "fashion-mnist", "image_size": 28, "limit": limit}
    cfg = {
        "task": task,
        "data": data,
        "backbone": {"name": backbone},
        "trainer": {"epochs": 1000, "max_steps": steps, "batch_size": 128, "progress_bar": False, "online_probe": False},
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
        "images_per_s": round(meta["steps"] * 128 / max(meta["wall_seconds"], 1e-9), 1),
        "backbone_inputs_per_s": round(meta["steps"] * 128 * views / max(meta["wall_seconds"], 1e-9), 1),
        "precision": meta["precision"],
        "linear": linear["top1"],
        "knn": knn["top1"],
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--backbones", type=timm_backbones, default="resnet18,convnext_atto,vit_tiny_patch16_224", help="comma-separated timm models"
    )
    ap.add_argument("--tasks", type=names(task_names, "task"), default="rotation,simclr", help="comma-separated pretext tasks")
    ap.add_argument("--steps", type=positive_int, default=40)
    ap.add_argument("--limit", type=positive_int, default=2000, help="training images")
    ap.add_argument("--out", type=output_file, default=str(ROOT / "benchmarks" / "results" / "backbone_families.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            for task in args.tasks:
                rows.append(run(backbone, task, args.steps, args.limit, tmp))
                print(json.dumps(rows[-1]), flush=True)
    result = {"steps": args.steps, "limit": args.limit, "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| backbone | params (M) | task | steps | images/s | linear top-1 | kNN top-1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backbone']} | {r['params_m']} | {r['task']} | {r['steps']} | {r['images_per_s']} | {100 * r['linear']:.1f} | {100 * r['knn']:.1f} |"
        )


if __name__ == "__main__":
    main()
