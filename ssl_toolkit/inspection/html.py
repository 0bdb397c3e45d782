"""The inspection report as one self-contained HTML page.

Rendered from ``templates/inspect.html`` by Jinja2 with autoescaping on; every image is
embedded as a ``data:`` URI, so the page is a single file that opens anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ssl_toolkit.atomic import atomic_write_text
from ssl_toolkit.data.scan import READ_ERRORS
from ssl_toolkit.html_page import data_uri, render_page
from ssl_toolkit.inspection.table import ImageTable
from ssl_toolkit.units import human_size

TEMPLATES = Path(__file__).parent / "templates"
MEMBERS_SHOWN = 8


class Thumbnails:
    """Data URIs of table rows, each encoded once."""

    def __init__(self, table: ImageTable, px: int = 96) -> None:
        self.table, self.px = table, px
        self.cache: dict[int, str] = {}

    def __call__(self, i: int) -> str:
        if i not in self.cache:
            try:
                mime, data = self.table.thumbnail(i, self.px)
                self.cache[i] = data_uri(data, mime)
            except READ_ERRORS:  # the file changed or vanished since the scan
                self.cache[i] = ""
        return self.cache[i]


def histogram_rows(hist: dict[str, list], fmt: Callable[[float], str] = lambda v: f"{v:g}") -> list[dict[str, Any]]:
    """Rows (label, count, percent of the largest bin) for a CSS bar chart.

    A bin whose two edges read the same (one value, or a range narrower than ``fmt``
    shows) is labelled with that one value.
    """
    edges, counts = hist["edges"], hist["counts"]
    top = max(counts) if counts else 1
    rows = []
    for k, c in enumerate(counts):
        lo, hi = fmt(edges[k]), fmt(edges[k + 1])
        label = lo if lo == hi else f"{lo} - {hi}"
        rows.append({"label": label, "count": c, "pct": round(100.0 * c / top, 1) if top else 0})
    return rows


def class_grids(table: ImageTable, per_class: int, thumbs: Thumbnails, seed: int = 0) -> list[dict[str, Any]]:
    """A few images of every class (or of the whole set when unlabelled), drawn with a fixed seed; a multi-label image may show under each of its labels."""
    if per_class == 0 or len(table) == 0:
        return []
    rng = np.random.default_rng(seed)
    if table.labels is None or not table.classes:
        buckets = [("all images", np.arange(len(table)))]
    else:
        labels = table.labels
        # (N, K) membership: a multi-label image is in each of its classes
        hot = labels == 1 if labels.ndim == 2 else labels[:, None] == np.arange(len(table.classes))
        buckets = [(name, np.flatnonzero(hot[:, k])) for k, name in enumerate(table.classes)]
    grids = []
    for name, idx in buckets:
        chosen = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)) if len(idx) else idx
        grids.append(
            {
                "name": name,
                "count": len(idx),
                "images": [
                    {"src": thumbs(int(i)), "id": table.ids[i], "split": "train" if table.split[i] == 0 else "test"} for i in chosen
                ],
            }
        )
    return grids


def group_views(
    table: ImageTable, section: dict[str, Any] | None, groups: list[np.ndarray], limit: int, thumbs: Thumbnails
) -> dict[str, Any] | None:
    """The groups drawn on the page: leaks first, then the largest; a few members each."""
    if section is None:
        return None
    order = range(min(limit, len(groups)))  # groups come leaks first
    views = []
    for k in order:
        g, info = groups[k], section["groups"][k]
        members = []
        for m, row in zip(g[:MEMBERS_SHOWN].tolist(), info["members"][:MEMBERS_SHOWN]):
            members.append(
                {**row, "src": thumbs(m), "name": Path(row["id"]).name if table.kind == "folder" else row["id"].split(":", 1)[-1]}
            )
        score = {key: info[key] for key in ("max_hamming", "min_cosine") if info.get(key) is not None}
        views.append({"info": info, "members": members, "more": len(g) - len(members), "score": score})
    return {"section": section, "views": views, "hidden": max(0, len(groups) - len(views))}


def processing_view(section: dict[str, Any] | None, pictures: dict[str, bytes]) -> dict[str, Any] | None:
    """Per-channel histogram rows before and after processing, and the sample strips as data URIs."""
    if not section:
        return None
    pct = lambda v: f"{v:.2f}"  # noqa: E731
    return {
        "settings": section["settings"],
        "images": section["images"],
        "changed": section["settings"]["color_space"] != "rgb" or section["settings"]["equalize"] != "none",
        "before": [(h["channel"], h["mean"], h["std"], histogram_rows(h, pct)) for h in section["before"]],
        "after": [(h["channel"], h["mean"], h["std"], histogram_rows(h, pct)) for h in section["after"]],
        "pictures": {k: data_uri(v, "image/png") for k, v in pictures.items()},
    }


def render_html(result, progress=None) -> str:
    """Render an :class:`~ssl_toolkit.inspection.Inspection` to HTML text."""
    report, table = result.report, result.table
    cfg = report["settings"]
    thumbs = Thumbnails(table)
    if progress is not None:
        progress("rendering", 0, 1)
    sizes = report["sizes"]
    histograms = [
        ("Width (px)", histogram_rows(sizes["width"]["histogram"], lambda v: f"{v:.0f}")),
        ("Height (px)", histogram_rows(sizes["height"]["histogram"], lambda v: f"{v:.0f}")),
        ("Aspect ratio (width / height)", histogram_rows(sizes["aspect_ratio"]["histogram"], lambda v: f"{v:.2f}")),
    ]
    if report["file_sizes"]:
        histograms.append(("File size", histogram_rows(report["file_sizes"]["histogram"], human_size)))
    dups = report["duplicates"]
    context = {
        "r": report,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "histograms": histograms,
        "human_bytes": human_size,
        "grids": class_grids(table, cfg["thumbnails_per_class"], thumbs),
        "groups": [
            ("Exact duplicates", "exact", group_views(table, dups["exact"], result.groups["exact"], cfg["max_groups_shown"], thumbs)),
            ("Near duplicates", "near", group_views(table, dups["near"], result.groups["near"], cfg["max_groups_shown"], thumbs)),
            (
                "Embedding neighbours",
                "embedding",
                group_views(table, dups["embedding"], result.groups.get("embedding", []), cfg["max_groups_shown"], thumbs),
            ),
        ],
        "pixelated": table.kind == "tensor",
        "processing": processing_view(report.get("processing"), getattr(result, "pictures", {})),
    }
    html = render_page(TEMPLATES, "inspect.html", context, strict=False)
    if progress is not None:
        progress("rendering", 1, 1)
    return html


def write_html(result, path: str | Path, progress=None) -> Path:
    """Render and write the page atomically; returns its path."""
    path = Path(path)
    atomic_write_text(path, render_html(result, progress=progress))
    return path
