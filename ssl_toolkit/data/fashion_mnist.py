"""``fashion-mnist``: Fashion-MNIST's IDX files, read directly (Xiao, Rasul & Vollgraf, 2017)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.base import DataSource, Split, files_key, register_source, resize_uint8
from ssl_toolkit.errors import UserError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from None


def find_fashion_mnist(explicit: str | None = None) -> Path:
    """Locate the Fashion-MNIST IDX files: ``explicit``, ``$SSL_TOOLKIT_DATA/fashion-mnist``, then Debian's path."""
    candidates = []
    if explicit:  # an explicit path is used or refused, never silently replaced by another copy
        path = Path(explicit).expanduser()
        if not path.exists():
            raise UserError(f"data.path does not exist: {explicit}")
        if _idx_path(path, FASHION_FILES["train_images"]) is None:
            raise UserError(f"data.path {explicit} holds no Fashion-MNIST IDX files ({FASHION_FILES['train_images']}[.gz])")
        return path
    if os.environ.get("SSL_TOOLKIT_DATA"):
        candidates.append(Path(os.environ["SSL_TOOLKIT_DATA"]) / "fashion-mnist")
    candidates.append(Path("/usr/share/datasets/fashion-mnist"))
    for c in candidates:
        if _idx_path(c, FASHION_FILES["train_images"]) is not None:
            return c
    raise UserError(
        "fashion-mnist not found in "
        + ", ".join(str(c) for c in candidates)
        + "; install the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)"
    )


def idx_names(stem: str) -> tuple[str, ...]:
    """The names an IDX file of ``stem`` may have (gzipped or not, ``-idx`` or ``.idx``)."""
    return (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx"))


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in idx_names(stem):
        hits = list(folder.rglob(name)) if folder.is_dir() else []
        if hits:
            return sorted(hits)[0]
    return None


@register_source("fashion-mnist")
def fashion_mnist(cfg: DataConfig) -> DataSource:
    """Fashion-MNIST (Xiao et al., 2017): 60,000 + 10,000 grayscale 28x28 images, 10 classes."""
    found = _idx_path(find_fashion_mnist(cfg.path), FASHION_FILES["train_images"])
    assert found is not None  # find_fashion_mnist returns a folder holding it
    root = found.parent  # the four files of one copy, never mixed from several folders
    arrays, read = {}, []
    for key, stem in FASHION_FILES.items():
        p = next((root / n for n in idx_names(stem) if (root / n).is_file()), None)
        if p is None:
            raise UserError(f"fashion-mnist file {stem}(.gz) missing in {root}, next to {found.name}")
        arrays[key] = read_idx(p)
        read.append(p)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or (labels.size and labels.max() >= len(FASHION_CLASSES)):
            raise UserError(
                f"fashion-mnist {split} files in {root} do not match: {images.shape} images, {labels.shape} labels "
                f"(expected (N, H, W) images and N labels below {len(FASHION_CLASSES)})"
            )
    size = cfg.image_size or 28
    splits = {}
    for split in ("train", "test"):
        x = resize_uint8(torch.from_numpy(arrays[f"{split}_images"].copy()).unsqueeze(1), size)
        y = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        splits[split] = Split(x, y, [f"fashion-mnist:{split}:{i}" for i in range(len(y))])
    return DataSource(
        "fashion-mnist",
        splits["train"],
        splits["test"],
        list(FASHION_CLASSES),
        grayscale_origin=True,
        location=str(root),
        content=files_key(read),
    )
