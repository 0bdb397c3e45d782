"""A new user's SimCLR run on Fashion-MNIST against lightly's reference, at one wall-clock budget.

Two rows, trained one after the other on the same machine and scored by one evaluator:

* **ours**: exactly ``ssl pretrain --task simclr --data fashion-mnist --set
  trainer.max_minutes=M`` (every other setting the toolkit's default), then ``ssl embed``.
* **lightly**: lightly's SimCLR pipeline (``SimCLRTransform`` on PIL images in DataLoader
  workers, ``SimCLRProjectionHead``, ``NTXentLoss``), timm's resnet18 with its own stem at
  32 px, batch 256, AdamW at 2e-3 on a cosine schedule over the same budget, float32 or
  ``--precision bf16-mixed``; embedded with lightly's evaluation transform (resize, tensor,
  ImageNet normalisation).

The evaluator sees only embeddings (train: the 60,000 training images, test: the 10,000
test images): scikit-learn's logistic regression on standardised features, and a weighted
kNN (FAISS, cosine, k = 200, T = 0.1). Both are independent of the toolkit's own probes.

Usage::

    python benchmarks/simclr_budget.py --minutes 15
    python benchmarks/simclr_budget.py --minutes 15 --rows lightly --resume   # one row, keep the other
    python benchmarks/simclr_budget.py --minutes 15 --rows ours --ours-image-size 32 --out R.json   # our row at 32 px
    python benchmarks/simclr_budget.py --minutes 15 --rows ours --ours-set trainer.batch_size=128 --out R.json
    python benchmarks/simclr_budget.py --minutes 30 --rows ours --work /tmp/s30   # keep the run (library, fine-tunes)
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ssl_toolkit as st  # noqa: E402
from benchmarks.arguments import non_negative_int, output_file, output_problem  # noqa: E402
from benchmarks.throughput import lightly_transform  # noqa: E402
from ssl_toolkit.config import DataConfig, PretrainConfig, apply_overrides, validate  # noqa: E402
from ssl_toolkit.data.sources import load_source  # noqa: E402
from ssl_toolkit.errors import UserError  # noqa: E402
from ssl_toolkit.pretext import TASKS  # noqa: E402


def score(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Logistic regression and weighted kNN on embeddings: ``(N, D)`` float arrays."""
    import faiss
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(train), y_train)
    linear = float((clf.predict(scaler.transform(test)) == y_test).mean())

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    index = faiss.IndexFlatIP(train.shape[1])
    index.add(unit(train))
    sims, idx = index.search(unit(test), 200)  # (N_test, 200)
    votes = np.zeros((len(test), int(y_train.max()) + 1))
    np.add.at(votes, (np.arange(len(test))[:, None], y_train[idx]), np.exp(sims / 0.1))
    knn = float((votes.argmax(1) == y_test).mean())
    return {"linear": linear, "knn": knn}


def ours_config(minutes: float, image_size: int | None = None, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The new user's pretraining config, with ``--ours-image-size`` and ``--ours-set`` applied."""
    data: dict[str, Any] = {"name": "fashion-mnist", **({"image_size": image_size} if image_size else {})}
    return apply_overrides({"task": "simclr", "data": data, "trainer": {"max_minutes": minutes}}, overrides)


def ours(minutes: float, tmp: str, image_size: int | None = None, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    start = time.time()
    meta = st.pretrain(ours_config(minutes, image_size, overrides), out=f"{tmp}/ours")
    trained = time.time() - start
    t = yaml.safe_load((Path(meta["run_dir"]) / "config.yaml").read_text())["trainer"]
    e = np.load(st.embed(meta["run_dir"], out=f"{tmp}/ours.npz")["path"])
    train, test = e["split"] == "train", e["split"] == "test"
    row = score(e["embeddings"][train], e["labels"][train], e["embeddings"][test], e["labels"][test])
    return {
        **row,
        "steps": meta["steps"],
        "epochs": meta["epochs"],
        "precision": meta["precision"],
        "settings": f"{meta['backbone']['timm_name']}, batch {t['batch_size']}, lr {t['lr']:g}, {meta['image_size']} px, small stem {meta['backbone']['small_stem']}, stem pool {meta['backbone'].get('stem_pool', True)}"
        + "".join(f", {k} {v}" for k, v in meta["backbone"].get("kwargs", {}).items() if k not in ("num_classes", "in_chans")),
        "train_seconds": round(trained, 1),
        "seconds": round(time.time() - start, 1),
    }


def lightly_row(minutes: float, precision: str, workers: int) -> dict[str, Any]:
    import timm
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from PIL import Image
    from torchvision import transforms as T

    start = time.time()
    source = load_source(DataConfig(name="fashion-mnist", image_size=28))
    train_u8 = source.train.images[:, 0].numpy()  # (60000, 28, 28) uint8
    transform = lightly_transform(32)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(train_u8)

        def __getitem__(self, i: int):
            return tuple(transform(Image.fromarray(train_u8[i]).convert("RGB")))

    loader = torch.utils.data.DataLoader(
        Pairs(), batch_size=256, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )
    torch.manual_seed(0)
    backbone = timm.create_model("resnet18", num_classes=0)
    head = SimCLRProjectionHead(backbone.num_features, 512, 128)
    loss_fn = NTXentLoss(temperature=0.2)
    opt = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=2e-3)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    budget, steps, epochs, done = minutes * 60, 0, 0, False
    train_start = time.time()
    while not done:
        for v0, v1 in loader:
            share = (time.time() - train_start) / budget
            if share >= 1:
                done = True
                break
            for g in opt.param_groups:  # cosine over the budget's share spent
                g["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * share))
            with autocast:
                z = head(backbone(torch.cat([v0, v1])))  # (512, 128)
                loss = loss_fn(*z.float().chunk(2))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        epochs += not done  # epochs trained to their end, as the toolkit records them
    trained = time.time() - start
    backbone.eval()
    to_input = T.Compose([T.Resize(32), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def features(images: torch.Tensor) -> np.ndarray:
        out = []
        with torch.no_grad(), autocast:
            for i in range(0, len(images), 512):
                x = torch.stack([to_input(Image.fromarray(a).convert("RGB")) for a in images[i : i + 512, 0].numpy()])
                out.append(backbone(x).float().numpy())
        return np.concatenate(out)

    row = score(features(source.train.images), source.train.labels.numpy(), features(source.test.images), source.test.labels.numpy())
    return {
        **row,
        "steps": steps,
        "epochs": epochs,
        "precision": precision,
        "settings": "batch 256, lr 2e-3, 32 px, timm stem",
        "train_seconds": round(trained, 1),
        "seconds": round(time.time() - start, 1),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"`{result['command']}`, {result['date']}; {result['cores']} CPU threads, torch {result['torch']}.",
        "",
        f"| pipeline ({result['minutes']:g} min) | linear (logistic regression) | kNN (k=200) | steps (epochs), precision | settings |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {100 * r['linear']:.1f} | {100 * r['knn']:.1f} | {r['steps']} ({r['epochs']}), {r['precision']} | {r['settings']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--rows", default="ours,lightly", help="comma-separated: ours, lightly")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"], help="lightly's row")
    ap.add_argument("--workers", type=non_negative_int, default=2, help="lightly's DataLoader workers")
    ap.add_argument("--ours-image-size", type=int, default=None, help="our row's data.image_size (default: the data's 28 px)")
    ap.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE", help="our row: one more setting (repeatable)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    ap.add_argument("--out", type=output_file, default=str(ROOT / "benchmarks" / "results" / "simclr-budget.json"))
    ap.add_argument("--work", default=None, help="keep our run folder and embeddings here (default: a temporary folder)")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if not set(rows) <= {"ours", "lightly"} or not math.isfinite(args.minutes) or args.minutes <= 0:
        ap.error("--rows takes ours and/or lightly; --minutes must be positive")
    if args.ours_image_size is not None and not 8 <= args.ours_image_size <= 1024:
        ap.error("--ours-image-size must be between 8 and 1024")
    overrides = tuple(args.ours_set)
    try:  # validated as ``ssl pretrain`` would, before anything runs
        cfg = validate(PretrainConfig, ours_config(args.minutes, args.ours_image_size, overrides), what="--ours-set")
        validate(TASKS.get("simclr").Config, cfg.task_config, what="--ours-set (task_config)")
    except UserError as e:
        ap.error(str(e))
    out = Path(args.out)
    result: dict[str, Any] = {
        "minutes": args.minutes,
        "command": "python benchmarks/simclr_budget.py " + shlex.join(sys.argv[1:]),
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": json.loads(out.read_text())["rows"] if args.resume and out.exists() else {},
    }
    if args.work is not None:
        if Path(args.work, "ours").exists():
            ap.error(f"--work {args.work} already holds a run (ours/); give an empty folder")
        problem = output_problem(args.work, folder=True)
        if problem:
            ap.error(f"--work {problem}")
        Path(args.work).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() if args.work is None else nullcontext(args.work) as tmp:
        for name in rows:
            result["rows"][name] = (
                ours(args.minutes, tmp, args.ours_image_size, overrides)
                if name == "ours"
                else lightly_row(args.minutes, args.precision, args.workers)
            )
            print(json.dumps({name: result["rows"][name]}), flush=True)
            result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))


if __name__ == "__main__":
    main()
