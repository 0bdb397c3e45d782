"""``report()``: one self-contained HTML page about a backbone and a dataset.

The stages stay separate: features (:mod:`ssl_toolkit.eval.embed`, through the feature
cache) -> numbers (:mod:`ssl_toolkit.eval.analysis`) -> figures
(:mod:`ssl_toolkit.eval.plots`) -> page (``templates/report.html``, Jinja2 with
autoescape, every image embedded as a ``data:`` URI, no external resources).

What the page shows: the run's header facts, training curves from ``metrics.csv``, the
probe results saved in the run, FAISS kNN / retrieval / k-means figures, the UMAP
scatter, nearest-neighbour grids, the linear probe's confusion matrix, and the latest
sample grids of tasks that save pictures (``<run>/samples/*.png``); see
:mod:`ssl_toolkit.eval.run_record` for what is read from the run folder.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from ssl_toolkit._version import __version__
from ssl_toolkit.api import Positive, Seed, public
from ssl_toolkit.atomic import atomic_write_text
from ssl_toolkit.config import DataConfig, validate
from ssl_toolkit.devices import check_device
from ssl_toolkit.errors import UserError
from ssl_toolkit.eval import plots
from ssl_toolkit.eval.analysis import DEFAULT_IVF_THRESHOLD, GRID_MAX, KNN_KS, RECALL_KS, Analysis, UmapParams, analyze
from ssl_toolkit.eval.embed import load_target_source
from ssl_toolkit.eval.features import FeatureCache, model_fingerprint
from ssl_toolkit.eval.projection import UMAP_MIN_POINTS
from ssl_toolkit.eval.run_record import UnreadableFile, latest_samples, pick_confusion, read_curves, read_probes, sample_picture
from ssl_toolkit.eval.target_rows import headline_cells, multilabel_rows
from ssl_toolkit.html_page import check_page_suffix, data_uri, render_page, shown_name
from ssl_toolkit.run_folder import check_output_file
from ssl_toolkit.sigint import remembered_sigint
from ssl_toolkit.terminal import terminal_safe
from ssl_toolkit.units import fraction_text

TEMPLATES = Path(__file__).resolve().parent / "templates"


# ---------------------------------------------------------------------------------------
# page parts
# ---------------------------------------------------------------------------------------
def header_rows(meta: dict[str, Any], source_name: str, target: str) -> list[tuple[str, str]]:
    """Facts for the page header, as (label, text)."""
    bb = meta.get("backbone", {})
    ds = meta.get("dataset") or {}
    wall = meta.get("wall_seconds")
    versions = meta.get("versions") or {}
    run_version = versions.get("ssl_toolkit")
    version = __version__ if not run_version or run_version == __version__ else f"{__version__} (trained with {run_version})"
    rows = [
        (
            "backbone",
            f"{bb.get('timm_name', '?')}"
            + (" (small stem)" if bb.get("small_stem") else " (no stem max-pool)" if bb.get("stem_pool") is False else ""),
        ),
        ("pretext task", str(meta.get("task") or "-")),
        ("pretrained on", str(ds.get("name") or "-")),
        ("analysed on", source_name),
        ("epochs", str(meta.get("epochs", "-")) + (f" ({steps:,} steps)" if isinstance(steps := meta.get("steps"), int) else "")),
        ("wall time", _duration(wall) if isinstance(wall, (int, float)) else "-"),
        ("image size", f"{meta.get('image_size')} px, {meta.get('in_chans')} channel(s)"),
        ("toolkit version", version),
        ("target", target),
    ]
    return rows


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else f"{m} min {s:02d} s"


def warn(text: str) -> None:
    """One ``warning: ...`` line on stderr (the report goes on without the part it names)."""
    print(f"warning: {terminal_safe(text)}", file=sys.stderr, flush=True)


def k_text(k: int, an: Analysis) -> str:
    """``k`` as a figure used it, saying when it was capped, e.g. ``45 (asked 200; the gallery has 45 images)``."""
    used = an.k_used(k)
    if used == k:
        return str(k)
    room = f"each query has {an.per_query:,} other images" if an.search.leave_one_out else f"the gallery has {an.per_query:,} images"
    return f"{used} (asked {k}; {room})"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def probe_details(p: dict[str, Any]) -> str:
    """A probe's details cell: kNN top-1 at each k, its seed when not 0, and the evaluator's own settings (kNN's k as used)."""
    extra, settings = p.get("top1_by_k"), p.get("settings")
    parts = [", ".join(f"k={k}: {_pct(v)}" for k, v in extra.items())] if isinstance(extra, dict) else []
    if p.get("seed"):
        parts.append(f"seed {p['seed']}")
    if isinstance(settings, dict):
        used = p.get("k")  # kNN's k, clipped to the training subset
        shown = {
            **settings,
            **({"k": f"{used} (of {settings['k']} asked)"} if "k" in settings and isinstance(used, int) and used != settings["k"] else {}),
        }
        parts.append(", ".join(f"{k}={v}" for k, v in shown.items()))
    return "; ".join(x for x in parts if x)


def probe_rows(probes: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for p in probes:
        rows.append(
            {
                "mode": str(p.get("mode", "?")),
                "fraction": fraction_text(float(p.get("label_fraction") or 0)),
                **headline_cells(p, _pct),
                "sizes": f"{p.get('n_train', '-')} / {p.get('n_test', '-')}",
                "dataset": str(p.get("dataset", "-")),
                "notes": probe_details(p),
                "created": str(p.get("created", "")),
            }
        )
    return rows


def grid_rows(
    an: Analysis, query_split: Any, gallery_split: Any, classes: list[str] | None, labelled: bool, multilabel: bool = False
) -> list[dict[str, Any]]:
    """Neighbour grids: per example query its thumbnail, label(s) and top-5 with theirs, mistakes marked.

    A mistake is a neighbour of another class, or with multi-label data a neighbour that shares
    none of the query's labels (a query without labels marks none).
    """
    rows = []
    for qi, neigh, sims in zip(an.grid_queries.tolist(), an.grid_neighbours.tolist(), an.grid_sims.tolist()):
        q_label, q_text = _grid_label(query_split, qi, classes, labelled, multilabel)
        cells = []
        for rank, (gi, sim) in enumerate(zip(neigh, sims), 1):
            if gi < 0:
                continue
            g_label, g_text = _grid_label(gallery_split, gi, classes, labelled, multilabel)
            cells.append(
                {
                    "src": data_uri(plots.thumbnail(gallery_split.image(gi).numpy())),
                    "label": g_text,
                    "id": _short_id(gallery_split.ids[gi]),
                    "rank": rank,
                    "sim": f"{sim:.3f}",
                    "ok": _same(q_label, g_label, multilabel),
                }
            )
        rows.append(
            {
                "src": data_uri(plots.thumbnail(query_split.image(qi).numpy())),
                "label": q_text,
                "id": _short_id(query_split.ids[qi]),
                "cells": cells,
                "mistakes": sum(1 for c in cells if c["ok"] is False),
            }
        )
    return rows


def _grid_label(split: Any, row: int, classes: list[str] | None, labelled: bool, multilabel: bool) -> tuple[Any, str]:
    """An image's label (a class index, or a multi-label row's set of classes) and its caption."""
    if multilabel:
        present = frozenset(int(c) for c in split.labels[row].nonzero().view(-1).tolist())  # (K,) multi-hot row
        return present, ", ".join(_class_name(classes, c) for c in sorted(present)) or "no label"
    label = int(split.labels[row]) if labelled else None
    return label, _class_name(classes, label)


def _same(query: Any, neighbour: Any, multilabel: bool) -> bool | None:
    """Whether a neighbour counts as right: the same class, or a shared label; ``None`` without labels."""
    if multilabel:
        return bool(query & neighbour) if query else None
    return None if query is None else neighbour == query


def _class_name(classes: list[str] | None, label: int | None) -> str:
    if label is None:
        return ""
    return classes[label] if classes and 0 <= label < len(classes) else str(label)


def _short_id(image_id: str) -> str:
    """The last two path parts of a file id (class folder / file name), or the id itself."""
    parts = Path(image_id).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else image_id


def render(context: dict[str, Any]) -> str:
    """The page from ``templates/report.html`` (autoescaped)."""
    return render_page(TEMPLATES, "report.html", context)


# ---------------------------------------------------------------------------------------
# the whole report, in stages
# ---------------------------------------------------------------------------------------
@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - t


@dataclass
class _Sides:
    """Which split queries and which is searched: test against train, or one split leave-one-out."""

    two: bool
    query_name: str
    multilabel: bool
    labelled: bool  # single labels: neighbour accuracy, class colours and grids need them

    @classmethod
    def of(cls, source: Any, split: str) -> _Sides:
        if split not in ("auto", "train", "test"):
            raise UserError(f"unknown split '{split}': use auto, train or test")
        two = split == "auto" and len(source.test) > 0
        query_name = "test" if two or split == "test" else "train"
        if not two and len(getattr(source, query_name)) < 2:  # leave-one-out: each query needs another image
            raise UserError(f"{source.name} has fewer than 2 images in its {query_name} split")
        multilabel = source.target_kind == "multilabel"
        return cls(two, query_name, multilabel, source.labelled and not multilabel)


def _features(
    model: Any, source: Any, pre: Any, sides: _Sides, device: str | None, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Query and gallery features through the feature cache (no gallery for leave-one-out)."""
    cache = FeatureCache()
    fp = model_fingerprint(model)
    qx = np.asarray(cache.features(model, source, sides.query_name, pre, fp, device, batch_size=batch_size)[0])
    gx = np.asarray(cache.features(model, source, "train", pre, fp, device, batch_size=batch_size)[0]) if sides.two else None
    return qx, gx


def _figures(an: Analysis, source: Any, sides: _Sides, folder: Path | None, meta: dict[str, Any]) -> dict[str, Any]:
    """The page's pictures and tables that need drawing: curves, UMAP, confusion, samples, neighbour grids."""
    query_split = getattr(source, sides.query_name)
    classes = source.classes if sides.labelled or sides.multilabel else None
    probes = read_probes(folder, meta, warn)
    confusion = pick_confusion(probes, source.name)
    curves = _curves(folder / "metrics.csv") if folder is not None else None
    assign = an.clusters.assignments
    if sides.labelled:
        groups, names, colour = query_split.labels.numpy()[an.umap_index], [plot_label(c) for c in classes or []], ", coloured by class"
    elif assign is not None:
        groups, names, colour = assign[an.umap_index], [f"cluster {c}" for c in range(an.clusters.k)], ", coloured by k-means cluster"
    else:
        groups, names, colour = None, None, ""
    scatter = None
    if len(an.umap):
        title = f"UMAP of {len(an.umap):,} {sides.query_name} embeddings{colour}"
        scatter = plots.umap_scatter(an.umap, groups, names, title)
    conf_png = (
        plots.confusion_heatmap(np.asarray(confusion["confusion"]), [plot_label(c) for c in confusion["classes"]]) if confusion else None
    )
    sample_epoch, sample_files = latest_samples(folder)
    samples = []
    for path in sample_files:
        try:
            samples.append(sample_picture(path))
        except UnreadableFile as e:
            warn(f"{path} is left out of the report: {e}")
    gallery_split = source.train if sides.two else query_split
    return {
        "probes": probes,
        "curves": data_uri(curves) if curves else None,
        "scatter": data_uri(scatter) if scatter else None,
        "confusion": {
            "src": data_uri(conf_png),
            "top1": _pct(confusion.get("top1")),
            "fraction": fraction_text(float(confusion.get("label_fraction") or 0)),
            "dataset": str(confusion.get("dataset") or "-"),
            "other_data": confusion.get("dataset") != source.name,
        }
        if confusion and conf_png
        else None,
        "samples": samples,
        "sample_epoch": sample_epoch,
        "grids": grid_rows(an, query_split, gallery_split, classes, sides.labelled, sides.multilabel),
    }


def plot_label(name: object) -> str:
    """A class name as matplotlib draws it, character for character.

    Shown as on the page (:func:`~ssl_toolkit.html_page.shown_name`), with each ``$``
    escaped (two of them would start mathtext, which fails on e.g. ``$\\foo$``) and a zero-width
    space before a leading ``_`` (a legend leaves out labels that start with one).
    """
    text = shown_name(name).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def _curves(path: Path) -> bytes | None:
    """The training curves of ``metrics.csv``; ``None`` with one warning when it cannot be read."""
    try:
        return plots.training_curves(read_curves(path))
    except UnreadableFile as e:
        warn(f"{path} cannot be read ({e}): the report has no training curves")
        return None


def class_rows(source: Any, an: Analysis) -> list[dict[str, Any]]:
    """Per class: images in train and test, and the kNN accuracy of its queries."""
    classes = source.classes
    n_train = np.bincount(source.train.labels.numpy(), minlength=len(classes))
    n_test = np.bincount(source.test.labels.numpy(), minlength=len(classes)) if len(source.test) else np.zeros(len(classes), int)
    return [
        {
            "name": name,
            "train": int(n_train[c]),
            "test": int(n_test[c]),
            "knn": _pct(an.per_class_knn[c] if c < len(an.per_class_knn) else None),
        }
        for c, name in enumerate(classes)
    ]


def single_class(source: Any, sides: _Sides) -> str | None:
    """What the neighbour figures say when the labelled queries hold one class, else ``None``.

    Every neighbour is then of that class (kNN, Recall@k and mAP@R are 100% for any
    features) when the gallery holds no other; when it does, the figures say only how
    rarely the other classes come near.
    """
    if not sides.labelled:
        return None
    query = np.unique(getattr(source, sides.query_name).labels.numpy())
    if len(query) != 1:
        return None
    gallery = np.unique(source.train.labels.numpy()) if sides.two else query
    if source.num_classes < 2:
        where = f"{source.name} has a single class"
    else:
        name = source.classes[int(query[0])] if source.classes and int(query[0]) < len(source.classes) else str(int(query[0]))
        where = f"the {sides.query_name} split of {source.name} holds a single class ({name})"
    if set(gallery.tolist()) <= set(query.tolist()):
        return f"{where}; every neighbour is that class, so kNN top-1, Recall@k and mAP@R say nothing"
    return f"{where}; kNN top-1, Recall@k and mAP@R say only how rarely the other classes' training images come near it"


def _context(an: Analysis, source: Any, sides: _Sides, figures: dict[str, Any], meta: dict[str, Any], target: str) -> dict[str, Any]:
    """Everything ``templates/report.html`` shows."""
    summary = an.summary()
    assign = an.clusters.assignments
    return {
        **figures,
        "title": f"{meta.get('task') or 'backbone'} · {meta.get('backbone', {}).get('timm_name', '')} · {source.name}",
        "header": header_rows(meta, source.name, target),
        "source_name": source.name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "probes": probe_rows(figures["probes"]),
        "labelled": sides.labelled,
        "multilabel": sides.multilabel,
        "single_class": single_class(source, sides),
        "has_test": sides.two,
        "split_name": sides.query_name,
        "grid_k": max((len(row["cells"]) for row in figures["grids"]), default=0),
        "grid_classes": {"shown": an.grid_classes[0], "total": an.grid_classes[1], "rows": GRID_MAX},
        "n_queries": an.n_queries,
        "n_gallery": an.search.n_gallery,
        "search": an.search.describe(),
        "knn": [{"k": k_text(k, an), "id": f"knn-acc-{k}", "value": an.knn[k], "text": _pct(an.knn[k])} for k in KNN_KS if k in an.knn],
        "recall": [
            {"k": k_text(k, an), "id": f"recall-{k}", "value": an.recall[k], "text": _pct(an.recall[k])}
            for k in RECALL_KS
            if k in an.recall
        ],
        "class_k": k_text(20, an),
        "map_at_r": None if an.map_at_r is None else {"value": an.map_at_r, "text": _pct(an.map_at_r), "cap": an.map_r_cap},
        "temperature": an.temperature,
        "clusters": summary["clusters"],
        "cluster_sizes": np.bincount(assign, minlength=an.clusters.k).tolist() if assign is not None else [],
        "class_rows": class_rows(source, an) if sides.labelled and source.classes else [],
        "umap": {"points": int(len(an.umap)), "total": an.n_queries, "min_points": UMAP_MIN_POINTS, **an.umap_settings},
        "skipped": len(source.skipped),
        "multilabel_rows": multilabel_rows(source, figures["probes"], _pct) if sides.multilabel else [],
    }


def report_path(target: str | Path, out: str | Path | None) -> Path:
    """Where the page goes, checked before any work: ``out``, else ``report.html`` in a folder ``target``, else in the working folder.

    Raises:
        UserError: The name does not end in ``.html`` or ``.htm`` (a page written over, say,
            an ``.npz`` would destroy it), or the path cannot be written
            (:func:`~ssl_toolkit.run_folder.check_output_file`).
    """
    if out is None:
        folder = Path(target).expanduser()
        out, what = (folder if str(target).strip() and folder.is_dir() else Path()) / "report.html", "--out (default)"
    else:
        what = "--out"
    return check_page_suffix(check_output_file(out, what), what)


MAX_QUERIES_PER_CLASS = 10


@public
def report(
    target: str | Path,
    data: str | Path | dict[str, Any] | DataConfig | None = None,
    out: str | Path | None = None,
    umap: UmapParams | dict[str, Any] | None = None,
    ivf_threshold: Positive = DEFAULT_IVF_THRESHOLD,
    clusters: Positive | None = None,
    queries_per_class: Annotated[Positive, Field(le=MAX_QUERIES_PER_CLASS)] = 2,
    batch_size: Positive = 256,
    device: str | None = None,
    seed: Seed = 0,
    split: Literal["auto", "train", "test"] = "auto",
) -> dict[str, Any]:
    """Analyse ``data`` under the backbone ``target`` and write one HTML page.

    Args:
        target: Run folder, backbone file or checkpoint-library name.
        data: Dataset name or folder, a dict of :class:`DataConfig` fields (without
            ``name``: on top of the data the backbone was pretrained on), or a config
            (default: the data the backbone was pretrained on).
        out: The HTML file, ending in ``.html`` or ``.htm`` (default ``<run>/report.html`` for a
            folder, else ``report.html`` in the working folder).
        umap: UMAP settings (:class:`UmapParams` or a dict of its fields).
        ivf_threshold: Gallery size from which FAISS searches an IVF index instead of an exact one.
        clusters: k-means ``k`` (default: the number of classes, or 10 without labels).
        queries_per_class: Example queries per class in the neighbour grids, 1 to
            ``MAX_QUERIES_PER_CLASS`` (the grids hold at most ``GRID_MAX`` rows: with many
            classes, the first classes; the page says so).
        batch_size: Images per forward pass when features are extracted.
        device: Where to run the backbone (default: CUDA when available).
        seed: Seed of subsampling and example picks, and of UMAP unless ``umap`` sets its own.
        split: ``auto``: test queries against the training gallery (leave-one-out on the
            training split when there is no test split); ``train`` or ``test``: that split
            alone, leave-one-out.

    Returns:
        ``path`` and the analysis figures (``knn``, ``recall``, ``map_at_r``, ``clusters``,
        ``search``...), plus ``seconds`` per stage.
    """
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    umap_params = umap if isinstance(umap, UmapParams) else validate(UmapParams, dict(umap or {}), what="umap")
    if "seed" not in umap_params.model_fields_set:  # a dict of settings (made UmapParams by the argument check) without its own seed
        umap_params = umap_params.model_copy(update={"seed": seed})
    check_device(device)
    out_path = report_path(target, out)
    with _timed(seconds, "load"):
        model, meta, folder, source, pre = load_target_source(target, data, {"--out": out_path})
    with _timed(seconds, "features"):
        sides = _Sides.of(source, split)
        if said := single_class(source, sides):
            warn(said)
        qx, gx = _features(model, source, pre, sides, device, batch_size)
    with remembered_sigint() as check_sigint:
        with _timed(seconds, "analysis"):
            query_split = getattr(source, sides.query_name)
            an = analyze(
                qx,
                query_split.labels.numpy() if sides.labelled else None,
                gx,
                source.train.labels.numpy() if sides.labelled and sides.two else None,
                num_classes=source.num_classes or None,
                clusters=clusters,
                umap_params=umap_params,
                ivf_threshold=ivf_threshold,
                grid_per_class=queries_per_class,
                seed=seed,
            )
        with _timed(seconds, "plots"):
            figures = _figures(an, source, sides, folder, meta)
        with _timed(seconds, "render"):
            html = render(_context(an, source, sides, figures, meta, str(target)))
            check_sigint()  # a Ctrl-C that numba swallowed under UMAP still stops the report before it writes
            out_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_path, html)
    seconds["total"] = time.perf_counter() - t0
    summary = an.summary()
    return {
        "path": str(out_path),
        **summary,
        "labelled": sides.labelled,
        "dataset": source.name,
        "probes": len(figures["probes"]),
        "bytes": len(html.encode("utf-8")),
        "seconds": {**{k: round(v, 3) for k, v in seconds.items()}, "analysis_stages": summary["seconds"]},
    }
