"""``--augment basic`` against ``randaugment`` (and others): 10%-label fine-tuning on Fashion-MNIST.

The supervised-from-scratch baseline (``ssl probe --mode finetune --random-init``) of the
quick Fashion-MNIST protocol: ``test_resnet`` at 32 px, 10% of the 60,000 training labels
(stratified, seed 0), 5 epochs, batch 256, scored on the 10,000 test images. Each policy
is run with ``--seeds`` seeds; ``docs/benchmarks.md`` records a run.

Usage::

    python benchmarks/augment_policies.py                          # basic vs randaugment, 2 seeds
    python benchmarks/augment_policies.py --policies none,basic,randaugment,trivialaugment --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import ssl_toolkit as st
from ssl_toolkit.data.policies import POLICIES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.arguments import fraction, int_list, names, output_file, positive_int, toolkit_backbone  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--policies", type=names(POLICIES, "policy"), default="basic,randaugment", help=f"comma-separated: {', '.join(POLICIES)}"
    )
    ap.add_argument("--seeds", type=int_list(minimum=0), default="0,1", help="comma-separated integers")
    ap.add_argument("--backbone", type=toolkit_backbone, default="test_resnet", help="a timm model")
    ap.add_argument("--fraction", type=fraction, default=0.1, help="share of the training labels, in (0, 1]")
    ap.add_argument("--epochs", type=positive_int, default=5)
    ap.add_argument("--out", type=output_file, default=str(ROOT / "benchmarks" / "results" / "augment_policies.json"))
    args = ap.parse_args()
    data = {"name": "fashion-mnist", "image_size": 32}
    rows = []
    for policy in args.policies:
        for seed in args.seeds:
            start = time.time()
            cfg = {
                "mode": "finetune",
                "data": data,
                "label_fraction": args.fraction,
                "epochs": args.epochs,
                "batch_size": 256,
                "evaluator_config": {"augment": policy},
                "seed": seed,
            }
            res = st.probe(None, cfg, random_init=True, backbone=args.backbone)
            rows.append({"policy": policy, "seed": seed, "top1": res["top1"], "seconds": round(time.time() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {
        **vars(args),
        "out": str(args.out),
        "policies": ",".join(args.policies),
        "seeds": ",".join(map(str, args.seeds)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| --augment | top-1 (%) per seed | mean | seconds per run |")
    print("|---|---|---|---|")
    for policy in args.policies:
        r = [x for x in rows if x["policy"] == policy]
        tops = [100 * x["top1"] for x in r]
        print(
            f"| {policy} | {', '.join(f'{t:.1f}' for t in tops)} | {statistics.mean(tops):.1f} | {statistics.mean(x['seconds'] for x in r):.0f} |"
        )


if __name__ == "__main__":
    main()
