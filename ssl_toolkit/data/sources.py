"""``load_source``: a registered dataset, a folder of images, or shards, by name.

Built-in sources are the modules of this package that register themselves with
:func:`~ssl_toolkit.data.base.register_source` (``digits``, ``synthetic``,
``fashion-mnist``); they are imported when a source is first looked up, and third-party
packages add theirs through the ``ssl_toolkit.sources`` entry-point group. A path that is
not a registered name is read as an image folder (:mod:`ssl_toolkit.data.folder`) or, when
it holds shards written by ``ssl shard``, streamed from them (:mod:`ssl_toolkit.data.shards`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.base import SOURCES, DataSource, Split, channel_stats, register_source, require_training
from ssl_toolkit.errors import UserError
from ssl_toolkit.terminal import quoted_if_odd

__all__ = ["SOURCES", "DataSource", "Split", "channel_stats", "load_source", "register_source", "source_names"]

BUILTIN_MODULES = ("digits", "fashion_mnist", "synthetic")
BUILTIN_NAMES = ("digits", "fashion-mnist", "synthetic")
ENTRY_POINT_GROUP = "ssl_toolkit.sources"
SHARD_INFO = "ssl_shards.json"
_discovered = False


def discover() -> None:
    """Import the built-in source modules and the ``ssl_toolkit.sources`` entry points (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for name in BUILTIN_MODULES:
        importlib.import_module(f"ssl_toolkit.data.{name}")
    SOURCES.load_plugins(ENTRY_POINT_GROUP, adopt=_adopt_factory)


def _adopt_factory(name: str, obj: object) -> None:
    """Register a plugin's data-source factory (an entry point naming a function) under its entry point's name."""
    if not callable(obj):
        raise TypeError(f"a {type(obj).__name__}, not a function (DataConfig) -> DataSource")
    SOURCES.register(name)(obj)


def is_shard_dir(name: str) -> bool:
    """Whether ``name`` is an object-store URL or a folder holding ``ssl_shards.json`` (written by ``ssl shard``)."""
    return "://" in name or (Path(name).expanduser() / SHARD_INFO).is_file()


def reads_folder_split(name: str) -> bool:
    """Whether data ``name`` is read as an image folder (its split drawn by ``data.split_draw``), not a built-in dataset or shards."""
    return name not in BUILTIN_NAMES and not is_shard_dir(name)


def recorded_paths(data: dict[str, Any]) -> dict[str, Any]:
    """A ``data`` config section (as dumped) with its local paths made absolute, for a run's ``config.yaml``.

    ``data.name`` (a folder or local shards; not a registered dataset or a URL), ``data.path``
    and ``data.labels`` typed relative to the working folder would name nothing once the run is
    resumed or probed from another one.
    """
    out = dict(data)
    discover()
    name = out.get("name")
    if isinstance(name, str) and name not in SOURCES and "://" not in name and Path(name).expanduser().exists():
        out["name"] = os.path.abspath(Path(name).expanduser())
    for key in ("path", "labels"):
        value = out.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            out[key] = os.path.abspath(Path(value).expanduser())
    return out


def source_names() -> list[str]:
    discover()
    return SOURCES.names()


def _limit_rows(source: DataSource, cfg: DataConfig) -> DataSource:
    """Shards: keep the same seeded subset of ``cfg.limit`` training rows, read by index (statistics: the shards')."""
    if cfg.limit is not None and cfg.limit < len(source.train):
        g = torch.Generator().manual_seed(cfg.split_seed)
        source.train = source.train.subset(torch.randperm(len(source.train), generator=g)[: cfg.limit].sort().values)
    return source


def _limit(source: DataSource, cfg: DataConfig) -> DataSource:
    """Keep a seeded subset of ``cfg.limit`` training images (in-memory sources; folders limit while indexing)."""
    if cfg.limit is None or cfg.limit >= len(source.train) or source.streaming:
        return source
    g = torch.Generator().manual_seed(cfg.split_seed)
    source.train = source.train.subset(torch.randperm(len(source.train), generator=g)[: cfg.limit].sort().values)
    source.mean, source.std = channel_stats(source.train.images)
    return source


# settings that only some built-in sources read, and which ones (a plugin's source may read any)
SOURCE_SETTINGS = {
    "synthetic_train": ("synthetic",),
    "synthetic_test": ("synthetic",),
    "synthetic_classes": ("synthetic",),
    "path": ("fashion-mnist",),
    "labels": ("an image folder",),
    # the others' splits are fixed (Fashion-MNIST's, synthetic's, the shards'); digits' is drawn over its fixed array
    "test_fraction": ("digits", "an image folder"),
    "split_draw": ("an image folder",),
}


def refuse_unread_settings(cfg: DataConfig, kind: str) -> None:
    """Refuse a setting changed from its default that source ``kind`` (a built-in name, ``an image folder`` or ``shards``) never reads."""
    for key, readers in SOURCE_SETTINGS.items():
        if kind not in readers and getattr(cfg, key) != DataConfig.model_fields[key].default:
            raise UserError(f"data.{key} applies to {' and '.join(readers)} only, not to {cfg.name}: leave it out")


def load_source(cfg: DataConfig) -> DataSource:
    """Build the data source named by ``cfg.name``: a registered dataset, shards or an image folder."""
    discover()
    if cfg.name in BUILTIN_NAMES:
        refuse_unread_settings(cfg, cfg.name)
    if cfg.name in SOURCES:
        source = SOURCES.get(cfg.name)(cfg)
        if not isinstance(source, DataSource):
            raise UserError(f"data source '{cfg.name}' gave a {type(source).__name__}, not a DataSource")
        require_training(source.name, len(source.train), len(source.test), cfg.test_fraction if cfg.name in BUILTIN_NAMES else None)
        return _limit(source, cfg)
    if SOURCES.failure(cfg.name) is not None and not Path(cfg.name).expanduser().exists():
        SOURCES.get(cfg.name)  # says why the plugin did not load
    if is_shard_dir(cfg.name):
        from ssl_toolkit.data.shards import load_shards

        refuse_unread_settings(cfg, "shards")

        local = "://" not in cfg.name  # a local folder is recorded absolute, as config.yaml records it
        return _limit_rows(load_shards(os.path.abspath(Path(cfg.name).expanduser()) if local else cfg.name, cfg.image_size), cfg)
    path = Path(cfg.name).expanduser()
    if not path.exists():
        if os.sep not in cfg.name and not cfg.name.startswith("."):
            SOURCES.get(cfg.name)  # raises the unknown-dataset error listing valid names
        raise UserError(f"data path does not exist: {quoted_if_odd(cfg.name)}")
    from ssl_toolkit.data.folder import load_folder

    refuse_unread_settings(cfg, "an image folder")
    return _limit(load_folder(Path(os.path.abspath(path)), cfg), cfg)  # recorded absolute, as config.yaml records it
