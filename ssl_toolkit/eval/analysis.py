"""Embedding analysis: FAISS neighbours (kNN accuracy, retrieval), k-means clusters and UMAP.

Every function takes plain arrays and returns numbers (or index arrays), so each is usable
alone; :func:`analyze` runs them all on a query set and a gallery set and returns one
:class:`Analysis`. Nothing here draws or renders: see :mod:`ssl_toolkit.eval.plots` and
:mod:`ssl_toolkit.eval.report`.

Conventions:

* Features are compared by cosine similarity: they are L2-normalised and searched with an
  inner-product index.
* Below ``ivf_threshold`` gallery points the search is exact (``IndexFlatIP``); above it an
  inverted-file index (``IndexIVFFlat``) is used. :class:`SearchInfo` says which.
* When there is no separate gallery, the query set searches itself and each point's own
  match is dropped (leave-one-out).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ssl_toolkit.flat_index import flat_index, flat_search, unit_rows

KNN_KS = (1, 20, 200)
RECALL_KS = (1, 5, 10)
DEFAULT_TEMPERATURE = 0.1  # the kNN evaluator's default
DEFAULT_IVF_THRESHOLD = 200_000
QUERY_CHUNK = 2048
SMALL_KMEANS_WORK = 200_000_000  # points x dims x clusters below which k-means runs on one thread


# ---------------------------------------------------------------------------------------
# FAISS search
# ---------------------------------------------------------------------------------------
@dataclass
class SearchInfo:
    """How a neighbour search was done.

    Attributes:
        index: ``"exact"`` (flat inner product) or ``"ivf"`` (inverted file, approximate).
        n_gallery: Points searched.
        dim: Feature dimension.
        nlist: IVF cells (``None`` for exact).
        nprobe: IVF cells visited per query (``None`` for exact).
        leave_one_out: Queries searched their own set with the self-match removed.
    """

    index: str
    n_gallery: int
    dim: int
    nlist: int | None = None
    nprobe: int | None = None
    leave_one_out: bool = False

    def describe(self) -> str:
        """One line for people, e.g. ``exact (IndexFlatIP, 1,437 points)``."""
        if self.index == "exact":
            text = f"exact (IndexFlatIP, {self.n_gallery:,} points)"
        else:
            text = f"IVF (IndexIVFFlat, nlist={self.nlist}, nprobe={self.nprobe}, {self.n_gallery:,} points)"
        return text + (", leave-one-out" if self.leave_one_out else "")


def build_index(gallery: np.ndarray, ivf_threshold: int = DEFAULT_IVF_THRESHOLD, seed: int = 0) -> tuple[Any, SearchInfo]:
    """An inner-product FAISS index over ``gallery`` (already normalised), exact or IVF by size.

    Args:
        gallery: ``(N, D)`` float32.
        ivf_threshold: Use IVF when ``N`` is at least this.
        seed: Seed of the IVF coarse quantiser's k-means.

    Returns:
        The index (with ``gallery`` added) and a :class:`SearchInfo`.
    """
    import faiss

    n, d = gallery.shape
    if n < ivf_threshold or n < 2 * 39:
        return flat_index(gallery), SearchInfo("exact", n, d)
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    train = gallery if n <= 256 * nlist else gallery[np.sort(rng.choice(n, 256 * nlist, replace=False))]
    index.train(np.ascontiguousarray(train))
    index.add(gallery)
    index.nprobe = min(nlist, max(16, nlist // 4))
    return index, SearchInfo("ivf", n, d, nlist=nlist, nprobe=int(index.nprobe))


def search(index: Any, queries: np.ndarray, k: int, leave_one_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarity, gallery index) of each query, searched in chunks.

    With ``leave_one_out`` the queries are the gallery itself and query ``i``'s own entry
    is removed (one extra neighbour is fetched to make up for it). Missing results (an IVF
    search that found fewer than ``k``) have index ``-1`` and similarity ``-inf``.
    """
    n = queries.shape[0]
    fetch = k + 1 if leave_one_out else k
    sims = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, QUERY_CHUNK):
        q = np.ascontiguousarray(queries[start : start + QUERY_CHUNK])
        s, i = index.search(q, fetch)
        s[i < 0] = -np.inf
        if leave_one_out:
            own = np.arange(start, start + len(q))[:, None]
            is_self = i == own
            # drop the self match where found, else the last (weakest) result
            drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), fetch - 1)
            keep = np.ones_like(is_self)
            keep[np.arange(len(q)), drop] = False
            s = s[keep].reshape(len(q), k)
            i = i[keep].reshape(len(q), k)
        sims[start : start + len(q)] = s
        idx[start : start + len(q)] = i
    return sims, idx


def neighbours(
    queries: np.ndarray,
    gallery: np.ndarray | None,
    k: int,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, SearchInfo]:
    """Cosine top-``k`` of ``queries`` in ``gallery`` (or in themselves, leave-one-out, if ``None``).

    Returns:
        ``(N_q, k)`` similarities, ``(N_q, k)`` gallery indices and the :class:`SearchInfo`.
    """
    loo = gallery is None
    q = unit_rows(queries)
    g = q if loo else unit_rows(gallery)
    k = max(1, min(k, g.shape[0] - (1 if loo else 0)))
    index, info = build_index(g, ivf_threshold, seed)
    info.leave_one_out = loo
    sims, idx = search(index, q, k, leave_one_out=loo)
    return sims, idx, info


# ---------------------------------------------------------------------------------------
# kNN classification and retrieval
# ---------------------------------------------------------------------------------------
def knn_votes(
    sims: np.ndarray, neighbour_labels: np.ndarray, k: int, num_classes: int, temperature: float = DEFAULT_TEMPERATURE
) -> np.ndarray:
    """Class scores of the top-``k`` neighbours, each weighted by ``exp(similarity / T)``.

    The vote is :func:`ssl_toolkit.evaluators.knn.vote` (the kNN evaluator's); missing
    neighbours (label ``-1``) get no weight.

    Args:
        sims: ``(N, >=k)`` similarities, best first.
        neighbour_labels: ``(N, >=k)`` labels of those neighbours (``-1`` = missing).
        k: Neighbours that vote.
        num_classes: ``K``.
        temperature: ``T``.

    Returns:
        ``(N, K)`` float64 vote totals.
    """
    import torch

    from ssl_toolkit.evaluators.knn import vote

    lab = np.asarray(neighbour_labels[:, :k], dtype=np.int64)
    s = np.where(lab >= 0, sims[:, :k], -np.inf).astype(np.float32)
    scores = vote(torch.from_numpy(s), torch.from_numpy(np.clip(lab, 0, None)), temperature, num_classes)
    return scores.numpy()


def knn_accuracy(
    sims: np.ndarray,
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    num_classes: int,
    ks: tuple[int, ...] = KNN_KS,
    temperature: float = DEFAULT_TEMPERATURE,
) -> dict[int, float]:
    """Top-1 accuracy of the temperature-weighted kNN vote for each ``k`` (capped at the neighbours given)."""
    out = {}
    for k in ks:
        votes = knn_votes(sims, neighbour_labels, min(k, sims.shape[1]), num_classes, temperature)
        out[k] = float((votes.argmax(axis=1) == query_labels).mean()) if len(query_labels) else 0.0
    return out


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[int, float]:
    """Share of queries with at least one same-class item among their top ``k`` retrieved."""
    hit = neighbour_labels == query_labels[:, None]
    return {k: float(hit[:, :k].any(axis=1).mean()) if len(hit) else 0.0 for k in ks}


def map_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray) -> float:
    """Mean average precision at R (Musgrave et al., 2020, "A Metric Learning Reality Check").

    For a query with ``R`` relevant gallery items (same class), ``AP@R = (1/R) * sum_{i<=R}
    P@i * rel_i``, where ``rel_i`` says whether the ``i``-th retrieved item is relevant.

    Args:
        neighbour_labels: ``(N, >= max R)`` labels of the retrieved items, best first.
        query_labels: ``(N,)``.
        r: ``(N,)`` relevant items per query; queries with ``R = 0`` are skipped.
    """
    rel = neighbour_labels == query_labels[:, None]
    width = rel.shape[1]
    rank = np.arange(1, width + 1)
    within = rank[None, :] <= r[:, None]
    rel = rel & within
    precision = np.cumsum(rel, axis=1) / rank[None, :]
    ap = (precision * rel).sum(axis=1) / np.maximum(r, 1)
    valid = r > 0
    return float(ap[valid].mean()) if valid.any() else 0.0


# ---------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------
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
    return assign[:, 0].astype(np.int64), float(km.obj[-1]) if len(km.obj) else 0.0


@dataclass
class ClusterResult:
    """k-means over several seeds.

    Attributes:
        k: Clusters.
        seeds: Seeds run.
        nmi: NMI per seed (empty without labels).
        ari: ARI per seed (empty without labels).
        assignments: Clusters of the run with the best objective.
    """

    k: int
    seeds: list[int]
    nmi: list[float] = field(default_factory=list)
    ari: list[float] = field(default_factory=list)
    assignments: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.k, "seeds": self.seeds}
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
    """k-means with each seed; NMI and ARI against ``labels`` when given."""
    res = ClusterResult(k=k, seeds=list(seeds))
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


# ---------------------------------------------------------------------------------------
# UMAP
# ---------------------------------------------------------------------------------------
def stratified_sample(n: int, max_points: int, labels: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` points, each class kept in proportion (at least one each)."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, max_points, replace=False))
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        take = max(1, int(round(len(idx) * max_points / n)))
        keep.append(rng.choice(idx, min(take, len(idx)), replace=False))
    out = np.sort(np.concatenate(keep))
    if len(out) > max_points:
        out = np.sort(rng.choice(out, max_points, replace=False))
    return out


@dataclass
class UmapParams:
    """UMAP settings (see umap-learn): neighbours, minimum distance, metric, seed, point limit."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    seed: int = 0
    max_points: int = 5000


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
        ``(M, 2)`` float32 coordinates and the ``(M,)`` row indices of ``x`` they belong to.
    """
    import warnings

    params = params or UmapParams()
    keep = stratified_sample(len(x), params.max_points, labels, params.seed)
    sub = np.ascontiguousarray(x[keep], dtype=np.float32)
    if len(sub) < 4:
        return np.zeros((len(sub), 2), dtype=np.float32), keep
    n_neighbors = max(2, min(params.n_neighbors, len(sub) - 1))
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


# ---------------------------------------------------------------------------------------
# everything together
# ---------------------------------------------------------------------------------------
def pick_queries(n: int, labels: np.ndarray | None, per_class: int, max_total: int, seed: int = 0) -> np.ndarray:
    """Indices of example queries: ``per_class`` of each class (seeded), or ``max_total`` at random without labels."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, min(n, max_total), replace=False))
    picks = []
    for c in np.unique(labels)[: max(1, max_total // max(1, per_class))]:
        idx = np.flatnonzero(labels == c)
        picks.extend(np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False)).tolist())
    return np.asarray(picks, dtype=np.int64)


@dataclass
class Analysis:
    """The numbers behind a report.

    Attributes:
        search: How neighbours were searched.
        knn: ``{k: top-1}`` (empty without labels).
        recall: ``{k: Recall@k}`` (empty without labels).
        map_at_r: mAP@R (``None`` without labels).
        map_r_cap: Largest ``R`` used (``R`` is capped at the neighbours fetched).
        clusters: k-means results (on the query set).
        umap: ``(M, 2)`` coordinates of the query rows in ``umap_index``.
        umap_index: Rows of the query set that were projected.
        grid_queries: Query rows shown in neighbour grids.
        grid_neighbours: ``(len(grid_queries), 5)`` gallery rows of their top-5.
        grid_sims: Cosine similarities of those neighbours.
        per_class_knn: kNN top-1 per class at the middle ``k`` (``None`` for a class without queries).
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
    grid_queries: np.ndarray
    grid_neighbours: np.ndarray
    grid_sims: np.ndarray
    per_class_knn: list[float | None]
    n_queries: int
    temperature: float
    seconds: dict[str, float]

    def summary(self) -> dict[str, Any]:
        """JSON-able figures (no arrays)."""
        return {
            "search": asdict(self.search) | {"description": self.search.describe()},
            "knn": {str(k): v for k, v in self.knn.items()},
            "recall": {str(k): v for k, v in self.recall.items()},
            "map_at_r": self.map_at_r,
            "map_r_cap": self.map_r_cap,
            "clusters": self.clusters.summary(),
            "per_class_knn": self.per_class_knn,
            "n_queries": self.n_queries,
            "umap_points": int(len(self.umap_index)),
            "temperature": self.temperature,
            "seconds": self.seconds,
        }


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
    grid_max: int = 20,
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
        clusters: k-means ``k`` (default ``K``, or 10 without labels).
        umap_params: UMAP settings.
        ivf_threshold: Gallery size from which the search is approximate (IVF).
        temperature: kNN vote temperature.
        kmeans_seeds: Seeds of the k-means runs.
        grid_per_class: Example queries per class in the neighbour grids.
        grid_max: Most example queries.
        max_r: Cap on ``R`` for mAP@R (and on neighbours fetched for it).
        project: Compute the UMAP projection.
        seed: Seed of subsampling and example picks.
    """
    import time

    seconds: dict[str, float] = {}
    labelled = query_labels is not None and (gallery is None or gallery_labels is not None)
    if gallery is None:
        gallery_labels = query_labels
    if labelled:
        assert query_labels is not None and gallery_labels is not None
        query_labels = np.asarray(query_labels, dtype=np.int64)
        gallery_labels = np.asarray(gallery_labels, dtype=np.int64)
        k_classes = int(num_classes or max(query_labels.max(initial=0), gallery_labels.max(initial=0)) + 1)
        counts = np.bincount(gallery_labels, minlength=k_classes)
        r = counts[query_labels] - (1 if gallery is None else 0)
        r_cap = int(min(max_r, max(r.max(initial=0), 1)))
        r = np.minimum(r, r_cap)
        k_fetch = max(max(KNN_KS), max(RECALL_KS), r_cap)
    else:
        k_classes = int(num_classes or 0)
        k_fetch = 5
    t = time.perf_counter()
    sims, idx, info = neighbours(queries, gallery, k_fetch, ivf_threshold, seed)
    seconds["search"] = time.perf_counter() - t

    knn: dict[int, float] = {}
    recall: dict[int, float] = {}
    m_at_r = None
    per_class: list[float | None] = []
    if labelled:
        assert query_labels is not None and gallery_labels is not None
        nl = np.where(idx >= 0, gallery_labels[np.clip(idx, 0, None)], -1)
        knn = knn_accuracy(sims, nl, query_labels, k_classes, KNN_KS, temperature)
        recall = recall_at_k(nl, query_labels, RECALL_KS)
        m_at_r = map_at_r(nl, query_labels, r)
        pred = knn_votes(sims, nl, min(20, sims.shape[1]), k_classes, temperature).argmax(axis=1)
        for c in range(k_classes):
            sel = query_labels == c
            per_class.append(float((pred[sel] == c).mean()) if sel.any() else None)
    seconds["knn_retrieval"] = time.perf_counter() - t - seconds["search"]

    t = time.perf_counter()
    k_means = clusters or (k_classes if labelled and k_classes > 1 else 10)
    clus = cluster(queries, k_means, query_labels if labelled else None, kmeans_seeds)
    seconds["kmeans"] = time.perf_counter() - t

    coords, keep = np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.int64)
    if project:
        t = time.perf_counter()
        coords, keep = umap_projection(queries, query_labels if labelled else None, umap_params)
        seconds["umap"] = time.perf_counter() - t

    grid_q = pick_queries(len(queries), query_labels if labelled else None, grid_per_class, grid_max, seed)
    grid_n = idx[grid_q, : min(5, idx.shape[1])]
    grid_s = sims[grid_q, : min(5, sims.shape[1])]
    return Analysis(
        search=info,
        knn=knn,
        recall=recall,
        map_at_r=m_at_r,
        map_r_cap=r_cap if labelled else None,
        clusters=clus,
        umap=coords,
        umap_index=keep,
        grid_queries=grid_q,
        grid_neighbours=grid_n,
        grid_sims=grid_s,
        per_class_knn=per_class,
        n_queries=int(len(queries)),
        temperature=temperature,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
