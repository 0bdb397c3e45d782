"""Refuse an output path that would replace or add a file of the data being read.

``ssl inspect --out`` / ``--dedupe-list`` and ``ssl embed --out`` take any file name; pointed
into the data they read, they would destroy it (an image replaced by a page, a shard set's
``ssl_shards.json`` by a list) or add to it (a new ``.png`` in an image folder is read as an
image next time). What counts as the data's, by source:

- an image folder: any path inside it with an image extension, and its ``labels.csv``;
- shards written by ``ssl shard``: anything inside the shard folder;
- Fashion-MNIST: its IDX files;
- any source: the ``data.labels`` file.

Built-in tensor sets (``digits``, ``synthetic``) and object-store shards have no local files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ssl_toolkit.config import DataConfig
from ssl_toolkit.errors import UserError


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute with symlinks of its existing part resolved (the file itself may not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def data_file_clash(cfg: DataConfig, path: str | Path) -> str | None:
    """Why writing ``path`` would change the data ``cfg`` names, or ``None`` when it would not."""
    from ssl_toolkit.data.images import IMAGE_EXTENSIONS
    from ssl_toolkit.data.labels_csv import LABELS_FILE
    from ssl_toolkit.data.sources import is_shard_dir

    target = _absolute(path)
    if cfg.labels and target in (_absolute(cfg.labels), _absolute(Path(cfg.name) / cfg.labels)):  # as data.labels is looked up
        return f"is the labels file data.labels={cfg.labels}"
    if cfg.name == "fashion-mnist":
        return _fashion_mnist_clash(cfg, target)
    if "://" in cfg.name:
        return None
    root = _absolute(cfg.name)
    if is_shard_dir(cfg.name):
        return f"is inside the shard set {cfg.name}" if _inside(target, root) else None
    if not root.is_dir() or not _inside(target, root):
        return None
    if target.suffix.lower() in IMAGE_EXTENSIONS:
        return f"is an image path inside {cfg.name}, the folder being read"
    if target == root / LABELS_FILE:
        return f"is the labels file of {cfg.name}"
    return None


def _fashion_mnist_clash(cfg: DataConfig, target: Path) -> str | None:
    from ssl_toolkit.data.fashion_mnist import FASHION_FILES, find_fashion_mnist, idx_names

    try:
        folder = _absolute(find_fashion_mnist(cfg.path))
    except UserError:  # not found: loading it says so, and nothing can be overwritten
        return None
    names = {n for stem in FASHION_FILES.values() for n in idx_names(stem)}
    if _inside(target, folder) and target.name in names:
        return f"is a Fashion-MNIST file in {folder}"
    return None


def refuse_data_files(cfg: DataConfig, outputs: Mapping[str, str | Path | None]) -> None:
    """Raise :class:`UserError` for the first output (``{option: path}``) that is a file of the data."""
    for option, path in outputs.items():
        if path is None:
            continue
        why = data_file_clash(cfg, path)
        if why is not None:
            raise UserError(f"{option} {path} {why}; writing it would change the data: choose a path outside it")
