"""k-means of embeddings with FAISS, scored against labels by NMI and ARI.

k-means runs only when there are at least ``MIN_POINTS_PER_CLUSTER`` points per cluster:
with about one point per cluster every point is its own cluster, and NMI and ARI score the
partition of the points rather than the embeddings (1.000 for any features).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssl_toolkit.flat_index import unit_rows

SMALL_KMEANS_WORK = 200_000_000  # points x dims x clusters below which k-means runs on one thread
MIN_POINTS_PER_CLUSTER = 2


def contingency_scores(labels: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Normalised mutual information (arithmetic mean) and adjusted Rand index."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels, clusters)), float(adjusted_rand_score(labels, clusters))


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run FAISS with ``n`` OpenMP threads inside the block, then restore the previous count."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 25, nredo: int = 3) -> tuple[np.ndarray, float]:
    """FAISS k-means of the L2-normalised rows of ``x`` (best of ``nredo`` starts); returns (assignments, objective)."""
    import faiss

    xn = unit_rows(x)
    k = max(1, min(k, len(xn)))
    # small problems: one thread (OpenMP's per-iteration start-up dominates, worst on busy cores)
    threads = 1 if xn.shape[0] * xn.shape[1] * k < SMALL_KMEANS_WORK else faiss.omp_get_max_threads()
    with faiss_threads(threads):
        return _kmeans(xn, k, seed, niter, nredo)


def _kmeans(xn: np.ndarray, k: int, seed: int, niter: int, nredo: int) -> tuple[np.ndarray, float]:
    import faiss

    km = faiss.Kmeans(
        xn.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False, min_points_per_centroid=1, max_points_per_centroid=100_000
    )
    km.train(xn)
    _, assign = km.index.search(xn, 1)
    return assign[:, 0].astype(np.int64), float(km.obj[-1]) if km.obj is not None and len(km.obj) else 0.0


@dataclass
class ClusterResult:
    """k-means over several seeds.

    Attributes:
        k: Clusters.
        seeds: Seeds run.
        points: Points clustered.
        nmi: NMI per seed (empty without labels, or when not run).
        ari: ARI per seed (empty without labels, or when not run).
        assignments: Clusters of the run with the best objective (``None`` when not run).
        not_run: Why k-means did not run (too few points for ``k``), else ``None``.
        unscored: Why labels were given but NMI and ARI were not computed (the points hold one
            class, so any clustering scores 0), else ``None``.
    """

    k: int
    seeds: list[int]
    points: int = 0
    nmi: list[float] = field(default_factory=list)
    ari: list[float] = field(default_factory=list)
    assignments: np.ndarray | None = None
    not_run: str | None = None
    unscored: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-able figures: ``k``, ``seeds``, ``points``, ``not_run``, ``unscored`` and, when scored, NMI and ARI."""
        out: dict[str, Any] = {"k": self.k, "seeds": self.seeds, "points": self.points, "not_run": self.not_run, "unscored": self.unscored}
        if self.nmi:
            out.update(
                nmi_mean=float(np.mean(self.nmi)),
                nmi_std=float(np.std(self.nmi)),
                ari_mean=float(np.mean(self.ari)),
                ari_std=float(np.std(self.ari)),
                nmi=self.nmi,
                ari=self.ari,
            )
        return out


def cluster(x: np.ndarray, k: int, labels: np.ndarray | None = None, seeds: tuple[int, ...] = (0, 1, 2)) -> ClusterResult:
    """k-means with each seed; NMI and ARI against ``labels`` when given.

    With fewer than ``MIN_POINTS_PER_CLUSTER * k`` points nothing runs and
    :attr:`ClusterResult.not_run` says why. Labels of one class are not scored
    (:attr:`ClusterResult.unscored`): NMI and ARI are 0 for any clustering of them, as
    for one cluster (``k = 1``).
    """
    res = ClusterResult(k=k, seeds=list(seeds), points=len(x))
    if labels is not None and len(np.unique(labels)) < 2:
        res.unscored = "the points hold one class, and any clustering of one class scores 0"
        labels = None
    elif labels is not None and k < 2:
        res.unscored = "k = 1 puts every point in one cluster, which scores 0 against any labels"
        labels = None
    if len(x) < MIN_POINTS_PER_CLUSTER * k:
        res.not_run = f"k = {k:,} needs at least {MIN_POINTS_PER_CLUSTER * k:,} points ({MIN_POINTS_PER_CLUSTER} per cluster); there {'is' if len(x) == 1 else 'are'} {len(x):,}"
        return res
    best = np.inf
    for seed in seeds:
        assign, obj = kmeans(x, k, seed)
        if labels is not None:
            nmi, ari = contingency_scores(labels, assign)
            res.nmi.append(nmi)
            res.ari.append(ari)
        if obj < best:  # sum of squared distances to the centroids
            best, res.assignments = obj, assign
    return res
