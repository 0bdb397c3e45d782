"""Fine-tuning a pretrained backbone against training the same network from scratch, over seeds.

One label fraction of a labelled dataset (default: Fashion-MNIST, 1% of its labels),
several seeds. Each seed draws its own stratified label subset, head and data order; the
pretrained backbone (``ssl probe TARGET --mode finetune``) and the supervised-from-scratch
baseline (``--random-init``, the same network: timm name, stem and max-pool read from the
target's metadata, its initialisation drawn from the seed) see the same labels. Both
are scored on the test split, by default with the evaluator's length (10 epochs, at least 100
steps) at batch 256, as in ``benchmarks/fmnist.py``.

The gap (pretrained minus scratch) is what the 1%-label target of the Fashion-MNIST tables
is about; one seed of each leaves it to the spread of both, which this script measures.

Usage::

    python benchmarks/finetune_seeds.py --target fmnist-budget15-default-stem-simclr-...   # seeds 0,1,2 at 1%
    python benchmarks/finetune_seeds.py --target RUN_OR_NAME --fraction 0.1 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import ssl_toolkit as st
from ssl_toolkit.backbones import BackboneSpec
from ssl_toolkit.errors import UserError
from ssl_toolkit.library import load_backbone_any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.arguments import data_name, int_range, output_problem  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="run folder, backbone file or checkpoint-library name")
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", type=data_name, default="fashion-mnist", help="a built-in dataset or folder with labels and a test split")
    ap.add_argument("--image-size", type=int_range(8, 1024), default=None, help="default: the target's recorded image size")
    ap.add_argument("--epochs", type=int, default=None, help="default: the evaluator's (10 epochs, at least 100 steps)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "finetune_seeds.json"))
    args = ap.parse_args()
    if not (math.isfinite(args.fraction) and 0 < args.fraction <= 1):
        ap.exit(2, f"error: --fraction must be in (0, 1], got {args.fraction}\n")
    if (args.epochs is not None and args.epochs < 1) or args.batch_size < 1:
        ap.exit(2, "error: --epochs and --batch-size must be at least 1\n")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.exit(2, f"error: --seeds must be comma-separated integers, got {args.seeds!r}\n")
    problem = output_problem(args.out)  # the results file must be writable before minutes of fine-tuning
    if problem:
        ap.exit(2, f"error: --out {problem}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        run(args, seeds)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(args: argparse.Namespace, seeds: list[int]) -> None:
    """Both fine-tunes for every seed, then the JSON (``--out``) and a Markdown table."""
    _, meta, _ = load_backbone_any(args.target)
    spec = BackboneSpec.from_dict(meta["backbone"])
    extra = {k: v for k, v in spec.kwargs.items() if k not in ("in_chans", "num_classes")}  # create_backbone sets these
    backbone = {"name": spec.timm_name, "small_stem": spec.small_stem, "stem_pool": spec.stem_pool, "kwargs": extra}
    data = {"name": args.data, "image_size": args.image_size or int(meta["image_size"])}
    rows: list[dict] = []
    for seed in seeds:
        cfg = {
            "mode": "finetune",
            "data": data,
            "label_fraction": args.fraction,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": seed,
        }
        for kind in ("pretrained", "scratch"):
            start = time.time()
            if kind == "pretrained":
                res = st.probe(args.target, cfg)
            else:
                res = st.probe(None, cfg, random_init=True, backbone=backbone)
            rows.append(
                {
                    "kind": kind,
                    "seed": seed,
                    "top1": res["top1"],
                    "n_train": res["n_train"],
                    "network": f"{res['backbone']}, small stem {res['small_stem']}, stem pool {res['stem_pool']}",
                    "seconds": round(time.time() - start, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    top1 = {k: [r["top1"] * 100 for r in rows if r["kind"] == k] for k in ("pretrained", "scratch")}
    gaps = [p - s for p, s in zip(top1["pretrained"], top1["scratch"], strict=True)]
    result = {
        "command": "python benchmarks/finetune_seeds.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"),
        "backbone": backbone,
        "data": data,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
        "mean": {k: statistics.fmean(v) for k, v in top1.items()},
        "gap_mean": statistics.fmean(gaps),
        "gap_min": min(gaps),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| fine-tune {args.fraction:g} | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for kind, values in top1.items():
        print(f"| {kind} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {statistics.fmean(values):.2f} |")
    print("| gap | " + " | ".join(f"{g:+.2f}" for g in gaps) + f" | {statistics.fmean(gaps):+.2f} |")


if __name__ == "__main__":
    main()
