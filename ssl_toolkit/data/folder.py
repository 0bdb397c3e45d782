"""Image folders as data sources: in memory when they fit, streamed from disk when not.

Layouts are in :mod:`ssl_toolkit.data.layout`; the cached file index in
:mod:`ssl_toolkit.data.index`. Colour: single-channel data when every file is
single-channel (``L``, ``1``, 16-bit, float), else RGB (:mod:`ssl_toolkit.data.images`).

``data.stream``: ``false`` decodes every file once into ``(N, C, S, S)`` uint8 tensors (the
centre square at ``image_size``; fastest for sets that fit, and every file is verified
before training); ``true`` keeps only the index and decodes in DataLoader workers, cutting
crops from the original photos; ``auto`` streams when the decoded tensors would need more
than 512 MiB or a quarter of the memory available now, whichever is less, and says so.

Images the layout does not read (at the top level next to class folders, in nested
folders) and files of picture types the toolkit does not read are named in a warning
(:class:`~ssl_toolkit.data.layout.Unused`) by every command that loads the folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.base import DataSource, Split, require_training
from ssl_toolkit.data.index import FileIndex, folder_index, load_stats, save_stats, stats_path
from ssl_toolkit.data.layout import assign_split
from ssl_toolkit.data.scan import scan_files
from ssl_toolkit.data.stream import FileSplit
from ssl_toolkit.errors import UserError
from ssl_toolkit.sampling import name_keys
from ssl_toolkit.terminal import terminal_safe
from ssl_toolkit.units import human_size

MEMORY_SHARE = 0.25  # auto streams above this share of the available memory ...
MEMORY_CAP = 512 << 20  # ... or above 512 MiB of decoded images, whichever is less
STATS_SAMPLE = 512  # streamed images decoded to estimate the normalisation statistics


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``; total physical memory where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def choose_streaming(cfg: DataConfig, n: int, channels: int, size: int) -> tuple[bool, str]:
    """``(stream?, one line saying why)`` for ``n`` images of ``channels`` x ``size`` x ``size`` bytes."""
    need = n * channels * size * size
    if cfg.stream == "auto":
        avail = available_memory()
        limit = min(MEMORY_SHARE * avail, MEMORY_CAP)
        stream = need > limit
        why = f"{'over' if stream else 'within'} {human_size(limit)}: the lesser of 512 MiB and a quarter of the {human_size(avail)} available"
    else:
        stream, why = bool(cfg.stream), f"data.stream={str(cfg.stream).lower()}"
    how = "streaming from disk" if stream else "decoding into memory"
    return stream, f"data: {n:,} images, {human_size(need)} decoded at {size} px ({why}): {how}"


UPSCALE_NOTE = 2.0  # say so when the median image's shorter side is this many times below image_size


def upscale_line(index: FileIndex, rows: np.ndarray, size: int) -> str | None:
    """A one-line note when the training images are mostly far smaller than ``size`` (they are upscaled), else ``None``."""
    if not len(rows):
        return None
    short = np.minimum(index.width[rows], index.height[rows])  # (N,) stored shorter sides
    median = int(np.median(short))
    if median * UPSCALE_NOTE >= size:
        return None
    return (
        f"data: the median training image's shorter side is {median} px, upscaled to {size} px "
        f"(set data.image_size to the images' own size to train at it)"
    )


def split_rows(index: FileIndex, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows of the index (the folder's split, else a seeded one), ``cfg.limit`` applied."""
    single = index.labels if index.labels is not None and index.labels.ndim == 1 else None  # multi-label: random split
    by_names = cfg.split_draw == "names"
    keys = name_keys(index.rel, cfg.split_seed, b"test") if by_names and index.n_train is None else None
    split = assign_split(index.n_train, index.position, single, cfg.test_fraction, cfg.split_seed, keys)
    train, test = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    if cfg.limit is not None and cfg.limit < len(train):
        if by_names:  # the limit files of lowest key: a grown folder keeps the subset it had, less those it displaced
            train = np.sort(train[np.argsort(name_keys(index.rel[train], cfg.split_seed, b"limit"), kind="stable")[: cfg.limit]])
        else:
            g = torch.Generator().manual_seed(cfg.split_seed)
            train = train[torch.randperm(len(train), generator=g)[: cfg.limit].sort().values.numpy()]
    return train, test


def in_memory(index: FileIndex, rows: np.ndarray, size: int, channels: int, max_pixels: int | None) -> tuple[Split, list[tuple[str, str]]]:
    """Decode ``rows`` (parallel threads) into a :class:`Split`; files that fail to decode are listed (progress on stderr when long)."""
    from ssl_toolkit.pass_progress import PassProgress

    paths = [Path(index.path(int(r))) for r in rows]
    arrays, kept, skipped = [], [], []
    progress = PassProgress(len(paths), "decoding images (in memory)")
    try:
        for i, rec in enumerate(scan_files(paths, size, channels, max_pixels=max_pixels)):
            progress.update(1)
            if rec.ok and rec.array is not None:
                arrays.append(rec.array)
                kept.append(i)
            else:
                skipped.append((str(rec.path), rec.error or "unreadable"))
    finally:
        progress.close()
    x = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, channels, size, size, dtype=torch.uint8)
    labels = None if index.labels is None else torch.from_numpy(index.labels[rows[kept]])
    return Split(x, labels, [str(paths[i]) for i in kept]), skipped


def empty_classes_line(names: list[str]) -> str:
    """The warning about class folders none of whose files opens (they are left out of the classes)."""
    shown = ", ".join(terminal_safe(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{len(names)} class folder(s) with no readable image, left out of the classes: {shown} (their files are listed as unreadable)"


def with_csv_labels(root: Path, index: FileIndex, explicit: str | None) -> FileIndex:
    """``index`` with the multi-hot labels and classes of its ``labels.csv`` (or ``data.labels``), if any."""
    from dataclasses import replace

    from ssl_toolkit.data.labels_csv import find_labels_csv, read_labels_csv

    csv_path = find_labels_csv(root, explicit)
    if csv_path is None:
        return index
    files = [Path(r.decode("utf-8", "surrogateescape")) for r in index.rel]
    labels, classes = read_labels_csv(root, files, csv_path)
    return replace(index, labels=labels, classes=classes, empty_classes=[])  # the CSV's classes, not the folders'


def streamed_stats(root: Path, train: FileSplit, seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation statistics of ``STATS_SAMPLE`` seeded training files, cached next to the folder's index."""
    path = stats_path(train.index, train.rows[train.sample_rows(STATS_SAMPLE, seed)], train.channels, train.size, train.max_pixels)
    hit = load_stats(path, train.channels)
    if hit is not None:
        return hit
    sample = train.sample(STATS_SAMPLE, seed=seed)
    if len(sample) == 0:
        raise UserError(f"no readable image in {root}: {len(train)} training files were sampled and none could be decoded")
    from ssl_toolkit.data.base import channel_stats

    mean, std = channel_stats(sample)
    save_stats(path, mean, std)
    return mean, std


def load_folder(root: Path, cfg: DataConfig, warn_unused: bool = True) -> DataSource:
    """Build a :class:`DataSource` from an image folder (see the module docstring).

    ``warn_unused=False`` leaves out the warnings about files the layout does not read
    (``ssl inspect`` reports them itself).
    """
    index = folder_index(root, cfg.max_pixels)
    if not len(index):
        raise UserError(f"no readable image in {root} ({len(index.bad)} files, none could be opened)")
    index = with_csv_labels(root, index, cfg.labels)  # labels.csv: multi-hot (N, K) targets
    size, channels = cfg.image_size or 32, index.channels
    train, test = split_rows(index, cfg)
    require_training(str(root), len(train), len(test), cfg.test_fraction)
    stream, line = choose_streaming(cfg, len(train) + len(test), channels, size)
    if os.environ.get("RANK", "0") == "0":
        for warning in index.unused.warnings(root) if warn_unused else []:  # images the layout leaves out, pictures of other types
            print(warning, file=sys.stderr, flush=True)
        if index.empty_classes and warn_unused:
            print(f"warning: {empty_classes_line(index.empty_classes)}", file=sys.stderr, flush=True)
        if cfg.stream == "auto" and stream:  # in memory is the quiet default
            print(line, file=sys.stderr, flush=True)
        note = upscale_line(index, train, size)
        if note is not None:
            print(note, file=sys.stderr, flush=True)
    if stream:
        f_tr, f_te = FileSplit(index, train, channels, size, cfg.max_pixels), FileSplit(index, test, channels, size, cfg.max_pixels)
        mean, std = streamed_stats(root, f_tr, cfg.split_seed)
        return DataSource(str(root), f_tr, f_te, index.classes, channels == 1, list(index.bad), mean, std, content=index.key)
    tr, bad_tr = in_memory(index, train, size, channels, cfg.max_pixels)
    te, bad_te = in_memory(index, test, size, channels, cfg.max_pixels)
    if not len(tr) and not len(te):
        raise UserError(f"no readable image in {root} ({len(index)} files, none could be decoded)")
    return DataSource(str(root), tr, te, index.classes, channels == 1, list(index.bad) + bad_tr + bad_te, content=index.key)
