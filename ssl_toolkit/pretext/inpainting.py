"""Context encoders: inpainting a masked region.

Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by
Inpainting", CVPR 2016. A region of each image is masked out and filled with the
dataset mean; the backbone encodes what is left into its spatial feature map and a
decoder of upsampling convolutions reconstructs the whole image. The loss is the L2
error on the masked region (optionally weighted more within ``overlap`` px inside the
region's border; the paper instead predicts a few px beyond the hole and weighs that visible
overlap 10x) plus an optional adversarial term from a small
discriminator (off by default; the paper used weight 0.001).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_toolkit.errors import UserError
from ssl_toolkit.losses.context_adversarial import ContextEncoderAdversarialLoss
from ssl_toolkit.losses.masked_l2 import MaskedL2Loss
from ssl_toolkit.pretext.base import DataFacts, PretextTask, TaskConfig, TaskInfo, building_inputs, register_task
from ssl_toolkit.pretext.patches import spatial_features


class InpaintingConfig(TaskConfig):
    """Attributes:
    mask: ``center`` (one central square, the paper's default), ``blocks`` (random,
        possibly overlapping squares) or ``regions`` (random smooth blobs).
    mask_fraction: Share of the image masked (``center``/``regions`` exactly; ``blocks`` at most).
    num_blocks: Squares of the ``blocks`` mask.
    overlap: Border (px) inside the masked region whose pixels get ``boundary_weight``.
    boundary_weight: Loss weight near the border (the paper: 10; 1 = uniform).
    decoder_dim: Channels of the decoder.
    adversarial_weight: Weight of the adversarial loss (0 = off).
    """

    mask: Literal["center", "blocks", "regions"] = "center"
    mask_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    num_blocks: int = Field(default=4, ge=1)
    overlap: int = Field(default=2, ge=0)
    boundary_weight: float = Field(default=1.0, ge=1.0, le=1000.0)
    decoder_dim: int = Field(default=128, ge=8)
    adversarial_weight: float = Field(default=0.0, ge=0.0, le=1000.0)


def square_side(size: int, fraction: float) -> int:
    """Side of a square covering ``fraction`` of an ``size`` px image, rounded (0 when under half a pixel)."""
    return round(size * math.sqrt(fraction))


def region_pixels(size: int, fraction: float) -> int:
    """Pixels of a region covering ``fraction`` of an ``size`` px image, rounded."""
    return round(fraction * size * size)


def center_mask(b: int, size: int, fraction: float, device=None) -> torch.Tensor:
    """``(B, 1, S, S)`` float mask, 1 on the central square of side ``round(S * sqrt(fraction))``."""
    side = max(1, square_side(size, fraction))
    lo = (size - side) // 2
    m = torch.zeros(b, 1, size, size, device=device)
    m[:, :, lo : lo + side, lo : lo + side] = 1
    return m


def block_mask(b: int, size: int, fraction: float, n: int, device=None, generator=None) -> torch.Tensor:
    """``(B, 1, S, S)`` union of ``n`` random squares per image, each of area ``fraction / n``."""
    side = max(1, square_side(size, fraction / n))
    top = torch.randint(0, size - side + 1, (b, n, 1, 1), device=device, generator=generator)
    left = torch.randint(0, size - side + 1, (b, n, 1, 1), device=device, generator=generator)
    r = torch.arange(size, device=device)
    rows = (r.view(1, 1, size, 1) >= top) & (r.view(1, 1, size, 1) < top + side)  # (B, n, S, 1)
    cols = (r.view(1, 1, 1, size) >= left) & (r.view(1, 1, 1, size) < left + side)  # (B, n, 1, S)
    return (rows & cols).any(dim=1, keepdim=True).float()


def region_mask(b: int, size: int, fraction: float, device=None, generator=None) -> torch.Tensor:
    """``(B, 1, S, S)`` random smooth blobs covering exactly ``round(fraction * S * S)`` pixels per image.

    Low-resolution noise is upsampled bicubically and its ``k`` highest pixels are masked.
    """
    coarse = torch.rand(b, 1, 4, 4, device=device, generator=generator)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).flatten(1)  # (B, S*S)
    k = max(1, region_pixels(size, fraction))
    top = field.topk(k, dim=1).indices
    return torch.zeros_like(field).scatter_(1, top, 1.0).view(b, 1, size, size)


def boundary_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Masked pixels within ``width`` px of an unmasked one: ``(B, 1, S, S)`` -> same."""
    if width <= 0:
        return torch.zeros_like(mask)
    outside = F.max_pool2d(1 - mask, 2 * width + 1, stride=1, padding=width)  # dilated complement
    return mask * outside


class Decoder(nn.Module):
    """Upsampling convolutions from a ``(B, D, h, w)`` map to a ``(B, C, S, S)`` image."""

    def __init__(self, in_dim: int, dim: int, out_chans: int, image_size: int) -> None:
        super().__init__()
        self.size = image_size
        self.inp = nn.Sequential(nn.Conv2d(in_dim, dim, 1), nn.BatchNorm2d(dim), nn.ReLU())
        self.up = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1), nn.BatchNorm2d(dim // 2), nn.ReLU())
        self.out = nn.Sequential(
            nn.Conv2d(dim // 2, dim // 4, 3, padding=1), nn.BatchNorm2d(dim // 4), nn.ReLU(), nn.Conv2d(dim // 4, out_chans, 3, padding=1)
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.inp(f)  # (B, dim, h, w)
        x = self.up(F.interpolate(x, size=(self.size // 2, self.size // 2), mode="bilinear", align_corners=False))
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.out(x)  # (B, C, S, S) normalised pixels


@register_task("inpainting")
class InpaintingTask(PretextTask):
    """Reconstruct a masked region from its context (Pathak et al., CVPR 2016)."""

    Config = InpaintingConfig
    info = TaskInfo(
        description="reconstruct a masked image region from its context (context encoder)",
        paper="Pathak, Krähenbühl, Donahue, Darrell & Efros, Context Encoders: Feature Learning by Inpainting, CVPR 2016",
    )
    default_lr = 1e-3
    config: InpaintingConfig

    @classmethod
    def check_data(cls, config: TaskConfig, data: DataFacts) -> None:
        """Refuse a mask that hides less than one pixel, or the whole image (no context left)."""
        super().check_data(config, data)
        assert isinstance(config, InpaintingConfig)  # always this task's validated Config
        s, f, n = data.image_size, config.mask_fraction, config.num_blocks
        if config.mask == "regions":
            hidden, whole = region_pixels(s, f), s * s
        else:  # side of the square (of each square for blocks), as center_mask and block_mask round it
            hidden, whole = square_side(s, f / n if config.mask == "blocks" else f), s
        what = f"each of the {n} blocks" if config.mask == "blocks" else f"the {config.mask} mask"
        name = data.name or "the data"
        if hidden < 1:
            raise UserError(
                f"inpainting: with mask_fraction {f}, {what} covers less than one pixel of "
                f"{name}'s {s} px images; raise mask_fraction{', lower num_blocks' if config.mask == 'blocks' else ''} or --image-size"
            )
        if hidden >= whole:
            raise UserError(
                f"inpainting: with mask_fraction {f}, {what} covers all of {name}'s {s} px images, leaving no context; lower mask_fraction"
            )

    def __init__(self, feature_dim: int, config: InpaintingConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        self.decoder = Decoder(feature_dim, config.decoder_dim, data.channels, data.image_size)
        self.loss = MaskedL2Loss()
        self.adversarial_loss = ContextEncoderAdversarialLoss()
        if config.adversarial_weight > 0:
            c = data.channels
            self.discriminator = nn.Sequential(
                nn.Conv2d(c, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
            )  # fmt: skip

    def make_mask(self, b: int, device) -> torch.Tensor:
        """``(B, 1, S, S)`` masks (1 = hidden) of the configured kind."""
        cfg, s = self.config, self.data.image_size
        if cfg.mask == "center":
            return center_mask(b, s, cfg.mask_fraction, device)
        if cfg.mask == "blocks":
            return block_mask(b, s, cfg.mask_fraction, cfg.num_blocks, device)
        return region_mask(b, s, cfg.mask_fraction, device)

    def reconstruct(self, backbone: nn.Module, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` images in [0, 1] and masks -> ``(B, C, S, S)`` normalised reconstructions."""
        x = self.normalize(images) * (1 - mask)  # the hole holds the dataset mean (0 after normalising)
        return self.decoder(spatial_features(backbone, x))

    def forward(self, backbone, images):
        with building_inputs():
            target = self.normalize(images)  # (B, C, S, S)
            mask = self.make_mask(images.shape[0], images.device)  # (B, 1, S, S)
            weight = mask + (self.config.boundary_weight - 1) * boundary_band(mask, self.config.overlap)  # (B, 1, S, S)
        pred = self.reconstruct(backbone, images, mask)  # (B, C, S, S)
        loss = self.loss(pred, target, weight)
        logs = {}
        if self.config.adversarial_weight > 0:
            fake = target * (1 - mask) + pred * mask  # prediction pasted into its context
            g_loss, d_loss = self.adversarial_loss(self.discriminator, target, fake)
            loss = loss + self.config.adversarial_weight * g_loss + d_loss
            logs["disc_loss"] = d_loss.detach()
        with torch.no_grad():  # MSE of [0, 1] pixels inside the hole
            err = ((pred - target) * self._std).pow(2).mean(dim=1, keepdim=True)
            logs["recon_error"] = (err * mask).sum() / mask.sum()
        return loss, logs

    def save_samples(self, backbone, images, out_dir: Path, epoch: int) -> list[Path]:
        from torchvision.utils import save_image

        mask = self.make_mask(images.shape[0], images.device)
        pred = (self.reconstruct(backbone, images, mask) * self._std + self._mean).clamp(0, 1)
        masked = images * (1 - mask) + self._mean * mask
        filled = images * (1 - mask) + pred * mask
        rows = torch.cat([masked, filled, images])  # rows: input, reconstruction, truth
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"inpainting-epoch{epoch:03d}.png"
        save_image(rows, path, nrow=images.shape[0], padding=1)
        return [path]
