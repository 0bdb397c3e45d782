"""The evaluator contract and registry (``ssl probe --mode NAME``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ssl_toolkit.config import ProbeConfig
from ssl_toolkit.data.sources import DataSource
from ssl_toolkit.eval.features import FeatureCache, Preprocess, weights_fingerprint
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


class Evaluator:
    """Base of evaluators: ``evaluate(ctx)`` returns ``(N_test, K)`` class scores and facts to report."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, cfg: ProbeConfig, cache: FeatureCache | None = None) -> None:
        self.cfg = cfg
        self.cache = cache or FeatureCache()

    def features(self, ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached frozen features of the training subset and of the test split."""
        fp = weights_fingerprint(ctx.model)
        train = self.cache.get(ctx.model, ctx.source, "train", ctx.pre, fp)
        test = self.cache.get(ctx.model, ctx.source, "test", ctx.pre, fp)
        return train[ctx.train_idx], test

    def evaluate(self, ctx: EvalContext) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate()")


EVALUATORS: Registry[type[Evaluator]] = Registry("probe mode")


def register_evaluator(name: str):
    """Class decorator registering an :class:`Evaluator` under ``name``."""

    def deco(cls: type[Evaluator]) -> type[Evaluator]:
        cls.name = name
        return EVALUATORS.register(name)(cls)

    return deco
