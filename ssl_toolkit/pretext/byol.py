"""BYOL: bootstrap your own latent.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020. An online network (backbone, projection head, predictor) predicts the
target network's projection of the other view; the target is a momentum copy of the
online backbone and projection head. No negatives: the predictor and the slowly moving
target keep the representation from collapsing. The loss is lightly's negative cosine
similarity, symmetrised over the two views.
"""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from pydantic import Field

from ssl_toolkit.data.augment import ViewConfig
from ssl_toolkit.pretext.base import DataFacts, TaskInfo, register_task
from ssl_toolkit.pretext.contrastive import MomentumTwoViewTask, TwoViewConfig, positive_pair_accuracy


def _byol_view(blur_p: float, solarize_p: float) -> ViewConfig:
    # BYOL's colour jitter (Grill et al., Table 6); blur sigma is scaled to the image size by BatchedViews
    return ViewConfig(saturation=0.2, hue=0.1, blur_p=blur_p, solarize_p=solarize_p)


class BYOLConfig(TwoViewConfig):
    """Attributes:
    views: Augmentation of the first view (BYOL: blur always, never solarised).
    second_view: Augmentation of the second view (BYOL: blur 0.1, solarise 0.2).
    hidden_dim: Hidden width of the projection and prediction heads (BYOL: 4096).
    output_dim: Projection width (BYOL: 256).
    momentum: Starting momentum of the target network (BYOL: 0.996), raised to 1 on a cosine schedule;
        1 keeps the target at its initial random weights (the paper's fixed-target ablation).
    """

    views: ViewConfig = Field(default_factory=lambda: _byol_view(1.0, 0.0))
    second_view: ViewConfig | None = Field(default_factory=lambda: _byol_view(0.1, 0.2))
    hidden_dim: int = Field(default=1024, ge=1)
    output_dim: int = Field(default=256, ge=1)
    momentum: float = Field(default=0.99, ge=0.0, le=1.0)


@register_task("byol")
class BYOLTask(MomentumTwoViewTask):
    """BYOL (Grill et al., NeurIPS 2020) with lightly's heads and loss."""

    Config = BYOLConfig
    info = TaskInfo(
        description="predict a momentum target network's projection of another view (no negatives)",
        paper="Grill et al., Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning, NeurIPS 2020",
    )
    default_lr = 2e-3
    config: BYOLConfig

    def __init__(self, feature_dim: int, config: BYOLConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.head = BYOLProjectionHead(feature_dim, config.hidden_dim, config.output_dim)
        self.predictor = BYOLPredictionHead(config.output_dim, config.hidden_dim, config.output_dim)
        self.init_momentum_head(config.momentum)
        self.loss_fn = NegativeCosineSimilarity()

    def forward(self, backbone, images):
        b = images.shape[0]
        views = self.two_views(images)  # (2B, C, S, S)
        feats = backbone(views)  # (2B, D)
        p = self.predictor(self.head(feats))  # (2B, output_dim) online predictions
        z = self.momentum_forward(views)  # (2B, output_dim) target projections, no grad
        loss = 0.5 * (self.loss_fn(p[:b], z[b:]) + self.loss_fn(p[b:], z[:b]))
        return loss, {"pretext_acc": positive_pair_accuracy(p[:b].detach(), z[b:]), "features": feats[:b].detach()}
