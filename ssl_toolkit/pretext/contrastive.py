"""Contrastive learning with two augmented views: SimCLR.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020. Two views of each image are made on the device by
:class:`~ssl_toolkit.data.augment.BatchedViews`, embedded by the backbone and lightly's
projection head, and pulled together by lightly's NT-Xent loss against the other
``2B - 2`` images of the (globally gathered) batch.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from pydantic import Field

from ssl_toolkit.data.augment import BatchedViews, ViewConfig
from ssl_toolkit.pretext.base import DataFacts, PretextTask, TaskConfig, TaskInfo, register_task


class SimCLRConfig(TaskConfig):
    """Attributes:
    views: Augmentation of both views.
    hidden_dim: Hidden width of the projection head.
    output_dim: Output width of the projection head.
    temperature: NT-Xent temperature.
    """

    views: ViewConfig = Field(default_factory=ViewConfig)
    hidden_dim: int = 512
    output_dim: int = 128
    temperature: float = Field(default=0.2, gt=0)


def positive_pair_accuracy(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Share of ``z0`` rows whose most similar ``z1`` row is their own positive.

    Args:
        z0: ``(B, D)`` embeddings of the first views.
        z1: ``(B, D)`` embeddings of the second views.
    """
    sim = torch.nn.functional.normalize(z0, dim=1) @ torch.nn.functional.normalize(z1, dim=1).T  # (B, B)
    return (sim.argmax(dim=1) == torch.arange(z0.shape[0], device=z0.device)).float().mean()


class TwoViewTask(PretextTask):
    """Base of tasks that compare two augmented views of each image; owns the view generator."""

    def __init__(self, feature_dim: int, config: TaskConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.views = BatchedViews(config.views, data.image_size, data.mean, data.std)
        self.generator: torch.Generator | None = None

    def seed_views(self, seed: int, device: torch.device) -> None:
        """Give the view generator its own seeded RNG on ``device`` (one seed per process)."""
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def two_views(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [0, 1] -> ``(2B, C, S, S)`` normalised views [first views; second views]."""
        gen = self.generator if self.generator is not None and self.generator.device == images.device else None
        return torch.cat([self.views(images, gen), self.views(images, gen)])


@register_task("simclr")
class SimCLRTask(TwoViewTask):
    """SimCLR (Chen et al., ICML 2020) with batched on-device views and lightly's NT-Xent."""

    Config = SimCLRConfig
    info = TaskInfo(
        description="contrast two augmented views of each image against the batch (NT-Xent)",
        paper="Chen, Kornblith, Norouzi & Hinton, A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020",
    )
    default_lr = 2e-3

    def __init__(self, feature_dim: int, config: SimCLRConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.head = SimCLRProjectionHead(feature_dim, config.hidden_dim, config.output_dim)
        self.loss_fn = NTXentLoss(temperature=config.temperature, gather_distributed=True)

    def forward(self, backbone, images):
        b = images.shape[0]
        feats = backbone(self.two_views(images))  # (2B, D)
        z = self.head(feats)  # (2B, output_dim)
        z0, z1 = z[:b], z[b:]
        loss = self.loss_fn(z0, z1)
        return loss, {"pretext_acc": positive_pair_accuracy(z0.detach(), z1.detach()), "features": feats[:b].detach()}
