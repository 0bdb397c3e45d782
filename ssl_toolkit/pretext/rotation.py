"""Rotation prediction (RotNet).

Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018. Every image is shown at 0, 90, 180 and 270 degrees and a 4-way
classifier on the backbone's features predicts which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_toolkit.pretext.base import DataFacts, PretextTask, TaskConfig, TaskInfo, building_inputs, register_task


class RotationConfig(TaskConfig):
    """Attributes:
    hidden_dim: Width of the hidden layer of the classifier head (0 = linear head).
    """

    hidden_dim: int = Field(default=0, ge=0)


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image.

    Args:
        images: ``(B, C, S, S)`` square images.

    Returns:
        ``(4B, C, S, S)`` images ordered [all 0 deg, all 90, all 180, all 270] and their
        ``(4B,)`` labels 0..3 (k quarter turns counter-clockwise).
    """
    b = images.shape[0]
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])  # (4B, C, S, S)
    labels = torch.arange(4, device=images.device).repeat_interleave(b)  # (4B,)
    return rotated, labels


@register_task("rotation")
class RotationTask(PretextTask):
    """Predict which of four rotations was applied (Gidaris et al., ICLR 2018)."""

    Config = RotationConfig
    info = TaskInfo(
        description="predict the rotation (0/90/180/270 degrees) of each image",
        paper="Gidaris, Singh & Komodakis, Unsupervised Representation Learning by Predicting Image Rotations, ICLR 2018",
    )
    default_lr = 2e-3
    config: RotationConfig
    head: nn.Module  # an MLP or a linear layer

    def __init__(self, feature_dim: int, config: RotationConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        if config.hidden_dim:
            self.head = nn.Sequential(
                nn.Linear(feature_dim, config.hidden_dim), nn.BatchNorm1d(config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, 4)
            )
        else:
            self.head = nn.Linear(feature_dim, 4)

    def forward(self, backbone, images):
        b = images.shape[0]
        with building_inputs():
            x, y = rotate_batch(self.normalize(images))  # (4B, C, S, S), (4B,)
        feats = backbone(x)  # (4B, D)
        logits = self.head(feats)  # (4B, 4)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        return loss, {"pretext_acc": acc, "features": feats[:b].detach()}
