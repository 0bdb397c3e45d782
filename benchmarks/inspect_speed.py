"""Inspection speed: `ssl inspect fashion-mnist` end to end, and what it finds.

Runs the real command in a fresh interpreter (so the figure includes start-up and imports,
as a user sees it), with ``--out`` writing the HTML page too, and prints:

* wall-clock seconds of the command, and the seconds the inspection itself reports;
* exact and near duplicates found in Fashion-MNIST's 70,000 images (groups, images,
  redundant copies) and how many groups cross train/test.

With ``--folder N`` it also writes the first N Fashion-MNIST images as PNG files in a
``train/<class>`` + ``test/<class>`` folder and inspects that folder, to measure the file
path (parallel header reads and decoding) on the same images.

Usage:
    python benchmarks/inspect_speed.py [--folder 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_IMAGES = 70_000  # 60,000 train + 10,000 test
MIN_FOLDER_IMAGES = 10


def image_count(text: str) -> int:
    """``--folder``: 0 (no folder) or a number of images Fashion-MNIST has (train first, then test).

    Args:
        text: The option's text.

    Returns:
        The count.

    Raises:
        argparse.ArgumentTypeError: If it is not 0 or between ``MIN_FOLDER_IMAGES`` and ``FASHION_MNIST_IMAGES``.
    """
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of images, got {text!r}") from None
    if n != 0 and not MIN_FOLDER_IMAGES <= n <= FASHION_MNIST_IMAGES:
        raise argparse.ArgumentTypeError(
            f"takes a number of images: 0 (no folder) or {MIN_FOLDER_IMAGES} to {FASHION_MNIST_IMAGES:,}, got {n}"
        )
    return n


def run_cli(*args: str) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ssl_toolkit", "inspect", *args, "--json", "-q"], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ssl inspect failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall, json.loads(proc.stdout)


def describe(name: str, wall: float, report: dict) -> None:
    n = report["images"]
    print(
        f"{name}: {n['total']} images (train {n['train']}, test {n['test']}), "
        f"command {wall:.1f} s wall, inspection {report['seconds']:.1f} s, {os.cpu_count()} CPU cores"
    )
    for kind in ("exact", "near"):
        d = report["duplicates"][kind]
        print(
            f"  {kind:<5} duplicates: {d['num_groups']} groups, {d['images']} images, {d['redundant']} redundant; "
            f"{d['leak_groups']} groups cross train/test ({d['leaked_test_images']} test images)"
        )


def write_folder(root: Path, n: int) -> None:
    """The first ``n`` Fashion-MNIST images (train first, then test) as PNG files in class folders."""
    import numpy as np
    from PIL import Image

    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source

    src = load_source(DataConfig(name="fashion-mnist"))
    n_test = min(len(src.test), max(1, n // 7))
    for split, data, count in (("train", src.train, n - n_test), ("test", src.test, n_test)):
        for c in src.classes or []:
            (root / split / c.replace("/", "-")).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            c = src.classes[int(data.labels[i])].replace("/", "-")
            Image.fromarray(np.asarray(data.images[i, 0])).save(root / split / c / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--folder",
        type=image_count,
        default=0,
        metavar="N",
        help=f"A number of images, not a path: also write the first N Fashion-MNIST images as PNG files in a temporary "
        f"folder and inspect it ({MIN_FOLDER_IMAGES} to {FASHION_MNIST_IMAGES:,}; default 0: no folder).",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall, report = run_cli("fashion-mnist", "--out", str(Path(tmp) / "fm.html"))
        describe("fashion-mnist", wall, report)
        if args.folder:
            root = Path(tmp) / "fm-folder"
            write_folder(root, args.folder)
            wall, report = run_cli(str(root))
            describe(f"fashion-mnist as {args.folder} PNG files", wall, report)


if __name__ == "__main__":
    main()
