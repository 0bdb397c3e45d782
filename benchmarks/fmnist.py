"""Fashion-MNIST quality protocol: every pretext task on the same backbone and wall-clock budget.

Each task pretrains on the training images (labels unused), then its backbone is evaluated
on the 10,000 test images with the linear probe, kNN (k = 200, T = 0.1) and fine-tuning
with 1% and 10% of the labels. Baselines under the same protocol: logistic regression on
raw pixels, the random-init backbone (linear, kNN) and supervised training from scratch
with 1%, 10% and 100% of the labels. Colorization is skipped: Fashion-MNIST is grayscale.
``family_rows`` (the quick protocol: ``test_convnext`` and ``test_vit`` with
rotation and SimCLR) pretrain other backbone families with the same budget and evaluation,
each with its small-image rule (``docs/backbones.md``).

Writes ``benchmarks/results/fmnist[-<overlay>].json`` and regenerates the table between the
``fmnist[-<overlay>]`` markers in ``docs/benchmarks.md``. The protocol's settings are in
``configs/benchmarks/fmnist.yaml``; ``--quick`` applies its ``quick`` overlay and
``--protocol NAME`` any other (``budget15``: the same table at 15 minutes per task; ``budget30``: its
best two tasks at 30 minutes).

Usage::

    python benchmarks/fmnist.py --quick     # reduced table: the ResNet rows took 9 minutes on 2 cores; the 4 ConvNeXt/ViT rows add more
    python benchmarks/fmnist.py             # the full table (about 2 hours on 2 cores)
    python benchmarks/fmnist.py --protocol budget15   # 15 minutes per task (about 2.5 hours)
    python benchmarks/fmnist.py --protocol budget30   # SimCLR and rotation at 30 minutes (about 1.3 hours)
    python benchmarks/fmnist.py --resume    # finish an interrupted run, keeping its rows
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

import ssl_toolkit as st
from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.sources import load_source
from ssl_toolkit.errors import Interrupted
from ssl_toolkit.evaluators.linear import linear_probe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.arguments import names, one_of, task_names  # noqa: E402

CONFIG = ROOT / "configs" / "benchmarks" / "fmnist.yaml"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- fmnist:begin -->", "<!-- fmnist:end -->"
SKIPPED = {"colorization": "Fashion-MNIST is grayscale; colorization needs colour images"}


def protocol_names() -> list[str]:
    """The named overlays of ``configs/benchmarks/fmnist.yaml`` (``quick``, ``budget15``, ...)."""
    return [k for k in yaml.safe_load(CONFIG.read_text()) if k != "protocol"]


def load_settings(overlay: str | None) -> dict[str, Any]:
    """The base protocol with one named overlay of ``configs/benchmarks/fmnist.yaml`` applied."""
    cfg = yaml.safe_load(CONFIG.read_text())
    base = cfg["protocol"]
    if overlay:
        if overlay not in cfg or overlay == "protocol":
            raise SystemExit(f"error: no protocol overlay {overlay!r} in {CONFIG} (have: {', '.join(k for k in cfg if k != 'protocol')})")
        for key, value in cfg[overlay].items():
            base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return base


def raw_pixel_baseline(data: dict[str, Any]) -> dict[str, Any]:
    """Multinomial logistic regression on raw pixels (the toolkit's L-BFGS probe, same sweep)."""
    src = load_source(DataConfig(**data))
    start = time.time()
    logits, facts = linear_probe(src.train.images.flatten(1).float() / 255, src.train.labels, src.test.images.flatten(1).float() / 255, 10)
    top1 = (logits.argmax(1) == src.test.labels).float().mean().item()
    return {"top1": top1, "seconds": time.time() - start, **facts}


def evaluate(target: str | None, data: dict[str, Any], s: dict[str, Any], backbone: dict[str, Any] | None = None) -> dict[str, float]:
    """Linear, kNN and fine-tuning at the protocol's label fractions for one backbone."""
    random_init = target is None
    kw = {"random_init": random_init, "backbone": backbone} if random_init else {}
    out = {
        "linear": st.probe(target, {"mode": "linear", "data": data}, **kw)["top1"],
        "knn": st.probe(target, {"mode": "knn", "data": data, "evaluator_config": {"k": 200, "temperature": 0.1}}, **kw)["top1"],
    }
    for frac in s["finetune_fractions"]:
        cfg = {
            "mode": "finetune",
            "data": data,
            "label_fraction": frac,
            "epochs": s["finetune_epochs"],
            "batch_size": s["finetune_batch_size"],
        }
        out[f"finetune_{frac:g}"] = st.probe(target, cfg, **kw)["top1"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the reduced protocol (configs/benchmarks/fmnist.yaml: quick)")
    ap.add_argument(
        "--protocol",
        type=one_of(protocol_names, "protocol"),
        default=None,
        help="another overlay of configs/benchmarks/fmnist.yaml, e.g. budget15, budget30",
    )
    ap.add_argument("--tasks", type=names(task_names, "task"), default=None, help="comma-separated subset of tasks")
    ap.add_argument("--resume", action="store_true", help="keep the rows of an unfinished run with the same settings and do the rest")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args()
    if args.quick and args.protocol not in (None, "quick"):
        ap.error("--quick is --protocol quick; give one of them")
    overlay = "quick" if args.quick else args.protocol
    suffix = f"-{overlay}" if overlay else ""
    s = load_settings(overlay)
    data = {"name": "fashion-mnist", "image_size": s["image_size"]}
    train_data = {**data, **({"limit": s["train_limit"]} if s.get("train_limit") else {})}
    tasks = args.tasks or s["tasks"]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = ROOT / "benchmarks" / "results" / f"fmnist{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "protocol": overlay or "full",
        "settings": s,
        "rows": {},
        "row_seconds": {},
        "complete": False,
        "machine": {
            "cores": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "command": "python benchmarks/fmnist.py"
        + (f" --protocol {overlay}" if overlay and overlay != "quick" else " --quick" if overlay else "")
        + (f" --tasks {','.join(args.tasks)}" if args.tasks else ""),
        "seconds": 0.0,
    }
    if args.resume and out.exists():
        previous = json.loads(out.read_text())
        if previous.get("settings") == s and not previous.get("complete", True):
            result.update(rows=previous["rows"], row_seconds=previous.get("row_seconds", {}), seconds=previous.get("seconds", 0.0))
            print(f"resuming: {len(result['rows'])} rows kept from {out}", flush=True)
        else:
            print(f"not resuming: {out} is complete or has other settings", flush=True)
    rows = result["rows"]

    def step(name: str, fn) -> None:
        """Run one row (or one cell group) unless a resumed run already has it, then save."""
        if name in result["row_seconds"]:
            return
        print(name, flush=True)
        start = time.time()
        try:
            fn()
        except Interrupted:  # Ctrl-C or SIGTERM stops the whole benchmark; --resume goes on from here
            raise
        except Exception as exc:  # noqa: BLE001  (a row that fails is recorded, retried by --resume, and the table goes on)
            rows[name] = {"failed": f"{type(exc).__name__}: {exc}"}
            print(f"{name} failed: {rows[name]['failed']}", flush=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            return
        result["row_seconds"][name] = round(time.time() - start, 1)
        result["seconds"] = round(sum(result["row_seconds"].values()), 1)
        out.write_text(json.dumps(result, indent=2) + "\n")

    def sup(frac: float) -> None:
        cfg = {
            "mode": "finetune",
            "data": data,
            "label_fraction": frac,
            "epochs": s["finetune_epochs"],
            "batch_size": s["finetune_batch_size"],
        }
        rows.setdefault("supervised from scratch", {})[f"finetune_{frac:g}"] = st.probe(
            None, cfg, random_init=True, backbone=s["backbone"]
        )["top1"]

    step(
        "raw pixels (logistic regression)",
        lambda: rows.__setitem__("raw pixels (logistic regression)", {"linear": raw_pixel_baseline(data)["top1"]}),
    )
    step(
        "random-init backbone",
        lambda: rows.__setitem__("random-init backbone", evaluate(None, data, {**s, "finetune_fractions": []}, backbone=s["backbone"])),
    )
    for frac in [f for f in s["supervised_fractions"] if f < 1]:
        step(f"supervised from scratch {frac:g}", lambda frac=frac: sup(frac))

    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            if task in SKIPPED:
                rows[task] = {"skipped": SKIPPED[task]}
                continue

            def run_task(task: str = task, backbone: dict[str, Any] = s["backbone"], row: str = task) -> None:
                cfg = {
                    "task": task,
                    "data": train_data,
                    "backbone": backbone,
                    "trainer": {**s["trainer"], "max_minutes": s["budget_minutes"], "progress_bar": False, "online_probe": False},
                    "task_config": s.get("task_config", {}).get(task, {}),
                }
                slug = row.replace(" · ", "-")
                meta = st.pretrain(cfg, out=f"{tmp}/{slug}", name=f"fmnist{suffix}-{slug}-{stamp}")
                rows[row] = {
                    **evaluate(meta["library_name"], data, s),
                    "epochs": meta["epochs"],
                    "steps": meta["steps"],
                    "precision": meta["precision"],
                    "checkpoint": meta["library_name"],
                }
                print(json.dumps({row: rows[row]}), flush=True)

            step(task, run_task)
        for fam in s.get("family_rows", []):  # other backbone families on a few tasks, same budget
            for task in fam["tasks"]:
                row = f"{task} · {fam['backbone']['name']}"
                step(row, lambda task=task, fam=fam, row=row: run_task(task, fam["backbone"], row))

    for frac in [f for f in s["supervised_fractions"] if f >= 1]:  # the longest baseline last
        step(f"supervised from scratch {frac:g}", lambda frac=frac: sup(frac))

    result["complete"] = True
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    print(table)
    if not args.no_doc:
        write_doc(table, overlay)


def pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def budget_cell(row: dict[str, Any]) -> str:
    """Optimiser steps (epochs) a task fitted into the budget, and the precision it trained in."""
    if "steps" not in row:
        return ""
    short = {"bf16-mixed": "bf16", "32-true": "fp32"}.get(row.get("precision", ""), row.get("precision", ""))
    return f"{row['steps']} ({row['epochs']}), {short}"


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    fr = s["finetune_fractions"]
    head = (
        "| method | linear | kNN (k=200) | "
        + " | ".join(f"fine-tune {100 * f:g}%" for f in fr)
        + " | supervised 100% | steps (epochs) in budget, precision |"
    )
    lines = [
        f"Protocol **{result['protocol']}**: `{result['command']}`, {result['date']}, {result['seconds'] / 60:.0f} min in all (the rows' times added up); "
        f"{result['machine']['cores']} CPU threads, torch {result['machine']['torch']}. Backbone `{s['backbone']['name']}` at {s['image_size']} px, "
        f"{s['budget_minutes']} min of pretraining per task (precision `{s['trainer'].get('precision', 'auto')}`, batch {s['trainer']['batch_size']})"
        + (f" on {s['train_limit']} training images" if s.get("train_limit") else " on the 60,000 training images")
        + "; test: the 10,000 test images. Top-1 in %.",
        "",
        head,
        "|" + "---|" * (5 + len(fr)),
    ]
    rows = result["rows"]
    family = [f"{t} · {f['backbone']['name']}" for f in s.get("family_rows", []) for t in f["tasks"]]
    order = (
        [n for n in rows if n not in s["tasks"] and n not in family]
        + [t for t in s["tasks"] if t in rows]
        + [n for n in family if n in rows]
    )  # baselines, tasks, other families
    for name, row in ((n, rows[n]) for n in order):
        if "failed" in row:
            lines.append(f"| {name} | failed: {row['failed']} |" + " |" * (4 + len(fr)))
            continue
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} |" + " |" * (4 + len(fr)))
            continue
        sup100 = row.get("finetune_1") if name == "supervised from scratch" else None
        cells = (
            [pct(row.get("linear")), pct(row.get("knn"))] + [pct(row.get(f"finetune_{f:g}")) for f in fr] + [pct(sup100), budget_cell(row)]
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_doc(table: str, overlay: str | None) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    tag = f"fmnist-{overlay}" if overlay else "fmnist"
    begin, end = BEGIN.replace("fmnist", tag), END.replace("fmnist", tag)
    block = f"{begin}\n{table}\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + f"\n\n## Fashion-MNIST quality ({overlay or 'full'} protocol, `benchmarks/fmnist.py`)\n\n{block}\n"
    DOC.write_text(doc)


if __name__ == "__main__":
    main()
