"""Embeddings of a dataset under a frozen backbone, streamed to disk.

Each split's features come through the evaluators' feature cache
(:meth:`~ssl_toolkit.eval.features.FeatureCache.features`): a cached split is
memory-mapped, a new one is extracted batch by batch straight into its destination (an
``.npy`` memmap for :func:`embed`) and then stored in the cache, so the features are
never held in memory as a whole.

Output of :func:`embed`:

* ``FILE.npz``: ``embeddings`` ``(N, D)`` float32, ``labels`` ``(N,)`` int64 (only for
  labelled data), ``ids`` (image path or ``dataset:index``), ``split`` (``train``/``test``),
  ``index`` (row within its split), ``classes`` and ``meta`` (a JSON string).
* ``FILE.npy``: the ``(N, D)`` float32 embeddings alone, readable with
  ``np.load(FILE, mmap_mode="r")``, and next to it ``FILE.meta.npz`` with the other arrays.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from ssl_toolkit.api import Positive, caller_terms, public
from ssl_toolkit.atomic import atomic_file, owned_temp
from ssl_toolkit.backbones import feature_dim
from ssl_toolkit.config import DataConfig, validate
from ssl_toolkit.data.sources import DataSource, load_source
from ssl_toolkit.devices import check_device
from ssl_toolkit.errors import UserError
from ssl_toolkit.eval.features import FeatureCache, Preprocess, model_fingerprint

SPLITS = ("train", "test")
ROW_ARRAYS = {"ids": "U", "split": "U", "index": "i"}  # the arrays of an embeddings file with one value per row, and their dtype kind
EMBED_BATCH = 256


@dataclass
class Embeddings:
    """Rows of embeddings with where they came from.

    Attributes:
        features: ``(N, D)`` float32 (possibly a read-only memmap).
        labels: ``(N,)`` int64 classes, ``(N, K)`` int64 multi-hot rows (multi-label data), or ``None`` for unlabelled data.
        ids: ``(N,)`` image paths or ``dataset:index`` strings.
        split: ``(N,)`` ``"train"`` or ``"test"``.
        index: ``(N,)`` row within its split.
        classes: Class names, or ``None``.
        meta: Backbone, dataset and preprocessing facts.
    """

    features: np.ndarray
    labels: np.ndarray | None
    ids: np.ndarray
    split: np.ndarray
    index: np.ndarray
    classes: list[str] | None
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def part(self, split: str) -> Embeddings:
        """The rows of one split."""
        rows = np.flatnonzero(self.split == split)
        return Embeddings(
            np.asarray(self.features[rows]),
            None if self.labels is None else self.labels[rows],
            self.ids[rows],
            self.split[rows],
            self.index[rows],
            self.classes,
            self.meta,
        )


def data_config(data: str | os.PathLike | dict[str, Any] | DataConfig, image_size: int | None = None) -> DataConfig:
    """A :class:`DataConfig` from a name/folder, a dict of its fields or a config; ``image_size`` imposed."""
    if isinstance(data, DataConfig):
        cfg = data
    elif isinstance(data, str | os.PathLike):
        cfg = DataConfig(name=os.fspath(data))
    else:
        cfg = validate(DataConfig, dict(data), what="data")
    return cfg.model_copy(update={"image_size": image_size}) if image_size else cfg


RECORDED_INPUT = ("image_size", "color_space", "equalize", "normalize")  # fixed by the backbone's meta.json


def check_recorded_input(data: DataConfig, meta: dict[str, Any]) -> None:
    """Refuse a data setting that the backbone's recorded input would silently override.

    A pretrained backbone is always fed as it was pretrained: its image size and
    ``processing`` (colour space, equalisation, normalisation) come from its metadata, so a
    different value given for them would be ignored.
    """
    defaults = DataConfig()
    recorded = {
        "image_size": meta.get("image_size"),
        **{k: getattr(defaults, k) for k in RECORDED_INPUT[1:]},
        **(meta.get("processing") or {}),
    }
    for key in RECORDED_INPUT:
        value = getattr(data, key)
        if key in data.model_fields_set and value is not None and recorded.get(key) is not None and value != recorded[key]:
            raise UserError(
                f"data.{key}={value} differs from the backbone's {recorded[key]} (recorded in its meta.json): "
                f"a backbone is fed as it was pretrained; leave data.{key} unset"
            )


def preprocess_of(meta: dict[str, Any]) -> Preprocess:
    """The backbone's input preprocessing from its metadata."""
    return Preprocess.from_meta(meta)


def pretraining_data(folder: Path | None, meta: dict[str, Any]) -> dict[str, Any] | str | None:
    """The data a backbone was pretrained on, if it can still be loaded: the run config's ``data`` (for a library
    entry, that of the run it was saved from, while that run holds its weights), or a registered name.

    Raises:
        UserError: The run's ``config.yaml`` cannot be read, is not UTF-8, or is not a valid run config.
    """
    from ssl_toolkit.data.sources import SOURCES, discover
    from ssl_toolkit.run_folder import RunFolder

    discover()  # the built-in and plugin source names
    from ssl_toolkit.library import run_of_entry

    run = None if folder is None else RunFolder(folder)
    if run is not None and not run.config.is_file() and (twin := run_of_entry(run.path, meta)) is not None:
        run = RunFolder(twin)  # a library entry: its run's config.yaml says how the data was read
    if run is not None and run.config.is_file():
        section = run.read_run_config().data.model_dump(mode="json")  # the whole file checked, as a resume checks it
        if section.get("name"):
            name = str(section["name"])
            if name in SOURCES or Path(name).expanduser().exists():
                return section
    recorded = (meta.get("dataset") or {}).get("name")
    return recorded if recorded in SOURCES else None


def data_needed(target: str | Path | None, meta: dict[str, Any]) -> str:
    """Why ``--data`` must be given for ``target``: no data recorded, or data that cannot be loaded here."""
    recorded = (meta.get("dataset") or {}).get("name")
    if recorded and Path(str(recorded)).expanduser().exists():  # the folder is there, how its run read it is not
        return (
            f"--data is needed: {target} was pretrained on '{recorded}', but the run that says how it was read "
            f"(its config.yaml: split, labels, data settings) is gone; give --data {recorded} with those settings"
        )
    if recorded:
        return (
            f"--data is needed: {target} was pretrained on '{recorded}', which is neither a registered dataset here "
            "(a data-source plugin that is not installed?) nor a folder that still exists"
        )
    return f"--data is needed: {target} does not say which data it was pretrained on"


def load_target_source(
    target: str | Path, data: str | Path | dict[str, Any] | DataConfig | None, outputs: dict[str, Path | None] | None = None
) -> tuple[nn.Module, dict[str, Any], Path | None, DataSource, Preprocess]:
    """The backbone of ``target``, its metadata and folder, and ``data`` at the backbone's image size.

    ``data=None`` means the data the backbone was pretrained on: the ``data`` section of the
    run's ``config.yaml``, else the registered dataset named in its metadata; a dict of
    fields without ``name`` goes on top of it. ``outputs`` (``{option: path}``) are refused
    before the data is read when they are files of it (:mod:`ssl_toolkit.data.input_guard`).
    """
    from ssl_toolkit.data.input_guard import refuse_data_files
    from ssl_toolkit.library import load_backbone_any

    model, meta, folder = load_backbone_any(target)
    if data is None or (isinstance(data, dict) and "name" not in data):  # fields on top of the pretraining data
        base = pretraining_data(folder, meta)
        if base is None:
            raise UserError(data_needed(target, meta))
        data = base if data is None else {**({"name": base} if isinstance(base, str) else base), **data}
    data_cfg = data_config(data)
    check_recorded_input(data_cfg, meta)
    refuse_data_files(data_cfg, outputs or {})
    source = load_source(data_cfg.model_copy(update={"image_size": int(meta["image_size"])}))
    check_unreadable(source, data_cfg.strict)
    warn_gray_for_colour(source, meta)
    return model, meta, folder, source, preprocess_of(meta)


def warn_gray_for_colour(source: DataSource, meta: dict[str, Any]) -> None:
    """One warning when single-channel data meets a backbone pretrained in a colour space that needs colour (hsv, lab, ycbcr).

    Its images go in as R = G = B (:class:`~ssl_toolkit.eval.features.Preprocess`), so the
    colour channels the backbone learned from are constant.
    """
    space = (meta.get("processing") or {}).get("color_space", "rgb")
    if source.channels == 1 and space not in ("rgb", "gray"):
        print(
            f"warning: {source.name} is single-channel and the backbone was pretrained in data.color_space={space} on colour images: "
            f"its images go in as R = G = B, whose {space} colour channels are constant",
            file=sys.stderr,
            flush=True,
        )


def check_unreadable(source: DataSource, strict: bool) -> None:
    """Unreadable files found in an evaluated folder: exit 2 under ``strict``, else one warning (they are left out)."""
    if not source.skipped:
        return
    if strict:
        source.refuse_unreadable()
    print(
        f"warning: skipped {len(source.skipped)} unreadable image file(s) in {source.name} ({source.unreadable_names()}); "
        + caller_terms(f"ssl inspect {shlex.quote(source.name)} lists them", f"inspect_data({source.name!r}) lists them"),
        file=sys.stderr,
        flush=True,
    )


@public
def embed(
    target: str | Path,
    data: str | Path | dict[str, Any] | DataConfig | None = None,
    out: str | Path = "embeddings.npz",
    split: Literal["train", "test", "all"] = "all",
    batch_size: Positive = EMBED_BATCH,
    device: str | None = None,
) -> dict[str, Any]:
    """Write the embeddings of ``data`` under the backbone ``target`` to ``out``.

    Args:
        target: Run folder, backbone file or checkpoint-library name.
        data: Dataset name or folder, a dict of :class:`DataConfig` fields (without
            ``name``: on top of the data the backbone was pretrained on), or a config
            (default: the data the backbone was pretrained on).
        out: ``.npz`` (one file) or ``.npy`` (memmap-able embeddings + ``.meta.npz``).
        split: ``train``, ``test`` or ``all`` (train rows, then test rows).
        batch_size: Images per forward pass.
        device: Where to run the backbone (default: CUDA when available).

    Returns:
        ``path``, ``meta_path`` (``.npy`` only), ``rows``, ``dim``, ``splits`` (rows per
        split), ``labelled``, ``dataset`` (the data's name), ``cached`` (splits served by the
        cache), ``seconds``.
    """
    start = time.time()
    out = _check_out(out, split)
    check_device(device)
    model, meta, _, source, pre = load_target_source(
        target, data, {"--out": out, "--out's side file": side_file(out) if out.suffix == ".npy" else None}
    )
    splits = [s for s in (SPLITS if split == "all" else (split,)) if len(getattr(source, s))]
    if not splits:
        raise UserError(f"{source.name} has no images in split '{split}'")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _Rows(model, source, pre, splits, device, batch_size)
    info = {
        "target": str(target),
        "backbone": meta["backbone"]["timm_name"],
        "task": meta.get("task"),
        "model_fingerprint": rows.fingerprint,
        "dataset": source.describe(),
        "preprocess": pre.key(),
        "splits": rows.counts,
    }
    meta_path: Path | None = None
    if out.suffix == ".npy":  # the destination is the memmap itself
        meta_path = side_file(out)
        with atomic_file(out) as tmp:
            arrays = rows.fill(tmp, info)
            write_npz(meta_path, arrays)  # inside the block: if it fails, the .npy is not replaced either
    else:  # a scratch memmap, packed into the .npz
        fd, scratch = owned_temp(out, suffix=".npy")  # scratch, never renamed
        os.close(fd)
        try:
            arrays = rows.fill(scratch, info)
            write_npz(out, {"embeddings": np.load(scratch, mmap_mode="r"), **arrays})
        except OSError as e:
            if e.filename is None:  # a full disk while the scratch rows beside --out are written
                e.filename = str(out)
            raise
        finally:
            scratch.unlink(missing_ok=True)
    return {
        "path": str(out),
        "meta_path": None if meta_path is None else str(meta_path),
        "rows": rows.n,
        "dim": rows.dim,
        "splits": rows.counts,
        "labelled": source.labelled,
        "cached": rows.cached,
        "dataset": source.name,
        "seconds": round(time.time() - start, 3),
    }


def reserve_disk(path: Path) -> None:
    """Allocate ``path``'s blocks for its whole length (``posix_fallocate``) where the filesystem can."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # not supported here: written as before
                return
            raise


def _check_out(out: str | Path, split: str) -> Path:
    """The output path, checked before anything is read or written."""
    from ssl_toolkit.outputs import named_file

    out = named_file(out, (".npz", ".npy"))
    if split not in (*SPLITS, "all"):
        raise UserError(f"unknown split '{split}': use train, test or all")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder")
    from ssl_toolkit.run_folder import check_output_file

    out = check_output_file(out, "--out")
    if out.suffix == ".npy" and side_file(out).is_dir():
        raise UserError(f"--out {out} keeps its other arrays in {side_file(out)}, which is a folder; remove it or choose another name")
    return out


def side_file(npy: Path) -> Path:
    """The ``.meta.npz`` next to an ``.npy`` output, holding its labels, ids, splits, classes and metadata."""
    return npy.with_suffix(".meta.npz")


class _Rows:
    """The embedding rows of some splits of a source, written into an ``.npy`` memmap through the feature cache."""

    def __init__(self, model: Any, source: DataSource, pre: Any, splits: list[str], device: str | None, batch_size: int) -> None:
        self.model, self.source, self.pre, self.splits = model, source, pre, splits
        self.device, self.batch_size = device, batch_size
        self.counts = {s: len(getattr(source, s)) for s in splits}
        self.n, self.dim = sum(self.counts.values()), feature_dim(model)
        self.fingerprint = model_fingerprint(model)
        self.cached: list[str] = []  # splits served by the cache

    def fill(self, npy: Path, info: dict[str, Any]) -> dict[str, np.ndarray]:
        """Write the ``(N, D)`` float32 rows to ``npy``; returns the row arrays and the metadata."""
        cache = FeatureCache()
        emb = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(self.n, self.dim))
        reserve_disk(npy)  # a full disk is an OSError now, not a SIGBUS when a row is written through the map
        row = 0
        for s in self.splits:
            _, hit = cache.features(
                self.model, self.source, s, self.pre, self.fingerprint, self.device, emb[row : row + self.counts[s]], self.batch_size
            )
            if hit:
                self.cached.append(s)
            row += self.counts[s]
        emb.flush()
        del emb
        arrays = row_arrays(self.source, self.splits)
        info = {**info, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        arrays["meta"] = np.array(json.dumps(info))
        return arrays


def row_arrays(source: DataSource, splits: list[str]) -> dict[str, np.ndarray]:
    """``labels`` (when known), ``ids``, ``split``, ``index`` and ``classes`` for the rows of ``splits``."""
    parts = [getattr(source, s) for s in splits]
    arrays = {
        "ids": np.array([i for p in parts for i in p.ids], dtype=str),
        "split": np.array([s for s, p in zip(splits, parts) for _ in range(len(p))], dtype=str),
        "index": np.concatenate([np.arange(len(p), dtype=np.int64) for p in parts]),
        "classes": np.array(source.classes or [], dtype=str),
    }
    if source.labelled:
        arrays["labels"] = np.concatenate([p.labels.numpy().astype(np.int64) for p in parts])
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` written atomically (arrays, memmaps included, are written in chunks)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, allow_pickle=True, **arrays)  # numpy's default, named so that **arrays is not matched against it


def load_embeddings(path: str | Path, mmap: bool = True) -> Embeddings:
    """Read what :func:`embed` wrote (``.npz``, or ``.npy`` with its ``.meta.npz``), checked.

    Args:
        path: The ``.npz`` or ``.npy`` file.
        mmap: Memory-map the embeddings of an ``.npy`` file instead of reading them.

    Raises:
        UserError: The file is missing, cannot be read, or does not hold what :func:`embed`
            writes (an array missing or of the wrong type or length, metadata that is not a
            JSON object).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no embeddings file {path}")
    side = side_file(path) if path.suffix == ".npy" else path
    if not side.is_file():
        raise UserError(f"{side} is missing next to {path}")
    try:
        arrays = _read_npz(side)
        feats = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False) if side != path else arrays.pop("embeddings", None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return _checked_embeddings(path, feats, arrays)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickled objects)."""
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):  # a single .npy array under another name
        raise ValueError("not an .npz archive")
    with z:
        return {k: z[k] for k in z.files}


def _checked_embeddings(path: Path, feats: np.ndarray | None, arrays: dict[str, np.ndarray]) -> Embeddings:
    """The arrays of an embeddings file as :class:`Embeddings`, refusing any that :func:`embed` would not write."""
    missing = ([] if feats is not None else ["embeddings"]) + [k for k in (*ROW_ARRAYS, "classes", "meta") if k not in arrays]
    if missing or feats is None:
        raise _not_embeddings(path, f"no {', '.join(missing)} array")
    if not isinstance(feats, np.ndarray):
        raise _not_embeddings(path, "the embeddings are not one array")
    if feats.dtype != np.float32 or feats.ndim != 2:
        raise _not_embeddings(path, f"embeddings are {feats.dtype} of shape {feats.shape}, not (N, D) float32")
    labels = arrays.get("labels")
    for key, kind in ROW_ARRAYS.items():
        if arrays[key].shape != (len(feats),) or arrays[key].dtype.kind != kind:
            raise _not_embeddings(path, f"{key} is {arrays[key].dtype} of shape {arrays[key].shape}, not {len(feats)} rows")
    classes = [str(c) for c in arrays["classes"].ravel()] or None
    if not set(arrays["split"].tolist()) <= set(SPLITS):
        raise _not_embeddings(path, f"split holds values other than {', '.join(SPLITS)}")
    if labels is not None:
        k = len(classes or [])
        multi = labels.ndim == 2 and labels.shape[1] == k  # multi-hot rows of a multi-label folder (labels.csv)
        if labels.dtype.kind != "i" or labels.shape[:1] != (len(feats),) or not (labels.ndim == 1 or multi):
            shape = f"{len(feats)} rows" + (f" of {k} label columns" if labels.ndim == 2 else "")
            raise _not_embeddings(path, f"labels is {labels.dtype} of shape {labels.shape}, not {shape}")
        if multi and len(labels) and not np.isin(labels, (0, 1)).all():
            raise _not_embeddings(path, "multi-hot labels hold values other than 0 and 1")
        if not multi and len(labels) and (labels.min() < 0 or (classes is not None and labels.max() >= k)):
            raise _not_embeddings(path, f"labels outside 0 to {k - 1}")
    return Embeddings(feats, labels, arrays["ids"], arrays["split"], arrays["index"], classes, _meta_object(path, arrays["meta"]))


def _meta_object(path: Path, meta: np.ndarray) -> dict[str, Any]:
    """The ``meta`` array of an embeddings file as the JSON object it holds."""
    try:
        info = json.loads(str(meta)) if meta.shape == () and meta.dtype.kind == "U" else None
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        raise _not_embeddings(path, "meta is not a JSON object")
    return info


def _not_embeddings(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not an embeddings file written by ssl embed: {why}")
