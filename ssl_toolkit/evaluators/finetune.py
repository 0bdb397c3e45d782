"""Partial and full fine-tuning through the Lightning Trainer.

Both evaluators train a linear head on the backbone's pooled output, with the
``--augment`` policy (default ``basic``: random resized crop + horizontal flip on the
device; :mod:`ssl_toolkit.data.policies`), AdamW and a warm-up + cosine schedule. The head
and loss follow the target kind (:mod:`ssl_toolkit.evaluators.targets`); for binary and
multi-label targets 10% of the training labels are held out to choose the thresholds.
They differ only in :meth:`trainable_parameters`:

- ``partial`` (Yosinski et al., 2014; Zhang et al., 2016): the stem and the first ``K``
  stages of the timm backbone are frozen, weights *and* BatchNorm statistics (their
  modules stay in eval mode while the rest trains);
- ``finetune``: every weight trains, optionally with layer-wise learning-rate decay
  (Clark et al., 2020; Bao et al., 2022) over timm's layer grouping (blocks of a ResNet
  or ConvNeXt, transformer blocks of a ViT): the last layer gets ``lr * d``, the one
  before ``lr * d**2``, down to the stem.

In both, the new linear head learns at ``HEAD_LR_SCALE * lr`` (it starts from random
weights while the backbone starts from trained ones).

With ``--random-init``, ``finetune`` is the supervised-from-scratch baseline.
Default length: ``DEFAULT_EPOCHS`` epochs, or more when that would be fewer than
``MIN_STEPS`` optimiser steps (a 10% label fraction of a small dataset is one batch per
epoch). The test split is only scored, once, after training; it never steers training.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from pydantic import Field, field_validator
from timm.models import group_parameters
from torch import nn

from ssl_toolkit.backbones import Stage, feature_dim, stages
from ssl_toolkit.config import ProbeConfig
from ssl_toolkit.data.loaders import split_loader
from ssl_toolkit.data.policies import build_augment, check_augment
from ssl_toolkit.engine import warmup_cosine
from ssl_toolkit.errors import UserError
from ssl_toolkit.eval.features import FeatureCache, Preprocess
from ssl_toolkit.evaluators import targets
from ssl_toolkit.evaluators.base import EvalContext, Evaluator, EvaluatorConfig, register_evaluator
from ssl_toolkit.recompute import check_grad_checkpointing, set_grad_checkpointing
from ssl_toolkit.small_map_conv import convert_small_map_convs, restore_convs, use_small_map_conv
from ssl_toolkit.trainer import lightning_interrupts, quiet_lightning

if TYPE_CHECKING:
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

DEFAULT_EPOCHS = 10
MIN_STEPS = 100  # default length: at least this many optimiser steps (small label fractions)
DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.1
HEAD_LR_SCALE = 10.0  # the freshly initialised head learns faster than the pretrained weights
MAX_LR = 1e3  # far above any rate AdamW trains at; much larger ones overflow its float32 step (a traceback, not a result)


def stage_of(name: str, groups: list[Stage]) -> int:
    """Index of the stage holding parameter ``name`` in ``[stem, s1, ..., sN]``; ``N + 1`` for later modules."""
    for i, st in enumerate(groups):
        if st.owns(name):
            return i
    return len(groups)


def layer_ids(backbone: nn.Module) -> dict[str, int]:
    """Layer index (0 = stem) of every backbone parameter for layer-wise lr decay.

    timm's ``group_matcher(coarse=False)`` (the grouping of its own
    ``param_groups_layer_decay``) where the model has one, else the :func:`stages` index.
    Parameters the matcher leaves out go to the last layer.
    """
    names = [n for n, _ in backbone.named_parameters()]
    group_matcher = getattr(backbone, "group_matcher", None)
    if group_matcher is not None:
        ids = group_parameters(backbone, group_matcher(coarse=False), reverse=True)
    else:
        groups = stages(backbone)
        ids = {n: stage_of(n, groups) for n in names}
    last = max(ids.values(), default=0)
    return {n: ids.get(n, last) for n in names}


class FinetuneModule(L.LightningModule):
    """Backbone + linear head trained on augmented views; frozen modules are kept in eval mode.

    Args:
        backbone: timm backbone with pooled output.
        head: ``nn.Linear(num_features, K)``.
        pre: uint8 -> normalised backbone input.
        augment: The ``--augment`` policy, ``(B, C, S, S)`` uint8 -> augmented uint8
            (:func:`~ssl_toolkit.data.policies.build_augment`); :attr:`pre` adapts and
            normalises its output.
        kind: Target kind (:mod:`~ssl_toolkit.evaluators.targets`): softmax or sigmoid loss.
        param_groups: Optimiser groups (``params``, ``lr``, ``weight_decay``).
        frozen_modules: Backbone modules whose BatchNorm statistics must not move.
        warmup_fraction: Share of the steps spent warming up.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Linear,
        pre: Preprocess,
        augment: nn.Module,
        kind: str,
        param_groups: list[dict[str, Any]],
        frozen_modules: list[nn.Module],
        warmup_fraction: float = WARMUP_FRACTION,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pre = pre
        self.augment = augment
        self.kind = kind
        self.param_groups = param_groups
        self.frozen_modules = frozen_modules
        self.warmup_fraction = warmup_fraction
        self._small_map_convs: list[nn.Conv2d] = []

    def on_fit_start(self) -> None:
        if use_small_map_conv("auto", self.device.type):  # the same result, faster on small maps (ssl_toolkit/small_map_conv.py)
            self._small_map_convs = convert_small_map_convs(self.backbone)

    def on_fit_end(self) -> None:
        restore_convs(self._small_map_convs)
        self._small_map_convs = []

    def train(self, mode: bool = True) -> FinetuneModule:
        super().train(mode)
        for m in self.frozen_modules:  # frozen BatchNorm keeps its running statistics
            m.eval()
        return self

    def forward(self, x_u8: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` uint8 -> ``(B, K)`` logits, no augmentation."""
        return self.head(self.backbone(self.pre(x_u8)))

    def training_step(self, batch, batch_idx):
        x_u8, y = batch  # (B, C, S, S) uint8, (B,) long or (B, K) multi-hot
        logits = self.head(self.backbone(self.pre(self.augment(x_u8))))  # (B, outputs)
        loss = targets.loss(self.kind, logits, targets.as_targets(self.kind, y))
        self.log("loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.param_groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_fraction * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class FinetuneConfig(EvaluatorConfig):
    """Settings of the ``finetune`` evaluator.

    Attributes:
        layer_decay: Layer-wise learning-rate decay (1 = off): the head gets ``lr``, the
            last layer ``lr * d``, the one before ``lr * d**2``, ...
        augment: Augmentation of the training images (``--augment``): ``none``, ``basic``
            (crop + flip), ``randaugment``, ``autoaugment``, ``trivialaugment``, or an
            albumentations pipeline file saved with ``albumentations.save`` (.yaml/.yml/.json).
        grad_checkpointing: Recompute the backbone's block activations in the backward pass
            instead of keeping them (``ssl_toolkit/recompute.py``): less memory, more compute.
    """

    layer_decay: float = Field(default=1.0, gt=0.0, le=1.0)
    augment: str = "basic"
    grad_checkpointing: bool = False

    @field_validator("augment")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        check_augment(value)  # a policy name or a readable albumentations file, before anything runs
        return value


class PartialConfig(FinetuneConfig):
    """Settings of the ``partial`` evaluator.

    Attributes:
        freeze_stages: The stem and the first K stages are frozen (``None`` = all but the last).
    """

    freeze_stages: int | None = None


class TrainedEvaluator(Evaluator):
    """Base of the evaluators that train through the backbone with Lightning.

    Subclasses only choose how many leading stages (stem = stage 0) stay frozen.
    """

    Config = FinetuneConfig
    settings: FinetuneConfig

    def __init__(self, cfg: ProbeConfig, cache: FeatureCache | None = None) -> None:
        super().__init__(cfg, cache)
        if cfg.lr is not None and cfg.lr > MAX_LR:
            raise UserError(f"lr: Input should be less than or equal to {MAX_LR:g} for --mode {self.name} (got {cfg.lr:g})")

    def frozen_count(self, groups: list[Stage]) -> int:
        """How many of ``[stem, s1, ..., sN]`` are frozen (0 = none)."""
        return 0

    def trainable_parameters(self, backbone: nn.Module, head: nn.Module | None) -> list[nn.Parameter]:
        groups = stages(backbone)
        n_frozen = self.frozen_count(groups)
        params = [p for n, p in backbone.named_parameters() if stage_of(n, groups) >= n_frozen]
        return params + (list(head.parameters()) if head is not None else [])

    def param_groups(self, backbone: nn.Module, head: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups with layer-wise lr decay; no weight decay on biases and norm weights.

        Layers are timm's own (:func:`layer_ids`): a ResNet's and ConvNeXt's blocks, a
        ViT's transformer blocks. The last layer learns at ``lr * d``, the one before at
        ``lr * d**2``, down to the stem; the head at ``HEAD_LR_SCALE * lr``.
        """
        ids = layer_ids(backbone)
        depth = max(ids.values()) + 1  # the head is depth
        trainable = {id(p) for p in self.trainable_parameters(backbone, head)}
        named = [(p, ids[n]) for n, p in backbone.named_parameters()] + [(p, depth) for p in head.parameters()]
        buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
        for p, d in named:
            if id(p) in trainable:
                buckets.setdefault((d, p.ndim > 1), []).append(p)
        return [
            {
                "params": ps,
                "lr": lr * HEAD_LR_SCALE if d >= depth else lr * self.settings.layer_decay ** (depth - d),
                "weight_decay": weight_decay if decay else 0.0,
            }
            for (d, decay), ps in sorted(buckets.items())
        ]

    def evaluate(self, ctx: EvalContext) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg: ProbeConfig = ctx.cfg
        torch.manual_seed(cfg.seed)
        backbone, kind = ctx.model, ctx.source.target_kind
        if self.settings.grad_checkpointing:  # refused in one line before any training
            check_grad_checkpointing(backbone, str(ctx.meta.get("backbone", {}).get("timm_name", type(backbone).__name__)))
        head = nn.Linear(feature_dim(backbone), targets.outputs(kind, ctx.source.num_classes))
        groups = stages(backbone)
        n_frozen = self.frozen_count(groups)
        self.freeze(backbone, head)
        frozen_modules = [m for n, m in backbone.named_modules() if n and stage_of(n, groups) < n_frozen]
        train = ctx.source.train
        fit_idx, held_idx = ctx.train_idx, ctx.train_idx[:0]
        if kind != "multiclass":  # thresholds are chosen on held-out training labels
            fit, held = targets.holdout_split(train.labels[ctx.train_idx], targets.HOLDOUT_FRACTION, cfg.seed)
            fit_idx, held_idx = ctx.train_idx[fit], ctx.train_idx[held]
        n = len(fit_idx)
        steps_per_epoch = n // cfg.batch_size if n > cfg.batch_size else 1  # the loader drops a last partial batch
        epochs = cfg.epochs or max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
        if epochs * steps_per_epoch < MIN_STEPS:  # only an explicit --epochs is this short
            print(f"note: {short_training(epochs, steps_per_epoch, n, cfg.batch_size)}", file=sys.stderr, flush=True)
        lr = cfg.lr or DEFAULT_LR
        wd = DEFAULT_WEIGHT_DECAY if cfg.weight_decay is None else cfg.weight_decay
        augment = build_augment(self.settings.augment, ctx.source.image_size, ctx.source.channels)
        module = FinetuneModule(backbone, head, ctx.pre, augment, kind, self.param_groups(backbone, head, lr, wd), frozen_modules)
        loader = split_loader(train.subset(fit_idx), cfg.batch_size, shuffle=True, seed=cfg.seed)
        quiet_lightning()  # no banners (devices, tips) in the output
        trainer = L.Trainer(
            accelerator=cfg.accelerator,
            devices=1,
            precision=cast("_PRECISION_INPUT", cfg.precision),  # a string Lightning validates
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            deterministic=False,
        )
        module.train()  # Lightning keeps the mode it is given; frozen modules stay in eval mode
        if self.settings.grad_checkpointing:
            set_grad_checkpointing(backbone, True)
        try:
            with warnings.catch_warnings(), lightning_interrupts(trainer, lambda: "nothing was written"):
                warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own use of a deprecated torch name
                warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # logger=False: nothing is logged
                warnings.filterwarnings(
                    "ignore", message=".*module\\(s\\) in eval mode at the start of training.*"
                )  # frozen stages, on purpose
                trainer.fit(module, loader)
        finally:
            if self.settings.grad_checkpointing:
                set_grad_checkpointing(backbone, False)  # scoring runs without grad
        module.eval()
        scores = targets.to_scores(kind, score_images(module, ctx.source.test))
        n_trainable = sum(p.numel() for p in self.trainable_parameters(backbone, head))
        facts: dict[str, Any] = {
            "epochs": epochs,
            "lr": lr,
            "weight_decay": wd,
            "layer_decay": self.settings.layer_decay,
            "augment": self.settings.augment,
            "frozen": [g.name for g in groups[:n_frozen]],
            "trainable_params": int(n_trainable),
            "train_loss": finite_or_none(trainer.callback_metrics.get("loss")),
            **({"grad_checkpointing": True} if self.settings.grad_checkpointing else {}),
        }
        if len(held_idx):
            held_scores = targets.to_scores(kind, score_images(module, train.subset(held_idx)))
            facts["thresholds"] = targets.choose_thresholds(kind, held_scores, train.labels[held_idx])
            facts["n_holdout"] = len(held_idx)  # trained on n_train - n_holdout images
            if (note := targets.holdout_notes(kind, train.labels[held_idx])) is not None:
                facts["holdout"] = note
        elif kind != "multiclass":
            facts["holdout"] = f"none: too few training labels to hold any out, so {targets.FIXED_THRESHOLDS}"
        module.cpu()
        return scores, facts


def short_training(epochs: int, steps_per_epoch: int, n: int, batch_size: int) -> str:
    """The note for an ``--epochs`` that makes fewer than ``MIN_STEPS`` optimiser steps, in which a new head may stay near chance."""
    steps = epochs * steps_per_epoch
    batch = f"batch {batch_size}" if n > batch_size else "one batch"
    more = math.ceil(MIN_STEPS / steps_per_epoch)
    return (
        f"--epochs {epochs} is {steps} optimiser step{'s' if steps != 1 else ''} here ({n} training images, {batch}); "
        f"the new head may stay near chance in under {MIN_STEPS} (--epochs {more} makes {more * steps_per_epoch}; the default makes at least {MIN_STEPS})"
    )


def finite_or_none(value: Any) -> float | None:
    """A logged scalar rounded to 6 decimals; ``None`` when it is missing or not finite (the record is standard JSON)."""
    if value is None:
        return None
    number = float(value)
    return round(number, 6) if math.isfinite(number) else None


def score_images(module: FinetuneModule, images: Any) -> torch.Tensor:
    """A split's images (or ``(N, C, S, S)`` uint8) -> ``(N, outputs)`` float32 logits on the CPU, no augmentation, no grad."""
    out = []
    batches = images.split(512) if isinstance(images, torch.Tensor) else images.batches(512)
    with torch.no_grad():
        for chunk in batches:  # (B, C, S, S) uint8, in memory or decoded by DataLoader workers
            out.append(module(chunk.to(module.device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, module.head.out_features)


@register_evaluator("partial")
class PartialEvaluator(TrainedEvaluator):
    """The stem and the first ``K`` stages frozen (weights and BatchNorm statistics), the rest trained."""

    description = "stem + first K stages frozen, the rest and a linear head fine-tuned"
    Config = PartialConfig
    settings: PartialConfig

    def frozen_count(self, groups: list[Stage]) -> int:
        n = len(groups) - 1  # stages after the stem
        k = self.settings.freeze_stages
        if k is None:
            k = n - 1  # default: only the last stage (and the head) trains
        if not 0 <= k <= n:
            names = ", ".join(g.name for g in groups[1:])
            raise UserError(f"--freeze-stages {k} is out of range; this backbone has {n} stages ({names}): use 0 to {n}")
        return k + 1

    def evaluate(self, ctx: EvalContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """As :meth:`TrainedEvaluator.evaluate`; :attr:`settings` then holds the number of stages frozen, the default resolved."""
        k = self.frozen_count(stages(ctx.model)) - 1  # the range is checked here, before any training
        self.settings = self.settings.model_copy(update={"freeze_stages": k})  # what the record's settings say
        return super().evaluate(ctx)


@register_evaluator("finetune")
class FinetuneEvaluator(TrainedEvaluator):
    """Every weight trained, with optional layer-wise learning-rate decay."""

    description = "the whole backbone and a linear head fine-tuned"
