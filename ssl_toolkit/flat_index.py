"""Exact FAISS search: the one place that builds a flat index.

The kNN evaluator, the report's neighbour analysis and UMAP graph, and the inspection's
near-duplicate search all search vectors exactly; they share :func:`flat_index` and
:func:`flat_search`. Cosine similarity is the inner product of :func:`unit_rows`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Metric = Literal["ip", "l2"]


def unit_rows(x: Any) -> np.ndarray:
    """``(N, D)`` rows of ``x`` (array or tensor) scaled to unit length, as a new C-contiguous float32 array.

    Zero rows stay zero.
    """
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def flat_index(vectors: np.ndarray, metric: Metric = "ip") -> Any:
    """An exact FAISS index holding ``vectors``.

    Args:
        vectors: ``(N, D)`` float32 (copied to C order when needed).
        metric: ``"ip"`` (inner product; cosine on unit rows) or ``"l2"`` (squared distance).

    Returns:
        ``faiss.IndexFlatIP`` or ``faiss.IndexFlatL2`` with the vectors added.
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1]) if metric == "ip" else faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index


def flat_search(gallery: np.ndarray, queries: np.ndarray, k: int, metric: Metric = "ip") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery rows of every query, exactly.

    Args:
        gallery: ``(N, D)`` float32.
        queries: ``(M, D)`` float32.
        k: Neighbours (at most ``N``).
        metric: See :func:`flat_index`.

    Returns:
        ``(M, k)`` scores (largest inner product first, or smallest squared distance first)
        and ``(M, k)`` int64 gallery indices.
    """
    scores, idx = flat_index(gallery, metric).search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, idx.astype(np.int64)
