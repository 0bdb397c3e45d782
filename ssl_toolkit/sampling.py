"""The one stratified sampler: a seeded per-class draw, and the draws built on it.

scikit-learn's ``StratifiedShuffleSplit`` draws the split sizes for the whole set and
refuses classes with one member; the toolkit needs a count chosen per class (at least
one image of each class kept, a one-image class never held out), so every stratified
draw (a dataset's train/test split, the evaluators' label fractions and hold-outs, the
report's UMAP subsample and example queries) goes through :func:`per_class_split`, or,
for an image folder's split, :func:`per_class_lowest`, which ranks by each file's own
seeded key so that a folder that grows keeps its files where they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def per_class_split(labels: Any, count: Callable[[int], int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of the indices of ``labels``.

    For each class ``c`` in increasing order, its ``n_c`` indices are permuted with a
    ``numpy`` generator seeded by ``seed``; the first ``count(n_c)`` go to the first part
    and the others to the second.

    Args:
        labels: ``(N,)`` integer class labels (array or CPU tensor).
        count: How many of a class of ``n`` go to the first part (``0 <= count(n) <= n``).
        seed: Seed of the draw; the same seed gives the same split.

    Returns:
        The ``(K,)`` chosen indices and the ``(N - K,)`` others, each sorted, as int64.
    """
    return _first_of_each_class(labels, np.random.default_rng(seed).permutation, count)


def _first_of_each_class(
    labels: Any, order: Callable[[np.ndarray], np.ndarray], count: Callable[[int], int]
) -> tuple[np.ndarray, np.ndarray]:
    """For each class in increasing order, its indices put in ``order``; the first ``count(n_c)`` are chosen.

    Returns:
        The chosen indices and the others, each sorted, as int64.
    """
    labels = np.asarray(labels)
    grouped = np.argsort(labels, kind="stable")  # (N,) by class, each class's indices increasing
    _, starts = np.unique(labels[grouped], return_index=True)
    chosen, others = [], []
    for members in np.split(grouped, starts[1:]) if len(labels) else []:  # one pass, however many classes
        idx = order(members)
        n = count(len(idx))
        chosen.append(idx[:n])
        others.append(idx[n:])
    empty = np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen or [empty])).astype(np.int64), np.sort(np.concatenate(others or [empty])).astype(np.int64)


def name_keys(names: Iterable[bytes], seed: int, purpose: bytes) -> np.ndarray:
    """``(N,)`` uint64 seeded keys of ``names``: a keyed BLAKE2b hash of each name alone.

    A name's key does not depend on the other names or their order, so ranking by it draws
    the same items from a list that grew, shrank or was listed otherwise (the rule of the
    TensorFlow Speech Commands split: Warden, "Speech Commands", 2018). ``purpose`` keeps
    different draws from the same seed apart.
    """
    key = seed.to_bytes(8, "little")
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(n, digest_size=8, key=key, person=purpose).digest(), "little") for n in names),
        dtype=np.uint64,
    )


def per_class_lowest(labels: Any, keys: np.ndarray, count: Callable[[int], int]) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split by key: each class's ``count(n_c)`` indices of lowest ``keys`` are chosen.

    As :func:`per_class_split`, with each class ranked by :func:`name_keys` instead of a
    permutation, so an item's part follows its own key: adding a class's items moves at most
    as many of its others into the chosen part as its count grows.

    Returns:
        The chosen indices and the others, each sorted, as int64.
    """
    return _first_of_each_class(labels, lambda idx: idx[np.argsort(keys[idx], kind="stable")], count)  # (n_c,) by key


def stratified_split(labels: Any, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) indices; each class puts ``round(n * test_fraction)`` in test."""
    test, train = per_class_split(labels, lambda n: int(round(n * test_fraction)), seed)
    return train, test


def proportional_sample(n: int, max_points: int, labels: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` points, each class kept in proportion (at least one each)."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, max_points, replace=False))
    keep, _ = per_class_split(labels, lambda m: min(m, max(1, int(round(m * max_points / n)))), seed)
    if len(keep) > max_points:  # the one-per-class floor can overshoot
        keep = np.sort(rng.choice(keep, max_points, replace=False))
    return keep


def per_class_picks(n: int, labels: np.ndarray | None, per_class: int, max_total: int, seed: int = 0) -> np.ndarray:
    """Example indices: ``per_class`` of each class (the first ``max_total // per_class`` classes), grouped by class.

    Without labels, ``max_total`` indices at random, sorted.
    """
    if labels is None:
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(n, min(n, max_total), replace=False))
    labels = np.asarray(labels)
    classes = np.unique(labels)[: max(1, max_total // max(1, per_class))]
    rows = np.flatnonzero(np.isin(labels, classes))
    picked = rows[per_class_split(labels[rows], lambda m: min(per_class, m), seed)[0]]
    return picked[np.lexsort((picked, labels[picked]))].astype(np.int64)
