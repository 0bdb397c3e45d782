"""Nearest class mean on frozen features (Mensink et al., "Distance-Based Image
Classification: Generalizing to New Classes at Near-Zero Cost", TPAMI 2013).

Each class is the mean of its training features; a test image scores each class by its
similarity to that mean. Nothing is trained.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.evaluators.base import EvalContext, Evaluator, EvaluatorConfig, register_evaluator


class NearestMeanConfig(EvaluatorConfig):
    """Attributes:
    metric: ``cosine`` (features and means L2-normalised) or ``euclidean`` (negative distance).
    """

    metric: Literal["cosine", "euclidean"] = "cosine"


@register_evaluator("nearest-mean")
class NearestMeanEvaluator(Evaluator):
    """Frozen backbone, cached features, one mean per class."""

    description = "nearest class mean on frozen, cached features"
    Config = NearestMeanConfig
    reads_training_settings = False  # epochs, lr, weight_decay, precision would do nothing: refused
    settings: NearestMeanConfig

    def trainable_parameters(self, backbone: nn.Module, head: nn.Module | None) -> list[nn.Parameter]:
        return []

    def evaluate(self, ctx: EvalContext) -> tuple[torch.Tensor, dict[str, Any]]:
        train_x, test_x = self.features(ctx)  # (N, D), (M, D)
        train_y = ctx.source.train.labels[ctx.train_idx]  # (N,)
        if self.settings.metric == "cosine":
            train_x, test_x = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
        c = ctx.source.num_classes
        sums = torch.zeros(c, train_x.shape[1]).index_add_(0, train_y, train_x)  # (C, D)
        means = sums / torch.bincount(train_y, minlength=c).clamp_min(1).unsqueeze(1)  # (C, D)
        if self.settings.metric == "cosine":
            scores = test_x @ F.normalize(means, dim=1).T  # (M, C)
        else:
            scores = -torch.cdist(test_x, means)  # (M, C)
        return scores, {"similarity": self.settings.metric}
