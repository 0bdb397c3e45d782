"""MoCo v2: momentum contrast with a queue of negatives.

He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020; Chen, Fan, Girshick & He, "Improved Baselines with Momentum
Contrastive Learning" (MoCo v2), 2020. A query view goes through the backbone and an MLP
projection head; the key view goes through momentum copies of both. InfoNCE (lightly's
``NTXentLoss`` with a memory bank) contrasts each query with its key against a queue of
keys from earlier batches.
"""

from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.loss.memory_bank import MemoryBankModule
from lightly.models.modules import MoCoProjectionHead
from pydantic import Field, field_validator

from ssl_toolkit.data.augment import ViewConfig
from ssl_toolkit.pretext.base import DataFacts, TaskConfig, TaskInfo, register_task
from ssl_toolkit.pretext.contrastive import MomentumTwoViewTask, TwoViewConfig, positive_pair_accuracy, usable_temperature


class MoCoConfig(TwoViewConfig):
    """Attributes:
    views: Augmentation of both views (MoCo v2 adds blur to SimCLR's).
    hidden_dim: Hidden width of the projection head.
    output_dim: Output width of the projection head (and of the queued keys).
    temperature: InfoNCE temperature (MoCo v2: 0.2).
    queue_size: Keys kept as negatives (MoCo: 65536 on ImageNet).
    momentum: Starting momentum of the key encoder, raised to 1 on a cosine schedule; 1 keeps the
        key encoder at its initial weights.
    """

    views: ViewConfig = Field(default_factory=lambda: ViewConfig(blur_p=0.5))
    hidden_dim: int = Field(default=512, ge=1)
    output_dim: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.2, gt=0, le=100)
    queue_size: int = Field(default=4096, ge=1)
    momentum: float = Field(default=0.99, ge=0.0, le=1.0)

    _temperature = field_validator("temperature")(usable_temperature)


@register_task("moco")
class MoCoTask(MomentumTwoViewTask):
    """MoCo v2 (He et al., CVPR 2020; Chen et al., 2020) with lightly's heads, queue and loss."""

    Config = MoCoConfig
    info = TaskInfo(
        description="contrast a query view with its momentum-encoded key against a queue of negatives",
        paper="He, Fan, Wu, Xie & Girshick, Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020 "
        "(MoCo v2: Chen, Fan, Girshick & He, 2020)",
    )
    default_lr = 2e-3
    config: MoCoConfig

    def __init__(self, feature_dim: int, config: MoCoConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.head = MoCoProjectionHead(feature_dim, config.hidden_dim, config.output_dim)
        self.init_momentum_head(config.momentum)
        self.loss_fn = NTXentLoss(
            temperature=config.temperature, memory_bank_size=(config.queue_size, config.output_dim), gather_distributed=True
        )
        # the queue goes into last.ckpt, so a resume contrasts against the keys it had (lightly keeps them out)
        for bank in (m for m in self.loss_fn.modules() if isinstance(m, MemoryBankModule)):
            for name in ("bank", "bank_ptr"):
                bank.register_buffer(name, getattr(bank, name), persistent=True)

    @classmethod
    def notes(cls, config: TaskConfig, data: DataFacts, batch_size: int) -> list[str]:
        """A queue shorter than a batch: each step keeps only the first ``queue_size`` of its keys."""
        assert isinstance(config, MoCoConfig)
        if config.queue_size >= batch_size:
            return []
        return [
            f"task_config.queue_size={config.queue_size} is smaller than a batch ({batch_size} keys per step): "
            f"the queue keeps {config.queue_size} of each step's keys, so each query meets {config.queue_size} negatives"
        ]

    def forward(self, backbone, images):
        b = images.shape[0]
        views = self.two_views(images)  # (2B, C, S, S): [queries; keys]
        feats = backbone(views[:b])  # (B, D)
        q = self.head(feats)  # (B, output_dim)
        k = self.momentum_forward(views[b:])  # (B, output_dim), no grad
        loss = self.loss_fn(q, k)  # InfoNCE against the key and the queue; enqueues k
        return loss, {"pretext_acc": positive_pair_accuracy(q.detach(), k), "features": feats.detach()}
