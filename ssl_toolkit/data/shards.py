"""Shards for many machines: image folders written in Lightning's ``litdata`` streaming format.

``ssl shard FOLDER --out DIR`` writes ``DIR/train`` and ``DIR/test`` with
:func:`litdata.optimize`: chunks of items ``{"image": the file's original encoded bytes,
"label": class index or -1, "index": row}``, plus ``DIR/train/labels.npy`` and
``DIR/train/names.npy`` (each row's file path relative to the folder; the same for test) and
``DIR/ssl_shards.json`` (classes, channels, statistics; validated on read). An image's id
is its original path, as when the folder itself is read (shards written without
``names.npy``: ``DIR:split:row``). A multi-label
folder (``labels.csv``) keeps its multi-hot rows in ``labels.npy`` (``(N, K)`` uint8; items'
``label`` is -1), and the loaders hand them over by row. Keeping the
encoded bytes keeps every crop cut from the original photo, at the size it was taken.

Reading: ``--data DIR`` (or an object-store URL litdata supports, such as ``s3://...``)
streams the training split through :class:`litdata.StreamingDataset` and its
``StreamingDataLoader``. Under DDP each rank reads its own part of the chunks and each
sample is seen once per epoch; the loader's state (epoch, chunks and items consumed) is a
``state_dict`` that Lightning saves in ``last.ckpt``, so ``--resume`` continues mid-epoch
without repeating or skipping samples. Evaluation reads items by index: each writer takes a
contiguous slice of the rows, in order, so item ``i`` of a split is row ``i``, and every read
checks it.

Why litdata rather than WebDataset: litdata's loader owns the per-rank, per-worker
assignment and its exact resumable state, which both once-per-epoch under DDP and
mid-epoch resume need; WebDataset leaves both to the user (equal shard counts per rank,
no loader state).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import litdata
import numpy as np
import torch
from litdata.utilities.env import _DistributedEnv
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ssl_toolkit.data.base import DataSource, RowIds, channel_stats, files_key
from ssl_toolkit.data.images import Box, center_square, decode_crops, random_resized_box
from ssl_toolkit.data.skip_list import skip_line
from ssl_toolkit.data.stage import CENTER, WorkerStage
from ssl_toolkit.errors import UserError, WorkerUserError

INFO_FILE = "ssl_shards.json"
SKIPPED_FILE = "skipped.txt"  # the files `ssl shard` could not decode (ssl_toolkit.data.skip_list format)
FORMAT = "litdata"
SAMPLE_LOG_ENV = "SSL_TOOLKIT_SAMPLE_LOG"  # debugging aid: append every training sample's row, per rank


class ShardInfo(BaseModel):
    """``ssl_shards.json``: what ``ssl shard`` wrote (validated on every read)."""

    model_config = ConfigDict(extra="forbid")

    format: str
    version: int
    source: str
    classes: list[str] | None
    channels: int
    n_train: int = Field(ge=0)
    n_test: int = Field(ge=0)
    mean: list[float]
    std: list[float]
    image_size: int = Field(ge=8, le=1024)
    multilabel: bool = False
    names: bool = False  # each split has names.npy (shards written before it was kept have none)

    @model_validator(mode="after")
    def _consistent(self) -> ShardInfo:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need {self.channels} value(s) each, std above 0")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError("classes must be distinct names")
        return self


def is_remote(name: str) -> bool:
    return "://" in name


def read_info(root: str) -> ShardInfo:
    """The validated ``ssl_shards.json`` of a shard folder or URL."""
    try:
        if is_remote(root):
            import fsspec  # litdata's dependency for object stores

            with fsspec.open(f"{root.rstrip('/')}/{INFO_FILE}", "r") as f:
                text = f.read()
        else:
            text = (Path(root).expanduser() / INFO_FILE).read_text()
        return ShardInfo.model_validate_json(text)
    except (OSError, ImportError) as e:
        raise UserError(f"cannot read {INFO_FILE} of {root}: {e}") from None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise UserError(f"{root}/{INFO_FILE} is not a valid shard description: {where + ': ' if where else ''}{err['msg']}") from None


def _decode_item(data: bytes, channels: int, size: int, stage: WorkerStage, rng: np.random.Generator | None) -> np.ndarray:
    def boxes(w: int, h: int) -> list[Box]:
        return [
            center_square(w, h) if c.kind == "center" or rng is None else random_resized_box(w, h, c.scale, c.ratio, rng)
            for c in stage.crops
        ]

    return decode_crops(io.BytesIO(data), channels, size, boxes)


class BadShardError(WorkerUserError):
    """A shard item that cannot be read or decoded (chunk contents damaged at the right size); one line, also from a worker."""


#: What litdata's deserialisers and the image decoder raise on damaged bytes (PIL's errors are OSErrors).
SHARD_READ_ERRORS = (struct.error, ValueError, OSError, EOFError, KeyError, IndexError, TypeError, OverflowError, RuntimeError)


@contextmanager
def damaged_shard(where: str, row: Any) -> Iterator[None]:
    """Turn a failure to read or decode one shard item into :class:`BadShardError` naming the split and row."""
    try:
        yield
    except UserError:
        raise
    except SHARD_READ_ERRORS as e:
        kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__.split('.')[0]}.{type(e).__name__}"
        raise BadShardError(
            f"shards in {where} are damaged: item {row} cannot be read ({kind}: {e}); write them again with ssl shard"
        ) from None


def _row_id(prefix: str, row: int) -> str:
    return f"{prefix}:{row}"


@dataclass(frozen=True)
class _SourcePath:
    """The original path of a shard row: the folder ``ssl shard`` read joined with the row's name."""

    source: str
    names: np.ndarray  # (N,) bytes, relative paths (UTF-8, surrogate-escaped)

    def __call__(self, row: int) -> str:
        return os.path.join(self.source, self.names[row].decode("utf-8", "surrogateescape"))


class ShardSplit:
    """One split of a shard folder, read with litdata (see the module docstring).

    Args:
        root: Shard folder or URL.
        split: ``train`` or ``test``.
        info: The folder's description.
        size: Side of the square images handed over.
        rows: Rows of this split to use (``None`` = all, in order).
    """

    streaming = True

    def __init__(self, root: str, split: str, info: ShardInfo, size: int, rows: np.ndarray | None = None) -> None:
        self.root, self.split, self.info, self._size = root, split, info, size
        self.dir = f"{root.rstrip('/')}/{split}"
        n = info.n_train if split == "train" else info.n_test
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.full = rows is None
        if self.full:  # a subset's rows come from a split already checked
            self._check_chunks(n)
        labels = self._labels(n)
        self.labels = None if labels is None else torch.from_numpy(labels[self.rows])
        name: Callable[[int], str] = partial(_row_id, f"{root}:{split}")
        if info.names:
            name = _SourcePath(info.source, self._names(n))
        self.ids = RowIds(name, self.rows)
        self._dataset: Any = None

    def _array(self, file: str, what: str) -> np.ndarray:
        """``DIR/split/file`` read without pickles (memory-mapped when local)."""
        try:
            if is_remote(self.root):
                import fsspec

                with fsspec.open(f"{self.dir}/{file}", "rb") as f:
                    return np.load(io.BytesIO(f.read()), allow_pickle=False)
            return np.load(Path(self.dir) / file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"cannot read the {what} of {self.dir}: {e}") from None

    def _names(self, n: int) -> np.ndarray:
        names = self._array("names.npy", "file names")
        if names.shape != (n,) or names.dtype.kind != "S":
            raise UserError(f"{self.dir}/names.npy does not hold {n} file names; write the shards again with ssl shard")
        return names

    def _labels(self, n: int) -> np.ndarray | None:
        if self.info.classes is None or n == 0:
            return None
        labels = np.asarray(self._array("labels.npy", "labels"))
        shape, dtype = ((n, len(self.info.classes)), np.uint8) if self.info.multilabel else ((n,), np.int64)
        if labels.shape != shape or labels.dtype != dtype:
            raise UserError(f"{self.dir}/labels.npy does not hold {n} {'multi-hot uint8 rows' if self.info.multilabel else 'int64 labels'}")
        top = 1 if self.info.multilabel else len(self.info.classes) - 1
        if labels.size and (labels.min() < 0 or labels.max() > top):
            raise UserError(f"{self.dir}/labels.npy holds labels outside 0..{top}")
        return labels

    def _check_chunks(self, n: int) -> None:
        """Refuse a local split whose ``index.json`` or chunk files do not match what ``ssl shard`` wrote."""
        if is_remote(self.root) or n == 0:
            return
        where = Path(self.dir)
        try:
            chunks = json.loads((where / "index.json").read_text())["chunks"]
            files = [(where / c["filename"], int(c["chunk_size"]), int(c["chunk_bytes"])) for c in chunks]
        except OSError as e:
            raise UserError(f"cannot read {where}/index.json: {e}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{where}/index.json is not a litdata index: {e}") from None
        if sum(size for _, size, _ in files) != n:
            raise UserError(f"{where}/index.json lists {sum(size for _, size, _ in files)} items, not the {n} of {INFO_FILE}")
        for path, _, nbytes in files:
            if not path.is_file() or path.stat().st_size != nbytes:
                what = "is missing" if not path.is_file() else f"holds {path.stat().st_size} bytes, not {nbytes}"
                raise UserError(f"shard chunk {path} {what}; write the shards again with ssl shard")

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def channels(self) -> int:
        return self.info.channels

    @property
    def size(self) -> int:
        return self._size

    def dataset(self) -> Any:
        """A (cached) :class:`litdata.StreamingDataset` over all rows, read by index."""
        if self._dataset is None:
            self._dataset = litdata.StreamingDataset(self.dir)
        return self._dataset

    def path(self, i: int) -> str:
        return self.ids[i]

    def encoded(self, row: int) -> bytes:
        """The encoded image of split row ``row`` (its item's position), checked to be that row's."""
        with damaged_shard(self.dir, row):
            item = self.dataset()[row]
            if int(item["index"]) != row:  # shards whose writers took items from a shared queue, out of row order
                raise BadShardError(
                    f"shards in {self.dir} hold row {int(item['index'])} at position {row}, out of order; write them again with ssl shard"
                )
            return item["image"]

    def decode(self, i: int, stage: WorkerStage = CENTER, rng: np.random.Generator | None = None) -> np.ndarray:
        """``(V, C, S, S)`` uint8 crops of row ``i`` of this split."""
        row = int(self.rows[i])
        data = self.encoded(row)
        with damaged_shard(self.dir, row):
            return _decode_item(data, self.channels, self._size, stage, rng)

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.decode(i)[0])

    def batches(self, batch_size: int, workers: int | None = None) -> Iterator[torch.Tensor]:
        from ssl_toolkit.data.loaders import split_loader

        for x, _ in split_loader(self, batch_size, False, workers=workers):
            yield x

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        rows = np.sort(np.random.default_rng(seed).permutation(len(self))[: min(n, len(self))])
        arrays = [self.decode(int(i))[0] for i in rows]
        if not arrays:
            return torch.zeros(0, self.channels, self._size, self._size, dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    def subset(self, index: torch.Tensor) -> ShardSplit:
        return ShardSplit(self.root, self.split, self.info, self._size, self.rows[index.numpy()])

    def train_loader(self, batch_size: int, seed: int, stage: WorkerStage, workers: int, pin_memory: bool) -> Any:
        """The streaming training loader when the whole split is used, else ``None`` (read by index)."""
        return shard_train_loader(self, batch_size, seed, stage, workers, pin_memory) if self.full else None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}  # each worker opens its own reader


class CropStreamingDataset(litdata.StreamingDataset):
    """A :class:`litdata.StreamingDataset` whose items are ``(crops, label, row)`` for a worker stage.

    Args:
        split: The shard split (its folder, channels and size).
        stage: What the worker hands over.
        seed: Seed of the order (litdata shuffles chunks, then items within them, per epoch).
        shuffle: Shuffle and drop the last partial batch (training).
    """

    def __init__(self, split: ShardSplit, stage: WorkerStage, seed: int, shuffle: bool) -> None:
        super().__init__(split.dir, shuffle=shuffle, drop_last=shuffle, seed=seed)
        self.channels, self.size, self.stage, self.where = split.channels, split.size, stage, str(split.dir)
        self.multi_hot = split.labels if split.info.multilabel else None  # (N, K) uint8 by row, or None
        self.random = any(c.kind != "center" for c in stage.crops)
        self._gen: np.random.Generator | None = None
        self._gen_pid = -1

    def _rng(self) -> np.random.Generator:
        if self._gen is None or self._gen_pid != os.getpid():
            self._gen = np.random.default_rng(torch.initial_seed() % 2**63)
            self._gen_pid = os.getpid()
        return self._gen

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with damaged_shard(self.where, getattr(index, "index", index)):  # litdata passes a ChunkedIndex
            item = super().__getitem__(index)
            crops = _decode_item(item["image"], self.channels, self.size, self.stage, self._rng() if self.random else None)
        x = torch.from_numpy(crops if self.stage.views > 1 else crops[0])  # (C, S, S) or (V, C, S, S) uint8
        row = int(item["index"])
        label = self.multi_hot[row] if self.multi_hot is not None else torch.tensor(int(item["label"]))  # (K,) uint8 or ()
        return x, label, torch.tensor(row)


class ShardTrainLoader(litdata.StreamingDataLoader):
    """litdata's loader, told about the process group when iterated; optionally logs the rows it hands over."""

    def _refresh(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.dataset.distributed_env = _DistributedEnv.detect()

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._restored_now = True
        if not self.restore and self._num_samples_yielded_streaming == 0 and int(obj.get("current_epoch", 0)) > 0:
            # an epoch begun and none of it trained (a Ctrl-C in its first step): litdata would
            # start the epoch after it, with another order; the resume starts that epoch again
            self.current_epoch = int(obj["current_epoch"]) - 1

    def rewind_to(self, trained: int) -> int:
        """Count only the first ``trained`` batches of this epoch as handed over; returns the batches taken back.

        A Ctrl-C during a step leaves its batch counted by litdata but not trained: the state
        saved then must resume at that batch, not after it. Batches come from the workers in
        turn, so the worker of the last batch kept is the one ``taken`` turns back.
        """
        if not isinstance(self._num_samples_yielded_streaming, int) or not self.batch_size:
            return 0
        taken = self._num_samples_yielded_streaming // int(self.batch_size) - max(0, trained)
        if taken <= 0:
            return 0
        self._num_samples_yielded_streaming -= taken * int(self.batch_size)
        self._latest_worker_idx = (int(getattr(self, "_latest_worker_idx", 0)) - taken) % max(1, self.num_workers)
        return taken

    def __iter__(self):
        self._refresh()
        if getattr(self, "restore", False) and not getattr(self, "_restored_now", False):
            # litdata clears its restore flag when a resumed epoch is iterated to the end; Lightning
            # stops at the known length instead, so the next epoch must not resume again
            self.restore = False
        self._restored_now = False
        log = os.environ.get(SAMPLE_LOG_ENV)
        if not log:
            yield from super().__iter__()
            return
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if dist else 0
        for batch in super().__iter__():  # the rows handed to the training loop, as they are handed over
            with open(f"{log}.rank{rank}", "a") as f:
                f.write("".join(f"{self.current_epoch}\t{int(i)}\n" for i in batch[2]))
            yield batch

    def __len__(self) -> int:
        self._refresh()
        return super().__len__()


def shard_train_loader(
    split: ShardSplit, batch_size: int, seed: int, stage: WorkerStage, workers: int, pin_memory: bool
) -> ShardTrainLoader:
    """The resumable, DDP-aware training loader over a whole shard split.

    Batches are ``(images, labels, rows)``. The dataset learns the process group when the
    loader is iterated (Lightning starts DDP after the loaders are built), before any worker
    starts. With ``$SSL_TOOLKIT_SAMPLE_LOG`` set, every row handed to training is appended
    to ``<that path>.rank<R>`` as ``epoch<TAB>row`` (a debugging aid for data order).
    """
    ds = CropStreamingDataset(split, stage, seed, shuffle=True)
    batch_size = max(1, min(batch_size, len(split)))  # as for folders: a split smaller than a batch is one batch
    return ShardTrainLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory, drop_last=True)


def load_shards(root: str, image_size: int | None) -> DataSource:
    """A :class:`DataSource` over a shard folder or URL."""
    info = read_info(root)
    if info.format != FORMAT:
        raise UserError(f"{root}: shard format '{info.format}' is not supported (expected {FORMAT})")
    size = image_size or info.image_size
    train, test = ShardSplit(root, "train", info, size), ShardSplit(root, "test", info, size)
    mean, std = tuple(info.mean), tuple(info.std)
    if size != info.image_size:  # statistics depend a little on the size: estimate them again
        mean, std = channel_stats(train.sample(256))
    return DataSource(root, train, test, info.classes, info.channels == 1, [], mean, std, content=_content_key(root, info))


def _content_key(root: str, info: ShardInfo) -> str:
    """What changes when the shards are written again: the description, and per split its ``index.json``
    (and, for a local folder, every chunk file's size and modification time). Labels do not change features."""
    h = hashlib.sha256(info.model_dump_json().encode())
    for split in ("train", "test"):
        where = f"{root.rstrip('/')}/{split}"
        if (info.n_train if split == "train" else info.n_test) == 0:
            continue
        try:
            if is_remote(root):
                import fsspec

                with fsspec.open(f"{where}/index.json", "rb") as f:
                    h.update(f.read())
            else:
                local = Path(where)
                index = (local / "index.json").read_bytes()
                h.update(index)
                h.update(files_key(local / c["filename"] for c in json.loads(index)["chunks"]).encode())
        except (OSError, ValueError, KeyError, TypeError) as e:  # the splits were checked when they were opened
            raise UserError(f"cannot read the shards in {where}: {e}") from None
    return h.hexdigest()[:32]


def write_shards(folder: str, out: Path, image_size: int, chunk_bytes: str, workers: int, cfg: Any) -> dict[str, Any]:
    """Write ``folder`` (an image folder) as litdata shards into ``out`` (see the module docstring)."""
    from ssl_toolkit.atomic import temp_prefix
    from ssl_toolkit.data.folder import load_folder

    final, partial = out, out.parent / f"{temp_prefix(out.name)}partial-{os.getpid()}"  # renamed onto --out when complete
    try:
        with _process_state_kept(), _stoppable_workers():  # the folder's scan too: a signal there is one line as well
            source = load_folder(Path(folder), cfg.model_copy(update={"stream": True, "image_size": image_size}))
            remove_abandoned_partials(final)
            result = _write_splits(source, folder, partial, image_size, chunk_bytes, workers, cfg.strict)
        try:
            os.replace(partial, final)  # --out is absent or an empty folder
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise UserError(f"--out {final} was written meanwhile (another ssl shard?); this run's shards were not kept") from None
            raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {**result, "out": str(final)}


def remove_abandoned_partials(out: Path) -> list[Path]:
    """Remove the partial folders of earlier runs for ``out`` whose process is gone (a SIGKILL leaves them); returns them.

    A partial folder is ``.OUT.partial-PID`` beside ``out``; one whose process still runs (another
    ``ssl shard`` writing the same ``--out``) is left alone.
    """
    from ssl_toolkit.atomic import temp_prefix
    from ssl_toolkit.folder_lock import process_alive

    prefix = f"{temp_prefix(out.name)}partial-"
    gone = []
    for p in out.parent.glob(f"{glob.escape(prefix)}*") if out.parent.is_dir() else []:
        pid = p.name[len(prefix) :]
        if not pid.isdigit() or not p.is_dir() or p.is_symlink() or process_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p)
    return gone


def _write_splits(
    source: DataSource, folder: str, out: Path, image_size: int, chunk_bytes: str, workers: int, strict: bool = False
) -> dict[str, Any]:
    """The shards, labels and facts of ``source``'s splits, written into ``out``."""
    from ssl_toolkit.atomic import atomic_write_bytes, atomic_write_text

    multilabel = source.target_kind == "multilabel"
    counts, skipped = {}, list(source.skipped)
    for split_name in ("train", "test"):
        split = getattr(source, split_name)
        paths = [split.index.path(int(r)) for r in split.rows]
        if split.labels is None:
            labels_all = np.full(len(paths), -1, np.int64)
        else:
            labels_all = split.labels.numpy().astype(np.uint8 if multilabel else np.int64)  # (N, K) multi-hot or (N,)
        ok = _decodable(paths)
        skipped += [(p, why) for p, why in zip(paths, ok) if why]
        if strict and skipped:
            raise UserError(f"{len(skipped)} unreadable image file(s) in {folder} (data.strict): {skipped[0][0]}: {skipped[0][1]}")
        keep = [k for k, why in enumerate(ok) if not why]
        labels = labels_all[keep]
        counts[split_name] = len(keep)
        target = out / split_name
        target.mkdir(parents=True, exist_ok=True)
        np.save(target / "labels.npy", labels)
        np.save(target / "names.npy", split.index.rel[split.rows][keep])  # paths relative to the folder: the ids
        if not keep:
            continue
        jobs = [(paths[k], -1 if multilabel else int(labels_all[k]), row) for row, k in enumerate(keep)]
        litdata.optimize(
            fn=_item,
            inputs=jobs,
            output_dir=str(target),
            chunk_bytes=chunk_bytes,
            num_workers=min(workers, len(jobs)),  # a writer without items would only start and stop
            mode="overwrite",
            verbose=False,
            reorder_files=False,
            keep_data_ordered=True,  # each writer a contiguous slice, in order: item i of the split is row i (read by index)
            start_method="fork",  # the toolkit is imported already: a forked writer starts at once, a spawned one imports torch again
        )
    info = ShardInfo(
        format=FORMAT,
        version=1,
        source=str(Path(folder).resolve()),
        classes=source.classes,
        channels=source.channels,
        n_train=counts["train"],
        n_test=counts["test"],
        mean=list(source.mean),
        std=list(source.std),
        image_size=image_size,
        multilabel=multilabel,
        names=True,
    )
    if skipped:
        atomic_write_bytes(out / SKIPPED_FILE, b"".join(skip_line(p, why) for p, why in skipped))  # names not UTF-8 byte for byte
    atomic_write_text(out / INFO_FILE, info.model_dump_json(indent=1))
    return {**info.model_dump(), "skipped": len(skipped)}


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """Undo what ``litdata.optimize`` changes for the whole process: the multiprocessing start method and its env.

    ``optimize`` sets the start method to ``spawn`` (``force=True``) and leaves
    ``DATA_OPTIMIZER_*`` in ``os.environ``; kept, every later DataLoader worker of the
    process would be spawned (a fresh interpreter importing torch: seconds each) instead of forked.
    """
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True)
    env = {k: os.environ.get(k) for k in ("DATA_OPTIMIZER_GLOBAL_RANK", "DATA_OPTIMIZER_NUM_WORKERS", "DATA_OPTIMIZER_NUM_NODES")}
    try:
        yield
    finally:
        multiprocessing.set_start_method(method, force=True)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _stoppable_workers() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop litdata's worker processes and become :class:`Interrupted` (130, 143).

    ``litdata.optimize`` answers SIGINT by ending the process with exit status 0
    (``os._exit(0)`` in ``DataProcessor._signal_handler``) and leaves its workers running on
    SIGTERM. Here SIGTERM runs the SIGINT handler (even where SIGINT is ignored), and the handler terminates every process
    litdata started (its workers and chunk writers) and raises, so the caller can remove the
    partial output. litdata lists its workers only once all have started, so a signal while
    it starts them is acted on when it has. The processes are forked and inherit both
    handlers; in them, a signal stops the processes they started (each ordered writer has its
    own uploader and remover) and ends the process by its default action.
    """
    import multiprocessing
    import signal

    from litdata.processing import data_processor

    from ssl_toolkit.errors import Interrupted

    received: list[int] = []
    parent = os.getpid()
    others = set(multiprocessing.active_children())  # the caller's own processes are not litdata's to stop
    starting: list[str] = []  # litdata is starting processes
    deferred: list[int] = []  # a signal that came meanwhile

    def as_a_forked_process(signum: int) -> None:
        """In a process litdata forked (it inherits these handlers): stop the processes it started in turn
        (a writer's uploader and remover), then end by the signal itself, as a spawned one would."""
        if os.getpid() != parent:
            signal.signal(signum, signal.SIG_DFL)
            # /proc lists a process as soon as it is forked; multiprocessing only once start()
            # returns, so a signal during a start would leave the new process running alone
            ended(multiprocessing.active_children(), _descendants(os.getpid()))
            os.kill(os.getpid(), signum)

    def ended(processes: list[Any], below: list[int] | None = None) -> None:
        """Stop ``processes`` and then every process that was below them or is in ``below`` (SIGKILL, if still there)."""
        below = [*(below or []), *(pid for w in processes for pid in _descendants(w.pid))]
        for w in processes:
            w.terminate()
        for w in processes:
            w.join(5)
            if w.is_alive():  # a signal that reaches a process in its first moments after the fork is lost
                w.kill()
                w.join()
        for pid in below:  # one its parent did not stop: started as the signal came, or by a parent that could not
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(processor: Any, signum: int, frame: Any) -> None:
        as_a_forked_process(signum)
        if starting:
            deferred.append(signum)
            return
        ended([w for w in multiprocessing.active_children() if w not in others])
        raise KeyboardInterrupt

    def term(signum: int, frame: Any) -> None:
        as_a_forked_process(signum)
        received.append(signum)
        on_ctrl_c = signal.getsignal(signal.SIGINT)  # litdata's (stop), Python's, or none where SIGINT is ignored (nohup, &)
        if not callable(on_ctrl_c):
            raise KeyboardInterrupt
        on_ctrl_c(signal.SIGINT, frame)  # raises, or (stop, while litdata starts its processes) defers

    def starts_processes(method: Any) -> Any:
        def run(processor: Any, *args: Any, **kwargs: Any) -> Any:
            starting.append(method.__name__)
            try:
                return method(processor, *args, **kwargs)
            finally:
                starting.pop()
                if deferred and not starting:
                    stop(processor, deferred[0], None)

        return run

    patched = {
        name: getattr(data_processor.DataProcessor, name) for name in ("_signal_handler", "_create_process_workers", "_start_chunk_writers")
    }
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    data_processor.DataProcessor._signal_handler = stop
    for name in ("_create_process_workers", "_start_chunk_writers"):
        setattr(data_processor.DataProcessor, name, starts_processes(patched[name]))
    signal.signal(signal.SIGTERM, term)
    try:
        yield
    except KeyboardInterrupt:
        code, what = (143, "terminated") if received else (130, "interrupted")
        raise Interrupted(f"{what}: no shards were written", code) from None
    finally:
        for name, method in patched.items():
            setattr(data_processor.DataProcessor, name, method)
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux's ``/proc/PID/task/*/children``; none where that is not available)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for children in glob.glob(f"/proc/{todo.pop()}/task/*/children"):
            try:
                kids = [int(c) for c in Path(children).read_text().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


def _decodable(paths: list[str]) -> list[str | None]:
    """Per file: ``None`` when it decodes (checked at the smallest JPEG draft scale), else why not."""
    from concurrent.futures import ThreadPoolExecutor

    from ssl_toolkit.data.images import READ_ERRORS, failure_reason, open_image

    def check(path: str) -> str | None:
        try:
            with open_image(path) as im:
                im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
            return None
        except READ_ERRORS as e:
            return failure_reason(e)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        return list(ex.map(check, paths))


def _item(job: tuple[str, int, int]) -> dict[str, Any]:
    path, label, row = job
    with open(path, "rb") as f:
        return {"image": f.read(), "label": label, "index": row}
