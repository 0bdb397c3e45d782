"""Class-rebalanced cross-entropy against soft targets.

Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016, Eq. (2): the multinomial
cross-entropy between the predicted distribution over quantised colours and a soft
encoding of the true colour, each pixel weighted by the rarity ``v(Z_h,w)`` of its colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RebalancedSoftCrossEntropy(nn.Module):
    """``sum_n w_n * H(t_n, softmax(z_n)) / sum_n w_n`` (Zhang et al., ECCV 2016, Eq. 2).

    Normalising by the summed weights keeps the loss on the scale of a plain mean
    cross-entropy whatever the weights are.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted mean cross-entropy.

        Args:
            logits: ``(N, Q)`` unnormalised scores over ``Q`` classes (one row per pixel).
            target: ``(N, Q)`` target distributions (rows sum to 1).
            weights: ``(N,)`` non-negative weight of each row.

        Returns:
            The scalar loss.
        """
        per_row = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)  # (N,)
        return (weights * per_row).sum() / weights.sum()
