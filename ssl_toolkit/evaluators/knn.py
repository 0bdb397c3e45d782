"""Weighted k-nearest-neighbour classification on frozen features, searched with FAISS.

The protocol of Wu et al. (2018, "Unsupervised feature learning via non-parametric
instance discrimination") as used by DINO (Caron et al., 2021) and the lightly
benchmarks: features are L2-normalised, the ``k`` training features with the largest
cosine similarity ``s`` to a test feature vote for their class with weight
``exp(s / T)``, and the class with the largest summed weight wins. Defaults: ``k = 200``,
``T = 0.1``; ``k = 20`` and ``k = 1`` are reported alongside.

:func:`knn_search` and :func:`knn_scores` take plain tensors so that other modules
(embedding analysis) can call them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ssl_toolkit.evaluators import targets
from ssl_toolkit.evaluators.base import EvalContext, Evaluator, EvaluatorConfig, register_evaluator
from ssl_toolkit.flat_index import flat_search, unit_rows

EXTRA_KS = (20, 1)


def knn_search(train_feats: torch.Tensor | np.ndarray, test_feats: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine-similarity search: the ``k`` nearest training features of every test feature.

    Args:
        train_feats: ``(N, D)`` features (normalised here).
        test_feats: ``(M, D)`` features (normalised here).
        k: Neighbours, at most ``N``.

    Returns:
        ``(M, k)`` similarities, largest first, and ``(M, k)`` training indices.
    """
    sims, idx = flat_search(unit_rows(train_feats), unit_rows(test_feats), k)  # inner product of unit rows = cosine
    return torch.from_numpy(sims), torch.from_numpy(idx)


def vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, temperature: float, num_classes: int) -> torch.Tensor:
    """Temperature-weighted vote: ``scores[m, c] = sum_j [y_j == c] exp(s_mj / T)``.

    Each row is computed as ``exp((s_mj - max_j s_mj) / T)``, the same vote scaled by a
    positive factor per query, so that a small ``T`` (``exp(1 / 0.001)``) never overflows.

    Args:
        sims: ``(M, k)`` similarities.
        neighbour_labels: ``(M, k)`` classes of the neighbours.
        temperature: ``T``.
        num_classes: ``C``.

    Returns:
        ``(M, C)`` class scores, the largest neighbour's weight being 1.
    """
    s = sims.double()
    top = s.max(dim=1, keepdim=True).values if s.shape[1] else s.new_zeros(len(s), 1)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a query without neighbours (all -inf) scores 0
    weights = ((s - top) / temperature).exp()  # float64, every weight in [0, 1]
    scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64)
    return scores.scatter_add_(1, neighbour_labels, weights)


def knn_scores(
    train_feats: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_feats: torch.Tensor | np.ndarray,
    k: int = 200,
    T: float = 0.1,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Class scores of weighted kNN; ``argmax(1)`` is the prediction.

    Args:
        train_feats: ``(N, D)`` reference features.
        train_labels: ``(N,)`` their classes.
        test_feats: ``(M, D)`` query features.
        k: Neighbours (clipped to ``N``).
        T: Vote temperature.
        num_classes: ``C`` (default: ``max(train_labels) + 1``).

    Returns:
        ``(M, C)`` float64 scores.
    """
    labels = torch.as_tensor(train_labels).long().cpu()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, len(labels))
    sims, idx = knn_search(train_feats, test_feats, k)
    return vote(sims, labels[idx], T, num_classes)


class KNNConfig(EvaluatorConfig):
    """Settings of the ``knn`` evaluator.

    Attributes:
        k: Neighbours that vote (k = 20 and 1 are reported as well).
        temperature: Vote temperature ``T`` of the ``exp(s / T)`` weights.
    """

    k: int = Field(default=200, ge=1, le=1_000_000)
    temperature: float = Field(default=0.1, gt=0)


@register_evaluator("knn")
class KNNEvaluator(Evaluator):
    """Frozen backbone, cached features, FAISS weighted kNN; nothing is trained."""

    description = "weighted kNN (FAISS, cosine) on frozen, cached features"
    reads_training_settings = False  # epochs, lr, weight_decay, precision: refused
    Config = KNNConfig
    settings: KNNConfig

    def trainable_parameters(self, backbone: nn.Module, head: nn.Module | None) -> list[nn.Parameter]:
        """Nothing: the backbone is frozen and the vote has no weights."""
        return []

    def evaluate(self, ctx: EvalContext) -> tuple[torch.Tensor, dict[str, Any]]:
        train_x, test_x = self.features(ctx)
        train_y = ctx.source.train.labels[ctx.train_idx]
        kind = ctx.source.target_kind
        if kind != "multiclass":
            return self.evaluate_sigmoid_kind(kind, train_x, train_y, test_x)
        k, t, c = self.settings.k, self.settings.temperature, ctx.source.num_classes
        n = len(train_y)
        k_main = min(k, n)
        ks = sorted({k_main, *(min(e, n) for e in EXTRA_KS)}, reverse=True)
        sims, idx = knn_search(train_x, test_x, ks[0])  # one search for every k; neighbours come sorted
        neighbour_labels = train_y[idx]
        test_y = ctx.source.test.labels
        by_k = {}
        for kk in ks:
            s = vote(sims[:, :kk], neighbour_labels[:, :kk], t, c)
            by_k[str(kk)] = round((s.argmax(1) == test_y).float().mean().item(), 6)
        scores = vote(sims[:, :k_main], neighbour_labels[:, :k_main], t, c)
        return scores, {"k": k_main, "temperature": t, "top1_by_k": by_k}

    def evaluate_sigmoid_kind(
        self, kind: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Binary and multi-label targets: each label's weighted frequency among the neighbours.

        The decision thresholds are chosen on a held-out 10% of the training labels, whose
        neighbours are searched among the other 90%.
        """
        k, t = self.settings.k, self.settings.temperature
        multi_hot = train_y.view(len(train_y), -1).float()  # (N, outputs): binary = the class-1 indicator
        fit, held = targets.holdout_split(train_y, targets.HOLDOUT_FRACTION, self.cfg.seed)
        thresholds = None
        if len(fit) and len(held):
            ho_scores = label_frequencies(train_x[fit], multi_hot[fit], train_x[held], min(k, len(fit)), t)
            thresholds = targets.choose_thresholds(kind, ho_scores, train_y[held])
        scores = label_frequencies(train_x, multi_hot, test_x, min(k, len(train_y)), t)
        facts: dict[str, Any] = {"k": min(k, len(train_y)), "temperature": t}
        if thresholds is not None:
            facts["thresholds"] = thresholds
            if (note := targets.holdout_notes(kind, train_y[held])) is not None:
                facts["holdout"] = note
        else:  # as the linear probe says it
            facts["holdout"] = f"none: too few training labels to hold any out, so {targets.FIXED_THRESHOLDS}"
        return scores, facts


def label_frequencies(
    train_feats: torch.Tensor, multi_hot: torch.Tensor, test_feats: torch.Tensor, k: int, temperature: float
) -> torch.Tensor:
    """Weighted neighbour label frequencies: ``scores[m, c] = sum_j w_mj y_jc / sum_j w_mj``, ``w = exp(s / T)``.

    Args:
        train_feats: ``(N, D)`` reference features.
        multi_hot: ``(N, C)`` float 0/1 labels of the references.
        test_feats: ``(M, D)`` query features.
        k: Neighbours.
        temperature: ``T``.

    Returns:
        ``(M, C)`` float64 frequencies in [0, 1].
    """
    sims, idx = knn_search(train_feats, test_feats, k)  # (M, k)
    w = (sims.double() / temperature).softmax(dim=1)  # (M, k) weights summing to 1
    return torch.einsum("mk,mkc->mc", w, multi_hot.double()[idx])
