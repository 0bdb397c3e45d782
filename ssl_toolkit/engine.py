"""The Lightning engine: one LightningModule joining a backbone and a pretext task, and the Trainer.

Lightning owns the loop, devices (CPU, GPU, DDP over processes and nodes), precision,
checkpointing (``last.ckpt``), CSV metrics and the progress bar. This module only says
what one step computes and how the optimiser and its schedule are built.
"""

from __future__ import annotations

import csv
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch import nn

from ssl_toolkit.backbones import feature_dim
from ssl_toolkit.compile import compile_backbone
from ssl_toolkit.config import TrainerConfig
from ssl_toolkit.precision import resolve_precision
from ssl_toolkit.pretext.base import PretextTask

MAX_BAD_STEPS = 5  # optimiser steps in a row with non-finite gradients before training stops


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up for ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class PretrainModule(L.LightningModule):
    """Backbone + pretext task (+ an online linear probe on detached features).

    Args:
        backbone: timm backbone with pooled output.
        task: The pretext task.
        trainer_cfg: Optimisation settings.
        lr: Resolved learning rate.
        weight_decay: Resolved weight decay.
        optimizer: ``adamw``, ``sgd`` or ``lars``.
        num_classes: Classes of the online probe (0 = no online probe).
        seed: Seed of the task's view generator (offset by the process rank).
        sample_images: ``(B, C, H, W)`` uint8 training images passed to the task's
            :meth:`~ssl_toolkit.pretext.base.PretextTask.save_samples` after every epoch.
        samples_dir: Where those samples go (``<run>/samples``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: PretextTask,
        trainer_cfg: TrainerConfig,
        lr: float,
        weight_decay: float,
        optimizer: str,
        num_classes: int = 0,
        seed: int = 0,
        sample_images: torch.Tensor | None = None,
        samples_dir: Path | None = None,
        processing: Any = None,
    ) -> None:
        super().__init__()
        self.processing = processing  # data.color_space / equalize (ssl_toolkit.data.processing), applied to [0, 1] batches
        self.backbone = backbone
        self.task = task
        self.cfg = trainer_cfg
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        self.seed = seed
        self.online_head = nn.Linear(feature_dim(backbone), num_classes) if num_classes else None
        self.last_loss = float("nan")
        self.sample_images = sample_images
        self._fit_started: float | None = None
        self.samples_dir = samples_dir
        self.skipped_steps = 0  # updates skipped for non-finite gradients
        self._bad_in_a_row = 0

    # ----- training ------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()
        if self.cfg.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        compile_backbone(self.backbone, self.cfg.compile, self.device.type, self.trainer.precision, int(self.trainer.estimated_stepping_batches))
        if hasattr(self.task, "seed_views"):
            self.task.seed_views(self.seed * 1000 + self.global_rank, self.device)

    def on_train_start(self) -> None:
        state = getattr(self, "_restored_rng", None)
        if state:  # continue the random streams of the interrupted run
            torch.set_rng_state(state["torch"])
            gen = getattr(self.task, "generator", None)
            if gen is not None and state.get("views") is not None:
                gen.set_state(state["views"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        gen = getattr(self.task, "generator", None)
        checkpoint["ssl_rng"] = {"torch": torch.get_rng_state(), "views": None if gen is None else gen.get_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_rng = checkpoint.get("ssl_rng")

    def to_unit(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float in [0, 1], processed (colour space, equalisation) when the data config asks."""
        x = x_u8.float().div_(255.0)
        return x if self.processing is None else self.processing(x)

    def training_step(self, batch, batch_idx):
        x_u8, y = batch  # (B, C, S, S) uint8, or (B, V, C, S, S) views cut by the data workers; (B,) long
        x = self.to_unit(x_u8)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logs = self.task(self.backbone, x)
        feats = logs.pop("features", None)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}")
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        for k, v in logs.items():
            self.log(k, v, prog_bar=k == "pretext_acc", on_step=False, on_epoch=True, sync_dist=True)
        if self.online_head is not None and (y >= 0).any():
            if feats is None:
                with torch.no_grad():
                    feats = self.backbone(self.task.normalize(x if x.dim() == 4 else x[:, 0]))
            keep = y >= 0
            logits = self.online_head(feats.detach().float()[keep])
            probe_loss = F.cross_entropy(logits, y[keep])
            self.log("online_train_top1", (logits.argmax(1) == y[keep]).float().mean(), on_step=False, on_epoch=True, sync_dist=True)
            loss = loss + probe_loss
        self.last_loss = float(loss.detach())
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip an update whose gradients are not finite although the loss was.

        The gradients are dropped (the optimiser leaves parameters without a gradient
        untouched), so one bad batch cannot write NaN into the weights; after
        ``MAX_BAD_STEPS`` in a row training stops, keeping the last good checkpoint.
        """
        named = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
        if not named or bool(torch.stack([torch.isfinite(g).all() for _, g in named]).all()):
            self._bad_in_a_row = 0
            return
        first = next(n for n, g in named if not torch.isfinite(g).all())
        self.skipped_steps += 1
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= MAX_BAD_STEPS:
            raise FloatingPointError(f"gradients are not finite ({first}) for {MAX_BAD_STEPS} steps in a row at step {self.global_step}")
        for p in self.parameters():
            p.grad = None

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        total = int(self.trainer.estimated_stepping_batches)
        if self.cfg.max_minutes:  # steps the budget will allow, extrapolated from the share spent
            total = max(self.global_step + 1, int(self.global_step / max(self.time_progress(), 1e-6)))
        self.task.on_train_batch_end(self.backbone, self.global_step, total)

    def on_train_epoch_end(self) -> None:
        if self.sample_images is None or self.samples_dir is None or self.global_rank != 0:
            return
        was_training = self.training
        self.eval()
        with torch.no_grad():
            x = self.to_unit(self.sample_images.to(self.device))
            self.task.save_samples(self.backbone, x, self.samples_dir, int(self.current_epoch))
        self.train(was_training)

    # ----- online probe on the validation split ---------------------------------------
    def validation_step(self, batch, batch_idx):
        if self.online_head is None:
            return
        x_u8, y = batch
        keep = y >= 0
        if not keep.any():
            return
        feats = self.backbone(self.task.normalize(self.to_unit(x_u8)))
        acc = (self.online_head(feats.float()[keep]).argmax(1) == y[keep]).float().mean()
        self.log("online_top1", acc, on_step=False, on_epoch=True, sync_dist=True, prog_bar=True, batch_size=int(keep.sum()))

    # ----- optimiser -----------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.startswith("online_head") else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=0.9)
        elif self.optimizer_name == "lars":
            from lightly.utils.lars import LARS

            opt = LARS(groups, lr=self.lr, momentum=0.9)
        else:
            opt = torch.optim.AdamW(groups, lr=self.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(self.cfg.warmup_epochs * steps_per_epoch)
        if self.cfg.max_minutes:  # a wall-clock budget: the cosine follows the share of the budget spent
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1.0 + math.cos(math.pi * self.time_progress())))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def time_progress(self) -> float:
        """Share of the wall-clock budget (``max_minutes``) spent, in [0, 1]."""
        if self._fit_started is None:
            return 0.0
        return min(1.0, (time.monotonic() - self._fit_started) / (60.0 * float(self.cfg.max_minutes)))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file, fsynced and renamed: a crash mid-write keeps the previous one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import io

        from ssl_toolkit.atomic import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())


class CheckpointOnInterrupt(Callback):
    """Writes ``last.ckpt`` when training is interrupted (Ctrl-C / SIGINT, SIGTERM).

    A failed step (non-finite loss, any other error) writes nothing, so the last good
    checkpoint stays as it was.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            trainer.save_checkpoint(self.path)


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
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def checkpoint_step(path: Path) -> int:
    """The global step stored in a Lightning checkpoint (read with ``weights_only=True``)."""
    from ssl_toolkit.errors import UserError

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception as e:  # noqa: BLE001  (any failure means the checkpoint is unusable)
        raise UserError(f"cannot resume from {path}: the checkpoint is unreadable ({type(e).__name__})") from None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop ``metrics.csv`` rows logged after ``last_step`` (work redone after a resume)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if not r.get("step") or int(float(r["step"])) <= last_step]
    if len(kept) != len(rows):
        from ssl_toolkit.atomic import atomic_write_text
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, buf.getvalue())


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
        ModelCheckpoint(dirpath=run_dir, filename=LAST_NAME, save_top_k=1, enable_version_counter=False,
                        auto_insert_metric_name=False, save_on_train_epoch_end=True, **trigger)
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


def check_lightning_options(cfg: TrainerConfig) -> None:
    """Let Lightning judge accelerator, devices, strategy and precision before anything is written.

    A throwaway Trainer is built with the same options (this starts no process); what
    Lightning refuses becomes a one-line :class:`~ssl_toolkit.errors.UserError`.
    """
    import logging

    from ssl_toolkit.errors import UserError

    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        L.Trainer(**lightning_options(cfg), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)
    except Exception as e:  # noqa: BLE001  (Lightning raises ValueError, TypeError or its own exceptions)
        message = str(e).split(" Find a complete list")[0].replace("`", "'").strip()
        raise UserError(f"trainer options ({_describe(cfg)}): {message}") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def _describe(cfg: TrainerConfig) -> str:
    return f"accelerator={cfg.accelerator}, devices={cfg.devices}, strategy={cfg.strategy}, precision={cfg.precision}"


def build_trainer(cfg: TrainerConfig, run_dir: Path, validate: bool) -> L.Trainer:
    """The Lightning Trainer for a pretraining run writing into ``run_dir``."""
    callbacks: list[Callback] = [*checkpoint_callbacks(cfg, run_dir), CheckpointOnInterrupt(run_dir / f"{LAST_NAME}.ckpt")]
    if cfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2)))
    return L.Trainer(
        **lightning_options(cfg),
        max_epochs=cfg.epochs,
        max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes else None,
        max_steps=cfg.max_steps,
        logger=RunCSVLogger(save_dir=str(run_dir), name="", version=""),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every_n_steps,
        limit_val_batches=1.0 if validate else 0,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
    )
