"""The one stratified sampler: a seeded per-class draw.

scikit-learn's ``StratifiedShuffleSplit`` draws the split sizes for the whole set and
refuses classes with one member; the evaluators need a count chosen per class (at least
one image of each class kept, a one-image class never held out), so the draw is done
here, class by class, with a torch generator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def per_class_split(labels: torch.Tensor, count: Callable[[int], int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split of the indices of ``labels``.

    For each class ``c`` in increasing order, ``count(n_c)`` of its ``n_c`` indices, drawn
    at random, go to the first part and the others to the second.

    Args:
        labels: ``(N,)`` integer class labels.
        count: How many of a class of ``n`` go to the first part (``0 <= count(n) <= n``).
        seed: Seed of the draw; the same seed gives the same split.

    Returns:
        The ``(K,)`` chosen indices and the ``(N - K,)`` others, each sorted.
    """
    g = torch.Generator().manual_seed(seed)
    chosen, others = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().view(-1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = count(len(idx))
        chosen.append(idx[:n])
        others.append(idx[n:])
    empty = torch.zeros(0, dtype=torch.long)
    return torch.cat(chosen or [empty]).sort().values, torch.cat(others or [empty]).sort().values
