"""Classification metrics shared by every evaluator."""

from __future__ import annotations

from typing import Any

import torch


def classification_report(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5 (with at least 5 classes), per-class accuracy and the confusion matrix.

    Top-1 is the ``argmax`` prediction (the lowest class index among tied scores), as the
    confusion matrix counts it. Top-5 counts an image when fewer than 5 other classes score
    at least as high as its own class, or when top-1 does.

    Args:
        scores: ``(N, K)`` class scores (logits, probabilities or votes).
        labels: ``(N,)`` true classes.
        num_classes: ``K``.

    Returns:
        ``top1``, ``top5`` (or ``None``), ``per_class_acc`` (list of K, ``None`` for a class
        absent from ``labels``) and ``confusion`` (K x K counts, rows = true class).
    """
    pred = scores.argmax(dim=1)
    top1 = (pred == labels).float().mean().item() if len(labels) else 0.0
    top5 = None
    if num_classes >= 5 and len(labels):
        # ties count against the true class: a class no kNN neighbour voted for (score 0, tied
        # with every other such class) is not in the top 5 by the order topk happens to return
        own = scores.gather(1, labels[:, None])  # (N, 1)
        rivals = (scores >= own).sum(dim=1) - 1  # (N,) other classes scoring at least as high
        top5 = ((rivals < 5) | (pred == labels)).float().mean().item()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    conf.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    support = conf.sum(dim=1)
    per_class = [(conf[c, c] / support[c]).item() if support[c] > 0 else None for c in range(num_classes)]
    return {
        "top1": round(top1, 6),
        "top5": None if top5 is None else round(top5, 6),
        "per_class_acc": [None if v is None else round(v, 6) for v in per_class],
        "confusion": conf.tolist(),
    }
