"""Learning from two augmented views: the shared two-view and momentum bases, and SimCLR.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020. Two views of each image are made on the device by
:class:`~ssl_toolkit.data.augment.BatchedViews`, embedded by the backbone and lightly's
projection head, and pulled together by lightly's NT-Xent loss (or its decoupled
variant, ``loss: dcl``) against the other ``2B - 2`` images of the (globally gathered)
batch. MoCo (``moco.py``) and BYOL (``byol.py``) build on :class:`TwoViewTask` and
:class:`MomentumTwoViewTask` here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightly.loss import DCLLoss, NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils import dist as lightly_dist
from lightly.utils.scheduler import cosine_schedule
from pydantic import Field, field_validator, model_validator
from torch import nn

from ssl_toolkit.data.augment import BatchedViews, ViewConfig
from ssl_toolkit.data.stage import Crop, WorkerStage
from ssl_toolkit.pretext.base import DataFacts, PretextTask, TaskConfig, TaskInfo, building_inputs, register_task


class TwoViewConfig(TaskConfig):
    """Base of the configs of two-view tasks (:class:`TwoViewTask`).

    Attributes:
        views: Augmentation of both views, or of the first one when the config also has a
            ``second_view``.
    """

    views: ViewConfig = Field(default_factory=ViewConfig)

    @model_validator(mode="before")
    @classmethod
    def _views_keep_task_defaults(cls, data: Any) -> Any:
        """A view given in part changes only the keys it names; the rest keep this task's
        defaults (MoCo v2's blur, BYOL's asymmetric views), not :class:`ViewConfig`'s."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key in ("views", "second_view"):  # SimCLR's local_views follow views instead
            given, field = data.get(key), cls.model_fields.get(key)
            if isinstance(given, dict) and field is not None and field.default_factory is not None:
                default = field.get_default(call_default_factory=True)
                if isinstance(default, ViewConfig):
                    out[key] = {**default.model_dump(), **given}
        return out


LOCAL_CROP_SCALE = (0.1, 0.5)  # share of the image a small view's crop covers, unless set
MIN_TEMPERATURE = 1e-3  # similarities / temperature stay finite in float16 (lightly refuses below 1e-8)


def usable_temperature(value: float) -> float:
    """A contrastive loss's temperature, refused below :data:`MIN_TEMPERATURE` (after ``gt=0``)."""
    if value < MIN_TEMPERATURE:
        raise ValueError(f"Input should be greater than or equal to {MIN_TEMPERATURE}")
    return value


class SimCLRConfig(TwoViewConfig):
    """Attributes:
    views: Augmentation of both (global) views.
    hidden_dim: Hidden width of the projection head.
    output_dim: Output width of the projection head.
    temperature: Temperature of the contrastive loss.
    loss: ``ntxent`` (SimCLR's NT-Xent), ``dcl`` (decoupled contrastive loss: the positive
        pair left out of the denominator; Yeh et al., "Decoupled Contrastive Learning",
        ECCV 2022) or ``dclw`` (DCL with its von Mises-Fisher weighting of the positives,
        sigma 0.5); lightly's losses, DCLW's weights computed here
        (:func:`von_mises_fisher_weights`).
    local_crops: Number of small extra views per image (multi-crop, Caron et al. 2020);
        ``0`` is SimCLR's two views.
    local_size: Side of the small views as a share of the image side (rounded, at least 8 px).
    local_views: Augmentation of the small views: what it does not set follows ``views``,
        except the crop, which covers 10-50% of the image unless set.
    """

    views: ViewConfig = Field(default_factory=ViewConfig)
    hidden_dim: int = Field(default=512, ge=1)
    output_dim: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.2, gt=0, le=100)
    loss: Literal["ntxent", "dcl", "dclw"] = "ntxent"
    local_crops: int = Field(default=0, ge=0, le=16)
    local_size: float = Field(default=0.5, gt=0, lt=1)
    local_views: ViewConfig = Field(default_factory=lambda: ViewConfig(crop_scale=LOCAL_CROP_SCALE))

    _temperature = field_validator("temperature")(usable_temperature)

    @model_validator(mode="before")
    @classmethod
    def _small_views_follow_views(cls, data: Any) -> Any:
        """Fill what ``local_views`` leaves unset from ``views`` (a flip turned off stays off)."""
        if not isinstance(data, dict):
            return data
        views, local = data.get("views") or {}, data.get("local_views") or {}
        if not isinstance(views, dict | ViewConfig) or not isinstance(local, dict | ViewConfig):
            return data  # the field validators say what is wrong
        views = views.model_dump() if isinstance(views, ViewConfig) else views
        local = local.model_dump(exclude_unset=True) if isinstance(local, ViewConfig) else local
        return {**data, "local_views": {**views, "crop_scale": LOCAL_CROP_SCALE, **local}}

    def unused_settings(self) -> list[str]:
        """``local_views`` or ``local_size`` set while ``local_crops`` is 0 (no small views are made)."""
        if self.local_crops:
            return []
        followed = ViewConfig(**{**self.views.model_dump(), "crop_scale": LOCAL_CROP_SCALE})
        default_size = type(self).model_fields["local_size"].default
        changed = [k for k, v in (("local_views", followed), ("local_size", default_size)) if getattr(self, k) != v]
        if not changed:
            return []
        verb = "take" if len(changed) > 1 else "takes"
        return [f"task_config.{' and task_config.'.join(changed)} {verb} no effect while task_config.local_crops is 0 (no small views)"]


def positive_pair_accuracy(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Share of ``z0`` rows whose most similar ``z1`` row is their own positive.

    Args:
        z0: ``(B, D)`` embeddings of the first views.
        z1: ``(B, D)`` embeddings of the second views.
    """
    sim = torch.nn.functional.normalize(z0, dim=1) @ torch.nn.functional.normalize(z1, dim=1).T  # (B, B)
    return (sim.argmax(dim=1) == torch.arange(z0.shape[0], device=z0.device)).float().mean()


class TwoViewTask(PretextTask):
    """Base of tasks that compare two augmented views of each image; owns the view generator.

    The config's ``views`` makes both views, unless it also has a ``second_view`` (not
    ``None``) for the second one (BYOL's asymmetric augmentations).
    """

    config: TwoViewConfig

    def __init__(self, feature_dim: int, config: TwoViewConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.views = BatchedViews(config.views, data.image_size, data.mean, data.std)
        second = getattr(config, "second_view", None)
        self.second_views = BatchedViews(second, data.image_size, data.mean, data.std) if second is not None else None
        self.generator: torch.Generator | None = None

    def seed_views(self, seed: int, device: torch.device) -> None:
        """Give the view generator its own seeded RNG on ``device`` (one seed per process)."""
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @classmethod
    def worker_stage(cls, config: TaskConfig, data: DataFacts) -> WorkerStage:
        """Streamed files: both views' random-resized crops are cut by the data workers from the original photo."""
        assert isinstance(config, TwoViewConfig)  # always this task's validated Config
        second = getattr(config, "second_view", None) or config.views
        crops = tuple(Crop("random_resized", tuple(v.crop_scale), tuple(v.crop_ratio)) for v in (config.views, second))
        return WorkerStage(crops=crops)

    def two_views(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> ``(2B, C, S, S)`` normalised views [first views; second views].

        ``images`` is ``(B, C, H, W)`` (views cropped here, on the device) or ``(B, 2, C, S, S)``
        (views already cropped from the original files by the data workers: the rest of
        each view's augmentation runs here).
        """
        gen = self.generator if self.generator is not None and self.generator.device == images.device else None
        second = self.views if self.second_views is None else self.second_views
        with building_inputs():
            if images.dim() == 5:
                return torch.cat([self.views(images[:, 0], gen, cropped=True), second(images[:, 1], gen, cropped=True)])
            return torch.cat([self.views(images, gen), second(images, gen)])


def von_mises_fisher_weights(z0: torch.Tensor, z1: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """DCLW's weights of the positive pairs (Yeh et al., ECCV 2022): ``2 - B * softmax(<z0_i, z1_i> / sigma)``.

    The weights of lightly's ``negative_mises_fisher_weights``, in float32 under bfloat16
    autocast, without its copy-construct warning on every step, and with the softmax over
    the batch of every process (as lightly's DCL gathers its negatives), so that DDP trains
    what one process would.

    Args:
        z0: ``(B, D)`` normalised embeddings of the first views (this process's).
        z1: ``(B, D)`` normalised embeddings of the second views.
        sigma: The weighting's temperature.

    Returns:
        ``(B,)`` weights, no gradient; over all processes they average to 1.
    """
    sim = (z0.detach().float() * z1.detach().float()).sum(dim=1) / sigma  # (B,)
    every = torch.cat(lightly_dist.gather(sim)) if lightly_dist.world_size() > 1 else sim  # (world * B,), equal batches
    return (2 - every.shape[0] * torch.softmax(every, dim=0)).split(sim.shape[0])[lightly_dist.rank()]


#: ``SimCLRConfig.loss`` -> lightly's loss; each takes ``(temperature, gather_distributed)``.
CONTRASTIVE_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ntxent": NTXentLoss,
    "dcl": DCLLoss,
    "dclw": functools.partial(DCLLoss, weight_fn=von_mises_fisher_weights),
}


def local_side(config: SimCLRConfig, image_size: int) -> int:
    """Side in px of SimCLR's small views on ``image_size`` px images."""
    return min(image_size, max(8, round(config.local_size * image_size)))


@register_task("simclr")
class SimCLRTask(TwoViewTask):
    """SimCLR (Chen et al., ICML 2020) with batched on-device views and lightly's NT-Xent.

    With ``local_crops`` > 0 each image also gets that many small views (multi-crop, Caron
    et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
    NeurIPS 2020): the loss is the mean of the contrastive loss (``loss``) over every pair of
    one of the two full-size views with any other view of the same images.
    """

    Config = SimCLRConfig
    info = TaskInfo(
        description="contrast two augmented views of each image against the batch (NT-Xent)",
        paper="Chen, Kornblith, Norouzi & Hinton, A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020",
    )
    default_lr = 2e-3
    config: SimCLRConfig

    def __init__(self, feature_dim: int, config: SimCLRConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.head = SimCLRProjectionHead(feature_dim, config.hidden_dim, config.output_dim)
        self.loss_fn = CONTRASTIVE_LOSSES[config.loss](temperature=config.temperature, gather_distributed=True)
        self.local_views = (
            BatchedViews(config.local_views, local_side(config, data.image_size), data.mean, data.std) if config.local_crops else None
        )

    @classmethod
    def notes(cls, config: TaskConfig, data: DataFacts, batch_size: int) -> list[str]:
        """Small views raised to 8 px, or as large as the image, when ``local_size`` asks otherwise."""
        assert isinstance(config, SimCLRConfig)
        asked, side = round(config.local_size * data.image_size), local_side(config, data.image_size)
        if not config.local_crops or asked == side:
            return []
        why = "the smallest the views are made" if side == 8 else "the image side"
        return [
            f"task_config.local_size={config.local_size:g} of {data.image_size} px is {asked} px; the small views are {side} px ({why})"
        ]

    @classmethod
    def worker_stage(cls, config: TaskConfig, data: DataFacts) -> WorkerStage:
        """Streamed files: the two views' crops, then the small views' (at the image size; shrunk on the device)."""
        assert isinstance(config, SimCLRConfig)
        stage = super().worker_stage(config, data)
        v = config.local_views
        local = Crop("random_resized", v.crop_scale, v.crop_ratio)
        return dataclasses.replace(stage, crops=stage.crops + (local,) * config.local_crops)

    def small_views(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> ``(L*B, C, s, s)`` normalised small views, view-major (L = ``local_crops``)."""
        assert self.local_views is not None
        gen = self.generator if self.generator is not None and self.generator.device == images.device else None
        n = self.config.local_crops
        with building_inputs():
            if images.dim() == 5:  # (B, 2 + L, C, S, S): crops cut by the data workers
                return torch.cat([self.local_views(images[:, 2 + i], gen, cropped=True) for i in range(n)])
            return torch.cat([self.local_views(images, gen) for _ in range(n)])

    def forward(self, backbone, images):
        b = images.shape[0]
        feats = backbone(self.two_views(images))  # (2B, D)
        z = self.head(feats)  # (2B, output_dim)
        z0, z1 = z[:b], z[b:]
        loss = self.loss_fn(z0, z1)
        if self.local_views is not None:
            zl = self.head(backbone(self.small_views(images))).split(b)  # L x (B, output_dim)
            pairs = [self.loss_fn(g, v) for g in (z0, z1) for v in zl]
            loss = (loss + torch.stack(pairs).sum()) / (1 + len(pairs))
        return loss, {"pretext_acc": positive_pair_accuracy(z0.detach(), z1.detach()), "features": feats[:b].detach()}


class MomentumTwoViewTask(TwoViewTask):
    """A two-view task with momentum (target) copies of the backbone and of a projection head.

    :meth:`attach` copies the run's backbone into ``backbone_momentum`` (frozen; it is not
    the run's backbone and is not saved as one); after every optimiser step the copies
    follow the online weights by an exponential moving average whose momentum rises from
    the config's ``momentum`` to 1 on a cosine schedule (BYOL, Grill et al. 2020).
    Subclasses build ``self.head`` and call :meth:`init_momentum_head` with that momentum
    in ``__init__``.
    """

    backbone_momentum: nn.Module | None
    head: nn.Module
    head_momentum: nn.Module
    start_momentum: float

    def init_momentum_head(self, start_momentum: float) -> None:
        """Copy ``self.head`` into a frozen ``head_momentum``; the moving averages start at ``start_momentum``."""
        self.start_momentum = start_momentum
        self.backbone_momentum = None
        self.head_momentum = copy.deepcopy(self.head)
        deactivate_requires_grad(self.head_momentum)

    def attach(self, backbone: nn.Module) -> None:
        self.backbone_momentum = copy.deepcopy(backbone)
        deactivate_requires_grad(self.backbone_momentum)

    def momentum_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` normalised views -> ``(N, output_dim)`` target projections (no grad)."""
        if self.backbone_momentum is None:
            raise RuntimeError(f"{self.name}: attach(backbone) must be called before training")
        with torch.no_grad():
            return self.head_momentum(self.backbone_momentum(x)).detach()

    def on_train_batch_end(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        m = cosine_schedule(min(step, total_steps), max(total_steps, 1), self.start_momentum, 1.0)
        update_momentum(backbone, self.backbone_momentum, m)
        update_momentum(self.head, self.head_momentum, m)
