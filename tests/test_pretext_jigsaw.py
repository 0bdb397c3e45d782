"""Jigsaw: tiles, their shuffling, and the greedy Hamming permutation set."""

import itertools

import pytest
import torch

from ssl_toolkit.pretext import DataFacts, build_task
from ssl_toolkit.pretext.jigsaw import (
    assemble_tiles,
    cut_tiles,
    hamming_permutation_set,
    min_image_size,
    normalize_tiles,
    shuffle_tiles,
    unshuffle_tiles,
)


def test_tiles_put_back_by_the_inverse_permutation_reproduce_the_gridded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 30, 30, generator=g)
    grid, cell = 3, 10
    # without gap or jitter the tiles are exactly the grid cells
    tiles = cut_tiles(x, grid, cell, torch.zeros(5, 9, 2, dtype=torch.long))  # (B, 9, C, 10, 10)
    perms = torch.stack([torch.randperm(9, generator=g) for _ in range(5)])
    shuffled = shuffle_tiles(tiles, perms)
    assert not torch.equal(assemble_tiles(shuffled, grid), x)
    assert torch.equal(assemble_tiles(unshuffle_tiles(shuffled, perms), grid), x)
    # shuffled position i holds tile perms[i]
    assert torch.equal(
        shuffled[2, 4],
        x[2, :, 10 * (perms[2, 4] // 3) : 10 * (perms[2, 4] // 3) + 10, 10 * (perms[2, 4] % 3) : 10 * (perms[2, 4] % 3) + 10],
    )
    # with a gap and jitter every tile is its offset crop from its own cell
    offsets = torch.randint(0, 3, (5, 9, 2), generator=g)
    tiles = cut_tiles(x, grid, 8, offsets)
    back = unshuffle_tiles(shuffle_tiles(tiles, perms), perms)
    for b, t in itertools.product(range(5), range(9)):
        top, left = 10 * (t // 3) + offsets[b, t, 0], 10 * (t % 3) + offsets[b, t, 1]
        assert torch.equal(back[b, t], x[b, :, top : top + 8, left : left + 8])


def test_each_tile_is_normalised_on_its_own():
    tiles = normalize_tiles(torch.rand(2, 9, 3, 8, 8) * 5 + 3)
    assert torch.allclose(tiles.mean(dim=(-1, -2)), torch.zeros(2, 9, 3), atol=1e-5)
    assert torch.allclose(tiles.std(dim=(-1, -2)), torch.ones(2, 9, 3), atol=1e-2)


def _reference_greedy(num_tiles, n, first):
    """The greedy procedure written out plainly: add the candidate with the largest minimum distance."""
    cand = list(itertools.permutations(range(num_tiles)))
    ham = lambda p, q: sum(a != b for a, b in zip(p, q))  # noqa: E731
    chosen = [cand[first]]
    while len(chosen) < n:
        best = max(
            (c for c in cand if c not in chosen),
            key=lambda c: (min(ham(c, p) for p in chosen), sum(ham(c, p) for p in chosen), -cand.index(c)),
        )
        chosen.append(best)
    return chosen


def test_permutation_set_matches_the_greedy_procedure_and_its_promise():
    perms, picked = hamming_permutation_set(4, 12, seed=3)
    first = list(itertools.permutations(range(4))).index(tuple(perms[0].tolist()))
    assert [tuple(p) for p in perms.tolist()] == _reference_greedy(4, 12, first)
    # greedy promise: the set's minimum pairwise distance is the last pick's distance, and no
    # left-out permutation is farther than that from the whole set
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1) + 99 * torch.eye(len(perms), dtype=torch.long)
    assert int(d.min()) == picked[-1]
    rest = torch.tensor([p for p in itertools.permutations(range(4)) if list(p) not in perms.tolist()])
    assert int((rest[:, None, :] != perms[None]).sum(-1).min(dim=1).values.max()) <= picked[-1]


def test_permutation_set_3x3_is_deterministic_by_seed():
    perms, picked = hamming_permutation_set(9, 100, seed=0)
    again, _ = hamming_permutation_set(9, 100, seed=0)
    other, _ = hamming_permutation_set(9, 100, seed=1)
    assert torch.equal(perms, again) and not torch.equal(perms, other)
    assert perms.shape == (100, 9) and len({tuple(p) for p in perms.tolist()}) == 100
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1) + 99 * torch.eye(100, dtype=torch.long)
    assert int(d.min()) == picked[-1] == min(picked)
    assert picked[1:] == sorted(picked[1:], reverse=True)  # the max-min distance never grows


def test_task_saves_its_permutations_and_labels_match_them():
    facts = DataFacts(channels=1, image_size=20, mean=(0.5,), std=(0.25,), name="t")
    task = build_task("jigsaw", 16, {"grid": 2, "num_permutations": 6, "gap": 0.0}, facts)
    state = task.extra_state()
    assert state["permutations"] == task.perms.tolist() and len(state["permutations"]) == 6
    x = torch.rand(4, 1, 20, 20)
    torch.manual_seed(0)
    tiles, labels = task.make_puzzles(x)
    assert tiles.shape == (4, 4, 1, 10, 10)
    back = assemble_tiles(unshuffle_tiles(tiles, task.perms[labels]), 2)
    assert torch.allclose(back, assemble_tiles(normalize_tiles(cut_tiles(x, 2, 10, torch.zeros(4, 4, 2, dtype=torch.long))), 2))


def test_min_image_size_depends_on_the_grid():
    assert min_image_size(2, 0.15) == 20 and min_image_size(3, 0.15) == 30 and min_image_size(4, 0.15) == 40
    with pytest.raises(Exception, match="only 24 permutations"):
        build_task("jigsaw", 16, {"grid": 2, "num_permutations": 25}, DataFacts(1, 32, (0.5,), (0.25,)))


def test_a_2x2_grid_takes_all_24_permutations_unless_told_more_which_is_an_error():
    from ssl_toolkit.config import validate
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.pretext.jigsaw import JigsawConfig

    task = build_task("jigsaw", 16, {"grid": 2}, DataFacts(1, 32, (0.5,), (0.25,)))
    perms = task.extra_state()["permutations"]
    assert task.config.num_permutations == 24 and len({tuple(p) for p in perms}) == 24
    assert task.head[-1].out_features == 24
    assert JigsawConfig(grid=3).num_permutations == 100 and JigsawConfig(grid=2, num_permutations=24).num_permutations == 24
    with pytest.raises(UserError, match=r"^task_config \(jigsaw\): num_permutations: a 2x2 grid has only 24 permutations$"):
        validate(JigsawConfig, {"grid": 2, "num_permutations": 30}, what="task_config (jigsaw)")
