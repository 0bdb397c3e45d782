"""DataLoaders over any split: in-memory tensors, or files decoded in worker processes.

Training order depends on (seed, epoch) only (:class:`EpochShuffleSampler`), so a resumed
run sees the same order; Lightning shards the sampler across processes under DDP. In-memory
items are indexed in the main process (0 workers is fastest there); file items are decoded
by ``default_workers()`` persistent workers, with pinned memory when training on a GPU.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssl_toolkit.data.base import Split
from ssl_toolkit.data.stage import CENTER, WorkerStage
from ssl_toolkit.data.stream import CropDataset, FileSplit, SkipLog, default_workers


class ImageTensorDataset(Dataset):
    """``(N, C, S, S)`` uint8 images with labels (``-1`` where unknown); items stay uint8 until on the device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.images = images
        self.labels = labels if labels is not None else torch.full((images.shape[0],), -1, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on (seed, epoch), so a resumed run sees the same data order.

    Lightning calls :meth:`set_epoch` at every epoch (and shards it across processes under DDP).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _SkipFirst:
    """The batches of ``inner`` (a batch sampler) from the loader's ``_skip``-th on: indices only, nothing is loaded for the others.

    The skip is read when iterated: a DataLoader iterates its index sampler more than once
    when it starts its iterator, and a DataLoader with persistent workers keeps this object
    for every later epoch, by when the loader's skip is back to 0.
    """

    def __init__(self, loader: ResumableLoader, inner: Any) -> None:
        # a weak reference: the loader's iterator holds this object, and a cycle would keep a
        # dropped loader's persistent workers alive until the garbage collector runs
        self.loader, self.inner = weakref.ref(loader), inner

    def _skip(self) -> int:
        loader = self.loader()
        return loader._skip if loader is not None else 0

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.inner), self._skip(), None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self._skip())


class ResumableLoader(DataLoader):
    """The training loader of folders and in-memory data, resumable mid-epoch.

    Its state is the number of batches of the current epoch handed to training. Lightning
    saves :meth:`state_dict` in ``last.ckpt`` and gives it back on resume; the first epoch
    iterated after :meth:`load_state_dict` (the epoch the checkpoint was cut in) then starts
    at that batch of the same (seed, epoch) order, the trained batches skipped by index.
    A state saved at an epoch's end skips nothing. Under DDP each rank skips as many of its
    own batches (the ranks step together).
    """

    _handed = 0  # batches of the current epoch handed over
    _skip = 0  # batches the next epoch iterated starts after

    @property
    def _index_sampler(self) -> Any:
        return _SkipFirst(self, super()._index_sampler)

    def __len__(self) -> int:
        skip, self._skip = self._skip, 0  # the epoch's length, whatever a resume skips of it
        try:
            return super().__len__()
        finally:
            self._skip = skip

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator over the DataLoader's iterator
        skipped = self._skip
        batches = super().__iter__()  # its index sampler starts after the skipped batches
        self._skip, self._handed = 0, skipped
        for batch in batches:
            self._handed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        # before the resumed epoch is iterated (a save as the resume starts) its place is the skip
        return {"batches": int(self._skip or self._handed), "length": len(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        batches, length = state.get("batches"), state.get("length")
        if not isinstance(batches, int) or not isinstance(length, int) or length != len(self):
            return  # not this loader's state (other data): the epoch starts at its beginning
        self._skip = batches if 0 < batches < length else 0

    def rewind_to(self, trained: int) -> int:
        """Count only the first ``trained`` batches of this epoch as handed over (a step cut short by Ctrl-C)."""
        taken = self._handed - max(0, trained)
        if taken <= 0:
            return 0
        self._handed -= taken
        return taken


def split_loader(
    split: Any,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    stage: WorkerStage = CENTER,
    workers: int | None = None,
    skip: SkipLog | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader of ``(images, labels)`` batches over ``split``.

    Args:
        split: In-memory or file split.
        batch_size: Images per batch (capped at the split's length).
        shuffle: Shuffle by (seed, epoch) and drop the last partial batch (training).
        seed: Seed of the order.
        stage: What file workers hand over (ignored for in-memory splits, which hold centre squares).
        workers: Worker processes (``None``: 0 in memory, :func:`default_workers` for files).
        skip: Where files that go bad are recorded (files only).
        pin_memory: Pin batches for non-blocking copies to a GPU (files only).
    """
    if shuffle and hasattr(split, "train_loader"):  # shards: litdata's DDP-aware loader, resumable mid-epoch
        loader = split.train_loader(batch_size, seed, stage, default_workers() if workers is None else workers, pin_memory)
        if loader is not None:
            return loader
    if not isinstance(split, Split):  # files or shards, decoded by workers
        ds: Dataset = CropDataset(split, stage, skip or SkipLog())
        if isinstance(split, FileSplit) and skip is not None and skip.path is not None:
            split.skip_log = skip.path  # its readable() leaves out what goes bad in this run
        n_workers = default_workers() if workers is None else workers
    else:
        ds = ImageTensorDataset(split.images, split.labels)
        n_workers = workers or 0
    n = len(ds)  # type: ignore[arg-type]
    return (ResumableLoader if shuffle else DataLoader)(
        ds,
        batch_size=max(1, min(batch_size, n)),
        sampler=EpochShuffleSampler(n, seed) if shuffle else None,
        drop_last=shuffle and n > batch_size,
        num_workers=n_workers,
        persistent_workers=n_workers > 0 and shuffle,
        pin_memory=pin_memory and n_workers > 0,
        prefetch_factor=4 if n_workers > 0 else None,
    )


def shared_by(loader: Any, processes: int) -> Any:
    """The training loader as each of ``processes`` DDP processes draws it (Lightning shards its sampler).

    A batch larger than one process's share of the images is cut to that share, as one
    process's batch is cut to the whole split: one batch per process and epoch, where the
    batch kept whole and its last partial batch dropped would give no step at all.
    Shards' loaders (litdata) split the chunks per process themselves and are returned as given.
    """
    if not isinstance(loader, ResumableLoader) or processes <= 1:
        return loader
    share = -(-len(loader.dataset) // processes)  # type: ignore[arg-type]  # Lightning's sampler pads to equal shares
    if loader.batch_size is None or loader.batch_size <= share:
        return loader
    return ResumableLoader(
        loader.dataset,
        batch_size=max(1, share),
        sampler=loader.sampler,
        drop_last=False,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        prefetch_factor=loader.prefetch_factor,
    )


def make_loader(
    images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    """:func:`split_loader` over bare ``(N, C, S, S)`` uint8 tensors (benchmarks, tests)."""
    return split_loader(Split(images, labels, []), batch_size, shuffle, seed=seed, workers=num_workers)
