"""Facts about image files: header, one full decode, and why a file fails.

:func:`scan_file` opens a file once (through :mod:`ssl_toolkit.data.images`),
records its header (format, mode, size, bytes), decodes every pixel (so truncated files
fail here, not later in training) and turns it upright (its EXIF orientation, so the size
recorded is the size as displayed), and optionally converts the image to the toolkit's
square ``uint8`` array and/or hands the decoded image to a ``visit`` callback. The array
has the pixels every data path reads (:func:`ssl_toolkit.data.images.cut_crops`): a large
JPEG's comes from libjpeg's reduced-scale decode, also when ``visit`` needed the full one.
A file that cannot be read becomes a :class:`FileScan` with ``error`` set to a one-line
reason (:func:`failure_reason`) instead of an exception.

:func:`scan_files` does this in parallel threads, streaming results back in input
order in bounded chunks, with an optional progress callback. :func:`scan_bytes` reads
encoded bytes held elsewhere (a shard's items) the same way.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from ssl_toolkit.data.images import (
    DEFAULT_MAX_PIXELS,
    HIGH_DEPTH_MODES,
    READ_ERRORS,
    center_square,
    cut_crops,
    draft_scale,
    failure_reason,
    open_image,
    to_8bit,
    to_array,
    upright,
    upright_size,
)

__all__ = ["HIGH_DEPTH_MODES", "READ_ERRORS", "FileScan", "failure_reason", "scan_bytes", "scan_file", "scan_files", "to_8bit"]

Progress = Callable[[int, int], None]  # (files done, files total)


@dataclass
class FileScan:
    """What reading one file found.

    Attributes:
        path: The file (or, for bytes held elsewhere, the name they were scanned under).
        bytes: File size on disk (or of the bytes).
        format: PIL format name (``PNG``, ``JPEG``, ...) or ``None`` when unrecognised.
        mode: PIL mode of the stored image (``L``, ``RGB``, ``P``, ``I;16``, ...).
        width: Width in pixels as displayed (EXIF orientation applied) when the file was
            decoded; as stored when only the header was read (``decode=False``).
        height: Height in pixels, likewise.
        error: Why the file cannot be used, or ``None``.
        array: ``(C, S, S)`` uint8 toolkit array when a size was asked for.
        extra: Whatever the ``visit`` callback returned.
    """

    path: Path | str
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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> FileScan:
    """Read one file; never raises for a bad image (the reason goes to ``FileScan.error``).

    Args:
        path: Image file.
        size: When given, also convert to the toolkit's ``(channels, size, size)`` array.
        channels: 1 or 3, with ``size``.
        visit: Called with the decoded image; its result is stored in ``FileScan.extra``.
        decode: ``False`` reads the header only (fast; truncated pixel data goes unnoticed).
        max_pixels: Files above this many pixels are unreadable (``data.max_pixels``).
    """
    rec = FileScan(Path(path))
    try:
        st = Path(path).stat()
        if not stat.S_ISREG(st.st_mode):
            rec.error = "not a regular file"
            return rec
        rec.bytes = st.st_size
        if rec.bytes == 0:
            rec.error = "empty file"
            return rec
        _read(rec, Path(path), size, channels, visit, decode, max_pixels)
    except READ_ERRORS as e:
        rec.error = failure_reason(e)
        rec.extra = rec.array = None
    return rec


def scan_bytes(
    name: str,
    data: bytes,
    size: int | None = None,
    channels: int | None = None,
    visit: Callable[[Image.Image], Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> FileScan:
    """:func:`scan_file` on a file's encoded bytes held elsewhere (a shard item); ``name`` says which."""
    rec = FileScan(name, bytes=len(data))
    if not data:
        rec.error = "empty file"
        return rec
    try:
        _read(rec, io.BytesIO(data), size, channels, visit, True, max_pixels)
    except READ_ERRORS as e:
        rec.error = failure_reason(e)
        rec.extra = rec.array = None
    return rec


def _read(rec: FileScan, source: Path | IO[bytes], size, channels, visit, decode: bool, max_pixels: int | None) -> None:
    with open_image(source, max_pixels) as im:
        rec.format, rec.mode, (rec.width, rec.height) = im.format, im.mode, im.size
        if not decode:
            return
        if visit is None and size is not None:  # the toolkit's array only: cut as a streamed file's is (JPEG draft included)
            if im.format != "JPEG":
                im.load()  # a PNG's orientation may follow its pixels; a JPEG's is in its header, and a draft shrinks im.size
            rec.width, rec.height = upright_size(im)
            rec.array = cut_crops(im, channels or 3, size, lambda w, h: [center_square(w, h)])[0]
            return
        im.load()
        jpeg = im.format == "JPEG"
        im = upright(im)
        rec.width, rec.height = im.size
        if visit is not None:
            rec.extra = visit(im)
        if size is not None and jpeg and draft_scale([center_square(*im.size)], size) >= 2:
            rec.array = _reduced_decode(source, size, channels or 3, max_pixels)  # the pixels the toolkit's array has
        elif size is not None:
            rec.array = to_array(im, size, channels or 3)


def _reduced_decode(source: Path | IO[bytes], size: int, channels: int, max_pixels: int | None) -> np.ndarray:
    """A JPEG's ``(C, S, S)`` array as :func:`cut_crops` makes it (libjpeg's reduced-scale decode), after a full one."""
    if not isinstance(source, Path):
        source.seek(0)
    with open_image(source, max_pixels) as again:
        return cut_crops(again, channels, size, lambda w, h: [center_square(w, h)])[0]


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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[FileScan]:
    """:func:`scan_file` over ``paths`` in parallel threads; results stream back in input order.

    At most ``chunk`` files are in flight, so memory stays bounded however many files there are.
    """
    paths = list(paths)
    total, done = len(paths), 0
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as ex:
        for start in range(0, total, chunk):
            part = paths[start : start + chunk]
            yield from ex.map(lambda p: scan_file(p, size, channels, visit, decode, max_pixels), part)
            done += len(part)
            if progress is not None:
                progress(done, total)
