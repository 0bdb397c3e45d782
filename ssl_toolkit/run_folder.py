"""A run folder and the names of the files in it.

``<run>/config.yaml`` (the resolved config), ``metrics.csv`` (Lightning's CSV logger),
``last.ckpt`` (the resumable state), ``backbone.safetensors`` + ``meta.json`` (the finished
backbone), ``skipped.txt`` (unreadable data files), ``samples/`` (pictures of what the task
sees) and ``probes/`` (evaluation results). Only this class spells those names.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from ssl_toolkit.atomic import atomic_write_bytes, atomic_write_text
from ssl_toolkit.errors import UserError
from ssl_toolkit.outputs import check_writable_dir, check_writable_file

if TYPE_CHECKING:
    from ssl_toolkit.config import PretrainConfig


class CheckpointFacts(NamedTuple):
    """What a run's ``last.ckpt`` says before it is resumed.

    Attributes:
        epochs: Epochs trained to their last batch.
        partial: It holds part of the next epoch (saved inside it).
        config: The settings it was trained with, as :class:`~ssl_toolkit.callbacks.ConfigRecord`
            saved them (``None`` in a checkpoint from before they were kept).
    """

    epochs: int
    partial: bool
    config: str | None


DEFAULT_NAME_BYTES = 200


class RunFolder:
    """The files of one pretraining run.

    Args:
        path: The folder (created by :meth:`create`).
    """

    CONFIG = "config.yaml"
    LAST = "last.ckpt"
    METRICS = "metrics.csv"
    WEIGHTS = "backbone.safetensors"
    META = "meta.json"
    SKIPPED = "skipped.txt"
    SAMPLES = "samples"
    PROBES = "probes"
    TENSORBOARD = "tensorboard"
    # what a previous run leaves and ``--overwrite`` removes
    RUN_FILES = (CONFIG, LAST, METRICS, "hparams.yaml", WEIGHTS, META, SKIPPED, "logger.json")
    RUN_DIRS = (SAMPLES, PROBES, TENSORBOARD)
    REPORT = "report.html"  # `ssl report RUN` writes it here: it describes this run and goes with it

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._created = False  # this process made (or emptied of run files) the folder with :meth:`create`
        self._existed = False  # the folder was there before :meth:`create`

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def default(cls, task: str, backbone: str, data: str) -> RunFolder:
        """``runs/<task>-<backbone>-<data>-<time>``, the data folder's name shortened to keep it within 200 bytes."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        data = Path(data).name if os.sep in data else data
        room = DEFAULT_NAME_BYTES - len(f"{task}-{backbone}--{stamp}".encode())
        while len(data.encode()) > room and data:  # a file name is at most 255 bytes on most filesystems
            data = data[:-1]
        return cls(Path("runs") / f"{task}-{backbone}-{data}-{stamp}")

    # ----- file names -----------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def last_ckpt(self) -> Path:
        return self.path / self.LAST

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def meta(self) -> Path:
        return self.path / self.META

    @property
    def skipped(self) -> Path:
        return self.path / self.SKIPPED

    @property
    def samples(self) -> Path:
        return self.path / self.SAMPLES

    def probe_file(self, key: str) -> Path:
        return self.path / self.PROBES / f"{key}.json"

    # ----- state ----------------------------------------------------------------------
    def is_finished(self) -> bool:
        """Whether the run ended and saved its backbone (``backbone.safetensors`` + ``meta.json``)."""
        return self.weights.is_file() and self.meta.is_file()

    def check_new(self, overwrite: bool) -> None:
        """Refuse a folder that holds files (unless ``overwrite``) or cannot be written; writes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} exists and is not a folder")
        owner = enclosing_run(self.path)
        if owner is not None:  # its --overwrite would carry this run along, its report would not know it
            raise UserError(f"--out {self.path} is inside the run or backbone folder {owner}; choose a folder outside it")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            if self.config.is_file():  # a run: it may be continued
                raise UserError(
                    f"{self.path} already holds files; use --overwrite to replace them, or continue with: ssl pretrain --resume {self.path}"
                )
            raise UserError(
                f"{self.path} already holds files (not a run's); use --overwrite to replace them, or choose another --out folder"
            )
        check_writable_dir(self.path, "--out")

    def check_resumable(self) -> None:
        """Refuse a folder without ``config.yaml`` and ``last.ckpt``, or that cannot be written.

        A finished run without its ``last.ckpt`` passes: asked for nothing more it changes
        nothing, and asked to train further :meth:`check_checkpoint` says how.
        """
        if not self.path.is_dir():
            raise UserError(f"cannot resume {self.path}: {'no such folder' if not self.path.exists() else 'not a folder'}")
        if self.config.is_file() and not self.last_ckpt.is_file() and not self.is_finished():
            raise UserError(
                f"cannot resume {self.path}: it stopped before its first checkpoint (no {self.LAST}); start it again with --overwrite"
            )
        for name in (self.CONFIG, self.LAST):
            if not (self.path / name).is_file() and not (name == self.LAST and self.is_finished()):
                raise UserError(f"cannot resume {self.path}: no {name} in it")
        check_writable_dir(self.path, "--resume")

    def check_checkpoint(self) -> CheckpointFacts:
        """Refuse a ``last.ckpt`` that does not load (read memory-mapped: cheap), before anything is written."""
        import torch

        if not self.last_ckpt.is_file() and self.is_finished():
            raise UserError(
                f"cannot train {self.path} further: its {self.LAST} is gone (its backbone is kept); "
                f"a new run can start from that backbone with --init-from {self.path}"
            )
        try:
            state = torch.load(self.last_ckpt, map_location="cpu", weights_only=True, mmap=True)
            int(state["global_step"])
            from ssl_toolkit.callbacks import ConfigRecord, EpochEndCheckpoint

            stamp = state.get(ConfigRecord.KEY)
            return CheckpointFacts(*EpochEndCheckpoint.trained(state), stamp if isinstance(stamp, str) else None)
        except Exception as e:  # noqa: BLE001  (any failure means the checkpoint is unusable)
            raise UserError(f"cannot resume from {self.last_ckpt}: the checkpoint is unreadable ({type(e).__name__})") from None

    def read_config(self) -> dict[str, Any]:
        """The saved ``config.yaml`` (plain YAML only: a ``!!python/...`` tag is refused)."""
        from ssl_toolkit.config import load_yaml

        return load_yaml(self.config)

    def read_run_config(self) -> PretrainConfig:
        """The saved ``config.yaml`` validated as a run's config (a one-line :class:`UserError` naming the file otherwise)."""
        from ssl_toolkit.config import PretrainConfig, validate

        saved = self.read_config()
        absent = [k for k in ("task", "data", "backbone", "trainer") if k not in saved]
        if absent:
            raise UserError(f"{self.config} is not a saved run config (no {', '.join(absent)})")
        data = saved.get("data")
        if isinstance(data, dict) and "split_draw" not in data:  # written before the key: a folder's split followed the listing
            from ssl_toolkit.data.sources import reads_folder_split

            if reads_folder_split(str(data.get("name", ""))):
                saved = {**saved, "data": {**data, "split_draw": "listing"}}
        return validate(PretrainConfig, saved, what=f"{self.config}")

    REPLACED = ".replaced"  # a previous run's files under ``--overwrite``, until the new run has its own

    def create(self, overwrite: bool) -> None:
        """Make the folder; with ``overwrite``, first set aside the files a previous run left in it.

        They wait in ``.replaced/`` until :meth:`settle_replaced` removes them (the new run
        finished, or was interrupted with a checkpoint to resume from) or puts them back (it
        failed). A ``.replaced/`` already there holds the last run that was set aside and
        never settled (its successor was killed): it stays, and that successor's files go.
        """
        self._created, self._existed = True, self.path.is_dir()
        if overwrite and self.path.is_dir():
            aside = self.path / self.REPLACED
            if aside.is_dir():
                for name in self._left():
                    _remove(self.path / name)
            else:
                moved: list[str] = []
                try:
                    for name in self._left():
                        aside.mkdir(exist_ok=True)
                        os.replace(self.path / name, aside / name)
                        moved.append(name)
                except OSError:
                    for name in moved:  # all or nothing
                        os.replace(aside / name, self.path / name)
                    shutil.rmtree(aside, ignore_errors=True)
                    raise
        self.path.mkdir(parents=True, exist_ok=True)

    def _left(self) -> list[str]:
        """The run files and folders a previous run left here."""
        return [n for n in self.replaced() if (self.path / n).is_file() or (self.path / n).is_dir()]

    @classmethod
    def replaced(cls) -> tuple[str, ...]:
        """What ``--overwrite`` replaces: the run's files and folders, and its report."""
        return (*cls.RUN_FILES, cls.REPORT, *cls.RUN_DIRS)

    def settle_replaced(self, failed: bool) -> None:
        """Drop the set-aside files of a previous run, or, when the new run ``failed``, remove
        what it wrote and put them back.

        A new run that failed with no previous run to give back and no ``last.ckpt`` to
        resume from removes what it wrote too (and the folder, if :meth:`create` made it),
        so the same command can simply be run again.
        """
        aside = self.path / self.REPLACED
        if failed and self._created and (aside.is_dir() or not self.last_ckpt.is_file()):
            for name in self.replaced():
                _remove(self.path / name)
                if (aside / name).exists():
                    os.replace(aside / name, self.path / name)
            if not self._existed and self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)

    def write_config(self, resolved: dict[str, Any]) -> None:
        atomic_write_text(self.config, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))

    def write_skipped(self, skipped: list[tuple[str, str]], keep: bool = False) -> None:
        """``skipped.txt``: one ``path<TAB>reason`` line per file (:mod:`ssl_toolkit.data.skip_list`).

        With ``keep`` (a resumed run), the lines already there stay first (files that went
        bad mid-run before the resume) and only files not listed yet are added.
        """
        from ssl_toolkit.data.skip_list import absolute, listed_names, skip_line

        kept = self.skipped.read_bytes() if keep and self.skipped.is_file() else b""
        kept += b"\n" if kept and not kept.endswith(b"\n") else b""
        listed = set(listed_names(kept))
        added = b"".join(skip_line(p, why) for p, why in skipped if absolute(p) not in listed)
        atomic_write_bytes(self.skipped, kept + added)


def holds_run_or_backbone(folder: Path) -> bool:
    """Whether ``folder`` is a run folder (``config.yaml`` with ``last.ckpt``) or holds a backbone (``meta.json`` with its weights).

    Both files are asked for: a project folder may well hold a ``config.yaml`` and a ``meta.json`` of its own.
    """
    try:
        has = {name for name in (RunFolder.CONFIG, RunFolder.LAST, RunFolder.META, RunFolder.WEIGHTS) if (folder / name).is_file()}
    except OSError:
        return False
    return {RunFolder.CONFIG, RunFolder.LAST} <= has or {RunFolder.META, RunFolder.WEIGHTS} <= has


def enclosing_run(path: str | Path) -> Path | None:
    """The run or backbone folder that ``path`` lies below (not ``path`` itself), if any."""
    try:
        parents = Path(path).expanduser().absolute().parents
    except (OSError, ValueError):
        return None
    return next((a for a in parents if holds_run_or_backbone(a)), None)


def _remove(path: Path) -> None:
    """Delete a file or a folder tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def check_output_file(path: str | Path, what: str) -> Path:
    """:func:`~ssl_toolkit.outputs.check_writable_file`, refusing also a run's or backbone's own files, and the library.

    A report, page, list or embedding written as ``RUN/meta.json`` would destroy the run;
    any of :attr:`RunFolder.RUN_FILES` in a folder holding ``meta.json`` or ``config.yaml``
    is refused.
    """
    from ssl_toolkit.library import refuse_inside_library
    from ssl_toolkit.outputs import refuse_empty

    refuse_empty(path, what)
    path = Path(path).expanduser()
    refuse_inside_library(path, what, "a file outside it")
    folder = RunFolder(path.parent)
    if path.name in RunFolder.RUN_FILES and (folder.meta.is_file() or folder.config.is_file()):
        raise UserError(f"{what} {path} would replace a file of the run or backbone in {path.parent}; choose another name")
    return check_writable_file(path, what)
