"""Multi-label targets from a ``labels.csv`` beside the images.

The file has a ``file,labels`` header and one row per image: the image's path relative to
the folder, and its labels separated by ``;`` (``street/0001.jpg,car;person``). It is found
at the folder's root, or named by ``data.labels``. The class names are the labels that
occur, sorted; targets are multi-hot ``(N, K)`` uint8 rows aligned with the folder's files.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ssl_toolkit.data.images import IMAGE_EXTENSIONS
from ssl_toolkit.errors import UserError

LABELS_FILE = "labels.csv"
SEPARATOR = ";"


def find_labels_csv(root: Path, explicit: str | None) -> Path | None:
    """``explicit`` (must exist; relative paths are tried against the working directory, then
    ``root``), else ``root/labels.csv`` when it exists, else ``None``."""
    if explicit:
        p = Path(explicit).expanduser()
        for cand in (p, root / p):
            if cand.is_file():
                return cand
        raise UserError(f"data.labels: file does not exist: {explicit}")
    p = root / LABELS_FILE
    return p if p.is_file() else None


def _key(path: str | Path) -> str:
    """A relative path normalised for matching (``./a//b.png`` == ``a/b.png``)."""
    return os.path.normpath(str(path)).replace(os.sep, "/")


def _read_rows(csv_path: Path) -> list[tuple[int, str, list[str]]]:
    """``(row number, file, labels)`` of every data row; the header is row 1."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {csv_path}: {e}") from None
    if not rows or [c.strip().lower() for c in rows[0]] != ["file", "labels"]:
        raise UserError(f"{csv_path}: the first row must be the header 'file,labels'")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise UserError(f"{csv_path} row {n}: expected 2 columns (file,labels), found {len(row)}")
        file, labels = row[0].strip(), row[1].strip()
        names = [s.strip() for s in labels.split(SEPARATOR)] if labels else []
        if not names:
            raise UserError(f"{csv_path} row {n}: {file} has an empty label set")
        if any(not s for s in names):
            raise UserError(f"{csv_path} row {n}: an empty label in '{labels}' (labels are separated by '{SEPARATOR}', none may be empty)")
        out.append((n, file, names))
    return out


def read_labels_csv(root: Path, files: list[Path], csv_path: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Multi-hot labels of ``files`` from a ``file,labels`` CSV.

    Args:
        root: The image folder; CSV paths are relative to it.
        files: The folder's image files (absolute, or relative to ``root``), in index order.
        csv_path: The CSV (``None`` = ``root/labels.csv``).

    Returns:
        ``(N, K)`` uint8 multi-hot rows aligned with ``files``, and the ``K`` sorted class names.

    Raises:
        UserError: Naming the row, for a file outside the folder, one that does not exist or
            is not an image file, a file listed twice, an empty label set or an empty label;
            naming the file, for an image with no row.
    """
    csv_path = csv_path or root / LABELS_FILE
    rows = _read_rows(csv_path)
    by_file: dict[str, list[str]] = {}
    for n, file, names in rows:
        key = _key(file)
        inside = os.path.normpath(os.path.join(root, key))
        if not inside.startswith(os.path.join(os.path.normpath(root), "")):
            raise UserError(f"{csv_path} row {n}: {file} is outside {root}; rows name the folder's images by their path in it")
        if not (root / key).is_file():
            raise UserError(f"{csv_path} row {n}: file {file} does not exist under {root}")
        if Path(key).suffix.lower() not in IMAGE_EXTENSIONS:
            raise UserError(f"{csv_path} row {n}: {file} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        if key in by_file:
            raise UserError(f"{csv_path} row {n}: {file} is listed twice")
        by_file[key] = names
    keys = [_key(Path(f).relative_to(root) if Path(f).is_absolute() else f) for f in files]
    missing = [k for k in keys if k not in by_file]
    if missing:
        raise UserError(f"{csv_path}: {len(missing)} image(s) have no row, e.g. {missing[0]}; every image needs its labels")
    classes = sorted({c for k in keys for c in by_file[k]})
    col = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(keys), len(classes)), np.uint8)
    for i, k in enumerate(keys):
        y[i, [col[c] for c in by_file[k]]] = 1
    return y, classes
