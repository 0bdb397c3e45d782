"""Seeded 2-D UMAP projections of embeddings, with the neighbour graph computed exactly by FAISS."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ssl_toolkit.flat_index import flat_search, unit_rows
from ssl_toolkit.sampling import proportional_sample

UmapMetric = Literal["cosine", "euclidean", "manhattan", "chebyshev", "minkowski", "correlation", "canberra", "braycurtis"]
UMAP_METRICS: tuple[str, ...] = get_args(UmapMetric)


UMAP_MIN_POINTS = 4  # fewer points make no layout (UMAP needs 2 neighbours besides the point itself)


class UmapParams(BaseModel):
    """UMAP settings (see umap-learn): neighbours, minimum distance, metric, seed, point limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_neighbors: int = Field(default=15, ge=2)
    min_dist: float = Field(default=0.1, ge=0.0, le=1.0, allow_inf_nan=False)
    metric: UmapMetric = "cosine"
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    max_points: int = Field(default=5000, ge=UMAP_MIN_POINTS)


def neighbours_used(n_neighbors: int, points: int) -> int:
    """The ``n_neighbors`` UMAP runs with on ``points`` points: at most ``points - 1``, at least 2."""
    return max(2, min(n_neighbors, points - 1))


def knn_graph(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact ``k``-neighbour graph (self first) with FAISS for UMAP, for the ``cosine`` and ``euclidean`` metrics.

    Returns:
        ``(N, k)`` indices and distances, or ``None`` for other metrics (UMAP then finds neighbours itself).
    """
    if metric == "cosine":
        xn = unit_rows(x)
        sims, idx = flat_search(xn, xn, k)
        dists = np.maximum(1.0 - sims, 0.0)
    elif metric == "euclidean":
        d2, idx = flat_search(x, x, k, metric="l2")
        dists = np.sqrt(np.maximum(d2, 0.0))
    else:
        return None
    # UMAP expects each point to be its own first neighbour at distance 0
    # (a duplicate point can come before it: move the point to the front, keep the order of the rest)
    for i in np.flatnonzero(idx[:, 0] != np.arange(len(x))):
        others = [(j, d) for j, d in zip(idx[i].tolist(), dists[i].tolist()) if j != i][: k - 1]
        idx[i] = [i] + [j for j, _ in others]
        dists[i] = [0.0] + [d for _, d in others]
    dists[:, 0] = 0.0  # exactly, not float rounding of 1 - 1
    return idx.astype(np.int64), dists.astype(np.float32)


def umap_projection(x: np.ndarray, labels: np.ndarray | None = None, params: UmapParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 2-D UMAP of ``x`` (a stratified subsample above ``params.max_points``).

    For the cosine and euclidean metrics the neighbour graph is computed exactly with FAISS
    and handed to UMAP (``precomputed_knn``), which skips UMAP's own approximate search.

    Returns:
        ``(M, 2)`` float32 coordinates and the ``(M,)`` row indices of ``x`` they belong to;
        ``M`` is 0 below :data:`UMAP_MIN_POINTS` points.
    """
    import warnings

    params = params or UmapParams()
    keep = proportional_sample(len(x), params.max_points, labels, params.seed)
    sub = np.ascontiguousarray(x[keep], dtype=np.float32)
    if len(sub) < UMAP_MIN_POINTS:  # no neighbour graph to lay out: nothing is drawn
        return np.zeros((0, 2), dtype=np.float32), keep[:0]
    n_neighbors = neighbours_used(params.n_neighbors, len(sub))
    graph = knn_graph(sub, n_neighbors, params.metric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=n_neighbors,
            min_dist=params.min_dist,
            metric=params.metric,
            random_state=params.seed,
            precomputed_knn=(None, None, None) if graph is None else (graph[0], graph[1], None),
            init="spectral" if len(sub) > n_neighbors + 2 else "random",
        )
        coords = reducer.fit_transform(sub)
    return np.asarray(coords, dtype=np.float32), keep
