"""Generate a folder of photo-sized JPEGs for the streaming benchmarks (no download needed).

Each "photo" is a procedural colour shape scene (:func:`ssl_toolkit.data.synthetic.make_synthetic`,
so the class is the shape) drawn at a low resolution, resized to the photo size with a
random aspect-ratio jitter of the scene, and given sensor-like noise so that JPEG files
have realistic sizes (about 150 KB at 1024x768, quality 90). Layout:
``OUT/train/<class>/*.jpg`` and ``OUT/test/<class>/*.jpg``.

    python benchmarks/make_photos.py --out /tmp/photos20k --n 20000 --classes 8
    python benchmarks/make_photos.py --out /tmp/photos5k --n 5000 --link-from /tmp/photos20k

``--link-from`` makes a smaller folder of hard links to the first files of a larger one
(for the memory-versus-size measurements) instead of encoding again.

``--out`` must be a new or empty folder: a folder that already holds files is refused
rather than written over (a second run would mix its files with the first's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.arguments import checked, existing_folder, new_output_folder, non_negative_int, positive_int  # noqa: E402

CLASSES = ["disk", "square", "triangle", "cross", "ring", "ell", "disk-upside-down", "square-upside-down"]


def _chunk(args: tuple[str, int, int, int, int, int, float, int]) -> int:
    out, start, count, width, height, classes, test_fraction, seed = args
    import torch
    from PIL import Image

    from ssl_toolkit.data.synthetic import make_synthetic

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed * 1_000_003 + start)
    base = 96
    images, labels = make_synthetic(count, base, seed=seed * 7919 + start, num_classes=min(classes, 6))  # (n, 3, 96, 96)
    for k in range(count):
        i = start + k
        label = int(labels[k])
        upside_down = label + 6 < classes and rng.random() < 0.5  # classes 6, 7: disk and square scenes turned over
        label += 6 * upside_down
        split = "test" if (i % int(round(1 / test_fraction))) == 0 else "train"
        folder = Path(out) / split / f"{label}_{CLASSES[label]}"
        small = Image.fromarray(images[k].permute(1, 2, 0).numpy(), "RGB")
        if upside_down:
            small = small.rotate(180)
        photo = small.resize((width, height), Image.Resampling.BICUBIC)
        a = np.asarray(photo, dtype=np.int16)
        noise = rng.normal(0, 6, size=(height // 2, width // 2, 1)).astype(np.int16)
        a = np.clip(a + np.repeat(np.repeat(noise, 2, 0), 2, 1), 0, 255).astype(np.uint8)
        Image.fromarray(a, "RGB").save(folder / f"{i:07d}.jpg", quality=90)
    return count


def generate(out: Path, n: int, width: int, height: int, classes: int, test_fraction: float, seed: int, workers: int) -> None:
    for split in ("train", "test"):
        for c in range(classes):
            (out / split / f"{c}_{CLASSES[c]}").mkdir(parents=True, exist_ok=True)
    chunk = 250
    jobs = [(str(out), s, min(chunk, n - s), width, height, classes, test_fraction, seed) for s in range(0, n, chunk)]
    done, t0 = 0, time.time()
    with ProcessPoolExecutor(max_workers=workers) as ex:
        for k in ex.map(_chunk, jobs):
            done += k
            print(f"\r{done}/{n} images, {time.time() - t0:.0f} s", end="", flush=True)
    print()


def jpegs(folder: Path) -> list[Path]:
    """The JPEGs under ``folder`` (every split and class), sorted by file name."""
    return sorted(folder.rglob("*.jpg"), key=lambda p: p.name)


def link_subset(src: Path, out: Path, n: int) -> None:
    """Hard links to the first ``n`` files (by name, over every split and class) of ``src``."""
    files = jpegs(src)[:n]
    for f in files:
        dst = out / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(f, dst)


#: ``--width``/``--height``: the sensor noise is drawn at half the side, so a side is even
even_side = checked(int, lambda side: side % 2 == 0 and 2 <= side <= 8192, "an even number of pixels from 2 to 8192")
#: ``--test-fraction``: every ``round(1 / f)``-th image goes to test, so at most half keeps both splits filled
split_share = checked(float, lambda f: 0 < f <= 0.5, "in (0, 0.5] so that both splits get images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=new_output_folder, required=True, help="a new or empty folder")
    ap.add_argument("--n", type=positive_int, default=20000, help="number of JPEGs")
    ap.add_argument("--width", type=even_side, default=1024, help="even, 2-8192 px")
    ap.add_argument("--height", type=even_side, default=768, help="even, 2-8192 px")
    ap.add_argument("--classes", type=int, default=8, choices=range(2, 9))
    ap.add_argument("--test-fraction", type=split_share, default=0.2, help="share of the images in test/, in (0, 0.5]")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    ap.add_argument("--link-from", type=existing_folder, default=None, help="hard-link the first N files of this folder instead")
    a = ap.parse_args()
    if a.link_from is not None:
        if not jpegs(a.link_from):
            ap.error(f"--link-from {a.link_from} holds no .jpg files")
        nearest = a.out.absolute()
        while not nearest.exists():
            nearest = nearest.parent
        if os.stat(nearest).st_dev != os.stat(a.link_from).st_dev:
            ap.error(f"--link-from {a.link_from} is on another file system than --out {a.out}: hard links cannot cross it")
        link_subset(a.link_from, a.out, a.n)
    else:
        generate(a.out, a.n, a.width, a.height, a.classes, a.test_fraction, a.seed, a.workers)
    files = list(a.out.rglob("*.jpg"))
    print(f"{a.out}: {len(files)} JPEGs, {sum(f.stat().st_size for f in files) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
