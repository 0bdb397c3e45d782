"""Relative position of two patches (context prediction).

Doersch, Gupta & Efros, "Unsupervised Visual Representation Learning by Context
Prediction", ICCV 2015. A centre patch and one of its eight neighbours on a 3x3 layout
are cut with a gap between them and a random jitter (so continuing lines or textures
across the border give no shortcut); both go through the shared backbone and an MLP on
the concatenated features names which neighbour it was. On colour data, chromatic
aberration (colour fringes that point away from the lens centre) would reveal the
patch's absolute position; each patch either has two of its three colour channels
replaced by noise ("drop") or its green-magenta axis projected out ("project").
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_toolkit.pretext.base import DataFacts, PretextTask, TaskConfig, TaskInfo, building_inputs, register_task
from ssl_toolkit.pretext.patches import MIN_PATCH, crop_patches

# (row, column) step of each neighbour label on the 3x3 layout, labels 0..7 in reading order
NEIGHBOURS = torch.tensor([[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 0], [1, 1]])
_GREEN_MAGENTA = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6.0)


class RelativePositionConfig(TaskConfig):
    """Attributes:
    gap: Gap between neighbouring patches as a share of the patch side (the paper: half a patch).
    jitter: Largest random shift of each patch per axis, as a share of the patch side (the paper: 7 of 96 px).
    chroma: Guard against chromatic aberration on colour data: ``drop`` two channels,
        ``project`` out the green-magenta axis, or ``none``.
    hidden_dim: Hidden width of the classifier on the concatenated features.
    """

    gap: float = Field(default=0.5, ge=0.0, le=1.0)
    jitter: float = Field(default=0.075, ge=0.0, le=0.5)
    chroma: Literal["drop", "project", "none"] = "drop"
    hidden_dim: int = Field(default=512, ge=1)


def layout(image_size: int, gap: float, jitter: float) -> tuple[int, int, int]:
    """``(patch, step, jit)`` in px: patch side, distance between patch origins, largest jitter.

    The 3x3 layout spans ``3 * patch + 2 * gap * patch`` plus the jitter on both sides.
    """
    patch = image_size
    while patch > 1:
        jit = int(round(jitter * patch))
        step = patch + int(round(gap * patch))
        if 2 * step + patch + 2 * jit <= image_size:
            return patch, step, jit
        patch -= 1
    return 0, 0, 0


def min_image_size(gap: float, jitter: float) -> int:
    """Smallest image side giving patches of at least ``MIN_PATCH`` px."""
    size = MIN_PATCH
    while layout(size, gap, jitter)[0] < MIN_PATCH:
        size += 1
    return size


def sample_pairs(
    images: torch.Tensor, patch: int, step: int, jit: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut a centre patch and one random neighbour from every image.

    Args:
        images: ``(B, C, S, S)`` images.
        patch: Patch side (px).
        step: Distance between the origins of neighbouring layout cells (px).
        jit: Largest jitter of each patch per axis (px).

    Returns:
        ``(B, C, p, p)`` centre patches, ``(B, C, p, p)`` neighbour patches, ``(B,)`` labels
        0..7 (index into :data:`NEIGHBOURS`), and ``(B, 2, 2)`` top-left (row, column)
        of [centre, neighbour].
    """
    b, s, dev = images.shape[0], images.shape[-1], images.device
    span = 2 * step + patch + 2 * jit
    origin = torch.randint(0, s - span + 1, (b, 2), device=dev, generator=generator) + jit  # (B, 2) layout top-left
    labels = torch.randint(0, 8, (b,), device=dev, generator=generator)  # (B,)
    cell = torch.stack([torch.ones_like(labels), torch.ones_like(labels)], dim=1)  # (B, 2) centre cell (1, 1)
    neigh = cell + NEIGHBOURS.to(dev)[labels]  # (B, 2) neighbour cell
    shift = torch.randint(-jit, jit + 1, (b, 2, 2), device=dev, generator=generator)  # (B, 2 patches, 2 axes)
    pos = origin.unsqueeze(1) + torch.stack([cell, neigh], dim=1) * step + shift  # (B, 2, 2)
    pairs = crop_patches(images, pos[..., 0], pos[..., 1], patch)  # (B, 2, C, p, p)
    return pairs[:, 0], pairs[:, 1], labels, pos


def drop_channels(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep one random colour channel per patch; the other two become faint Gaussian noise.

    Doersch et al.: the dropped channels are replaced by noise with about 1/100 of the
    kept channel's standard deviation. ``(N, 3, p, p)`` -> same shape.
    """
    n = x.shape[0]
    keep = torch.randint(0, 3, (n,), device=x.device, generator=generator)  # (N,)
    mask = F.one_hot(keep, 3).to(x.dtype).view(n, 3, 1, 1)
    kept = (x * mask).sum(dim=1, keepdim=True)  # (N, 1, p, p)
    sd = kept.std(dim=(2, 3), keepdim=True) / 100  # (N, 1, 1, 1)
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * sd + kept.mean(dim=(2, 3), keepdim=True)
    return x * mask + noise * (1 - mask)


def project_gray(x: torch.Tensor) -> torch.Tensor:
    """Remove the green-magenta component (the axis of chromatic aberration): ``(N, 3, p, p)`` -> same."""
    a = _GREEN_MAGENTA.to(x.device, x.dtype).view(1, 3, 1, 1)
    return x - (x * a).sum(dim=1, keepdim=True) * a


@register_task("relative-position")
class RelativePositionTask(PretextTask):
    """Predict where a neighbour patch sits relative to a centre patch (Doersch et al., ICCV 2015)."""

    Config = RelativePositionConfig
    info = TaskInfo(
        description="predict which of 8 neighbours a patch is, relative to a centre patch",
        paper="Doersch, Gupta & Efros, Unsupervised Visual Representation Learning by Context Prediction, ICCV 2015",
        min_image_size=min_image_size(0.5, 0.075),
    )
    default_lr = 1e-3
    geometry_fallbacks = {"jitter": (0.0,), "gap": (0.25, 0.125, 0.0)}  # a smaller gap first, then no jitter, on 28-32 px images
    config: RelativePositionConfig

    @classmethod
    def size_requirement(cls, config: TaskConfig) -> tuple[int, str, str]:
        assert isinstance(config, RelativePositionConfig)  # always this task's validated Config
        return min_image_size(config.gap, config.jitter), "relative-position", f" ({MIN_PATCH} px patches with gap {config.gap})"

    def __init__(self, feature_dim: int, config: RelativePositionConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.patch, self.step, self.jit = layout(data.image_size, config.gap, config.jitter)
        self.head = nn.Sequential(
            nn.Linear(2 * feature_dim, config.hidden_dim),
            nn.BatchNorm1d(config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, 8),
        )

    def backbone_input_size(self) -> int:
        """A patch, not the image, goes through the backbone."""
        return self.patch

    def forward(self, backbone, images):
        b = images.shape[0]
        with building_inputs():
            centre, neigh, labels, _ = sample_pairs(images, self.patch, self.step, self.jit)  # (B, C, p, p) x2, (B,)
            x = torch.cat([centre, neigh])  # (2B, C, p, p)
            if x.shape[1] == 3 and self.config.chroma == "drop":
                x = drop_channels(x)
            elif x.shape[1] == 3 and self.config.chroma == "project":
                x = project_gray(x)
            x = self.normalize(x)
        feats = backbone(x)  # (2B, D)
        logits = self.head(torch.cat([feats[:b], feats[b:]], dim=1))  # (B, 8)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"pretext_acc": acc}
