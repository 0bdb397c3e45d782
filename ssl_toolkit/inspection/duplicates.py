"""Duplicate finding: exact pixel matches, perceptual near duplicates, embedding neighbours.

* **Exact**: images whose decoded pixels are identical (``ImageTable.exact_key``), whatever
  the file format.
* **Near**: candidate pairs whose 64-bit difference hashes are within ``near_hamming`` bits
  (FAISS binary range search, exact), confirmed when their 16x16 grayscale thumbnails
  differ by at most ``near_tolerance`` on average (0-1 scale). The hash finds resized and
  re-encoded copies; the thumbnail check keeps merely similar pictures (two plain trousers
  on black) out.
* **Embedding**: pairs of images whose backbone embeddings have cosine similarity of at
  least a threshold (FAISS inner-product range search on normalised vectors).

Pairs become groups by union-find. A group that has members in both the train and the
test split is a leak: the test score would partly measure memorisation.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ssl_toolkit.inspection.table import ImageTable

StageProgress = Callable[[str, int, int], None]


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)
        self.size = np.ones(n, np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return int(a)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self, members: np.ndarray) -> list[np.ndarray]:
        """The sets (of two or more) that ``members`` fall into, each sorted, largest first."""
        roots = np.array([self.find(int(m)) for m in members], np.int64)
        return _split_by_key(np.asarray(members), roots)


def _split_by_key(items: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    """Items grouped by equal key; groups of two or more, each sorted, ordered by (-size, first item)."""
    if len(items) == 0:
        return []
    order = np.lexsort((items, keys))
    k, it = keys[order], items[order]
    cuts = np.flatnonzero(np.diff(k)) + 1
    groups = [g for g in np.split(it, cuts) if len(g) > 1]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


def leaks_first(table: ImageTable, groups: list[np.ndarray]) -> list[np.ndarray]:
    """``groups`` with those spanning both splits (leaks) first, each part in its order."""
    return sorted(groups, key=lambda g: len(np.unique(table.split[g])) == 1)


def exact_groups(table: ImageTable) -> list[np.ndarray]:
    """Images with identical decoded pixels, grouped: leaks first, then the largest."""
    return leaks_first(table, _split_by_key(np.arange(len(table)), table.exact_key))


def _pairs_from_ranges(lims: np.ndarray, idx: np.ndarray, dist: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.repeat(np.arange(len(lims) - 1, dtype=np.int64) + offset, np.diff(lims).astype(np.int64))
    j = idx.astype(np.int64)
    keep = q < j  # each unordered pair once, no self matches
    return q[keep], j[keep], dist[keep]


def near_pairs(
    table: ImageTable,
    max_hamming: int,
    tolerance: float,
    progress: StageProgress | None = None,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate pairs ``(i, j, hamming)`` with ``i < j`` and different pixels.

    Runs an exact FAISS Hamming range search over the difference hashes, query block by query
    block, and confirms every candidate with the thumbnail check. Blocks hold ``chunk`` queries
    (default: about 64 million query-database pairs), which bounds memory even when most hashes
    collide (many near-blank images).
    """
    import faiss

    n = len(table)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if n < 2:
        return empty
    chunk = chunk or int(np.clip((1 << 26) // n, 1024, 8192))
    index = faiss.IndexBinaryFlat(64)
    index.add(np.ascontiguousarray(table.dhash))
    keys = table.exact_key
    limit = tolerance * 255.0 * table.thumbs.shape[1]  # on the sum of absolute differences
    # 4x4 block means of the 16x16 thumbnails: 16 * sum |block mean difference| never exceeds the
    # full sum of absolute differences, so this cheap test only rejects pairs the full one would.
    side = int(round(table.thumbs.shape[1] ** 0.5))
    coarse = table.thumbs.reshape(n, 4, side // 4, 4, side // 4).mean(axis=(2, 4), dtype=np.float32).reshape(n, 16)
    block = (side // 4) ** 2
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, chunk):
        q = np.ascontiguousarray(table.dhash[start : start + chunk])
        lims, dist, idx = index.range_search(q, max_hamming + 1)  # strict "<" radius
        i, j, d = _pairs_from_ranges(lims, idx, dist, start)
        keep = keys[i] != keys[j]
        for s in range(0, len(i), 1 << 18):  # bounded memory
            sl = slice(s, s + (1 << 18))
            keep[sl] &= np.abs(coarse[i[sl]] - coarse[j[sl]]).sum(1) * block <= limit + 1e-3
        i, j, d = i[keep], j[keep], d[keep]
        ok = np.zeros(len(i), bool)
        for s in range(0, len(i), 1 << 16):
            sl = slice(s, s + (1 << 16))
            diff = np.abs(table.thumbs[i[sl]].astype(np.int16) - table.thumbs[j[sl]].astype(np.int16))
            ok[sl] = diff.sum(1) <= limit
        out_i.append(i[ok])
        out_j.append(j[ok])
        out_d.append(d[ok].astype(np.int64))
        if progress is not None:
            progress("near duplicates", min(n, start + chunk), n)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def embedding_pairs(
    features: torch.Tensor,
    keys: np.ndarray,
    threshold: float,
    progress: StageProgress | None = None,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, cosine)`` with ``i < j``, different pixels and cosine similarity >= ``threshold``."""
    from ssl_toolkit.flat_index import flat_index, unit_rows

    x = unit_rows(features)
    n = len(x)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = flat_index(x)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))  # FAISS keeps scores > radius
    out_i, out_j, out_s = [], [], []
    for start in range(0, n, chunk):
        lims, sims, idx = index.range_search(x[start : start + chunk], radius)
        i, j, s = _pairs_from_ranges(lims, idx, sims, start)
        differ = keys[i] != keys[j]
        out_i.append(i[differ])
        out_j.append(j[differ])
        out_s.append(s[differ])
        if progress is not None:
            progress("embedding neighbours", min(n, start + chunk), n)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def groups_from_pairs(table: ImageTable, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected groups of the pairs, with every exact copy of a member included: leaks first, then the largest."""
    if len(i) == 0:
        return []
    uf = UnionFind(len(table))
    for a, b in zip(i.tolist(), j.tolist()):
        uf.union(a, b)
    for g in exact_groups(table):  # exact copies belong with their twins
        for b in g[1:].tolist():
            uf.union(int(g[0]), b)
    touched = np.unique(np.concatenate([i, j]))
    roots = {uf.find(int(t)) for t in touched}
    members = np.array([m for m in range(len(table)) if uf.find(m) in roots], np.int64)
    return leaks_first(table, uf.groups(members))


def label_name(table: ImageTable, m: int) -> str:
    """Row ``m``'s label: its class name, or for multi-hot rows the names it carries joined by ``;`` (as in ``labels.csv``)."""
    assert table.labels is not None and table.classes
    if table.labels.ndim == 2:
        return ";".join(table.classes[k] for k in np.flatnonzero(table.labels[m]).tolist())
    return table.classes[int(table.labels[m])]


def describe_group(table: ImageTable, members: np.ndarray, score: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-able group: member ids with split, label, size and format; whether it crosses splits.

    ``mixed_labels``: members carry different labels (multi-label rows: different label sets).
    """
    rows = []
    for m in members.tolist():
        row: dict[str, Any] = {"id": table.ids[m], "split": "train" if table.split[m] == 0 else "test"}
        if table.labels is not None and table.classes:
            row["label"] = label_name(table, m)
        row["width"], row["height"] = int(table.width[m]), int(table.height[m])
        if table.formats is not None and table.nbytes is not None:  # folders have both
            row["format"] = str(table.formats[m])
            row["bytes"] = int(table.nbytes[m])
        rows.append(row)
    splits = {r["split"] for r in rows}
    out = {"size": len(rows), "crosses_split": len(splits) > 1, "members": rows}
    if table.labels is not None:
        out["mixed_labels"] = len(np.unique(table.labels[members], axis=0)) > 1
    if score:
        out.update(score)
    return out


LOSSY_FORMATS = {"JPEG", "MPO", "WEBP"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # PIL modes without colour


def _real_paths(table: ImageTable, members: list[int]) -> dict[int, str]:
    """The file each member's path resolves to (symbolic links followed); empty for tables without files."""
    if table.paths is None:
        return {}
    return {m: os.path.realpath(table.paths[m]) for m in members}


def keep_index(table: ImageTable, members: np.ndarray) -> int:
    """The member a dedupe keeps.

    A training image first; then a file before a symbolic link that resolves to another
    member (the same file: the link goes, its target stays); then the most pixels, a colour
    file before a grayscale one (near duplicates are found on grayscale), a lossless file, the first id.
    """
    ms = members.tolist()
    real = _real_paths(table, ms)
    shared = {r for r, n in Counter(real.values()).items() if n > 1}  # files two members' paths resolve to

    def rank(m: int) -> tuple:
        lossy = table.formats is not None and str(table.formats[m]) in LOSSY_FORMATS
        link = table.paths is not None and real[m] in shared and table.paths[m].is_symlink()
        gray = str(table.modes[m]) in GRAY_MODES
        return (int(table.split[m]), link, -int(table.width[m]) * int(table.height[m]), gray, lossy, table.ids[m])

    return min(ms, key=rank)


def dedupe_drops(table: ImageTable, groups: list[np.ndarray]) -> list[str]:
    """Ids to drop so that one image of every (merged) group remains; sorted.

    Removing a listed path never removes the kept file: a member whose path resolves to the
    kept file without being a symbolic link itself (the target of a kept link, or the kept
    file reached through a linked folder) is not listed.
    """
    uf = UnionFind(len(table))
    for g in groups:
        for b in g[1:].tolist():
            uf.union(int(g[0]), b)
    touched = np.unique(np.concatenate(groups)) if groups else np.zeros(0, np.int64)
    drops = []
    for g in uf.groups(touched):
        keep = keep_index(table, g)
        real = _real_paths(table, g.tolist())
        for m in g.tolist():
            same_file = table.paths is not None and real[m] == real[keep] and not table.paths[m].is_symlink()
            if m != keep and not same_file:
                drops.append(table.ids[m])
    return sorted(drops)
