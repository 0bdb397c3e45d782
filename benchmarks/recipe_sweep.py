"""Short recipe sweeps on Fashion-MNIST: which settings give the best linear probe in a fixed budget.

Every point pretrains one task with the full protocol of ``configs/benchmarks/fmnist.yaml``
(resnet18 with timm's stem at 32 px, batch 256, the 60,000 training images, labels unused)
for ``--minutes`` of wall-clock time, with some settings changed from the task's defaults,
and is scored by the linear probe and kNN (k = 200, T = 0.1) on the 10,000 test images.
The first point is always the defaults. Points are saved as they finish; ``--resume`` keeps
them and runs the rest.

A point is comma-separated ``--set`` overrides (values read as YAML)::

    python benchmarks/recipe_sweep.py --task simclr --minutes 6 \\
        --point trainer.lr=4e-3 --point task_config.temperature=0.5 \\
        --point "trainer.optimizer=lars,trainer.lr=1.2"

Prints one Markdown table; ``docs/benchmarks.md`` records the sweeps that were run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ssl_toolkit as st  # noqa: E402
from benchmarks.arguments import output_problem  # noqa: E402
from benchmarks.fmnist import evaluate, load_settings  # noqa: E402
from ssl_toolkit.config import PretrainConfig, apply_overrides, validate  # noqa: E402
from ssl_toolkit.errors import UserError  # noqa: E402
from ssl_toolkit.pretext import TASKS  # noqa: E402


def pretrain_config(s: dict[str, Any], task: str, minutes: float, point: str) -> dict[str, Any]:
    """The protocol's pretraining config for ``task`` with ``point``'s overrides applied."""
    cfg = {
        "task": task,
        "data": {"name": "fashion-mnist", "image_size": s["image_size"], **({"limit": s["train_limit"]} if s.get("train_limit") else {})},
        "backbone": s["backbone"],
        "trainer": {**s["trainer"], "max_minutes": minutes, "progress_bar": False, "online_probe": False},
        "task_config": s.get("task_config", {}).get(task, {}),
    }
    return apply_overrides(copy.deepcopy(cfg), tuple(p for p in point.split(",") if p))  # the settings stay untouched


def check_point(s: dict[str, Any], task: str, minutes: float, point: str) -> None:
    """Validate a point's config (and its task config) as ``ssl pretrain`` would, before any point runs."""
    cfg = validate(PretrainConfig, pretrain_config(s, task, minutes, point), what=f"--point {point!r}")
    validate(TASKS.get(task).Config, cfg.task_config, what=f"--point {point!r} (task_config)")


def run_point(s: dict[str, Any], task: str, minutes: float, point: str, out: str) -> dict[str, Any]:
    start = time.time()
    meta = st.pretrain(pretrain_config(s, task, minutes, point), out=out)
    data = {"name": "fashion-mnist", "image_size": s["image_size"]}
    scores = evaluate(meta["run_dir"], data, {**s, "finetune_fractions": []})  # the protocol's linear probe and kNN
    return {
        "point": point or "defaults",
        "linear": scores["linear"],
        "knn": scores["knn"],
        "steps": meta["steps"],
        "epochs": meta["epochs"],
        "precision": meta["precision"],
        "seconds": round(time.time() - start, 1),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"`{result['command']}`, {result['date']}; {result['cores']} CPU threads, torch {result['torch']}.",
        "",
        "| settings changed | linear | kNN (k=200) | steps (epochs), precision |",
        "|---|---|---|---|",
    ]
    for r in result["points"]:
        lines.append(f"| {r['point']} | {100 * r['linear']:.1f} | {100 * r['knn']:.1f} | {r['steps']} ({r['epochs']}), {r['precision']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="simclr")
    ap.add_argument("--minutes", type=float, default=6.0, help="pretraining budget per point")
    ap.add_argument("--point", action="append", default=[], help="comma-separated KEY=VALUE overrides (repeatable)")
    ap.add_argument("--no-defaults", action="store_true", help="do not run the task's defaults as the first point")
    ap.add_argument("--resume", action="store_true", help="keep the points already in --out")
    ap.add_argument("--out", default=None, help="JSON results (default benchmarks/results/sweep-<task>.json)")
    args = ap.parse_args()
    s = load_settings(None)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"sweep-{args.task}.json")
    if not math.isfinite(args.minutes) or args.minutes <= 0:
        ap.error("--minutes must be a positive number")
    if args.task not in TASKS.names():
        ap.error(f"--task: unknown task {args.task!r}; choose one of {', '.join(TASKS.names())}")
    points = ([] if args.no_defaults else [""]) + args.point
    if not points:
        ap.error("--no-defaults needs at least one --point")
    try:  # every override is checked before the first point spends its budget
        for p in points:
            check_point(s, args.task, args.minutes, p)
    except UserError as e:
        ap.error(str(e))
    problem = output_problem(out)  # the results are written after the first point: writable before it starts
    if problem:
        ap.error(f"--out {problem}")
    command = "python benchmarks/recipe_sweep.py " + shlex.join(sys.argv[1:])
    result = {"task": args.task, "minutes": args.minutes, "command": command, "cores": torch.get_num_threads(), "torch": torch.__version__}
    done: list[dict[str, Any]] = json.loads(out.read_text())["points"] if args.resume and out.exists() else []
    result["points"] = done
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, p in enumerate(points):
            if any(r["point"] == (p or "defaults") for r in done):
                continue
            done.append(run_point(s, args.task, args.minutes, p, f"{tmp}/point{i}"))
            print(json.dumps(done[-1]), flush=True)
            result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            out.write_text(json.dumps(result, indent=2) + "\n")
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(render(result))


if __name__ == "__main__":
    main()
