"""The Lightning Trainer of a pretraining run: devices, precision, checkpoints, loggers, callbacks.

Lightning owns the loop, devices (CPU, GPU, DDP over processes and nodes), precision,
checkpointing and metrics; this module chooses its options for a run folder and checks
them before anything is written.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from ssl_toolkit.callbacks import CheckpointOnInterrupt, EpochEndCheckpoint
from ssl_toolkit.config import TrainerConfig
from ssl_toolkit.devices import CPU_PROCESSES_PER_CORE, usable_cores
from ssl_toolkit.launcher import end_stopped_runs_by_their_signal
from ssl_toolkit.precision import resolve_precision
from ssl_toolkit.ranks import is_primary_process, slurm_tasks

if TYPE_CHECKING:
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file, fsynced and renamed: a crash mid-write keeps the previous one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import io

        from ssl_toolkit.atomic import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but it continues an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])


class RunCSVLogger(CSVLogger):
    """CSV metrics written straight into the run folder, continued across resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:  # CSVLogger's type; the writer made here is an ExperimentWriter
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def restore_metrics(metrics: Path, ckpt: Path) -> None:
    """Make ``metrics.csv`` match the checkpoint a run resumes from.

    Rows logged after the checkpoint's step are dropped (that work is redone), and the epoch
    row the checkpoint carries (:class:`ssl_toolkit.callbacks.EpochEndCheckpoint`) is
    written back when a kill came before Lightning logged it.
    """
    from ssl_toolkit.errors import UserError

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        last_step, pending = int(state["global_step"]), state.get("ssl_epoch_row")
        cut = EpochEndCheckpoint.cut_epoch(state)
    except Exception as e:  # noqa: BLE001  (any failure means the checkpoint is unusable)
        raise UserError(f"cannot resume from {ckpt}: the checkpoint is unreadable ({type(e).__name__})") from None
    fields: list[str] = []
    rows: list[dict] = []
    if metrics.is_file():
        with open(metrics, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = list(reader.fieldnames or []), list(reader)
    kept = [r for r in rows if not r.get("step") or int(float(r["step"])) <= last_step]
    if cut is not None:  # the summary and validation rows of an epoch cut short: the resume trains the rest and logs them
        kept = [r for r in kept if r.get("loss_step") or r.get("epoch") != str(cut)]
    changed = len(kept) != len(rows)
    if not _epoch_row(pending):
        pending = None  # a checkpoint without a usable row: nothing to write back
    elif cut is not None and int(pending["epoch"]) == int(cut):
        pending = None  # the cut epoch's own partial row (older checkpoints kept it): the resume logs the whole epoch's
    if pending is not None and not any(_same_row(r, pending) for r in kept):
        kept.append({k: str(v) for k, v in pending.items()})
        fields = sorted(set(fields) | set(pending))  # Lightning's writer sorts its columns too
        changed = True
    if not changed:
        return
    import io

    from ssl_toolkit.atomic import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(metrics, buf.getvalue())


def last_logged(metrics: Path) -> dict[str, float]:
    """Each metric's last value in ``metrics.csv`` (its columns but ``epoch`` and ``step``); ``{}`` without the file.

    What Lightning's ``callback_metrics`` holds at the end of a run, for a resume that trained no
    step (its final backbone save had failed): that process logged nothing itself.
    """
    import math

    last: dict[str, float] = {}
    try:
        with open(metrics, newline="") as f:
            for row in csv.DictReader(f):
                for key, text in row.items():
                    if key in (None, "epoch", "step") or not text:
                        continue
                    try:
                        value = float(text)
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        last[str(key)] = value
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return last


def _epoch_row(row: Any) -> bool:
    """Whether a checkpoint's ``ssl_epoch_row`` has the shape ``EpochEndCheckpoint`` writes: scalars with epoch and step."""
    return (
        isinstance(row, dict)
        and {"epoch", "step"} <= set(row)
        and len(row) > 2
        and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in row.items())
    )


def _same_row(row: dict, pending: dict) -> bool:
    """Whether a ``metrics.csv`` row is the logged form of the pending epoch row."""
    metric = next((k for k in pending if k not in ("epoch", "step")), None)
    return (
        metric is not None
        and bool(row.get(metric))
        and row.get("epoch") == str(pending["epoch"])
        and row.get("step") == str(pending["step"])
    )


def checkpoint_callbacks(cfg: TrainerConfig, run_dir: Path) -> list[ModelCheckpoint]:
    """``last.ckpt`` at every epoch end, every ``checkpoint_every_minutes`` and every ``checkpoint_every_n_steps``.

    Each trigger is one Lightning ``ModelCheckpoint`` (its triggers are mutually exclusive)
    keeping its single latest save under the fixed name ``last.ckpt``; all write through
    :class:`AtomicCheckpointIO`, so a kill mid-write keeps the previous file.
    """
    triggers: list[dict] = [{"every_n_epochs": 1}]
    if cfg.checkpoint_every_minutes:
        triggers.append({"train_time_interval": timedelta(minutes=cfg.checkpoint_every_minutes)})
    if cfg.checkpoint_every_n_steps:
        triggers.append({"every_n_train_steps": cfg.checkpoint_every_n_steps})
    return [
        ModelCheckpoint(
            dirpath=run_dir,
            filename=LAST_NAME,
            save_top_k=1,
            enable_version_counter=False,
            auto_insert_metric_name=False,
            save_on_train_epoch_end=True,
            **trigger,
        )
        for trigger in triggers
    ]


LAST_NAME = "last"  # ``last.ckpt``


def lightning_options(cfg: TrainerConfig) -> dict:
    """The device, precision and strategy options of the Trainer, as Lightning takes them."""
    return {
        "accelerator": cfg.accelerator,
        "devices": cfg.devices,
        "num_nodes": cfg.num_nodes,
        "strategy": cfg.strategy,
        "precision": resolve_precision(cfg.precision, cfg.accelerator),
    }


def check_accelerator(name: str) -> None:
    """Refuse an accelerator Lightning does not know (with a did-you-mean) or this machine does not have."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    from ssl_toolkit.errors import UserError, did_you_mean

    known = sorted(set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"})
    if name not in known:
        raise UserError(f"accelerator={name} is not one Lightning knows ({', '.join(known)}){did_you_mean(name, known)}")
    if name in ("auto", "cpu"):
        return
    wanted = ("cuda", "mps") if name == "gpu" else (name,)
    try:
        present = any(AcceleratorRegistry.get(w).is_available() for w in wanted)
    except Exception:  # noqa: BLE001  (tpu: its package is missing, so it cannot run here)
        present = False
    if not present:
        devices = "GPU (CUDA or Apple MPS)" if name == "gpu" else f"{name.upper()} device torch can use"
        raise UserError(f"accelerator={name}: this machine has no {devices}; use cpu or auto")


def check_lightning_options(cfg: TrainerConfig, settings: tuple[str, ...] = ("accelerator", "devices", "strategy", "precision")) -> None:
    """Let Lightning judge accelerator, devices, strategy and precision before anything is written.

    A throwaway Trainer is built with the same options (this starts no process); what
    Lightning refuses becomes a one-line :class:`~ssl_toolkit.errors.UserError` that names
    ``settings`` (those the command takes).
    """
    import logging

    from ssl_toolkit.errors import UserError

    check_accelerator(cfg.accelerator)
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        trial = L.Trainer(
            **lightning_options(cfg), logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
        )
    except Exception as e:  # noqa: BLE001  (Lightning raises ValueError, TypeError or its own exceptions)
        message = str(e).split(" Find a complete list")[0].replace("`", "'").strip()
        raise UserError(f"trainer options ({_describe(cfg, settings)}): {message}") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    launcher = type(getattr(trial.strategy, "launcher", None)).__name__
    if "MultiProcessing" in launcher:  # ddp_spawn, ddp_fork, ddp_notebook: results stay in the spawned processes
        raise UserError(
            f"trainer options ({_describe(cfg, settings)}): a strategy that spawns its processes is not supported "
            "(the run's results and checkpoints stay in them); use strategy=ddp"
        )
    environment = type(getattr(trial.strategy, "cluster_environment", None)).__name__
    if trial.num_nodes > 1 and environment == "LightningEnvironment" and "MASTER_ADDR" not in os.environ:
        raise UserError(
            f"trainer options ({_describe(cfg, settings)}): {trial.num_nodes} nodes need every node started by torchrun or SLURM "
            "(or MASTER_ADDR, MASTER_PORT and NODE_RANK set); see docs/scaling.md, Several nodes"
        )
    expected = trial.num_nodes * trial.num_devices
    tasks = slurm_tasks()
    if tasks is not None and tasks != expected and (environment == "SLURMEnvironment" or os.environ.get("SLURM_PROCID", "0") != "0"):
        # Lightning takes the world size from SLURM_NTASKS and would wait for ever for the missing processes
        raise UserError(
            f"trainer options ({_describe(cfg, settings)}, num_nodes={trial.num_nodes}): SLURM started {tasks} task{'s' if tasks != 1 else ''} "
            f"(SLURM_NTASKS) and the run takes {expected} process{'es' if expected != 1 else ''} (devices x num_nodes): "
            "match them (srun's --ntasks-per-node to --devices, its --nodes to --num-nodes), or set SLURM_JOB_NAME=interactive to start the processes another way"
        )
    from lightning.pytorch.accelerators import CPUAccelerator

    if cfg.sync_batchnorm and isinstance(trial.accelerator, CPUAccelerator):
        raise UserError(
            f"trainer options ({_describe(cfg, settings)}): sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on a CPU)"
        )
    note = oversubscription_line(trial)
    cores = usable_cores()
    if note is not None and trial.num_devices > CPU_PROCESSES_PER_CORE * cores:
        raise UserError(
            f"trainer options ({_describe(cfg, settings)}): {trial.num_devices} CPU processes on {cores} cores; at most "
            f"{CPU_PROCESSES_PER_CORE * cores} ({CPU_PROCESSES_PER_CORE} per core): on CPU, devices counts processes, each a full copy of the model"
        )
    if note is not None and is_primary_process():  # the processes a DDP launcher starts run this check too
        print(note, file=sys.stderr, flush=True)


def oversubscription_line(trainer: L.Trainer) -> str | None:
    """One line when a CPU run starts more processes than the machine has cores, else ``None``.

    On CPU, Lightning's ``devices`` counts processes, not cores or threads.
    """
    from lightning.pytorch.accelerators import CPUAccelerator

    cores = usable_cores()
    processes = trainer.num_devices
    if not isinstance(trainer.accelerator, CPUAccelerator) or processes <= cores:
        return None
    return (
        f"trainer: {processes} CPU processes on {cores} cores share them (on CPU, devices counts processes, each a full copy of the model)"
    )


@contextmanager
def lightning_interrupts(trainer: L.Trainer, after: Callable[[], str]) -> Iterator[None]:
    """Turn Lightning's graceful stop on Ctrl-C (``SystemExit``) and SIGTERM into :class:`Interrupted` (exit 130, 143).

    Args:
        trainer: The Trainer whose ``fit`` runs in the block.
        after: What the message says after the step, e.g. where the checkpoint is (asked
            once the interrupt is handled, when it is known whether a checkpoint was written).
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ssl_toolkit.errors import Interrupted, Terminated

    try:
        yield
    except SIGTERMException:
        raise Interrupted(f"terminated at step {trainer.global_step}; {after()}", 143) from None
    except SystemExit as e:
        if not trainer.interrupted:
            raise
        # Ctrl-C: Lightning shut down gracefully, and exits while handling the interrupt
        if isinstance(e.__context__, Terminated):  # SIGTERM to a multi-process run, stopped as Ctrl-C is
            raise Interrupted(f"terminated at step {trainer.global_step}; {after()}", 143) from None
        raise Interrupted(f"interrupted at step {trainer.global_step}; {after()}", 130) from None


def quiet_lightning() -> None:
    """Keep Lightning's banners and tips (devices, loggers, stepping estimates) off the output.

    Importing ``lightning.pytorch`` sets its logger to INFO, so this runs after the import,
    before a Trainer is built.
    """
    import logging

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _describe(cfg: TrainerConfig, settings: tuple[str, ...] = ("accelerator", "devices", "strategy", "precision")) -> str:
    return ", ".join(f"{key}={getattr(cfg, key)}" for key in settings)


def build_loggers(cfg: TrainerConfig, run_dir: Path, resume: bool = False) -> list:
    """``metrics.csv`` always, plus the experiment logger ``cfg.logger`` names (:mod:`ssl_toolkit.loggers`)."""
    from ssl_toolkit.loggers import experiment_logger

    loggers: list = [RunCSVLogger(save_dir=str(run_dir), name="", version="")]
    extra = experiment_logger(cfg.logger, run_dir, resume, quiet=not cfg.progress_bar)
    return loggers if extra is None else [*loggers, extra]


def progress_callbacks(cfg: TrainerConfig) -> list[Callback]:
    """A progress bar on a terminal; one line every ``progress_every_n_steps`` elsewhere (CI, pipes, ``nohup``)."""
    import sys

    from ssl_toolkit.callbacks import ProgressLines, RunProgressBar

    if not cfg.progress_bar:
        return []
    if sys.stderr.isatty():
        return [RunProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2))]
    return [ProgressLines(cfg.progress_every_n_steps)]


def build_trainer(
    cfg: TrainerConfig, run_dir: Path, validate: bool, callbacks: list[Callback] | None = None, resume: bool = False
) -> L.Trainer:
    """The Lightning Trainer for a pretraining run writing into ``run_dir``.

    Args:
        cfg: Trainer settings.
        run_dir: The run folder (``last.ckpt``, ``metrics.csv``).
        validate: Run the validation split each epoch (for the online probe).
        callbacks: The run's own callbacks (online probe, gradient guard, ...), added to the
            checkpoint and progress callbacks.
        resume: The run goes on from its ``last.ckpt``: an MLflow or W&B logger continues its run.
    """
    callbacks = [*(callbacks or []), *checkpoint_callbacks(cfg, run_dir), CheckpointOnInterrupt(run_dir / f"{LAST_NAME}.ckpt")]
    callbacks += progress_callbacks(cfg)
    bar = any(isinstance(c, TQDMProgressBar) for c in callbacks)
    trainer = L.Trainer(
        **lightning_options(cfg),
        max_epochs=cfg.epochs,
        max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes else None,
        max_steps=cfg.max_steps,
        sync_batchnorm=cfg.sync_batchnorm,
        logger=build_loggers(cfg, run_dir, resume),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_progress_bar=bar,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every_n_steps,
        limit_val_batches=1.0 if validate else 0,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
    )
    end_stopped_runs_by_their_signal(trainer)  # a Ctrl-C before the first step: exit 130, not Lightning's SIGKILL
    return trainer
