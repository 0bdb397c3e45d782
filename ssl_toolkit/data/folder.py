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

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.scan import assign_split, folder_layout, scan_file, scan_files, to_8bit
from ssl_toolkit.data.sources import DataSource, Split
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
    """Header-level check: ``None`` when PIL recognises the file, else the reason (:func:`~ssl_toolkit.data.scan.scan_file`)."""
    return scan_file(path, decode=False).error


def to_array(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """Decode ``im`` to a ``(channels, size, size)`` uint8 array (shorter side resized, centre crop)."""
    im = to_8bit(im)  # 16-bit and float images rescaled to 8-bit L
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


def decode_all(paths: list[Path], size: int, channels: int) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode ``paths`` in parallel (:func:`~ssl_toolkit.data.scan.scan_files`, the reader ``ssl inspect`` shares).

    Returns the stacked images, the kept indices and the skipped files with the reason.
    """
    recs = list(scan_files(paths, size, channels))
    kept = [i for i, r in enumerate(recs) if r.ok]
    skipped = [(str(r.path), r.error or "unreadable") for r in recs if not r.ok]
    arr = np.stack([recs[i].array for i in kept]) if kept else np.zeros((0, channels, size, size), np.uint8)
    return arr, kept, skipped


def load_folder(root: Path, cfg: DataConfig) -> DataSource:
    """Build a :class:`DataSource` from an image folder (layouts in the module docstring)."""
    layout = folder_layout(root)  # files, classes and given split; raises on empty or mixed layouts
    size = cfg.image_size or 32
    all_paths = layout.paths
    modes = {h.mode for h in scan_files(all_paths, decode=False) if h.ok}
    if not modes:
        raise UserError(f"no readable image in {root} ({len(all_paths)} files, none could be decoded)")
    channels = 1 if modes <= SINGLE_CHANNEL_MODES else 3
    arr, kept, skipped = decode_all(all_paths, size, channels)
    if not kept:
        raise UserError(f"no readable image in {root} ({len(all_paths)} files, none could be decoded)")
    kept_arr = np.asarray(kept)
    x = torch.from_numpy(arr)
    ids = [str(all_paths[i]) for i in kept]
    y = None if layout.labels is None else torch.from_numpy(np.asarray(layout.labels, dtype=np.int64)[kept_arr])
    is_test = torch.from_numpy(assign_split(layout.n_train, kept_arr, None if y is None else y.numpy(), cfg.test_fraction, cfg.split_seed) == 1)
    tr_idx, te_idx = (~is_test).nonzero().view(-1), is_test.nonzero().view(-1)
    full = Split(x, y, ids)
    return DataSource(
        name=str(root),
        train=full.subset(tr_idx),
        test=full.subset(te_idx),
        classes=layout.classes,
        grayscale_origin=channels == 1,
        skipped=skipped,
    )
