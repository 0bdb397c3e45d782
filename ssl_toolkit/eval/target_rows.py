"""Report rows that depend on the target kind: the probe table's metric cells, multi-label class rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

METRIC_NAMES = {"top1": "top-1", "roc_auc": "ROC-AUC", "mAP": "mAP"}  # each target kind's headline metric, as written


def metric_text(metric: str, value: float | None) -> str:
    """A headline metric as written: ``top-1 94.71%``, ``ROC-AUC 0.7200``, ``mAP 0.8123`` (``-`` without a value)."""
    shown = "-" if value is None else (f"{100 * value:.2f}%" if metric == "top1" else f"{value:.4f}")
    return f"{METRIC_NAMES.get(metric, metric)} {shown}"


def headline_cells(p: dict[str, Any], pct: Callable[[float | None], str]) -> dict[str, str]:
    """The two metric cells of a probe row: top-1/top-5, ROC-AUC/F1 (binary) or mAP/macro F1 (multi-label)."""
    kind = p.get("target_kind", "multiclass")
    first, second = {"binary": (("ROC-AUC", "roc_auc"), ("F1", "f1")), "multilabel": (("mAP", "mAP"), ("macro F1", "macro_f1"))}.get(
        kind, (("top-1", "top1"), ("top-5", "top5"))
    )
    return {"top1": f"{first[0]} {pct(p.get(first[1]))}", "top5": f"{second[0]} {pct(p.get(second[1]))}"}


def multilabel_rows(source: Any, probes: list[dict[str, Any]], pct: Callable[[float | None], str]) -> list[dict[str, str]]:
    """Per class of multi-label data: positives in train and test, and the linear probe's AP."""
    linear = [p for p in probes if p.get("mode") == "linear" and p.get("per_class_ap") and p.get("dataset") == source.name]
    ap = max(linear, key=lambda p: float(p.get("label_fraction") or 0))["per_class_ap"] if linear else []
    n_train = source.train.labels.sum(0).tolist()
    n_test = source.test.labels.sum(0).tolist() if len(source.test) else [0] * len(source.classes)
    return [
        {"name": name, "train": str(int(n_train[c])), "test": str(int(n_test[c])), "ap": pct(ap[c] if c < len(ap) else None)}
        for c, name in enumerate(source.classes)
    ]
