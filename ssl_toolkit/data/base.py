"""What every data source yields, and the registry of named sources.

A :class:`DataSource` is a train and a test split plus class names and per-channel
normalisation statistics. A split is either a :class:`Split` (``(N, C, S, S)`` uint8
images in memory: the built-in sets and folders that fit) or a
:class:`~ssl_toolkit.data.stream.FileSplit` (files decoded by DataLoader workers). Both
answer the same questions: length, labels, ids, one image, images in order in batches, a
seeded sample. Sources know nothing about pretext tasks or models.

A new source is one module with one decorator::

    @register_source("mydata")
    def mydata(cfg: DataConfig) -> DataSource: ...
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ssl_toolkit.config import DataConfig
from ssl_toolkit.errors import UserError
from ssl_toolkit.registry import Registry
from ssl_toolkit.terminal import terminal_safe


class RowIds(Sequence[str]):
    """The ids of some rows, each made by ``name(row)`` on access (a list-like view; no per-image strings held).

    Args:
        name: The id of one row; picklable (a bound method or a module-level callable), so
            that DataLoader workers can take the view.
        rows: ``(N,)`` int64 rows.
    """

    def __init__(self, name: Callable[[int], str], rows: np.ndarray) -> None:
        self.name, self.rows = name, rows

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self.name(int(r)) for r in self.rows[i]]
        return self.name(int(self.rows[i]))

    def __iter__(self) -> Iterator[str]:
        return (self.name(int(r)) for r in self.rows)


@runtime_checkable
class ImageSplit(Protocol):
    """The questions every split answers (in memory or streamed from files)."""

    labels: torch.Tensor | None
    ids: list[str]
    streaming: bool

    def __len__(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def size(self) -> int: ...

    def image(self, i: int) -> torch.Tensor:
        """``(C, S, S)`` uint8 image ``i``."""
        ...

    def batches(self, batch_size: int, workers: int | None = None) -> Iterator[torch.Tensor]:
        """Every image in order, as ``(B, C, S, S)`` uint8 batches."""
        ...

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``(min(n, N), C, S, S)`` uint8 images drawn without replacement (seeded)."""
        ...

    def subset(self, index: torch.Tensor) -> ImageSplit: ...


@dataclass
class Split:
    """One split held in memory.

    Attributes:
        images: ``(N, C, S, S)`` uint8 tensor.
        labels: ``(N,)`` int64 class indices, ``(N, K)`` uint8 multi-hot labels, or ``None``.
        ids: One identifier per image (file path, ``name:split:index``, or ``digits:index``).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    ids: list[str]
    streaming: bool = False

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def image(self, i: int) -> torch.Tensor:
        return self.images[i]

    def batches(self, batch_size: int, workers: int | None = None) -> Iterator[torch.Tensor]:
        yield from self.images.split(batch_size)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        if n >= len(self):
            return self.images
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return self.images[idx]

    def subset(self, index: torch.Tensor) -> Split:
        """Return the images at ``index`` (a 1-D long tensor) as a new split."""
        labels = None if self.labels is None else self.labels[index]
        return Split(self.images[index], labels, [self.ids[i] for i in index.tolist()])


@dataclass
class DataSource:
    """A dataset made of a train and a test split of equally sized square images."""

    name: str
    train: Any  # Split | FileSplit (ImageSplit)
    test: Any
    classes: list[str] | None
    grayscale_origin: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    location: str | None = None  # the folder a named dataset was read from (its name is not a path)
    content: str = ""  # what changes when the files read change (see files_key); part of the feature cache key

    def __post_init__(self) -> None:
        from ssl_toolkit.data.source_check import check_source

        check_source(self.name, self.train, self.test, self.classes)
        if not self.mean:
            self.mean, self.std = channel_stats(self.train.sample(4096, seed=0) if self.train.streaming else self.train.images)

    @property
    def streaming(self) -> bool:
        return bool(self.train.streaming)

    @property
    def channels(self) -> int:
        return int(self.train.channels)

    @property
    def image_size(self) -> int:
        return int(self.train.size)

    @property
    def labelled(self) -> bool:
        return self.train.labels is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    @property
    def target_kind(self) -> str:
        """``none``, ``multiclass``, ``binary`` (single-label, two classes) or ``multilabel``."""
        if self.train.labels is None:
            return "none"
        if self.train.labels.dim() == 2:
            return "multilabel"
        return "binary" if self.num_classes == 2 else "multiclass"

    def unreadable_names(self) -> str:
        """The first three unreadable files, for warnings and errors (``cat/a.png, dog/a.png, ...``).

        Each is named by its path under the source's folder (two classes may hold files of
        one name), or in full when it lies elsewhere.
        """

        def shown(p: str) -> str:
            for root in (Path(self.name), Path(self.name).absolute()):
                try:
                    return str(Path(p).relative_to(root))
                except ValueError:
                    continue
            return p

        return ", ".join(terminal_safe(shown(p)) for p, _ in self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")

    def refuse_unreadable(self) -> None:
        """Raise the ``--strict`` :class:`UserError` when files were found unreadable (every command words it alike)."""
        if self.skipped:
            raise UserError(f"{len(self.skipped)} unreadable image file(s) in {self.name} (--strict): {self.unreadable_names()}")

    def describe(self) -> dict:
        """A JSON-able summary: name, (its folder), channels, image size, classes, split sizes, statistics."""
        return {
            "name": self.name,
            **({"path": self.location} if self.location else {}),
            "channels": self.channels,
            "image_size": self.image_size,
            "classes": self.classes,
            "num_classes": self.num_classes,
            "streaming": self.streaming,
            "n_train": readable_count(self.train),
            "n_test": readable_count(self.test),
            "mean": list(self.mean),
            "std": list(self.std),
        }


def files_key(paths: Iterable[Path | str]) -> str:
    """SHA-256 (32 hex digits) of each file's path, size and modification time: it changes when a file is rewritten."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(os.fsencode(p))
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def require_training(name: str, n_train: int, n_test: int, test_fraction: float | None) -> None:
    """Refuse a split without training images (``data.test_fraction`` can round every class into test).

    ``test_fraction`` is ``None`` for a source that splits its data itself (a plugin's).
    """
    if n_train == 0:
        cause = (
            "the data source gave none"
            if test_fraction is None
            else f"where the split is made by data.test_fraction={test_fraction}, every class rounds into test: lower it"
        )
        raise UserError(f"no training images in {name} ({n_test} test image(s)); {cause}")


def readable_count(split: Any) -> int:
    """Images of a split that can be read: a streamed split leaves out the files its run found bad (``FileSplit.readable``)."""
    readable = getattr(split, "readable", None)
    return int(readable()) if callable(readable) else len(split)


STATS_CHUNK_VALUES = 1 << 24  # 16M float64 values (128 MiB) per chunk of channel_stats

SourceFactory = Callable[[DataConfig], DataSource]
SOURCES: Registry[SourceFactory] = Registry("dataset")


def register_source(name: str) -> Callable[[SourceFactory], SourceFactory]:
    """Decorator registering a data source factory ``(DataConfig) -> DataSource`` under ``name``."""
    return SOURCES.register(name)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W)`` uint8 images, on the [0, 1] scale.

    Sums run in float64 over chunks of at most ``STATS_CHUNK_VALUES`` values, so memory stays
    bounded whatever the number and size of the images.
    """
    c = images.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    per_image = max(1, images[0].numel()) if len(images) else 1
    for chunk in images.split(max(1, STATS_CHUNK_VALUES // per_image)):
        x = chunk.double().div_(255.0).transpose(0, 1).reshape(c, -1)  # (C, n*H*W)
        s1 += x.sum(dim=1)
        s2 += x.square_().sum(dim=1)
    m = max(1, images.numel() // max(c, 1))
    mean = s1 / m
    std = ((s2 - s1 * s1 / m).clamp_min(0) / max(m - 1, 1)).sqrt().clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` uint8 images to ``size`` x ``size`` (bilinear, antialiased)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for chunk in images.split(4096):  # bounded memory for large sets
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)
