"""The file index of an image folder: built once, cached, validated on read.

An index holds, per usable file: its path relative to the folder, its label, its byte
size, its stored width and height and whether it is single-channel (read from the header:
no pixel is decoded), plus the class names, the given train/test boundary and the files
that could not be opened. It is cached under ``$SSL_TOOLKIT_HOME/cache/index``, keyed by
the folder's listing (every path, size and modification time), so a second run on an
unchanged folder only lists it (``os.scandir``) and loads the arrays. ``INDEX_VERSION`` is
part of the key: a release that changes what a listing finds (version 2: ``.gif`` files,
names that are not UTF-8 listed as unusable) never reads an older index.

Paths are held in one numpy bytes array, not a Python list, so the index costs a few
bytes per image and DataLoader workers share it without copying.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ssl_toolkit.data.images import DECODE_VERSION, DEFAULT_MAX_PIXELS, SINGLE_CHANNEL_MODES
from ssl_toolkit.data.layout import FolderLayout, Unused, folder_layout
from ssl_toolkit.data.scan import scan_files
from ssl_toolkit.settings import cache_dir

INDEX_VERSION = 3
STATS_VERSION = 1


class IndexMeta(BaseModel):
    """The JSON part of a cached index (validated on every read)."""

    model_config = ConfigDict(extra="forbid")

    version: int
    root: str
    classes: list[str] | None
    n_train: int | None
    bad: list[tuple[str, str]]
    n: int


@dataclass
class FileIndex:
    """Usable files of a folder (see the module docstring).

    Attributes:
        root: The folder.
        rel: ``(N,)`` bytes array of paths relative to ``root`` (UTF-8, surrogate-escaped).
        labels: ``(N,)`` int64 class indices, or ``None``.
        classes: Class names, or ``None``.
        n_train: Files of the folder's own train split come first: how many (``None`` = no given split).
        position: ``(N,)`` int64 position of each file in the full listing (for the given split).
        nbytes: ``(N,)`` int64 file sizes.
        width: ``(N,)`` int32 stored widths.
        height: ``(N,)`` int32 stored heights.
        gray: ``(N,)`` bool, the file is single-channel.
        bad: ``(path, reason)`` of files that could not be opened.
        cached: The index was loaded from the cache.
        key: The listing key it is cached under (empty when it was not cached).
        unused: What the folder's layout does not read, from the listing of this run (never cached).
        empty_classes: Class folders of the listing whose every file failed to open: not classes
            of the index (as a class folder with no image file), named in a warning (never cached).
    """

    root: Path
    rel: np.ndarray
    labels: np.ndarray | None
    classes: list[str] | None
    n_train: int | None
    position: np.ndarray
    nbytes: np.ndarray
    width: np.ndarray
    height: np.ndarray
    gray: np.ndarray
    bad: list[tuple[str, str]]
    cached: bool = False
    key: str = ""
    unused: Unused = field(default_factory=Unused)
    empty_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.rel.shape[0])

    def path(self, i: int) -> str:
        return os.path.join(str(self.root), self.rel[i].decode("utf-8", "surrogateescape"))

    @property
    def channels(self) -> int:
        """1 when every usable file is single-channel, else 3."""
        return 1 if len(self.gray) and bool(self.gray.all()) else 3


def listing_key(root: Path, layout: FolderLayout, max_pixels: int | None) -> str:
    """SHA-256 of the folder's listing: every path, size and modification time (and the pixel cap)."""
    h = hashlib.sha256(f"{INDEX_VERSION}\0{root.resolve()}\0{max_pixels}\0{layout.n_train}\0{layout.classes}\0".encode())
    for p, s, m in zip(layout.paths, layout.sizes, layout.mtimes):
        h.update(os.fsencode(p))
        h.update(f"\0{s}\0{m}\n".encode())
    return h.hexdigest()[:32]


def _encode_rel(root: Path, paths: list[Path]) -> np.ndarray:
    base = len(os.fsencode(root)) + 1
    return np.array([os.fsencode(p)[base:] for p in paths], dtype=np.bytes_)


def build_index(root: Path, layout: FolderLayout, max_pixels: int | None, workers: int | None = None, progress: bool = True) -> FileIndex:
    """Read every file's header (parallel threads, no decoding) and keep the usable ones.

    A long scan shows its progress on stderr (:class:`~ssl_toolkit.pass_progress.PassProgress`) unless ``progress`` is false.
    """
    from ssl_toolkit.pass_progress import PassProgress

    keep: list[int] = []
    width: list[int] = []
    height: list[int] = []
    gray: list[bool] = []
    bad = list(layout.bad)
    shown = PassProgress(len(layout.paths), "reading image headers (index)") if progress else None
    try:
        for i, rec in enumerate(scan_files(layout.paths, decode=False, workers=workers, max_pixels=max_pixels)):
            if shown is not None:
                shown.update(1)
            if rec.ok:
                keep.append(i)
                width.append(rec.width)
                height.append(rec.height)
                gray.append(rec.mode in SINGLE_CHANNEL_MODES)
            else:
                bad.append((str(rec.path), rec.error or "unreadable"))
    finally:
        if shown is not None:
            shown.close()

    kept = np.asarray(keep, dtype=np.int64)
    labels, classes = None if layout.labels is None else np.asarray(layout.labels, np.int64)[kept], layout.classes
    if labels is not None and classes and len(present := np.unique(labels)) < len(classes):  # a class none of whose files opens
        renumber = np.full(len(classes), -1, np.int64)
        renumber[present] = np.arange(len(present))
        labels, classes = renumber[labels], [classes[i] for i in present]
    return FileIndex(
        root=root,
        rel=_encode_rel(root, [layout.paths[i] for i in keep]),
        labels=labels,
        classes=classes,
        n_train=layout.n_train,
        position=kept,
        nbytes=np.asarray(layout.sizes, np.int64)[kept] if layout.sizes else np.zeros(len(kept), np.int64),
        width=np.asarray(width, np.int32),
        height=np.asarray(height, np.int32),
        gray=np.asarray(gray, bool),
        bad=bad,
        unused=layout.unused,
    )


ARRAYS = ("rel", "position", "nbytes", "width", "height", "gray")


def save_index(index: FileIndex, path: Path) -> None:
    """Write the index as one ``.npz`` (arrays + a JSON member), atomically; failures are ignored (it is a cache)."""
    from ssl_toolkit.atomic import atomic_write_bytes

    meta = IndexMeta(version=INDEX_VERSION, root=str(index.root), classes=index.classes, n_train=index.n_train, bad=index.bad, n=len(index))
    import io

    buf = io.BytesIO()
    arrays = {k: getattr(index, k) for k in ARRAYS}
    if index.labels is not None:
        arrays["labels"] = index.labels
    text = json.dumps(meta.model_dump())  # \u escapes: a path that is not UTF-8 (listed in bad) round-trips
    np.savez(buf, meta=np.frombuffer(text.encode(), np.uint8), **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass


def load_index(path: Path, root: Path) -> FileIndex | None:
    """A cached index, or ``None`` when missing, unreadable or inconsistent (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = IndexMeta.model_validate(json.loads(z["meta"].tobytes().decode()))
            arrays = {k: z[k] for k in ARRAYS}
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, EOFError, ValueError, KeyError, ValidationError, zipfile.BadZipFile, json.JSONDecodeError):
        return None
    n = meta.n
    if meta.version != INDEX_VERSION or any(a.shape != (n,) for a in arrays.values()) or (labels is not None and labels.shape != (n,)):
        return None
    if arrays["rel"].dtype.kind != "S" or (labels is not None and labels.dtype != np.int64):
        return None
    if meta.n_train is not None and not 0 <= meta.n_train <= n:
        return None
    if labels is not None and n and not 0 <= labels.min() <= labels.max() < len(meta.classes or ()):
        return None
    bad = [(str(b[0]), str(b[1])) for b in meta.bad]
    return FileIndex(root=root, labels=labels, classes=meta.classes, n_train=meta.n_train, bad=bad, cached=True, **arrays)


def folder_index(root: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, use_cache: bool = True, progress: bool = True) -> FileIndex:
    """The index of ``root``: from the cache when the listing is unchanged, else built (its progress shown unless ``progress`` is false) and cached."""
    layout = folder_layout(root)
    path = cache_dir("index") / f"{listing_key(root, layout, max_pixels)}.npz"
    index = load_index(path, root) if use_cache else None
    if index is not None:
        index.key, index.unused = path.stem, layout.unused
    else:
        index = build_index(root, layout, max_pixels, progress=progress)
        if use_cache:
            save_index(index, path)
            index.key = path.stem
    index.empty_classes = [c for c in layout.classes or [] if c not in (index.classes or [])]
    return index


class CachedStats(BaseModel):
    """Normalisation statistics of a streamed folder's sample, cached next to its index (validated on read)."""

    model_config = ConfigDict(extra="forbid")

    version: int
    mean: list[Annotated[float, Field(ge=0.0, le=1.0)]]  # of pixels on the [0, 1] scale
    std: list[Annotated[float, Field(ge=1e-3, le=1.0)]]  # channel_stats clamps at 1e-3


def stats_path(index: FileIndex, rows: np.ndarray, channels: int, size: int, max_pixels: int | None) -> Path | None:
    """Where the statistics of ``rows`` decoded at ``channels`` x ``size`` are cached (``None``: the index is not cached)."""
    if not index.key:
        return None
    h = hashlib.sha256(f"{STATS_VERSION}\0{DECODE_VERSION}\0{index.key}\0{channels}\0{size}\0{max_pixels}\0".encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return cache_dir("index") / f"{index.key}.stats-{h.hexdigest()[:16]}.json"


def load_stats(path: Path | None, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Cached ``(mean, std)``, or ``None`` when missing, unreadable or not ``channels`` finite positive-std values."""
    if path is None or not path.is_file():
        return None
    try:
        entry = CachedStats.model_validate_json(path.read_bytes())
    except (OSError, ValueError, ValidationError):
        return None
    values = entry.mean + entry.std
    if entry.version != STATS_VERSION or len(entry.mean) != channels or len(entry.std) != channels:
        return None
    if not all(math.isfinite(v) for v in values) or min(entry.std) <= 0:
        return None
    return tuple(entry.mean), tuple(entry.std)


def save_stats(path: Path | None, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Cache ``(mean, std)`` at ``path``, atomically; failures are ignored (it is a cache)."""
    if path is None:
        return
    from ssl_toolkit.atomic import atomic_write_text

    try:
        atomic_write_text(path, CachedStats(version=STATS_VERSION, mean=list(mean), std=list(std)).model_dump_json())
    except OSError:
        pass
