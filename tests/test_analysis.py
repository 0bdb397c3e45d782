"""Embedding analysis against brute-force references on small random data (no model, no UMAP)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssl_toolkit.eval import analysis as A
from ssl_toolkit.eval import clustering as C
from ssl_toolkit.eval import neighbours as N
from ssl_toolkit.eval import projection as P
from ssl_toolkit.sampling import proportional_sample


def blobs(n_per: int, k: int, dim: int, spread: float, seed: int, orthogonal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``k`` Gaussian clusters around random (or orthogonal) unit directions; returns (points, labels)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(k, dim) if orthogonal else rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


def brute_neighbours(q: np.ndarray, g: np.ndarray, k: int, leave_one_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ gn.T.astype(np.float64)
    if leave_one_out:
        np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def brute_knn(q, ql, g, gl, k, num_classes, t):
    sims, idx = brute_neighbours(q, g, k)
    correct = 0
    for i in range(len(q)):
        votes = np.zeros(num_classes)
        for s, j in zip(sims[i], idx[i]):
            votes[gl[j]] += math.exp(s / t)
        correct += int(np.argmax(votes) == ql[i])
    return correct / len(q)


def brute_map_at_r(q, ql, g, gl, leave_one_out=False):
    sims, idx = brute_neighbours(q, g, len(g))
    aps = []
    for i in range(len(q)):
        order = [j for j in idx[i] if not (leave_one_out and j == i)]
        r = sum(1 for j in range(len(g)) if gl[j] == ql[i] and not (leave_one_out and j == i))
        hits, ap = 0, 0.0
        for rank, j in enumerate(order[:r], 1):
            if gl[j] == ql[i]:
                hits += 1
                ap += hits / rank
        aps.append(ap / r)
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def data():
    g, gl = blobs(60, 4, 16, spread=0.9, seed=1)  # overlapping classes: accuracies well inside (0, 1)
    q, ql = blobs(20, 4, 16, spread=0.9, seed=1)  # same centres (same seed), other draws below
    q = q + np.random.default_rng(7).normal(scale=0.3, size=q.shape).astype(np.float32)
    return q, ql, g, gl


def test_exact_search_matches_brute_force(data):
    q, _, g, _ = data
    sims, idx, info = N.neighbours(q, g, 10)
    ref_s, ref_i = brute_neighbours(q, g, 10)
    assert info.index == "exact" and info.n_gallery == len(g) and not info.leave_one_out
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)


def test_leave_one_out_drops_self(data):
    _, _, g, _ = data
    sims, idx, info = N.neighbours(g, None, 7)
    ref_s, ref_i = brute_neighbours(g, g, 7, leave_one_out=True)
    assert info.leave_one_out
    assert not (idx == np.arange(len(g))[:, None]).any()
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 20, 200])
def test_knn_accuracy_matches_brute_force(data, k):
    q, ql, g, gl = data
    sims, idx, _ = N.neighbours(q, g, 200)
    acc = N.knn_accuracy(sims, gl[idx], ql, 4, ks=(k,), temperature=0.1)[k]
    assert acc == pytest.approx(brute_knn(q, ql, g, gl, k, 4, 0.1), abs=1e-12)
    assert 0.2 < acc <= 1.0


def test_knn_votes_use_the_evaluators_vote(data):
    """The analysis kNN is the kNN evaluator's scoring on the same neighbours."""
    import torch

    from ssl_toolkit.evaluators.knn import knn_scores

    q, ql, g, gl = data
    sims, idx, _ = N.neighbours(q, g, 20)
    ours = N.knn_votes(sims, gl[idx], 20, 4, 0.1)
    theirs = knn_scores(torch.from_numpy(g), torch.from_numpy(gl), torch.from_numpy(q), k=20, T=0.1, num_classes=4).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_recall_at_k_and_map_at_r_match_brute_force(data):
    q, ql, g, gl = data
    r = np.bincount(gl)[ql]
    sims, idx, _ = N.neighbours(q, g, int(r.max()))
    nl = gl[idx]
    rec = N.recall_at_k(nl, ql, (1, 5, 10))
    _, ref_i = brute_neighbours(q, g, 10)
    for k in (1, 5, 10):
        assert rec[k] == pytest.approx(np.mean([(gl[ref_i[i, :k]] == ql[i]).any() for i in range(len(q))]))
    assert rec[1] <= rec[5] <= rec[10]
    assert N.map_at_r(nl, ql, r) == pytest.approx(brute_map_at_r(q, ql, g, gl), abs=1e-9)


def test_map_at_r_on_a_hand_example():
    # R = 3 relevant items; retrieved: rel, not, rel, rel -> AP@R = (1/3) * (1/1 + 2/3) = 5/9
    nl = np.array([[1, 0, 1, 1]])
    assert N.map_at_r(nl, np.array([1]), np.array([3])) == pytest.approx(5 / 9)


def test_analyze_leave_one_out_matches_brute_force(data):
    _, _, g, gl = data
    an = A.analyze(g, gl, project=False, kmeans_seeds=(0,))
    assert an.search.leave_one_out and an.search.index == "exact"
    ref = brute_map_at_r(g, gl, g, gl, leave_one_out=True)
    assert an.map_at_r == pytest.approx(ref, abs=1e-9)
    assert set(an.knn) == {1, 20, 200} and set(an.recall) == {1, 5, 10}


def test_ivf_above_threshold_and_reported(data):
    x, labels = blobs(200, 4, 16, spread=0.3, seed=3)
    exact_s, exact_i, exact_info = N.neighbours(x[:100], x, 5, ivf_threshold=10_000)
    ivf_s, ivf_i, ivf_info = N.neighbours(x[:100], x, 5, ivf_threshold=500)
    assert exact_info.index == "exact" and ivf_info.index == "ivf"
    assert ivf_info.nlist >= 2 and 1 <= ivf_info.nprobe <= ivf_info.nlist
    assert "IVF" in ivf_info.describe() and "exact" in exact_info.describe()
    # on well-separated data the approximate top-1 is the exact one nearly always
    assert (ivf_i[:, 0] == exact_i[:, 0]).mean() >= 0.9
    an = A.analyze(x[:100], labels[:100], x[100:], labels[100:], ivf_threshold=50, project=False, kmeans_seeds=(0,))
    assert an.summary()["search"]["index"] == "ivf"


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def brute_nmi(a: np.ndarray, b: np.ndarray) -> float:
    """NMI with the arithmetic mean of the entropies, from the contingency table."""
    ua, ub = np.unique(a), np.unique(b)
    table = np.array([[np.sum((a == i) & (b == j)) for j in ub] for i in ua], dtype=np.float64)
    n = table.sum()
    pij = table / n
    pi, pj = pij.sum(1, keepdims=True), pij.sum(0, keepdims=True)
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / (pi @ pj)[nz])).sum())
    return mi / ((entropy(table.sum(1)) + entropy(table.sum(0))) / 2)


def test_nmi_and_ari_on_a_planted_clustering():
    x, labels = blobs(50, 5, 8, spread=0.05, seed=4, orthogonal=True)
    res = C.cluster(x, 5, labels, seeds=(0, 1, 2))
    assert len(res.nmi) == 3 and res.assignments is not None
    assert min(res.nmi) > 0.99 and min(res.ari) > 0.99
    assert res.nmi[0] == pytest.approx(brute_nmi(labels, C.kmeans(x, 5, 0)[0]), abs=1e-9)
    # a partly wrong clustering: the reference formula and the library agree
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(labels)) < 0.3, rng.integers(0, 5, len(labels)), labels)
    nmi, ari = C.contingency_scores(labels, noisy)
    assert nmi == pytest.approx(brute_nmi(labels, noisy), abs=1e-9)
    assert 0.2 < ari < 0.9
    summary = res.summary()
    assert summary["k"] == 5 and summary["nmi_mean"] > 0.99


def test_proportional_sample_keeps_class_shares():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    keep = proportional_sample(len(labels), 100, labels, seed=0)
    assert len(keep) <= 100 and np.all(np.diff(keep) > 0)
    counts = np.bincount(labels[keep], minlength=3)
    assert counts[0] == 90 and counts[1] == 9 and counts[2] == 1
    np.testing.assert_array_equal(proportional_sample(50, 100, None), np.arange(50))
    np.testing.assert_array_equal(keep, proportional_sample(len(labels), 100, labels, seed=0))


def test_analyze_without_labels():
    x, _ = blobs(30, 3, 8, spread=0.1, seed=5)
    an = A.analyze(x, None, clusters=3, project=False, grid_max=4)
    assert an.knn == {} and an.recall == {} and an.map_at_r is None
    assert an.clusters.nmi == [] and an.clusters.assignments is not None
    assert len(an.grid_queries) == 4 and an.grid_neighbours.shape == (4, 5)
    assert not (an.grid_neighbours == an.grid_queries[:, None]).any()
    assert "knn" in an.summary()


def test_the_grids_take_the_first_classes_that_fit_and_say_how_many_of_all():
    x, y = blobs(6, 30, 16, spread=0.1, seed=4)
    an = A.analyze(x, y, clusters=3, project=False, grid_per_class=4)
    assert len(an.grid_queries) == A.GRID_MAX == 100 and an.grid_classes == (25, 30)
    assert sorted(set(y[an.grid_queries].tolist())) == list(range(25)) and np.bincount(y[an.grid_queries]).tolist() == [4] * 25
    assert A.analyze(x, y, clusters=3, project=False, grid_per_class=3).grid_classes == (30, 30)
    assert A.analyze(x, None, clusters=3, project=False).grid_classes == (0, 0)


def test_knn_graph_for_umap_starts_with_self():
    x, _ = blobs(10, 2, 4, spread=0.5, seed=6)
    x[1] = x[0]  # a duplicate: its twin may come first in the search
    idx, dists = P.knn_graph(x, 5, "cosine")
    np.testing.assert_array_equal(idx[:, 0], np.arange(len(x)))
    assert (dists[:, 0] == 0).all() and (np.diff(dists, axis=1) >= -1e-6).all()
    ref_s, ref_i = brute_neighbours(x[2:], x, 5)
    np.testing.assert_array_equal(np.sort(idx[2:, 1:], axis=1), np.sort(ref_i[:, 1:], axis=1))
    assert all(len(set(row)) == 5 for row in idx.tolist())
    idx_e, d_e = P.knn_graph(x, 3, "euclidean")
    assert idx_e.shape == (20, 3) and P.knn_graph(x, 3, "manhattan") is None
