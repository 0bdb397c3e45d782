"""Does bf16-mixed keep accuracy? Pretrain the same run in 32-true and bf16-mixed, probe both.

Prints, per precision: pretraining seconds, images/s, final loss, linear-probe top-1, and the
speed ratio. Usage: python benchmarks/precision.py [--task rotation] [--epochs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import ssl_toolkit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.arguments import data_name, int_range, one_of, positive_int, task_names, toolkit_backbone  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", type=one_of(task_names, "task"), default="rotation", help="a pretext task")
    ap.add_argument("--data", type=data_name, default="digits", help="a built-in dataset or an image folder")
    ap.add_argument("--backbone", type=toolkit_backbone, default="resnet18", help="a timm model, or auto")
    ap.add_argument("--image-size", type=int_range(8, 1024), default=16, help="image side in pixels (8-1024)")
    ap.add_argument("--epochs", type=positive_int, default=5)
    ap.add_argument("--batch-size", type=positive_int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for precision in ("32-true", "bf16-mixed"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = {
                "task": args.task,
                "data": {"name": args.data, "image_size": args.image_size},
                "backbone": {"name": args.backbone},
                "trainer": {
                    "epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "precision": precision,
                    "progress_bar": False,
                    "online_probe": False,
                },
            }
            start = time.time()
            meta = st.pretrain(cfg, out=f"{tmp}/run", name=f"precision-{precision}-{int(start)}")
            seconds = time.time() - start
            probe = st.probe(f"{tmp}/run", {"data": {"name": args.data}})
            n_images = meta["dataset"]["n_train"] * args.epochs
            rows.append((precision, seconds, n_images / meta["wall_seconds"], meta["final_loss"], probe["top1"]))
    print(
        f"task={args.task} data={args.data} backbone={args.backbone} size={args.image_size} epochs={args.epochs} "
        f"batch={args.batch_size} torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    print(f"{'precision':<12} {'seconds':>8} {'img/s':>8} {'loss':>8} {'linear top-1':>13}")
    for p, s, ips, loss, top1 in rows:
        print(f"{p:<12} {s:8.1f} {ips:8.1f} {loss:8.4f} {100 * top1:12.2f}%")
    print(f"bf16 speed-up: {rows[0][2] and rows[1][2] / rows[0][2]:.2f}x; top-1 change: {100 * (rows[1][4] - rows[0][4]):+.2f} points")


if __name__ == "__main__":
    main()
