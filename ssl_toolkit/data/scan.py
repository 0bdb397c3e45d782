"""Reading image files: folder layout, header facts, one full decode, and why a file fails.

This is the toolkit's single reader of image files. :func:`scan_file` opens a file once,
records its header (format, mode, size, bytes), decodes every pixel (so truncated files
fail here, not later in training), and optionally converts the image to the toolkit's
square ``uint8`` array (:func:`ssl_toolkit.data.folder.to_array`) and/or hands the decoded
image to a ``visit`` callback. A file that cannot be read becomes a :class:`FileScan`
with ``error`` set to a one-line reason (:func:`failure_reason`) instead of an exception.

:func:`scan_files` does this in parallel threads, streaming results back in input
order in bounded chunks, with an optional progress callback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ssl_toolkit.errors import UserError

READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}

Progress = Callable[[int, int], None]  # (files done, files total)


def failure_reason(e: BaseException) -> str:
    """The first line of an exception's message (or its type name): why a file is unreadable."""
    text = str(e).splitlines()[0].strip() if str(e).strip() else ""
    return text or type(e).__name__


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float single-channel images rescaled to 8-bit ``L``; other images unchanged."""
    if im.mode not in HIGH_DEPTH_MODES:
        return im
    a = np.asarray(im, dtype=np.float32)
    hi = 65535.0 if im.mode.startswith("I;16") or (a.size and a.max() > 255) else 255.0
    return Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8), "L")


@dataclass
class FileScan:
    """What reading one file found.

    Attributes:
        path: The file.
        bytes: File size on disk.
        format: PIL format name (``PNG``, ``JPEG``, ...) or ``None`` when unrecognised.
        mode: PIL mode of the stored image (``L``, ``RGB``, ``P``, ``I;16``, ...).
        width: Stored width in pixels.
        height: Stored height in pixels.
        error: Why the file cannot be used, or ``None``.
        array: ``(C, S, S)`` uint8 toolkit array when a size was asked for.
        extra: Whatever the ``visit`` callback returned.
    """

    path: Path
    bytes: int = 0
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    error: str | None = None
    array: np.ndarray | None = None
    extra: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None


def scan_file(
    path: Path,
    size: int | None = None,
    channels: int | None = None,
    visit: Callable[[Image.Image], Any] | None = None,
    decode: bool = True,
) -> FileScan:
    """Read one file; never raises for a bad image (the reason goes to ``FileScan.error``).

    Args:
        path: Image file.
        size: When given, also convert to the toolkit's ``(channels, size, size)`` array.
        channels: 1 or 3, with ``size``.
        visit: Called with the decoded image; its result is stored in ``FileScan.extra``.
        decode: ``False`` reads the header only (fast; truncated pixel data goes unnoticed).
    """
    rec = FileScan(Path(path))
    try:
        rec.bytes = rec.path.stat().st_size
        if rec.bytes == 0:
            rec.error = "empty file"
            return rec
        with Image.open(rec.path) as im:
            rec.format, rec.mode, (rec.width, rec.height) = im.format, im.mode, im.size
            if not decode:
                return rec
            im.load()
            if visit is not None:
                rec.extra = visit(im)
            if size is not None:
                from ssl_toolkit.data.folder import to_array

                rec.array = to_array(im, size, channels or 3)
    except READ_ERRORS as e:
        rec.error = failure_reason(e)
        rec.extra = rec.array = None
    return rec


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) * 2))


def scan_files(
    paths: Iterable[Path],
    size: int | None = None,
    channels: int | None = None,
    visit: Callable[[Image.Image], Any] | None = None,
    decode: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
    chunk: int = 512,
) -> Iterator[FileScan]:
    """:func:`scan_file` over ``paths`` in parallel threads; results stream back in input order.

    At most ``chunk`` files are in flight, so memory stays bounded however many files there are.
    """
    paths = list(paths)
    total, done = len(paths), 0
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as ex:
        for start in range(0, total, chunk):
            part = paths[start : start + chunk]
            yield from ex.map(lambda p: scan_file(p, size, channels, visit, decode), part)
            done += len(part)
            if progress is not None:
                progress(done, total)


# ---------------------------------------------------------------------------------------
# folder layouts (see ssl_toolkit.data.folder for the list)
# ---------------------------------------------------------------------------------------
@dataclass
class FolderLayout:
    """The files of an image folder before any decoding.

    Attributes:
        paths: Every image file, train files first.
        labels: Class index per file, or ``None`` for unlabelled folders.
        classes: Class names, or ``None``.
        n_train: When the folder has its own train/test split: how many of ``paths`` are train;
            ``None`` when the toolkit splits it (seeded, after dropping unreadable files).
    """

    paths: list[Path]
    labels: list[int] | None
    classes: list[str] | None
    n_train: int | None


def folder_layout(root: Path) -> FolderLayout:
    """Find the splits, classes and image files of ``root`` (layouts in :mod:`ssl_toolkit.data.folder`)."""
    from ssl_toolkit.data.folder import IMAGE_EXTENSIONS, TEST_DIRS, class_dirs, scan_split

    if not root.is_dir():
        raise UserError(f"data path is not a folder: {root}")
    split_dirs = {d.name.lower(): d for d in class_dirs(root)}
    test_dir = next((split_dirs[n] for n in TEST_DIRS if n in split_dirs), None)
    if "train" in split_dirs and test_dir is not None:
        tr_paths, tr_labels, tr_classes = scan_split(split_dirs["train"])
        te_paths, te_labels, te_classes = scan_split(test_dir)
        if (tr_labels is None) != (te_labels is None):
            raise UserError(f"{root}: train/ and {test_dir.name}/ must both have class folders or both have none")
        classes = sorted(set(tr_classes or []) | set(te_classes or [])) if tr_classes else None
        labels = None
        if classes:  # map both splits onto the union of class names
            labels = [classes.index(tr_classes[i]) for i in tr_labels] + [classes.index(te_classes[i]) for i in te_labels]
        layout = FolderLayout(tr_paths + te_paths, labels, classes, len(tr_paths))
    else:
        paths, labels, classes = scan_split(root)
        layout = FolderLayout(paths, labels, classes, None)
    if not layout.paths:
        raise UserError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return layout


def assign_split(n_train: int | None, kept: np.ndarray, labels: np.ndarray | None, test_fraction: float, seed: int) -> np.ndarray:
    """Split of the readable files: ``(len(kept),)`` int8, 0 = train, 1 = test.

    ``kept`` are the readable files' indices into :attr:`FolderLayout.paths`. A folder with its
    own split keeps it; otherwise labelled files get a seeded stratified split and unlabelled
    ones a seeded random split, drawn over the readable files only.
    """
    from ssl_toolkit.data.sources import stratified_split

    n = len(kept)
    split = np.zeros(n, np.int8)
    if n_train is not None:
        split[np.asarray(kept) >= n_train] = 1
    elif labels is not None:
        _, te = stratified_split(labels, test_fraction, seed)
        split[te] = 1
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        split[perm[: int(round(n * test_fraction))].numpy()] = 1
    return split
