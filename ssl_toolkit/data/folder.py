"""Image folders as data sources.

Layouts understood:

* ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``): labelled, given splits;
* ``root/train/*`` and ``root/test/*`` with images directly inside: unlabelled, given splits;
* ``root/<class>/*``: labelled, seeded stratified train/test split;
* ``root/*`` (images directly inside): unlabelled, seeded random split.

Images are decoded in parallel threads, resized so the shorter side is ``image_size``
and centre-cropped to a square. Colour modes: if every image is single-channel
(L, 1, I;16, I, F) the source is grayscale (16-bit and float images are rescaled to
8 bit); otherwise everything becomes RGB: palette images via RGBA, CMYK converted, and
alpha composited onto a white background. Files that cannot be decoded are skipped and
listed in ``DataSource.skipped``; a folder where nothing decodes is an error.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.sources import DataSource, Split, stratified_split
from ssl_toolkit.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SINGLE_CHANNEL_MODES = {"L", "1", "I;16", "I;16B", "I;16L", "I", "F"}
TEST_DIRS = ("test", "val")


def is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_split(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Files of one split folder: (paths, labels or None, class names or None)."""
    subdirs = [d for d in class_dirs(folder) if any(is_image_file(p) for p in d.iterdir())]
    if subdirs:
        classes = [d.name for d in subdirs]
        paths, labels = [], []
        for i, d in enumerate(subdirs):
            files = list_images(d)
            paths += files
            labels += [i] * len(files)
        return paths, labels, classes
    return list_images(folder), None, None


def probe_image(path: Path) -> str | None:
    """Header-level check: ``None`` when PIL recognises the file, else the reason."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as im:
            im.size  # noqa: B018  (header parsed)
        return None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return str(e).splitlines()[0] or type(e).__name__


def to_array(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """Decode ``im`` to a ``(channels, size, size)`` uint8 array (shorter side resized, centre crop)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8), "L")
    if channels == 1:
        im = im.convert("L")
    else:
        if im.mode == "P":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA"):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba)
        im = im.convert("RGB")
    im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _mode_of(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            return im.mode
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def decode_all(paths: list[Path], size: int, channels: int) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode ``paths`` in parallel; returns the stacked images, the kept indices and the skipped files."""

    def work(p: Path):
        try:
            with Image.open(p) as im:
                return to_array(im, size, channels), None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return None, str(e).splitlines()[0] if str(e) else type(e).__name__

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as ex:
        results = list(ex.map(work, paths))
    kept = [i for i, (a, _) in enumerate(results) if a is not None]
    skipped = [(str(paths[i]), err) for i, (a, err) in enumerate(results) if a is None]
    arr = np.stack([results[i][0] for i in kept]) if kept else np.zeros((0, channels, size, size), np.uint8)
    return arr, kept, skipped


def load_folder(root: Path, cfg: DataConfig) -> DataSource:
    """Build a :class:`DataSource` from an image folder (layouts in the module docstring)."""
    if not root.is_dir():
        raise UserError(f"data path is not a folder: {root}")
    size = cfg.image_size or 32
    split_dirs = {d.name.lower(): d for d in class_dirs(root)}
    test_dir = next((split_dirs[n] for n in TEST_DIRS if n in split_dirs), None)
    if "train" in split_dirs and test_dir is not None:
        tr_paths, tr_labels, tr_classes = scan_split(split_dirs["train"])
        te_paths, te_labels, te_classes = scan_split(test_dir)
        if (tr_labels is None) != (te_labels is None):
            raise UserError(f"{root}: train/ and {test_dir.name}/ must both have class folders or both have none")
        classes = sorted(set(tr_classes or []) | set(te_classes or [])) if tr_classes else None
        if classes:  # map both splits onto the union of class names
            tr_labels = [classes.index(tr_classes[i]) for i in tr_labels]
            te_labels = [classes.index(te_classes[i]) for i in te_labels]
        given_split = True
    else:
        tr_paths, tr_labels, classes = scan_split(root)
        te_paths, te_labels = [], [] if tr_labels is not None else None
        given_split = False
    all_paths = tr_paths + te_paths
    if not all_paths:
        raise UserError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    modes = {m for m in (_mode_of(p) for p in all_paths) if m is not None}
    if not modes:
        raise UserError(f"no readable image in {root} ({len(all_paths)} files, none could be decoded)")
    channels = 1 if modes <= SINGLE_CHANNEL_MODES else 3
    arr, kept, skipped = decode_all(all_paths, size, channels)
    if not kept:
        raise UserError(f"no readable image in {root} ({len(all_paths)} files, none could be decoded)")
    labels_all = None if tr_labels is None else np.asarray(tr_labels + (te_labels or []), dtype=np.int64)
    ids_all = [str(p) for p in all_paths]
    kept_arr = np.asarray(kept)
    n_tr = len(tr_paths)
    x = torch.from_numpy(arr)
    ids = [ids_all[i] for i in kept]
    y = None if labels_all is None else torch.from_numpy(labels_all[kept_arr])
    if given_split:
        is_tr = torch.from_numpy(kept_arr < n_tr)
        tr_idx, te_idx = is_tr.nonzero().view(-1), (~is_tr).nonzero().view(-1)
    elif y is not None:
        a, b = stratified_split(y.numpy(), cfg.test_fraction, cfg.split_seed)
        tr_idx, te_idx = torch.from_numpy(a), torch.from_numpy(b)
    else:
        perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(cfg.split_seed))
        n_te = int(round(len(ids) * cfg.test_fraction))
        te_idx, tr_idx = perm[:n_te].sort().values, perm[n_te:].sort().values
    full = Split(x, y, ids)
    return DataSource(
        name=str(root),
        train=full.subset(tr_idx),
        test=full.subset(te_idx),
        classes=classes,
        grayscale_origin=channels == 1,
        skipped=skipped,
    )
