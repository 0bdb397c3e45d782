"""Figures of the report, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes numbers (already computed by :mod:`ssl_toolkit.eval.analysis` or read
from a run folder) and returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
PALETTE = "tab10"
PLOT_LIMIT = 1e100  # values beyond +-this are not drawn: matplotlib's axis limits and ticks overflow near 1e308
LEGEND_CHARS = 40  # longer legend entries are shortened with an ellipsis


def to_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def class_colours(n: int) -> np.ndarray:
    """``(n, 4)`` RGBA colours: tab10 up to 10 classes, tab20 up to 20, then a hue wheel."""
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"](np.arange(n))
    if n <= 20:
        return colormaps["tab20"](np.arange(n))
    return colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))


def training_curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> bytes | None:
    """Loss, pretext accuracy and online top-1 side by side.

    Args:
        series: ``name -> (x, y)``: ``loss_step`` and ``loss_epoch`` against the global step,
            ``pretext_acc``, ``online_top1`` and ``online_train_top1`` against the epoch.

    Points with a coordinate beyond ``PLOT_LIMIT`` in size are left out, and the panel's
    title says how many.

    Returns:
        PNG bytes, or ``None`` when there is nothing to draw.
    """
    drawable, dropped = _drawable(series)
    panels = [
        ("loss", "step", [("loss_step", "per step", 0.4), ("loss_epoch", "epoch mean", 1.0)]),
        ("pretext accuracy", "epoch", [("pretext_acc", "train", 1.0)]),
        ("online linear top-1", "epoch", [("online_top1", "test", 1.0), ("online_train_top1", "train", 0.6)]),
    ]
    panels = [(t, xl, [c for c in curves if c[0] in drawable and len(drawable[c[0]][0])]) for t, xl, curves in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig = Figure(figsize=(3.7 * len(panels), 2.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, xlabel, curves) in zip(axes, panels):
        for name, label, alpha in curves:
            x, y = drawable[name]
            marker = "o" if len(x) <= 30 and name != "loss_step" else None
            ax.plot(x, y, marker=marker, markersize=4, alpha=alpha, label=label)
        left_out = sum(dropped.get(name, 0) for name, _, _ in curves)
        ax.set_title(title + (f" ({left_out} point(s) beyond ±{PLOT_LIMIT:.0e} not drawn)" if left_out else ""), fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if title != "loss":
            ax.set_ylim(0, 1.02)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return to_png(fig)


def _drawable(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """The finite points of each series within ``PLOT_LIMIT``, and how many were left out per series."""
    kept, dropped = {}, {}
    for name, (x, y) in series.items():
        xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        ok = np.isfinite(xa) & np.isfinite(ya) & (np.abs(xa) <= PLOT_LIMIT) & (np.abs(ya) <= PLOT_LIMIT)
        kept[name], dropped[name] = (xa[ok], ya[ok]), int((~ok).sum())
    return kept, dropped


def legend_label(name: str) -> str:
    """A legend entry: at most ``LEGEND_CHARS`` characters (a longer name ends in an ellipsis)."""
    return name if len(name) <= LEGEND_CHARS else name[: LEGEND_CHARS - 1] + "…"


def umap_scatter(coords: np.ndarray, groups: np.ndarray | None, names: Sequence[str] | None, title: str) -> bytes:
    """2-D scatter coloured by class (or cluster) with a legend.

    Args:
        coords: ``(M, 2)``.
        groups: ``(M,)`` class or cluster of each point (``None``: one colour).
        names: Legend entry of each group id.
        title: Plot title.
    """
    fig = Figure(figsize=(7.2, 5.4))
    ax = fig.subplots()
    size = float(np.clip(3000 / max(len(coords), 1), 2, 25))
    if groups is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=size, c="tab:blue", alpha=0.7, linewidths=0)
    else:
        ids = np.unique(groups)
        n = int(max(ids.max(initial=0) + 1, len(names or [])))
        colours = class_colours(n)
        for g in ids:
            sel = groups == g
            label = legend_label(names[g]) if names is not None and g < len(names) else str(g)
            ax.scatter(coords[sel, 0], coords[sel, 1], s=size, color=colours[g], alpha=0.75, linewidths=0, label=label)
        ncol = 1 if len(ids) <= 15 else 2 if len(ids) <= 40 else 3
        if len(ids) <= 60:
            ax.legend(
                loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=max(1.0, 30 / size) ** 0.5, ncol=ncol, frameon=False
            )
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return to_png(fig)


def confusion_heatmap(confusion: np.ndarray, classes: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (rows = true class) with counts written in small matrices."""
    conf = np.asarray(confusion, dtype=np.float64)
    k = len(conf)
    rates = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    side = float(np.clip(0.45 * k + 2.0, 4.0, 9.0))
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 30:
        labels = [c if len(c) <= 14 else c[:13] + "…" for c in classes]
        ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    ax.text(
                        j, i, str(int(conf[i, j])), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black"
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return to_png(fig)


def thumbnail(image: np.ndarray, size: int = 64) -> bytes:
    """One ``(C, H, W)`` uint8 image as a PNG, scaled to ``size`` px (nearest-neighbour for small images)."""
    from PIL import Image

    arr = np.asarray(image)
    arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr[:3], (1, 2, 0))
    img = Image.fromarray(np.ascontiguousarray(arr))
    if img.width != size:
        resample = Image.Resampling.NEAREST if img.width * 2 <= size else Image.Resampling.BILINEAR
        img = img.resize((size, size), resample)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
