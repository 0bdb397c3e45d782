"""Splits that stream from image files: decoding in DataLoader workers, crops from the original.

A :class:`FileSplit` is some rows of a :class:`~ssl_toolkit.data.index.FileIndex`. It holds
no pixels: :class:`CropDataset` decodes a file in a worker process and cuts the crops a
task asked for (:class:`~ssl_toolkit.data.stage.WorkerStage`) from the original photo,
through :func:`~ssl_toolkit.data.images.decode_crops` (reduced-size JPEG decoding when the
crop is much larger than its target). Evaluation reads the centre square at the split's
size, the same view in-memory sources hold.

A file that cannot be decoded during training is replaced in its batch by the next
readable file, named in one warning line and appended to the run's ``skipped.txt`` once,
whichever worker (of whichever rank) meets it first and however often it is met; with
``strict`` the first such file stops the run (:class:`BadImageError`). A split knows the
log its loader writes to, so :meth:`FileSplit.readable` (the ``n_train`` / ``n_test`` of
``meta.json``) leaves those files out.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_toolkit.data.base import RowIds
from ssl_toolkit.data.images import READ_ERRORS, Box, TooLarge, center_square, decode_crops, failure_reason, random_resized_box
from ssl_toolkit.data.index import FileIndex
from ssl_toolkit.data.layout import shown
from ssl_toolkit.data.skip_list import absolute, listed_names, skip_line
from ssl_toolkit.data.stage import CENTER, WorkerStage
from ssl_toolkit.errors import UserError, WorkerUserError
from ssl_toolkit.terminal import terminal_safe

MAX_REPLACEMENTS = 16  # readable files tried in place of a bad one before giving up


class BadImageError(WorkerUserError):
    """A file could not be decoded, in training under ``strict`` or in evaluation (one line, also from a worker)."""


def default_workers() -> int:
    """DataLoader workers for decoding: one core is left to the training process, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def listed_files(path: Path | None) -> set[bytes]:
    """The files (as bytes) named in a ``skipped.txt``; empty when there is none."""
    if path is None or not path.is_file():
        return set()
    return set(listed_names(path.read_bytes()))


@dataclass
class SkipLog:
    """Where workers append files that went bad mid-run (``path<TAB>reason`` lines), and whether to stop instead.

    Each file is listed once: a worker checks the log and appends under an exclusive
    ``flock``, so workers of every process agree, and remembers what it has seen.
    """

    path: Path | None = None
    strict: bool = False
    replace: bool = True  # False in evaluation: features of another file under this one's row would be wrong
    seen: set[str] = field(default_factory=set, repr=False)

    def record(self, file: str, reason: str) -> None:
        if self.strict:
            raise BadImageError(f"unreadable image file during training (--strict): {terminal_safe(shown(file))}: {terminal_safe(reason)}")
        if not self.replace:
            raise BadImageError(
                f"cannot decode {terminal_safe(shown(file))} ({terminal_safe(reason)}), found only when read (the folder index checks headers): "
                "evaluation reads every image of the split, so remove or repair it"
            )
        if file in self.seen:
            return
        self.seen.add(file)
        if self.path is not None and not _append_once(self.path, file, reason):
            return  # another worker listed it (and said so) first
        where = f"; listed in {self.path}" if self.path is not None else ""
        print(
            f"warning: cannot decode {terminal_safe(shown(file))} ({terminal_safe(reason)}): the next readable file is used in its place{where}",
            file=sys.stderr,
            flush=True,
        )


def _append_once(path: Path, file: str, reason: str) -> bool:
    """Append ``file<TAB>reason`` to the log at ``path`` unless it names ``file`` already; whether it was appended."""
    name = absolute(file.encode("utf-8", "surrogateescape"))
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # check and append as one step, across processes (released on close)
        if name in listed_names(_read_all(fd)):
            return False
        os.write(fd, skip_line(name, reason))
        return True
    finally:
        os.close(fd)


class FileSplit:
    """Rows of a folder index, decoded on demand.

    Args:
        index: The folder's index.
        rows: ``(N,)`` int64 rows of ``index`` in this split.
        channels: 1 or 3 (the folder's colour decision).
        size: Side of the square images handed over.
        max_pixels: The pixel cap of ``data.max_pixels``.
    """

    streaming = True

    def __init__(self, index: FileIndex, rows: np.ndarray, channels: int, size: int, max_pixels: int | None) -> None:
        self.index = index
        self.rows = np.asarray(rows, dtype=np.int64)
        self._channels = channels
        self._size = size
        self.max_pixels = max_pixels
        self.labels = None if index.labels is None else torch.from_numpy(index.labels[self.rows])
        self.ids = RowIds(index.path, self.rows)
        self.skip_log: Path | None = None  # the run's skipped.txt, once a loader records into it (split_loader)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def readable(self) -> int:
        """Files of the split, less those its run listed in ``skip_log`` as gone bad (all of them without a log)."""
        root = absolute(str(self.index.root)) + os.sep.encode()
        gone = [p[len(root) :] for p in listed_files(self.skip_log) if p.startswith(root)]
        if not gone:
            return len(self)
        return len(self) - int(np.isin(self.index.rel[self.rows], np.array(gone, dtype=np.bytes_)).sum())

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def size(self) -> int:
        return self._size

    def path(self, i: int) -> str:
        return self.index.path(int(self.rows[i]))

    def decode(self, i: int, stage: WorkerStage = CENTER, rng: np.random.Generator | None = None) -> np.ndarray:
        """``(V, C, S, S)`` uint8 crops of image ``i`` (raises the reader's errors)."""

        def boxes(w: int, h: int) -> list[Box]:
            out = []
            for crop in stage.crops:
                if crop.kind == "center" or rng is None:
                    out.append(center_square(w, h))
                else:
                    out.append(random_resized_box(w, h, crop.scale, crop.ratio, rng))
            return out

        return decode_crops(self.path(i), self._channels, self._size, boxes, self.max_pixels)

    def image(self, i: int) -> torch.Tensor:
        try:
            return torch.from_numpy(self.decode(i)[0])
        except READ_ERRORS as e:
            raise UserError(f"cannot decode {self.path(i)}: {failure_reason(e)}") from None

    def batches(self, batch_size: int, workers: int | None = None) -> Iterator[torch.Tensor]:
        loader = DataLoader(
            CropDataset(self, CENTER, SkipLog(replace=False)),  # each row's features are its own file's
            batch_size=batch_size,
            shuffle=False,
            num_workers=default_workers() if workers is None else workers,
            collate_fn=_stack_images,
        )
        yield from loader

    def sample_rows(self, n: int, seed: int = 0) -> np.ndarray:
        """Positions in this split of ``min(n, N)`` seeded random files, sorted (what :meth:`sample` decodes)."""
        return np.sort(np.random.default_rng(seed).permutation(len(self))[: min(n, len(self))])

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Centre crops of ``min(n, N)`` seeded random files, decoded in threads (unreadable ones left out)."""
        rows = self.sample_rows(n, seed)

        def one(i: int) -> np.ndarray | None:
            try:
                return self.decode(int(i))[0]
            except READ_ERRORS:
                return None

        with ThreadPoolExecutor(max_workers=max(2, default_workers())) as ex:
            arrays = [a for a in ex.map(one, rows) if a is not None]
        if not arrays:
            return torch.zeros(0, self._channels, self._size, self._size, dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    def subset(self, index: torch.Tensor) -> FileSplit:
        return FileSplit(self.index, self.rows[index.numpy()], self._channels, self._size, self.max_pixels)


def _stack_images(items: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.stack([x for x, _ in items])


class CropDataset(Dataset):
    """Items ``(crops, label)`` of a :class:`FileSplit`, decoded in the worker that asks for them.

    ``crops`` is ``(C, S, S)`` uint8 for a one-view stage and ``(V, C, S, S)`` otherwise;
    ``label`` is the class index, the multi-hot row, or ``-1`` when unlabelled. Random crops
    draw from a generator seeded per worker process (Lightning seeds each worker).
    """

    def __init__(self, split: FileSplit, stage: WorkerStage, skip: SkipLog) -> None:
        self.split = split
        self.stage = stage
        self.skip = skip
        self.random = any(c.kind != "center" for c in stage.crops)
        self._rng: np.random.Generator | None = None
        self._rng_pid = -1
        self._bad: set[int] = set()  # items this process failed to decode: not tried again

    def __len__(self) -> int:
        return len(self.split)

    def rng(self) -> np.random.Generator:
        if self._rng is None or self._rng_pid != os.getpid():
            self._rng = np.random.default_rng(torch.initial_seed() % 2**63)
            self._rng_pid = os.getpid()
        return self._rng

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.split)
        for k in range(MAX_REPLACEMENTS):
            j = (int(i) + k) % n
            if j in self._bad:
                continue
            try:
                crops = self.split.decode(j, self.stage, self.rng() if self.random else None)
            except READ_ERRORS as e:
                reason = "above data.max_pixels" if isinstance(e, TooLarge) else failure_reason(e)
                self.skip.record(self.split.path(j), reason)
                self._bad.add(j)
                continue
            x = torch.from_numpy(crops if self.stage.views > 1 else crops[0])
            labels = self.split.labels
            y = torch.tensor(-1) if labels is None else labels[j]
            return x, y
        raise UserError(f"{MAX_REPLACEMENTS} unreadable image files in a row near {self.split.path(int(i))}; see skipped.txt")
