"""``shard``: the checked entry point of ``ssl shard`` (an image folder written as litdata shards)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ssl_toolkit.api import ImageSize, Positive, public
from ssl_toolkit.errors import UserError

#: The data settings that decide what is written: which files, their split and labels.
SHARD_SETTINGS = ("test_fraction", "split_seed", "split_draw", "labels", "strict", "max_pixels")
CHUNK_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?b|[kmgt])\s*", re.IGNORECASE)


def unused_setting(key: str) -> UserError:
    """The error for a ``--set`` key that ``ssl shard`` does not use."""
    from ssl_toolkit.api import caller_terms

    return UserError(
        caller_terms(f"ssl shard does not use --set {key}", f"shard() does not use {key}")
        + f"; the shards take {', '.join('data.' + k for k in SHARD_SETTINGS)} ("
        + caller_terms("the image size has its own setting", "the image size is image_size=")
        + "; other data settings are given when training from the shards)"
    )


@public
def shard(
    folder: str | Path,
    out: str | Path,
    image_size: ImageSize = 224,
    chunk_bytes: str = "64MB",
    workers: Positive | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write an image folder as shards in Lightning's litdata format (``ssl shard``; :mod:`ssl_toolkit.data.shards`).

    Args:
        folder: The image folder (class sub-folders, optional ``train/`` + ``test/``, ``labels.csv``).
        out: A new or empty folder for the shards.
        image_size: Default training size recorded with the shards (files keep their pixels).
        chunk_bytes: Target size of one chunk file, with its unit (``64MB``, ``500kb``; 1 kb = 1000 bytes).
        workers: Writer processes (default: the cores; at most 4 per core).
        data: Settings of :data:`SHARD_SETTINGS` (``test_fraction``, ``split_seed``,
            ``split_draw``, ``labels``, ``strict``, ``max_pixels``), as ``data.*`` in a config.

    Returns:
        ``source``, ``n_train``, ``n_test``, ``classes``, ``skipped`` (files left out) and ``out``.
    """
    from ssl_toolkit.config import DataConfig, validate
    from ssl_toolkit.data.shards import write_shards
    from ssl_toolkit.data.sources import SHARD_INFO
    from ssl_toolkit.devices import CPU_PROCESSES_PER_CORE, usable_cores
    from ssl_toolkit.outputs import check_writable_dir

    if not Path(folder).expanduser().is_dir():
        raise UserError(f"data path is not a folder: {folder}")
    if (Path(folder).expanduser() / SHARD_INFO).is_file():
        raise UserError(f"{folder} holds shards already ({SHARD_INFO}): use it as it is, with --data {folder}")
    if not str(out).strip():
        raise UserError("--out is empty: name a new folder for the shards")
    size = CHUNK_SIZE.fullmatch(chunk_bytes)
    if size is None or float(size[1]) * 1000 ** "bkmgt".index(size[2][0].lower()) < 1:  # litdata's units: kb = 1000 bytes
        raise UserError(
            f"--chunk-bytes {chunk_bytes!r}: give a size of 1 byte or more with its unit (b, kb, mb, gb, tb), such as 64MB or 500kb"
        )
    settings = dict(data or {})
    cfg = validate(DataConfig, {**settings, "name": str(Path(folder).expanduser())}, what="data")
    for key in settings:
        if key not in SHARD_SETTINGS:
            raise unused_setting(f"data.{key}")
    cores = usable_cores()
    if workers is not None and workers > CPU_PROCESSES_PER_CORE * cores:
        raise UserError(
            f"--workers {workers}: at most {CPU_PROCESSES_PER_CORE * cores} writer processes on {cores} cores ({CPU_PROCESSES_PER_CORE} per core)"
        )
    target = Path(out).expanduser()
    source_dir = Path(folder).expanduser().resolve()
    if target.resolve() == source_dir or source_dir in target.resolve().parents:
        raise UserError(f"--out {out} is inside {folder}: its chunks would sit among the images; choose a folder outside it")
    if target.is_dir() and any(target.iterdir()):
        raise UserError(f"--out {out} already holds files; choose a new folder")
    check_writable_dir(target, "--out")
    return write_shards(cfg.name, target, image_size, chunk_bytes, workers or cores, cfg)
