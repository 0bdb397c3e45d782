"""The Lightning engine: one LightningModule joining a backbone and a pretext task.

This module only says what one step computes and how the optimiser and its schedule are
built; the Trainer is built in :mod:`ssl_toolkit.trainer`, and what happens around the
step (online probe, gradient guard, samples, RNG state) lives in :mod:`ssl_toolkit.callbacks`.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from torch import nn

from ssl_toolkit.chunked import ChunkedBackbone
from ssl_toolkit.compile import compile_backbone
from ssl_toolkit.config import TrainerConfig
from ssl_toolkit.pretext.base import PretextTask
from ssl_toolkit.recompute import set_grad_checkpointing
from ssl_toolkit.small_map_conv import convert_small_map_convs, restore_convs, use_small_map_conv

if TYPE_CHECKING:
    from torchmetrics.aggregation import MeanMetric

    from ssl_toolkit.callbacks import OnlineProbe


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up for ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def use_channels_last(setting: Literal["auto"] | bool, device_type: str, precision: str) -> bool:
    """Whether ``trainer.channels_last`` puts the backbone and batches in channels-last layout.

    ``auto`` is on except for full precision on a CPU: there NCHW measured about 10% faster
    (resnet18's SimCLR step at 28 px, float32), where channels-last was 13% faster in bf16
    (``docs/benchmarks.md``, "Pretraining throughput").

    Args:
        setting: ``true``, ``false`` or ``"auto"``.
        device_type: ``cpu`` or ``cuda``.
        precision: The run's resolved Lightning precision (``32-true``, ``bf16-mixed``, ...).
    """
    if setting != "auto":
        return bool(setting)
    return not (device_type == "cpu" and str(precision).startswith(("32", "64")))


class PretrainModule(L.LightningModule):
    """Backbone + pretext task: what one training step computes, and the optimiser with its schedule.

    Everything around the step is a callback (:mod:`ssl_toolkit.callbacks`): the online
    probe, the non-finite gradient guard, sample pictures, RNG state and checkpoints.

    Args:
        backbone: timm backbone with pooled output.
        task: The pretext task.
        trainer_cfg: Optimisation settings.
        lr: Resolved learning rate.
        weight_decay: Resolved weight decay.
        optimizer: ``adamw``, ``sgd`` or ``lars``.
        seed: Seed of the task's view generator (offset by the process rank).
        processing: Colour space / equalisation applied to ``[0, 1]`` batches (``None`` = none).
    """

    online_top1: MeanMetric  # attached with online_head by the OnlineProbe callback

    def __init__(
        self,
        backbone: nn.Module,
        task: PretextTask,
        trainer_cfg: TrainerConfig,
        lr: float,
        weight_decay: float,
        optimizer: str,
        seed: int = 0,
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
        self.online_head: nn.Module | None = None  # attached by the OnlineProbe callback
        self.online_probe: OnlineProbe | None = None
        self.step_loss: torch.Tensor | None = None  # the task's loss, checked with the gradients by GradientGuard
        self._output_checked = False  # the task's first output is checked once (check_task_output)
        self._fit_started: float | None = None
        self._time_share = 0.0  # of max_minutes, as every process sees it this step (on_train_batch_start)
        chunk = trainer_cfg.backbone_chunk
        self._chunked = ChunkedBackbone(backbone, chunk) if isinstance(chunk, int) else None  # auto: decided in on_fit_start
        self._channels_last = False  # resolved from trainer.channels_last when the fit starts
        self._small_map_convs: list[nn.Conv2d] = []  # converted for the fit (trainer.small_map_conv), restored after

    # ----- training ------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()
        self._channels_last = use_channels_last(self.cfg.channels_last, self.device.type, self.trainer.precision)
        if self._channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if self.cfg.grad_checkpointing:
            set_grad_checkpointing(self.backbone, True)
        planned = self.trainer.estimated_stepping_batches  # inf when neither steps nor epochs bound the run
        compiled = compile_backbone(self.backbone, self.cfg.compile, self.device.type, self.trainer.precision, int(min(planned, 10**12)))
        small_maps = self.cfg.small_map_conv
        auto_after_compile = compiled and small_maps == "auto"  # auto leaves a compiled backbone to inductor
        if use_small_map_conv(small_maps, self.device.type) and not auto_after_compile:
            self._small_map_convs = convert_small_map_convs(self.backbone)
        if self.cfg.backbone_chunk == "auto" and self.device.type == "cpu" and not compiled:
            # measured at the first step (ssl_toolkit/chunked.py); a compiled backbone is left whole
            announce = functools.partial(print, file=sys.stderr, flush=True) if self.global_rank == 0 else None
            self._chunked = ChunkedBackbone(self.backbone, None, self.cfg.activation_memory_mb * 2**20, announce)
        self.task.seed_views(self.seed * 1000 + self.global_rank, self.device)

    def on_fit_end(self) -> None:
        restore_convs(self._small_map_convs)  # the caller gets back the backbone it gave
        self._small_map_convs = []

    def on_train_start(self) -> None:
        # A resumed run's loader state (shards: samples already trained this epoch) is applied by
        # Lightning when it first sets up the training data. Asking for estimated_stepping_batches
        # before the checkpoint is restored (schedules, compile) sets the data up too early, so the
        # state is applied here, after the restore and before the first batch is drawn.
        self.trainer.fit_loop._load_combined_loader_states()
        # A resume restores the rate the saved schedule last set; one with a longer run (more
        # steps, epochs or minutes) lays a new schedule over it, which LambdaLR would apply only
        # after the first step: that step would train at the old schedule's end (near 0).
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                for group, base, rate in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
                    group["lr"] = base * rate(sched.last_epoch)

    @property
    def backbone_chunk(self) -> int | None:
        """Inputs per backbone pass in the training step; ``None``: the whole batch (or ``auto`` not decided yet)."""
        return self._chunked.chunk if self._chunked is not None and self._chunked.chunks else None

    @property
    def step_backbone(self) -> nn.Module | ChunkedBackbone:
        """What the task calls in a training step: the backbone, or the same backbone a chunk at a time (``trainer.backbone_chunk``)."""
        return self.backbone if self._chunked is None else self._chunked

    def to_unit(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float in [0, 1], processed (colour space, equalisation) when the data config asks."""
        x = x_u8.float().div_(255.0)
        return x if self.processing is None else self.processing(x)

    def training_step(self, batch, batch_idx):
        x_u8, y = batch[0], batch[1]  # (B, C, S, S) uint8, or (B, V, C, S, S) views cut by the data workers; (B,) long
        if self._channels_last and x_u8.dim() == 4:
            x_u8 = x_u8.contiguous(memory_format=torch.channels_last)  # change the layout on uint8: 4x fewer bytes
        x = self.to_unit(x_u8)
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op unless processing changed the layout
        output = self.task(self.step_backbone, x)
        if not self._output_checked:
            check_task_output(
                getattr(self.task, "name", type(self.task).__name__), output, len(y) if self.online_probe is not None else None
            )
            self._output_checked = True
        loss, logs = output
        feats = logs.pop("features", None)
        self.step_loss = loss.detach()
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        optimizers = self._trainer.optimizers if self._trainer is not None else []  # a step driven without a Trainer has none
        if optimizers:
            self.log("lr", optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)  # the schedule's rate, a float
        for k, v in logs.items():
            self.log(k, v, prog_bar=k == "pretext_acc", on_step=False, on_epoch=True, sync_dist=True)
        if self.online_probe is not None:  # inside the step, so DDP sees the head used in the forward pass
            loss = loss + self.online_probe.training_loss(self, x, y, feats)
        return loss

    def task_step_end(self) -> None:
        """The task's hook after each step (momentum updates), called by :class:`~ssl_toolkit.callbacks.TaskStepEnd`."""
        total = int(min(self.trainer.estimated_stepping_batches, 10**12))
        if self.cfg.max_minutes:  # steps the budget will allow, extrapolated from the share spent, if fewer than planned
            total = min(total, max(self.global_step + 1, int(self.global_step / max(self.time_progress(), 1e-6))))
        self.task.on_train_batch_end(self.backbone, self.global_step, total)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A ``last.ckpt`` written before MoCo's queue was saved with it resumes with a fresh queue, as it did then."""
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for key, value in self.state_dict().items():
                if key.startswith("task.loss_fn.") and key.endswith((".bank", ".bank_ptr")) and key not in state:
                    state[key] = value

    def validation_step(self, batch, batch_idx):
        """The validation split only serves the online probe, which measures it (``OnlineProbe``)."""
        return None

    # ----- optimiser -----------------------------------------------------------------
    def configure_optimizers(self):
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.startswith("online_head") else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt: torch.optim.Optimizer
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=0.9)
        elif self.optimizer_name == "lars":
            from lightly.utils.lars import LARS

            opt = LARS(groups, lr=self.lr, momentum=0.9)
        else:
            opt = torch.optim.AdamW(groups, lr=self.lr, fused=self.device.type in ("cpu", "cuda"))  # one kernel per tensor
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # an epoch of warm-up is an epoch of the data, also when max_steps ends the run before the epochs
        batches = self.trainer.num_training_batches  # known once estimated_stepping_batches has set the data up
        steps_per_epoch = int(batches) if math.isfinite(batches) and batches > 0 else max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(total, int(self.cfg.warmup_epochs * steps_per_epoch))
        if self.cfg.max_minutes:  # a wall-clock budget: the cosine follows the budget or the steps, whichever ends the run first
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt,
                lambda s: (
                    (s + 1) / warmup
                    if s < warmup
                    else 0.5 * (1.0 + math.cos(math.pi * max(self.time_progress(), (s - warmup) / max(1, total - warmup))))
                ),
            )
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def time_progress(self) -> float:
        """Share of the wall-clock budget (``max_minutes``) spent at this step's start, in [0, 1]; 0 without a budget."""
        return self._time_share if self.cfg.max_minutes else 0.0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.cfg.max_minutes:
            self._time_share = self._spent_share()

    def _spent_share(self) -> float:
        """The budget's share spent so far, before this run's resume too (Lightning's Timer keeps it in ``last.ckpt``).

        Under DDP every process takes the largest share any process measured, so all step with one
        learning rate and one momentum: each process's own clock would let their weights drift apart.
        """
        from lightning.pytorch.callbacks import Timer

        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
        if timer is not None:
            seconds = float(timer.time_elapsed("train"))
        else:
            seconds = 0.0 if self._fit_started is None else time.monotonic() - self._fit_started
        share = min(1.0, seconds / (60.0 * float(self.cfg.max_minutes or 1.0)))
        if self.trainer.world_size > 1:
            share = float(self.trainer.strategy.reduce(torch.tensor(share, device=self.device), reduce_op="max"))
        return share


def check_task_output(task: str, output: Any, batch: int | None) -> None:
    """Refuse, in one line naming the task, a first training step whose output Lightning or the online probe cannot use.

    A task's ``__call__`` returns a pair ``(loss, logs)``: one scalar loss that carries
    gradients and a dict of scalar logs that may hold, for the online probe, ``features``
    with one row per image of the batch (:class:`~ssl_toolkit.pretext.base.PretextTask`).

    Args:
        task: The task's registered name.
        output: What the task returned.
        batch: Images in the batch when the online probe reads ``features`` (``None``: not checked).
    """
    from ssl_toolkit.errors import UserError

    where = f"task '{task}' returned"
    if not isinstance(output, (tuple, list)) or len(output) != 2 or not isinstance(output[1], dict):
        if isinstance(output, (tuple, list)) and len(output) == 2:
            what = f"logs of type {type(output[1]).__name__}"
        elif isinstance(output, (tuple, list)):
            what = f"a {len(output)}-item {type(output).__name__}"
        else:
            what = "None" if output is None else f"a {type(output).__name__}"
        raise UserError(f"{where} {what}; forward() returns a pair (loss, logs): one scalar loss and a dict of scalars to log")
    loss, logs = output
    features = logs.get("features")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise UserError(f"{where} a loss of shape {shape}; a task returns one floating-point scalar loss")
    if torch.is_grad_enabled() and not loss.requires_grad:
        raise UserError(f"{where} a loss that carries no gradient (detached); the backbone would not learn")
    for key, value in logs.items():
        if key != "features" and isinstance(value, torch.Tensor) and value.numel() != 1:
            raise UserError(f"{where} log '{key}' of shape {tuple(value.shape)}; logged values are scalars")
    if (
        batch is not None
        and features is not None
        and (not isinstance(features, torch.Tensor) or features.dim() != 2 or len(features) != batch)
    ):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise UserError(f"{where} features of shape {shape} for a batch of {batch} images; the online probe needs (batch, dim)")
