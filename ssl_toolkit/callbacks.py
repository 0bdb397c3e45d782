"""Lightning callbacks of a pretraining run: each watches or adds one thing around the training step.

* :class:`OnlineProbe`: a linear classifier on detached features, a progress signal.
* :class:`GradientGuard`: skips an update whose gradients are not finite.
* :class:`SamplePictures`: what the task sees, saved after every epoch.
* :class:`TaskStepEnd`: the task's hook after each step (momentum updates), before a step's checkpoint.
* :class:`RngState`: the random streams saved with every checkpoint and restored on resume.
* :class:`CheckpointOnInterrupt`: ``last.ckpt`` written on Ctrl-C or SIGTERM.
* :class:`ProgressLines`: one log line every N steps where no terminal shows a progress bar.
* :class:`StartupClock`: seconds from the process start to the first training batch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch import nn

from ssl_toolkit.terminal import clock

if TYPE_CHECKING:
    from ssl_toolkit.engine import PretrainModule

MAX_BAD_STEPS = 5  # optimiser steps in a row with non-finite gradients before training stops


def _run_module(pl_module: L.LightningModule) -> PretrainModule:
    """The module Lightning hands to these callbacks: always the run's :class:`~ssl_toolkit.engine.PretrainModule`."""
    return cast("PretrainModule", pl_module)


class OnlineProbe(Callback):
    """A linear classifier trained on detached backbone features next to the pretext task.

    The head is attached to the module as ``online_head`` before the optimiser is built, so
    the main optimiser trains it and checkpoints keep it. The module adds
    :meth:`training_loss` to the task's loss inside its training step (so DDP sees the head
    used in the forward pass); the features are detached, so only the head learns from it.
    It logs ``online_train_top1`` on training batches and ``online_top1`` on the validation split.

    Args:
        feature_dim: Width of the backbone's pooled features.
        num_classes: Classes of the labelled data.
    """

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        self.feature_dim, self.num_classes = feature_dim, num_classes

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from torchmetrics.aggregation import MeanMetric

        module = _run_module(pl_module)
        if getattr(module, "online_head", None) is None:
            module.online_head = nn.Linear(self.feature_dim, self.num_classes)
            # epoch accuracy over labelled images, accumulated on the device (no per-step host sync)
            module.online_top1 = MeanMetric(nan_strategy="disable")
        module.online_probe = self

    @staticmethod
    def _head(module: PretrainModule) -> nn.Module:
        """The linear head :meth:`setup` attached to ``module``."""
        if module.online_head is None:
            raise RuntimeError("OnlineProbe.setup() attaches the online head before training")
        return module.online_head

    def training_loss(self, pl_module: PretrainModule, x: torch.Tensor, y: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy of the head on detached features, over the labelled images (``y >= 0``).

        Unlabelled images are weighted out rather than indexed out, so the host never waits
        for their number; a batch without labels adds exactly 0.

        Args:
            x: ``(B, C, S, S)`` (or ``(B, V, C, S, S)`` views) in [0, 1].
            y: ``(B,)`` labels, ``-1`` where unknown.
            feats: ``(B, D)`` features the task already computed, or ``None``.
        """
        if feats is None:
            with torch.no_grad():
                feats = pl_module.backbone(pl_module.task.normalize(x if x.dim() == 4 else x[:, 0]))
        keep = (y >= 0).float()  # (B,)
        logits = self._head(pl_module)(feats.detach().float())  # (B, K)
        per_image = F.cross_entropy(logits, y.clamp_min(0), reduction="none")  # (B,)
        pl_module.online_top1.update((logits.argmax(1) == y).float(), keep)
        pl_module.log("online_train_top1", pl_module.online_top1, on_step=False, on_epoch=True)
        return (per_image * keep).sum() / keep.sum().clamp_min(1.0)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x_u8, y = batch
        keep = y >= 0
        if not keep.any():
            return
        module = _run_module(pl_module)
        feats = module.backbone(module.task.normalize(module.to_unit(x_u8)))  # (B, D)
        acc = (self._head(module)(feats.float()[keep]).argmax(1) == y[keep]).float().mean()
        module.log("online_top1", acc, on_step=False, on_epoch=True, sync_dist=True, prog_bar=True, batch_size=int(keep.sum()))


class GradientGuard(Callback):
    """Stops at a non-finite loss; skips an update whose gradients are not finite although the loss was.

    Both are checked with one host synchronisation per step (the module leaves the step's
    task loss in ``step_loss``). The gradients are dropped (the optimiser leaves parameters
    without a gradient untouched), so one bad batch cannot write NaN into the weights;
    after :data:`MAX_BAD_STEPS` in a row training stops, keeping the last good checkpoint.
    ``skipped_steps`` counts the skipped updates.
    """

    def __init__(self) -> None:
        self.skipped_steps = 0
        self._bad_in_a_row = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        module = _run_module(pl_module)
        named = [(n, p.grad) for n, p in module.named_parameters() if p.grad is not None]
        loss = module.step_loss if module.step_loss is not None else torch.zeros((), device=module.device)
        grad_max = (
            torch.nn.utils.get_total_norm([g for _, g in named], float("inf")) if named else loss.new_zeros(())
        )  # max |g|: NaN/inf propagate
        finite = torch.isfinite(torch.stack([loss.float(), grad_max.float().to(loss.device)]))  # (2,)
        if bool(finite.all()):  # the step's only host sync
            self._bad_in_a_row = 0
            return
        if not finite[0]:  # a non-finite loss stops at once, before the update
            raise FloatingPointError(f"loss is {loss.item()} at step {trainer.global_step}")
        first = next(n for n, g in named if not torch.isfinite(g).all())
        self.skipped_steps += 1
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= MAX_BAD_STEPS:
            raise FloatingPointError(f"gradients are not finite ({first}) for {MAX_BAD_STEPS} steps in a row at step {trainer.global_step}")
        for p in module.parameters():
            p.grad = None


class SamplePictures(Callback):
    """After every epoch, the task draws what it sees for a few training images into ``out_dir``.

    Args:
        images: ``(B, C, H, W)`` uint8 training images.
        out_dir: ``<run>/samples``.
    """

    def __init__(self, images: torch.Tensor, out_dir: Path) -> None:
        self.images, self.out_dir = images, out_dir

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        module = _run_module(pl_module)
        was_training = module.training
        module.eval()
        with torch.no_grad():
            x = module.to_unit(self.images.to(module.device))
            module.task.save_samples(module.backbone, x, self.out_dir, int(trainer.current_epoch))
        module.train(was_training)


class TaskStepEnd(Callback):
    """Runs the task's step-end hook (momentum updates of target networks) after each training step.

    As a callback it runs before Lightning's ``ModelCheckpoint`` callbacks, which Lightning
    orders last, so a ``last.ckpt`` written after a step (``trainer.checkpoint_every_n_steps``,
    ``checkpoint_every_minutes``) holds the target networks as that step left them; a
    LightningModule hook would run after the save, and a resume would miss one update.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        _run_module(pl_module).task_step_end()


class RngState(Callback):
    """Saves torch's RNG and the task's view generator with every checkpoint; restores them on resume.

    The checkpoint holds rank 0's state (a save must not wait on a collective: a Ctrl-C saves
    wherever each process is). Under DDP rank 0 continues its streams exactly, and every other
    rank reseeds both from that state and its rank: streams distinct per rank, as in the run
    before the resume, and the same on every resume, but not those the rank would have drawn.
    """

    KEY = "ssl_rng"

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        gen = _run_module(pl_module).task.generator
        checkpoint[self.KEY] = {"torch": torch.get_rng_state(), "views": None if gen is None else gen.get_state()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restored = checkpoint.get(self.KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._restored:
            return
        gen = _run_module(pl_module).task.generator
        views = self._restored.get("views")
        if trainer.global_rank == 0:
            torch.set_rng_state(self._restored["torch"])  # continue the random streams of the interrupted run
            if gen is not None and views is not None:
                gen.set_state(views)
            return
        import hashlib

        saved = self._restored["torch"].numpy().tobytes() + (b"" if views is None else views.numpy().tobytes())
        seed = int.from_bytes(hashlib.sha256(saved + f"rank {trainer.global_rank}".encode()).digest()[:8], "little") >> 1
        torch.manual_seed(seed)  # not rank 0's streams again: each rank its own views, as before the resume
        if gen is not None:
            gen.manual_seed(seed + 1)


class ConfigRecord(Callback):
    """Saves the run's settings that a resume may not change with every checkpoint (``KEY``, JSON text).

    A resume compares them with ``config.yaml`` (:func:`ssl_toolkit.resume.check_unedited`):
    the optimiser and scheduler state a checkpoint restores would otherwise override an edited
    learning rate, say, while ``config.yaml`` kept the edit.

    Args:
        fixed: Those settings (:func:`ssl_toolkit.resume.fixed_settings` of the resolved config).
    """

    KEY = "ssl_config"

    def __init__(self, fixed: dict[str, Any]) -> None:
        import json

        self.text = json.dumps(fixed, sort_keys=True, default=str)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.KEY] = self.text


class EpochEndCheckpoint(Callback):
    """Makes the epoch-end ``last.ckpt`` a clean boundary between two epochs.

    Lightning saves it in ``on_train_epoch_end``, before it logs the epoch-level metrics
    (``loss_epoch``, ``pretext_acc``...) and before it counts the epoch as completed. So:

    - on save, the epoch's ``metrics.csv`` row goes into the checkpoint (``KEY``); a kill
      before Lightning logs it would otherwise lose it (so would a Ctrl-C after the epoch's
      last step, whose checkpoint carries the row Lightning was about to log; one process
      only: under DDP that row needs a collective, and a Ctrl-C'd run goes without it), and
      :func:`ssl_toolkit.trainer.restore_metrics` writes it back on resume;
    - on load, the epoch is marked completed and the per-epoch counters zeroed. Lightning's
      own restart finishes the epoch except under a ``max_steps`` limit (iteration-based
      training), where it takes the restored epoch's batch counters for the new epoch's,
      finds it already at its last batch, and trains nothing;
    - an epoch that ``trainer.max_steps`` or the time budget cut short is saved the same way
      but carries no row, and on load it is marked not processed, so a resume goes on inside
      it (Lightning would start the next epoch; :func:`ssl_toolkit.trainer.restore_metrics`
      drops the cut epoch's partial row).
    """

    KEY = "ssl_epoch_row"

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

        try:  # Lightning's internals: a version without them saves the checkpoint without the row
            connector, results = trainer._logger_connector, trainer._results
            if results is None:
                return
            if connector._first_loop_iter is None:  # the epoch-end save
                if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                    return  # an epoch cut short (max_steps, the time budget): a resume trains the rest, and logs its row
                row = convert_tensors_to_scalars(connector.metrics["log"])
                step = trainer.fit_loop.epoch_loop._batches_that_stepped - 1  # Lightning's step of epoch rows
            elif trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # interrupted after the epoch's last step
                if trainer.world_size > 1:
                    return  # DDP: the row's sync is a collective, and the processes may be a collective apart
                row = convert_tensors_to_scalars(results.metrics(False)["log"])  # the epoch row Lightning was about to log
                step = trainer.global_step - 1  # the same step: that last batch is not yet counted as stepped here
            else:
                return  # mid-epoch: every row logged so far is already flushed
        except (AttributeError, KeyError):
            return
        if row:
            checkpoint[self.KEY] = {**row, "epoch": int(trainer.current_epoch), "step": int(step)}

    @staticmethod
    def cut_epoch(checkpoint: dict[str, Any]) -> int | None:
        """The epoch a checkpoint's run ended inside (``trainer.max_steps``, the time budget), else ``None``."""
        fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
        if not epochs or not batches or batches.get("is_last_batch"):
            return None
        return int(checkpoint["epoch"]) if epochs["total"]["completed"] == epochs["total"]["processed"] - 1 else None

    @classmethod
    def trained(cls, checkpoint: dict[str, Any]) -> tuple[int, bool]:
        """The epochs a checkpoint has trained to their last batch, and whether it holds part of the next.

        As a resume reads it: an epoch-end save, or a save after an epoch's last step, counts
        that epoch; a save inside an epoch (Ctrl-C, the timer, ``max_steps``) counts the part.
        """
        fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
        if not epochs or not batches:  # without Lightning's loop state: its epoch count alone
            return int(checkpoint["epoch"]), False
        done = int(epochs["total"]["completed"])
        if cls.cut_epoch(checkpoint) is not None:
            return done, True
        if batches.get("is_last_batch"):
            return done + 1, False
        return done, int(batches["current"]["completed"]) > 0

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        fit = checkpoint.get("loops", {}).get("fit_loop", {})
        epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
        if not epochs or not batches:
            return
        try:
            self._mark_epochs(epochs, batches, fit, checkpoint)
        finally:
            self._logging_step(fit, epochs, batches, int(checkpoint.get("global_step", 0)), trainer.max_steps != -1)

    @staticmethod
    def _logging_step(fit: dict[str, Any], epochs: dict[str, Any], batches: dict[str, Any], global_step: int, by_steps: bool) -> None:
        """Set the restored logging step (``_batches_that_stepped``, the metrics' ``step``) from the optimiser steps.

        Lightning adds one on restart when it resumes inside an epoch (or under ``max_steps``)
        and the batch counters do not say the last batch finished: it takes the save for one
        made in ``on_train_batch_end``, before that batch is counted. A save where a step was
        cut short (Ctrl-C), or one made as a resumed run started, before that addition, counted
        otherwise, and each such resume moved the step column by one. One step per batch (no
        gradient accumulation): the optimiser steps are the batches stepped.
        """
        state = fit.get("epoch_loop.state_dict")
        if not isinstance(state, dict) or "_batches_that_stepped" not in state:
            return
        total, epoch = batches["total"], epochs["current"]
        finished = total["started"] == total["ready"] and total["processed"] == total["started"] == total["completed"]
        restarting = by_steps or epoch["ready"] != epoch["processed"] or epoch["started"] != epoch["processed"]
        state["_batches_that_stepped"] = max(0, global_step - (1 if restarting and not finished else 0))

    def _mark_epochs(self, epochs: dict[str, Any], batches: dict[str, Any], fit: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        if self.cut_epoch(checkpoint) is not None:
            # saved as the cut epoch ended: not processed, so that Lightning goes on inside it
            # instead of starting the next
            for counters in (epochs["total"], epochs["current"]):
                counters["processed"] = counters["completed"]
            return
        if epochs["total"]["completed"] != epochs["total"]["processed"] - 1 or not batches.get("is_last_batch"):
            return  # a mid-epoch checkpoint (Ctrl-C, the timer, every N steps): Lightning resumes it as it is
        for counters in (epochs["total"], epochs["current"]):
            counters["completed"] = counters["processed"]
        for progress in (batches, fit.get("epoch_loop.scheduler_progress")):
            if progress:
                progress["current"] = dict.fromkeys(progress["current"], 0)
        batches["is_last_batch"] = False


class CheckpointOnInterrupt(Callback):
    """Writes ``last.ckpt`` when training is interrupted (Ctrl-C / SIGINT, SIGTERM, SIGUSR1).

    Under DDP the first process writes it without any collective (the processes may have
    stopped a collective apart), and SIGTERM stops each process where it arrives, as Ctrl-C.
    A failed step (non-finite loss, any other error) writes nothing, so the last good
    checkpoint stays as it was.

    A step cut short before its optimiser step is trained again on resume, so the file must
    hold the state from before that step: what a step changes ahead of its optimiser step
    (buffers such as batch-norm statistics and MoCo's queue, frozen target networks, the
    random streams that draw its views) is kept at each step's start and put back before
    the save.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved: bool | None = None  # whether the interrupt's checkpoint was written (None: no interrupt)
        self._kept: list[torch.Tensor] = []  # copies of the step-changed tensors, as the step began
        self._rng: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._steps_at_start: int | None = None  # optimiser steps when the current step began; None between steps
        self.requeue_asked = False  # SIGUSR1 stopped the run (:mod:`ssl_toolkit.requeue`)

    @staticmethod
    def _step_changed(module: nn.Module) -> list[torch.Tensor]:
        """The tensors a step may change before its optimiser step: buffers, and parameters no optimiser trains."""
        return [t.detach() for t in module.buffers()] + [p.detach() for p in module.parameters() if not p.requires_grad]

    @staticmethod
    def _optimiser_steps(trainer: L.Trainer) -> int:
        return int(trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.current.completed)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        tensors = self._step_changed(pl_module)
        if [(t.shape, t.dtype, t.device) for t in tensors] != [(k.shape, k.dtype, k.device) for k in self._kept]:
            self._kept = [t.clone() for t in tensors]
        else:
            for kept, t in zip(self._kept, tensors):
                kept.copy_(t)
        gen = _run_module(pl_module).task.generator
        self._rng = (torch.get_rng_state(), None if gen is None else gen.get_state())
        with contextlib.suppress(AttributeError):  # Lightning's internals: without them nothing is put back
            self._steps_at_start = self._optimiser_steps(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._steps_at_start = None

    def _put_back(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Undo what a step cut short before its optimiser step changed (it trains again on resume)."""
        if self._steps_at_start is None or self._rng is None:
            return
        with contextlib.suppress(AttributeError):
            if self._optimiser_steps(trainer) > self._steps_at_start:
                return  # its optimiser step ran: the resume goes on after it
            tensors = self._step_changed(pl_module)
            if len(tensors) == len(self._kept):
                for t, kept in zip(tensors, self._kept):
                    t.copy_(kept)
            torch.set_rng_state(self._rng[0])
            gen = _run_module(pl_module).task.generator
            if gen is not None and self._rng[1] is not None:
                gen.set_state(self._rng[1])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Make SIGUSR1 stop the run as SIGTERM does (:mod:`ssl_toolkit.requeue`), and, under DDP,
        SIGTERM stop a process where it arrives, as Ctrl-C does (:class:`Terminated`).

        Lightning's own SIGTERM handler broadcasts from inside the signal handler, wherever
        each process happens to be, so the processes' collectives no longer pair up and the
        run can hang instead of saving. Lightning restores the handler it replaced when the
        run ends.
        """
        import signal
        import threading

        from ssl_toolkit.errors import Terminated
        from ssl_toolkit.requeue import REQUEUE_SIGNAL

        if threading.current_thread() is not threading.main_thread():
            return
        if REQUEUE_SIGNAL is not None:  # replaces Lightning's SLURM handler, which saves a checkpoint --resume does not read

            def stop_for_requeue(signum: int, frame: Any) -> None:
                self.requeue_asked = True
                signal.signal(REQUEUE_SIGNAL, signal.SIG_IGN)
                signal.raise_signal(signal.SIGTERM)  # stops the run as SIGTERM does, its checkpoint written

            signal.signal(REQUEUE_SIGNAL, stop_for_requeue)
        if trainer.world_size == 1:
            return
        launcher = trainer.strategy.launcher

        from ssl_toolkit.launcher import launched_by

        parent = launched_by()

        def terminate(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a scheduler may send it to every process, and again
            if launcher is not None:
                launcher.kill(signal.SIGTERM)  # the launching process passes it to the processes it started
            if parent is not None:  # a started process, sent SIGTERM alone: the launching one saves and stops the run
                with contextlib.suppress(OSError):
                    os.kill(parent, signal.SIGTERM)
            raise Terminated

        signal.signal(signal.SIGTERM, terminate)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        with contextlib.suppress(AttributeError):  # Lightning's internals: without them the batch trains again
            loop = trainer.fit_loop.epoch_loop
            processed = int(getattr(loop.batch_progress.current, "processed", loop.batch_progress.current.completed))
            if loop.automatic_optimization.optim_progress.optimizer.step.current.completed > processed:
                loop.batch_progress.increment_processed()  # its optimiser step ran: the resume goes on after it, not with it again
        self._put_back(trainer, pl_module)
        rewind = getattr(getattr(trainer, "train_dataloader", None), "rewind_to", None)
        if callable(rewind):  # a resumable loader: the batch of a step cut short is handed over again on resume
            # processed: batches whose step ran (a Ctrl-C in on_train_batch_end comes after its optimiser step)
            current = trainer.fit_loop.epoch_loop.batch_progress.current
            rewind(int(getattr(current, "processed", current.completed)))
        if trainer.world_size > 1 and isinstance(exception, KeyboardInterrupt):
            # DDP, Ctrl-C or SIGTERM: each process stops wherever the signal finds it, some a
            # collective (a metric sync, a gradient bucket) ahead of others, so the barrier of a
            # Trainer save can wait for ever; the first process writes the file alone.
            if trainer.global_rank == 0:
                trainer.strategy.save_checkpoint(trainer._checkpoint_connector.dump_checkpoint(False), self.path)
            self.saved = True
            return
        before = _written_at(self.path)
        try:
            trainer.save_checkpoint(self.path)  # the first process writes it, then every process meets at a barrier
        except RuntimeError:
            if trainer.world_size == 1:
                raise
            # DDP: a peer that stopped first has left, so a collective fails: the barrier after the
            # write (the file is written), or one before it (it is not); the file says which
        self.saved = trainer.global_rank != 0 or _written_at(self.path) not in (None, before)


def _written_at(path: Path) -> int | None:
    """``path``'s modification time in nanoseconds, ``None`` when it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


class RunProgressBar(TQDMProgressBar):
    """Lightning's progress bar on stderr, counting as :class:`ProgressLines` does.

    Lightning draws its bars on stdout, where a redirected ``ssl pretrain > log`` would
    collect their frames; it numbers epochs from 0 and sizes the bar to the whole epoch
    when ``trainer.max_steps`` ends the run inside it. Here the bar goes to stderr (the
    terminal that chose it), says ``epoch 1/2``, and ends at the run's last step.
    """

    def init_train_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if trainer.max_steps is not None and trainer.max_steps > 0 and bar.total is not None:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed  # batches of this epoch trained before a resume
            bar.total = min(bar.total, done + max(0, trainer.max_steps - trainer.global_step))  # one optimiser step per batch
        bar.set_description(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


class ProgressLines(Callback):
    """One line on stderr every ``every`` steps: epoch, step, loss, images/s and the time left.

    Under ``trainer.max_minutes`` the step total and the time left are those of the budget
    when it ends the run before the planned epochs do.

    Used instead of the progress bar when stderr is not a terminal (CI, ``nohup``, a pipe),
    where a bar writes hundreds of carriage-return frames per epoch.
    """

    def __init__(self, every: int, stream: Any = None) -> None:
        self.every = max(1, every)
        self.stream = stream
        self._t0 = 0.0
        self._step0 = 0
        self._images = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._step0, self._images = time.monotonic(), trainer.global_step, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._images += int(batch[0].shape[0]) * trainer.world_size
        step = trainer.global_step
        total = int(trainer.estimated_stepping_batches)
        if trainer.global_rank != 0 or (step % self.every and step != total):
            return
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        done = max(step - self._step0, 1)
        eta = (total - step) * elapsed / done
        minutes = getattr(getattr(pl_module, "cfg", None), "max_minutes", None)
        progress = getattr(pl_module, "time_progress", None)
        if minutes and callable(progress):  # a wall-clock budget ends the run first when it is shorter
            share = float(progress())
            if share > 0:
                total = min(total, max(step, int(step / share)))
                eta = min(eta, 60.0 * float(minutes) * (1.0 - share))
        loss = trainer.callback_metrics.get("loss_step", trainer.callback_metrics.get("loss"))
        loss_s = f"{float(loss):.4f}" if loss is not None else "-"
        line = (
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  step {step}/{total}  loss {loss_s}  "
            f"{self._images / elapsed:.0f} images/s  ETA {clock(eta)}"
        )
        print(line, file=self.stream or sys.stderr, flush=True)


def process_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or ``None`` where that is unknown."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # from field 3 (state) on
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time in clock ticks
    except (OSError, ValueError, IndexError):
        return None


class StartupClock(Callback):
    """Seconds from the process start (interpreter, imports, data, model, Trainer) to the first training batch.

    Recorded as ``startup_seconds`` in ``meta.json``: what a user waits before training starts.
    """

    def __init__(self) -> None:
        self.seconds: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.seconds is None:
            age = process_seconds()
            self.seconds = None if age is None else round(age, 2)
