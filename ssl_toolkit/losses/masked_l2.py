"""Masked reconstruction loss of context encoders.

Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by
Inpainting", CVPR 2016, Eq. (1): the squared L2 error of the reconstruction inside the
dropped region, with the pixels near the region's border optionally weighted more.
"""

from __future__ import annotations

import torch
from torch import nn


class MaskedL2Loss(nn.Module):
    """``sum(w * mean_c (pred - target)^2) / sum(w)`` (Pathak et al., CVPR 2016, Eq. 1)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Weighted mean squared error over the pixels that ``weight`` selects.

        Args:
            pred: ``(B, C, H, W)`` reconstruction.
            target: ``(B, C, H, W)`` original image.
            weight: ``(B, 1, H, W)`` non-negative pixel weights (the mask, 0 outside the region).

        Returns:
            The scalar loss.
        """
        sq = (pred - target).pow(2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        return (weight * sq).sum() / weight.sum()
