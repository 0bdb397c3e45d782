"""Upside-down prediction: is the image shown the right way up or turned by 180 degrees?

The two-way special case of rotation prediction (Gidaris, Singh & Komodakis, "Unsupervised
Representation Learning by Predicting Image Rotations", ICLR 2018): every image is shown
upright and rotated by 180 degrees, and a linear head on the backbone's features tells which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_toolkit.pretext.base import DataFacts, PretextTask, TaskConfig, TaskInfo, building_inputs, register_task


class UpsideDownConfig(TaskConfig):
    """Attributes:
    label_smoothing: Label smoothing of the two-way cross-entropy.
    """

    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)


@register_task("upside-down")
class UpsideDownTask(PretextTask):
    """Predict whether an image was turned by 180 degrees (Gidaris et al., ICLR 2018, two-way)."""

    Config = UpsideDownConfig
    info = TaskInfo(
        description="predict whether each image is upright or turned by 180 degrees",
        paper="Gidaris, Singh & Komodakis, Unsupervised Representation Learning by Predicting Image Rotations, ICLR 2018",
    )

    def __init__(self, feature_dim: int, config: UpsideDownConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.head = nn.Linear(feature_dim, 2)

    def forward(self, backbone: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = images.shape[0]
        with building_inputs():
            x = self.normalize(images)  # (B, C, S, S)
            x = torch.cat([x, torch.rot90(x, 2, dims=(2, 3))])  # (2B, C, S, S): upright, then turned
            y = torch.arange(2, device=x.device).repeat_interleave(b)  # (2B,)
        feats = backbone(x)  # (2B, D)
        logits = self.head(feats)  # (2B, 2)
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        acc = (logits.argmax(dim=1) == y).float().mean()
        return loss, {"pretext_acc": acc, "features": feats[:b].detach()}
