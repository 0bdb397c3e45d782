"""What differs between target kinds: head width, loss, label subsets, thresholds and metrics.

- ``multiclass``: ``K`` logits, softmax cross-entropy; top-1/top-5, per-class accuracy.
- ``binary`` (single-label, two classes): one logit, a sigmoid with binary cross-entropy;
  ROC-AUC, and accuracy, F1, precision and recall at a threshold chosen on held-out
  training labels.
- ``multilabel`` (``(N, K)`` multi-hot labels): ``K`` logits, a sigmoid per class with
  binary cross-entropy; mAP (mean over classes of the average precision, the PASCAL VOC /
  COCO ranking metric), per-class AP, and micro/macro F1 at per-class thresholds chosen on
  held-out training labels; mAP and macro F1 average over the labels with a test positive.

Evaluators return ``(N, outputs)`` scores: class scores whose argmax is the prediction
(multiclass), or probabilities in [0, 1] per output (binary, multi-label: the sigmoid of
a head's logits, or a kNN's neighbour label frequencies).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, precision_score, recall_score, roc_auc_score

from ssl_toolkit.sampling import per_class_split

HOLDOUT_FRACTION = 0.1
FIXED_THRESHOLDS = "threshold 0.5 was not chosen but fixed"  # what a result says when nothing could be held out


def outputs(kind: str, num_classes: int) -> int:
    """Width of the classifier head: 1 for binary, ``K`` otherwise."""
    return 1 if kind == "binary" else num_classes


def as_targets(kind: str, labels: torch.Tensor) -> torch.Tensor:
    """Labels as the loss wants them: ``(N,)`` long (multiclass), ``(N, 1)`` or ``(N, K)`` float."""
    if kind == "binary":
        return labels.float().view(-1, 1)
    if kind == "multilabel":
        return labels.float()
    return labels.long()


def loss(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy (multiclass) or sigmoid binary cross-entropy (binary, multi-label)."""
    if kind == "multiclass":
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (fit, holdout) indices: stratified by class for single labels, label-aware for multi-hot rows.

    Single labels: ``max(1, round(n_c * fraction))`` images of each class ``c`` are held
    out, none of a one-image class. Multi-hot rows: a random ``round(N * fraction)`` rows,
    then (rarest label first) a label whose every positive was drawn gets its first-drawn
    positive back for the fit, and a label with at least two positives and none drawn gets
    one held out (one whose labels all keep a positive to fit on). So every label keeps a
    positive to fit on, and a label with two or more has one to choose its threshold on.
    """
    if labels.dim() == 1:  # at least one of each class held out, a one-image class never
        held, fit = per_class_split(labels, lambda n: max(1, int(round(n * fraction))) if n > 1 else 0, seed)
        return torch.from_numpy(fit), torch.from_numpy(held)
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = int(round(n * fraction)) if n > 1 else 0
    drawn = set(perm[:k])
    if k:
        rank = {r: i for i, r in enumerate(perm)}
        positives = [sorted(labels[:, c].nonzero().view(-1).tolist(), key=rank.__getitem__) for c in range(labels.shape[1])]
        order = sorted(range(len(positives)), key=lambda c: (len(positives[c]), c))  # rarest label first
        for c in order:  # every label keeps a positive to fit on
            if positives[c] and all(r in drawn for r in positives[c]):
                drawn.discard(positives[c][0])

        def fit_left(c: int) -> int:
            return sum(r not in drawn for r in positives[c])

        for c in order:  # a label with two or more positives gets one to choose its threshold on
            if len(positives[c]) < 2 or any(r in drawn for r in positives[c]):
                continue
            spare = next((r for r in positives[c] if all(fit_left(d) >= 2 for d in labels[r].nonzero().view(-1).tolist())), None)
            if spare is not None:
                drawn.add(spare)
    return torch.tensor(sorted(set(range(n)) - drawn), dtype=torch.long), torch.tensor(sorted(drawn), dtype=torch.long)


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Seeded subset of about ``fraction`` of the rows that keeps every label present.

    Single labels: ``max(1, round(n_c * fraction))`` rows of each class ``c``. Multi-hot
    rows: a random ``round(N * fraction)`` rows, plus one random row holding each label
    the draw missed.
    """
    if fraction >= 1.0:
        return torch.arange(len(labels))
    if labels.dim() == 1:
        return torch.from_numpy(per_class_split(labels, lambda n: max(1, int(round(n * fraction))), seed)[0])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    chosen = set(perm[: max(1, int(round(len(labels) * fraction)))].tolist())
    for c in range(labels.shape[1]):
        rows = labels[:, c].nonzero().view(-1)
        if len(rows) and not any(int(r) in chosen for r in rows):
            chosen.add(int(rows[torch.randint(len(rows), (1,), generator=g)]))
    return torch.tensor(sorted(chosen), dtype=torch.long)


def probabilities(kind: str, scores: torch.Tensor) -> np.ndarray:
    """Binary/multi-label scores (probabilities) as an ``(N, outputs)`` float64 array."""
    return scores.detach().double().cpu().numpy().reshape(len(scores), -1)


def to_scores(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """A head's logits as evaluator scores: unchanged (multiclass) or their sigmoid."""
    return logits if kind == "multiclass" else torch.sigmoid(logits.float())


def best_f1_threshold(prob: np.ndarray, y: np.ndarray) -> float:
    """The probability threshold with the largest F1 on ``(prob, y)`` (0.5 without positives or negatives).

    Predictions are ``prob >= threshold``. The threshold lies halfway between the score that
    gives the best F1 and the next lower score, so that scores equal to the chosen one (ties
    are common: kNN scores are vote fractions, duplicate images score alike) stay positive
    however the score is rounded or recomputed.
    """
    if y.sum() == 0 or y.sum() == len(y):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, prob)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    chosen = float(thresholds[int(np.argmax(f1[:-1]))])
    below = prob[prob < chosen]
    return (chosen + float(below.max())) / 2 if below.size else chosen


def choose_thresholds(kind: str, scores: torch.Tensor, labels: torch.Tensor) -> list[float] | None:
    """Per-output thresholds maximising F1 on held-out training scores (``None`` for multiclass)."""
    if kind == "multiclass":
        return None
    prob = probabilities(kind, scores)
    y = labels.numpy().reshape(len(labels), -1)
    return [best_f1_threshold(prob[:, j], y[:, j]) for j in range(prob.shape[1])]  # not rounded: a rounded one can pass a tie


def fixed_thresholds_note(kind: str, held_labels: torch.Tensor) -> str | None:
    """What a result says of outputs whose threshold stayed at 0.5: held-out images all of one kind for them.

    ``None`` when every output's threshold was chosen (and for multiclass, which has none).
    """
    if kind == "multiclass":
        return None
    y = held_labels.numpy().reshape(len(held_labels), -1)
    fixed = [j for j in range(y.shape[1]) if y[:, j].sum() in (0, len(y))]
    if not fixed:
        return None
    if kind == "binary":
        return f"threshold 0.5 fixed, not chosen: the {len(y)} held-out image(s) are all of one class"
    return (
        f"threshold 0.5 fixed, not chosen, for {len(fixed)} of {y.shape[1]} labels (positions {', '.join(map(str, fixed))} "
        f"in per_class_ap): their {len(y)} held-out image(s) are all positive or all negative for them"
    )


def single_positive_note(kind: str, held_labels: torch.Tensor) -> str | None:
    """What a result says of outputs whose threshold was chosen on one held-out positive (and some negatives).

    The best-F1 threshold then sits at that one image's score, however low, so such an
    output can be predicted for most test images. ``None`` when no output is in that case.
    """
    if kind == "multiclass":
        return None
    y = held_labels.numpy().reshape(len(held_labels), -1)
    single = [j for j in range(y.shape[1]) if y[:, j].sum() == 1 and len(y) > 1]
    if not single:
        return None
    if kind == "binary":
        return "threshold chosen on the one held-out positive image: it sits at that image's score, a thin choice"
    return (
        f"threshold chosen on one held-out positive image for {len(single)} of {y.shape[1]} labels "
        f"(positions {', '.join(map(str, single))} in per_class_ap): it sits at that image's score, a thin choice"
    )


def holdout_notes(kind: str, held_labels: torch.Tensor) -> str | None:
    """:func:`fixed_thresholds_note` and :func:`single_positive_note` in one line (``None`` when neither applies)."""
    notes = [n for n in (fixed_thresholds_note(kind, held_labels), single_positive_note(kind, held_labels)) if n]
    return "; ".join(notes) or None


def ranking_score(kind: str, scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """What a held-out choice maximises: accuracy (multiclass), ROC-AUC (binary), mAP (multi-label).

    ``None`` when the held-out labels leave it undefined (binary: all of one class;
    multi-label: no label present), so that nothing is chosen by it.
    """
    if kind == "multiclass":
        return float((scores.argmax(1) == labels).float().mean())
    prob, y = probabilities(kind, scores), labels.numpy().reshape(len(labels), -1)
    if kind == "binary":
        return float(roc_auc_score(y[:, 0], prob[:, 0])) if 0 < y.sum() < len(y) else None
    present = [j for j in range(y.shape[1]) if 0 < y[:, j].sum()]
    return float(np.mean([average_precision_score(y[:, j], prob[:, j]) for j in present])) if present else None


def _defined(value: Any) -> float | None:
    """A metric rounded to 6 decimals; ``None`` where it is undefined (scikit-learn's ``zero_division=nan``)."""
    number = float(value)
    return None if math.isnan(number) else round(number, 6)


def target_report(kind: str, scores: torch.Tensor, labels: torch.Tensor, thresholds: list[float] | None) -> dict[str, Any]:
    """Metrics of a binary or multi-label evaluation (multiclass: see ``eval.metrics``)."""
    prob = probabilities(kind, scores)
    y = labels.numpy().reshape(len(labels), -1).astype(np.int64)
    t = np.asarray(thresholds if thresholds is not None else [0.5] * prob.shape[1])
    pred = (prob >= t[None, :]).astype(np.int64)
    if kind == "binary":
        yb, pb = y[:, 0], pred[:, 0]
        return {
            "metric": "roc_auc",
            "roc_auc": round(float(roc_auc_score(yb, prob[:, 0])), 6) if 0 < yb.sum() < len(yb) else None,
            "accuracy": round(float((yb == pb).mean()), 6),
            "f1": _defined(f1_score(yb, pb, zero_division=np.nan)),  # None: no positive predicted or present
            "precision": _defined(precision_score(yb, pb, zero_division=np.nan)),  # None: nothing predicted positive
            "recall": _defined(recall_score(yb, pb, zero_division=np.nan)),  # None: no test positive
            "threshold": float(t[0]),
        }
    ap = [round(float(average_precision_score(y[:, j], prob[:, j])), 6) if y[:, j].sum() else None for j in range(y.shape[1])]
    present = [j for j in range(y.shape[1]) if ap[j] is not None]  # labels with a test positive: mAP's and macro F1's
    return {
        "metric": "mAP",
        "mAP": round(float(np.mean([ap[j] for j in present])), 6) if present else None,
        "per_class_ap": ap,
        "micro_f1": round(float(f1_score(y, pred, average="micro", zero_division=0)), 6),
        "macro_f1": round(float(f1_score(y[:, present], pred[:, present], average="macro", zero_division=0)), 6) if present else None,
        "thresholds": [float(v) for v in t],
    }
