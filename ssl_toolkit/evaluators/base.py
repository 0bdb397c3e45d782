"""The evaluator contract and registry (``ssl probe --mode NAME``).

Evaluators differ by class, not by flags. Each one says which weights it trains through
:meth:`Evaluator.trainable_parameters` (the classifier head only for ``linear``, nothing
for ``knn``, the head plus the unfrozen stages for ``partial``, everything for
``finetune``); :meth:`Evaluator.freeze` turns that answer into ``requires_grad`` flags.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ssl_toolkit.config import ProbeConfig, StrictModel, validate
from ssl_toolkit.data.sources import DataSource
from ssl_toolkit.devices import choose_device
from ssl_toolkit.errors import UserError
from ssl_toolkit.eval.features import FeatureCache, Preprocess, model_fingerprint
from ssl_toolkit.registry import Registry


@dataclass
class EvalContext:
    """What an evaluator gets: the backbone, its metadata, labelled data and the label subset.

    Attributes:
        model: The backbone (pooled output), loaded on the CPU.
        meta: Its metadata (``backbone`` spec, ``in_chans``, ``image_size``, ``mean``/``std``).
        source: Labelled data at the backbone's image size.
        pre: uint8 images -> backbone input.
        train_idx: Indices of ``source.train`` whose labels may be used.
        cfg: The probe settings.
    """

    model: nn.Module
    meta: dict[str, Any]
    source: DataSource
    pre: Preprocess
    train_idx: torch.Tensor
    cfg: ProbeConfig


class EvaluatorConfig(StrictModel):
    """Base of an evaluator's own settings (``evaluator_config`` of the probe config)."""


#: Probe settings of the modes that train through the backbone.
TRAINING_SETTINGS = ("epochs", "lr", "weight_decay", "precision")


class Evaluator(ABC):
    """Base of evaluators: ``evaluate(ctx)`` returns ``(N_test, K)`` class scores and facts to report.

    An evaluator's own settings are its ``Config`` model, validated from the probe
    config's ``evaluator_config`` into :attr:`settings`, as a task validates ``task_config``.

    Args:
        cfg: The probe settings.
        cache: Where frozen features are cached (default: ``$SSL_TOOLKIT_HOME/cache/features``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[EvaluatorConfig]] = EvaluatorConfig
    #: Whether it reads the probe config's training settings (:data:`TRAINING_SETTINGS`); those
    #: set for an evaluator that does not are refused, as another mode's ``evaluator_config`` is.
    reads_training_settings: ClassVar[bool] = True

    def __init__(self, cfg: ProbeConfig, cache: FeatureCache | None = None) -> None:
        self.cfg = cfg
        self.settings = evaluator_settings(type(self), cfg.evaluator_config)
        self.cache = cache or FeatureCache()
        if not self.reads_training_settings:
            given = [f for f in TRAINING_SETTINGS if f in cfg.model_fields_set and getattr(cfg, f) is not None]
            if given:
                users = [n for n in EVALUATORS.names() if EVALUATORS.get(n).reads_training_settings]
                raise UserError(
                    f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --mode {' or '.join(users)}, "
                    f"not {self.name}, which works on cached features and trains nothing through the backbone"
                )

    def trainable_parameters(self, backbone: nn.Module, head: nn.Module | None) -> list[nn.Parameter]:
        """The parameters this evaluator trains; the base trains everything (full fine-tuning)."""
        params = list(backbone.parameters())
        return params + (list(head.parameters()) if head is not None else [])

    def freeze(self, backbone: nn.Module, head: nn.Module | None = None) -> list[nn.Parameter]:
        """Set ``requires_grad`` from :meth:`trainable_parameters`; returns the trainable ones."""
        trainable = self.trainable_parameters(backbone, head)
        keep = {id(p) for p in trainable}
        modules: Iterable[nn.Module] = (backbone,) if head is None else (backbone, head)
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(id(p) in keep)
        return trainable

    def features(self, ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached frozen features of the training subset and of the test split (eval mode, no grad)."""
        self.freeze(ctx.model)
        fp = model_fingerprint(ctx.model)
        device = choose_device(ctx.cfg.accelerator)
        bs = ctx.cfg.batch_size
        train = self.cache.get(ctx.model, ctx.source, "train", ctx.pre, fp, device=device, batch_size=bs)
        test = self.cache.get(ctx.model, ctx.source, "test", ctx.pre, fp, device=device, batch_size=bs)
        ctx.model.cpu()
        return train[ctx.train_idx], test

    @abstractmethod
    def evaluate(self, ctx: EvalContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """Class scores ``(N_test, K)`` of the test split and facts about the fit."""


EVALUATORS: Registry[type[Evaluator]] = Registry("probe mode", package="ssl_toolkit.evaluators", group="ssl_toolkit.evaluators")


def register_evaluator(name: str):
    """Class decorator registering an :class:`Evaluator` under ``name``."""

    def deco(cls: type[Evaluator]) -> type[Evaluator]:
        if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
            raise UserError(f"register_evaluator('{name}') needs a subclass of ssl_toolkit.evaluators.Evaluator, not {cls!r}")
        cls.name = name
        return EVALUATORS.register(name)(cls)

    return deco


def evaluator_settings(cls: type[Evaluator], values: dict[str, Any]) -> EvaluatorConfig:
    """``values`` validated by ``cls.Config``; a key that belongs to other modes names them."""
    own = set(cls.Config.model_fields)
    for key in values:
        owners = [n for n in EVALUATORS.names() if key in EVALUATORS.get(n).Config.model_fields]
        if key not in own and owners:
            raise UserError(f"evaluator_config.{key} applies to --mode {' or '.join(owners)}, not {cls.name}")
    return validate(cls.Config, values, what=f"evaluator_config ({cls.name})")
