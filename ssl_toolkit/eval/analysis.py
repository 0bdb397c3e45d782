"""Embedding analysis: everything the report measures on a query set and a gallery set.

:func:`analyze` runs the stages in turn and returns one :class:`Analysis`: the FAISS
neighbour search and its figures (:mod:`ssl_toolkit.eval.neighbours`), k-means
(:mod:`ssl_toolkit.eval.clustering`), the UMAP projection
(:mod:`ssl_toolkit.eval.projection`) and the example queries of the neighbour grids.
Nothing here draws or renders: see :mod:`ssl_toolkit.eval.plots` and
:mod:`ssl_toolkit.eval.report`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ssl_toolkit.eval.clustering import ClusterResult, cluster
from ssl_toolkit.eval.neighbours import (
    DEFAULT_IVF_THRESHOLD,
    DEFAULT_TEMPERATURE,
    KNN_KS,
    RECALL_KS,
    SearchInfo,
    knn_accuracy,
    knn_votes,
    map_at_r,
    neighbours,
    recall_at_k,
)
from ssl_toolkit.eval.projection import UmapParams, neighbours_used, umap_projection
from ssl_toolkit.sampling import per_class_picks

__all__ = ["DEFAULT_IVF_THRESHOLD", "GRID_MAX", "KNN_KS", "RECALL_KS", "Analysis", "UmapParams", "analyze"]


GRID_MAX = 100  # most rows of the neighbour grids (each a query and its 5 neighbours)
GRID_UNLABELLED = 20  # rows of the grids without labels: random queries


@dataclass
class Analysis:
    """The numbers behind a report.

    Attributes:
        search: How neighbours were searched.
        knn: ``{k: top-1}`` (empty without labels), keyed by the ``k`` asked (see :meth:`k_used`).
        recall: ``{k: Recall@k}`` (empty without labels), keyed by the ``k`` asked.
        map_at_r: mAP@R (``None`` without labels).
        map_r_cap: Largest ``R`` used (``R`` is capped at the neighbours fetched).
        clusters: k-means results (on the query set).
        umap: ``(M, 2)`` coordinates of the query rows in ``umap_index``.
        umap_index: Rows of the query set that were projected.
        umap_settings: The UMAP settings used (``n_neighbors`` as run, at most the points
            projected less one; ``n_neighbors_asked`` as asked); empty without a projection.
        grid_queries: Query rows shown in neighbour grids.
        grid_classes: ``(classes with example queries, classes among the queries)``: the
            grids hold at most ``grid_max`` rows, so with many classes only the first ones;
            ``(0, 0)`` without labels.
        grid_neighbours: ``(len(grid_queries), 5)`` gallery rows of their top-5.
        grid_sims: Cosine similarities of those neighbours.
        per_class_knn: kNN top-1 per class at ``k = 20`` (``k_used(20)``; ``None`` for a class without queries).
        per_query: Gallery items each query can be matched with (the gallery, less itself
            for leave-one-out): every ``k`` of kNN and Recall@k is capped at it.
        n_queries: Query points.
        temperature: kNN vote temperature.
        seconds: Time per stage.
    """

    search: SearchInfo
    knn: dict[int, float]
    recall: dict[int, float]
    map_at_r: float | None
    map_r_cap: int | None
    clusters: ClusterResult
    umap: np.ndarray
    umap_index: np.ndarray
    umap_settings: dict[str, Any]
    grid_queries: np.ndarray
    grid_classes: tuple[int, int]
    grid_neighbours: np.ndarray
    grid_sims: np.ndarray
    per_class_knn: list[float | None]
    per_query: int
    n_queries: int
    temperature: float
    seconds: dict[str, float]

    def k_used(self, k: int) -> int:
        """The number of neighbours a figure asked for ``k`` actually used (``k`` capped at :attr:`per_query`)."""
        return min(k, self.per_query)

    def summary(self) -> dict[str, Any]:
        """JSON-able figures (no arrays); ``knn_k`` and ``recall_k`` map each ``k`` asked to the ``k`` used."""
        return {
            "search": asdict(self.search) | {"description": self.search.describe()},
            "knn": {str(k): v for k, v in self.knn.items()},
            "knn_k": {str(k): self.k_used(k) for k in self.knn},
            "recall": {str(k): v for k, v in self.recall.items()},
            "recall_k": {str(k): self.k_used(k) for k in self.recall},
            "map_at_r": self.map_at_r,
            "map_r_cap": self.map_r_cap,
            "clusters": self.clusters.summary(),
            "per_class_knn": self.per_class_knn,
            "per_class_knn_k": self.k_used(20),
            "per_query": self.per_query,
            "n_queries": self.n_queries,
            "umap_points": int(len(self.umap_index)),
            "umap": self.umap_settings,
            "temperature": self.temperature,
            "seconds": self.seconds,
        }


@dataclass
class _Labels:
    """Single labels of the queries and the gallery, and what the search must fetch for them."""

    query: np.ndarray
    gallery: np.ndarray
    num_classes: int
    r: np.ndarray  # relevant gallery items per query, capped at r_cap
    r_cap: int

    @property
    def k_fetch(self) -> int:
        return max(max(KNN_KS), max(RECALL_KS), self.r_cap)


def _labels(
    query_labels: np.ndarray | None,
    gallery_labels: np.ndarray | None,
    leave_one_out: bool,
    num_classes: int | None,
    max_r: int,
) -> _Labels | None:
    """The labels to score with, or ``None`` when the queries or the gallery have none."""
    if query_labels is None or (not leave_one_out and gallery_labels is None):
        return None
    q = np.asarray(query_labels, dtype=np.int64)
    g = q if leave_one_out else np.asarray(gallery_labels, dtype=np.int64)
    k_classes = int(num_classes or max(q.max(initial=0), g.max(initial=0)) + 1)
    r = np.bincount(g, minlength=k_classes)[q] - (1 if leave_one_out else 0)
    r_cap = int(min(max_r, max(r.max(initial=0), 1)))
    return _Labels(q, g, k_classes, np.minimum(r, r_cap), r_cap)


@dataclass
class _Scores:
    knn: dict[int, float] = field(default_factory=dict)
    recall: dict[int, float] = field(default_factory=dict)
    map_at_r: float | None = None
    per_class: list[float | None] = field(default_factory=list)


def _scores(sims: np.ndarray, idx: np.ndarray, lab: _Labels, temperature: float) -> _Scores:
    """kNN accuracy per ``k``, Recall@k, mAP@R and per-class kNN accuracy at ``k = 20``."""
    nl = np.where(idx >= 0, lab.gallery[np.clip(idx, 0, None)], -1)  # (N_q, k) neighbour labels
    pred = knn_votes(sims, nl, min(20, sims.shape[1]), lab.num_classes, temperature).argmax(axis=1)
    per_class: list[float | None] = []
    for c in range(lab.num_classes):
        sel = lab.query == c
        per_class.append(float((pred[sel] == c).mean()) if sel.any() else None)
    return _Scores(
        knn=knn_accuracy(sims, nl, lab.query, lab.num_classes, KNN_KS, temperature),
        recall=recall_at_k(nl, lab.query, RECALL_KS),
        map_at_r=map_at_r(nl, lab.query, lab.r),
        per_class=per_class,
    )


def analyze(
    queries: np.ndarray,
    query_labels: np.ndarray | None = None,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    num_classes: int | None = None,
    clusters: int | None = None,
    umap_params: UmapParams | None = None,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    temperature: float = DEFAULT_TEMPERATURE,
    kmeans_seeds: tuple[int, ...] = (0, 1, 2),
    grid_per_class: int = 2,
    grid_max: int = GRID_MAX,
    max_r: int = 1000,
    project: bool = True,
    seed: int = 0,
) -> Analysis:
    """kNN accuracy, retrieval, k-means and UMAP of ``queries`` against ``gallery``.

    Args:
        queries: ``(N_q, D)`` features (the test split).
        query_labels: ``(N_q,)`` labels or ``None`` (then no accuracy figures).
        gallery: ``(N_g, D)`` features (the training split); ``None`` = leave-one-out on ``queries``.
        gallery_labels: ``(N_g,)`` labels (ignored for leave-one-out).
        num_classes: ``K`` (default: from the labels).
        clusters: k-means ``k`` (default ``K``, or 10 without labels); k-means is skipped with
            fewer than 2 points per cluster (see :mod:`ssl_toolkit.eval.clustering`).
        umap_params: UMAP settings.
        ivf_threshold: Gallery size from which the search is approximate (IVF).
        temperature: kNN vote temperature.
        kmeans_seeds: Seeds of the k-means runs.
        grid_per_class: Example queries per class in the neighbour grids.
        grid_max: Most example queries (without labels: at most ``GRID_UNLABELLED``, drawn at random).
        max_r: Cap on ``R`` for mAP@R (and on neighbours fetched for it).
        project: Compute the UMAP projection.
        seed: Seed of subsampling and example picks.
    """
    seconds: dict[str, float] = {}
    lab = _labels(query_labels, gallery_labels, gallery is None, num_classes, max_r)
    t = time.perf_counter()
    sims, idx, info = neighbours(queries, gallery, lab.k_fetch if lab else 5, ivf_threshold, seed)
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    scores = _scores(sims, idx, lab, temperature) if lab else _Scores()
    seconds["knn_retrieval"] = time.perf_counter() - t

    t = time.perf_counter()
    k_means = clusters or (lab.num_classes if lab and lab.num_classes > 1 else 10)
    clus = cluster(queries, k_means, lab.query if lab else None, kmeans_seeds)
    seconds["kmeans"] = time.perf_counter() - t

    coords, keep = np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.int64)
    umap_settings: dict[str, Any] = {}
    if project:
        t = time.perf_counter()
        params = umap_params or UmapParams()
        coords, keep = umap_projection(queries, lab.query if lab else None, params)
        umap_settings = params.model_dump() | {
            "n_neighbors": neighbours_used(params.n_neighbors, len(keep)),
            "n_neighbors_asked": params.n_neighbors,
        }
        seconds["umap"] = time.perf_counter() - t

    grid_q = per_class_picks(
        len(queries), lab.query if lab else None, grid_per_class, grid_max if lab else min(grid_max, GRID_UNLABELLED), seed
    )
    return Analysis(
        search=info,
        knn=scores.knn,
        recall=scores.recall,
        map_at_r=scores.map_at_r,
        map_r_cap=lab.r_cap if lab else None,
        clusters=clus,
        umap=coords,
        umap_index=keep,
        umap_settings=umap_settings,
        grid_queries=grid_q,
        grid_classes=(0, 0) if lab is None else (len(np.unique(lab.query[grid_q])), len(np.unique(lab.query))),
        grid_neighbours=idx[grid_q, : min(5, idx.shape[1])],
        grid_sims=sims[grid_q, : min(5, sims.shape[1])],
        per_class_knn=scores.per_class,
        per_query=int(len(queries) - 1 if gallery is None else len(gallery)),
        n_queries=int(len(queries)),
        temperature=temperature,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
