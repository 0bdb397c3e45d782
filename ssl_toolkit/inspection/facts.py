"""Basic facts of an :class:`~ssl_toolkit.inspection.table.ImageTable`: sizes, modes, formats, bytes, labels.

Every function takes the table's columns and returns a JSON-able dict.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from ssl_toolkit.inspection.table import ImageTable

SPLITS = ("train", "test")


def distribution(values: np.ndarray, bins: int = 12, integer: bool = True) -> dict[str, Any]:
    """min / median / mean / max and a histogram (``edges`` has one more entry than ``counts``)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"min": None, "median": None, "mean": None, "max": None, "histogram": {"edges": [], "counts": []}}
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        edges, counts = [lo, hi], [int(len(v))]
    else:
        c, e = np.histogram(v, bins=bins if not integer else min(bins, int(hi - lo) + 1))
        edges, counts = [float(x) for x in e], [int(x) for x in c]
    cast = (lambda x: int(round(x))) if integer else (lambda x: round(float(x), 4))
    return {
        "min": cast(lo),
        "median": cast(float(np.median(v))) if integer and float(np.median(v)).is_integer() else round(float(np.median(v)), 4),
        "mean": round(float(v.mean()), 4),
        "max": cast(hi),
        "histogram": {"edges": [round(x, 4) for x in edges], "counts": counts},
    }


def size_facts(table: ImageTable) -> dict[str, Any]:
    """Width, height and aspect-ratio distributions and the most common sizes."""
    aspect = table.width / np.maximum(table.height, 1)
    common = Counter(zip(table.width.tolist(), table.height.tolist())).most_common(10)
    return {
        "width": distribution(table.width),
        "height": distribution(table.height),
        "aspect_ratio": distribution(aspect, integer=False),
        "aspect_classes": {
            "portrait": int((aspect < 0.95).sum()),
            "square": int(((aspect >= 0.95) & (aspect <= 1.05)).sum()),
            "landscape": int((aspect > 1.05).sum()),
        },
        "common": [{"width": w, "height": h, "count": c} for (w, h), c in common],
    }


def bit_depth(mode: str) -> int:
    """Bits per channel of a PIL mode."""
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    return 8


PALETTE_CHANNELS = {"P": 3, "PA": 4}  # a palette's entries are colours: the file stores one index band per pixel


def colour_channels(mode: str) -> int:
    """Channels of the pixels a PIL mode describes: a palette image counts its colours' (RGB) channels."""
    return PALETTE_CHANNELS.get(mode, Image.getmodebands(mode))


def mode_facts(table: ImageTable) -> dict[str, Any]:
    """Counts per PIL mode, per channel count (of the pixels' colours), per bit depth; whether modes are mixed."""
    modes = Counter(table.modes.tolist())
    channels: Counter = Counter()
    depth: Counter = Counter()
    for mode, count in modes.items():
        channels[colour_channels(mode)] += count
        depth[bit_depth(mode)] += count
    return {
        "modes": dict(modes.most_common()),
        "channels": {str(k): v for k, v in sorted(channels.items())},
        "bit_depth": {str(k): v for k, v in sorted(depth.items())},
        "high_bit_depth": int(sum(v for k, v in depth.items() if k > 8)),
        "mixed": len(modes) > 1,
    }


def format_facts(table: ImageTable) -> dict[str, int] | None:
    """Counts per file format (folders only)."""
    if table.formats is None:
        return None
    return dict(Counter(table.formats.tolist()).most_common())


def file_size_facts(table: ImageTable) -> dict[str, Any] | None:
    """Total bytes and the per-file size distribution (folders only)."""
    if table.nbytes is None:
        return None
    return {"total": int(table.nbytes.sum()), **distribution(table.nbytes, integer=True)}


def count_facts(table: ImageTable) -> dict[str, int]:
    """Images per split, plus unreadable files."""
    return {
        "total": len(table),
        "train": int((table.split == 0).sum()),
        "test": int((table.split == 1).sum()),
        "unreadable": len(table.unreadable),
    }


def _imbalance(counts: list[int]) -> float | None:
    present = [c for c in counts if c > 0]
    return round(max(present) / min(present), 4) if present else None


def class_counts(labels: np.ndarray, k: int) -> list[int]:
    """Images per class: ``(N,)`` class indices are counted, ``(N, K)`` multi-hot rows summed per label."""
    if labels.ndim == 2:
        return [int(v) for v in labels.sum(axis=0, dtype=np.int64)[:k]]
    return np.bincount(labels, minlength=k)[:k].tolist()


def label_facts(table: ImageTable, max_imbalance: float) -> dict[str, Any] | None:
    """Class counts per split, imbalance ratio (largest / smallest present class), missing classes, warnings.

    Multi-label tables count the images carrying each label (an image counts once per label
    it carries); ``total`` is the images of the split, and the imbalance is over the labels.
    """
    if table.labels is None or not table.classes:
        return None
    k = len(table.classes)
    per_split: dict[str, dict[str, Any]] = {}
    for s, name in enumerate(SPLITS):
        in_split = table.split == s
        counts = class_counts(table.labels[in_split], k)
        per_split[name] = {
            "counts": dict(zip(table.classes, counts)),
            "total": int(in_split.sum()),
            "imbalance": _imbalance(counts),
            "missing": [c for c, n in zip(table.classes, counts) if n == 0] if sum(counts) else [],
        }
    overall = class_counts(table.labels, k)
    warnings = []
    for name in SPLITS:
        info = per_split[name]
        if info["total"] and info["missing"]:
            warnings.append(f"{name} split has no images of {len(info['missing'])} class(es): {', '.join(info['missing'])}")
        if info["imbalance"] is not None and info["imbalance"] > max_imbalance:
            warnings.append(f"{name} split is imbalanced: largest class / smallest class = {info['imbalance']:g} (> {max_imbalance:g})")
    return {
        "num_classes": k,
        "multilabel": table.labels.ndim == 2,
        "classes": list(table.classes),
        "counts": dict(zip(table.classes, overall)),
        "imbalance": _imbalance(overall),
        "max_imbalance": max_imbalance,
        "splits": per_split,
        "warnings": warnings,
    }
