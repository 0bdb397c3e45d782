"""Batched patch cropping and spatial feature maps, shared by the patch-based pretext tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from ssl_toolkit.backbones import TimmModel

MIN_PATCH = 8  # smallest patch side (px) fed to the backbone by the patch-based tasks


def crop_patches(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Cut square patches at per-sample integer positions with one gather (no Python loop).

    Args:
        images: ``(B, C, H, W)`` images.
        top: ``(B, K)`` long row of each patch's top-left pixel.
        left: ``(B, K)`` long column of each patch's top-left pixel.
        size: Patch side in pixels; every patch must lie inside the image.

    Returns:
        ``(B, K, C, size, size)`` patches.
    """
    b, k = top.shape
    r = torch.arange(size, device=images.device)
    rows = (top.unsqueeze(-1) + r).view(b, k, size, 1)  # (B, K, size, 1)
    cols = (left.unsqueeze(-1) + r).view(b, k, 1, size)  # (B, K, 1, size)
    bidx = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    out = images.permute(0, 2, 3, 1)[bidx, rows, cols]  # (B, K, size, size, C)
    return out.permute(0, 1, 4, 2, 3).contiguous()


def spatial_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map of ``x`` as ``(B, D, h, w)`` (see :func:`to_spatial`)."""
    return to_spatial(backbone, cast("TimmModel", backbone).forward_features(x))


def to_spatial(backbone: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """A timm ``forward_features`` output as a ``(B, D, h, w)`` map, for any timm model.

    CNNs return ``(B, D, h, w)``; some hierarchical transformers return ``(B, h, w, D)``;
    ViTs return tokens ``(B, N, D)``, whose prefix (class, register) tokens are dropped
    and the rest laid out on their square grid.
    """
    d = int(cast("TimmModel", backbone).num_features)
    if f.ndim == 3:  # (B, N, D) tokens
        f = f[:, int(getattr(backbone, "num_prefix_tokens", 0)) :]
        side = int(round(f.shape[1] ** 0.5))
        if side * side != f.shape[1]:
            raise ValueError(f"cannot lay {f.shape[1]} tokens on a square grid")
        return f.transpose(1, 2).reshape(f.shape[0], f.shape[2], side, side)
    if f.ndim == 4 and f.shape[1] != d and f.shape[-1] == d:  # (B, h, w, D)
        return f.permute(0, 3, 1, 2)
    return f
