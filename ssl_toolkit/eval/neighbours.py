"""FAISS neighbour search and the figures read from it: kNN accuracy, Recall@k, mAP@R.

Features are compared by cosine similarity: they are L2-normalised and searched with an
inner-product index. Below ``ivf_threshold`` gallery points the search is exact
(``IndexFlatIP``); above it an inverted-file index (``IndexIVFFlat``) is used, and
:class:`SearchInfo` says which. When there is no separate gallery, the query set searches
itself and each point's own match is dropped (leave-one-out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ssl_toolkit.flat_index import flat_index, unit_rows

KNN_KS = (1, 20, 200)
RECALL_KS = (1, 5, 10)
DEFAULT_TEMPERATURE = 0.1  # the kNN evaluator's default
DEFAULT_IVF_THRESHOLD = 200_000
QUERY_CHUNK = 2048


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
