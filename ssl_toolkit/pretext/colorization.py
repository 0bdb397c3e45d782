"""Colorful image colorization.

Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016. Images are converted to
CIE Lab on the device; the backbone sees only the lightness ``L`` and a decoder head
predicts, for every pixel of a reduced-resolution map, a distribution over the ``Q =
313`` quantised in-gamut ``ab`` bins (grid 10). The loss is a cross-entropy against
soft-encoded targets (5 nearest bins, Gaussian sigma 5), each pixel weighted by how rare
its colour is under the data's smoothed empirical ``ab`` prior mixed with a uniform
(``lambda = 0.5``), so that desaturated colours do not dominate. Colours are decoded
with the annealed mean (``T = 0.38``) of the predicted distribution.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_toolkit.data.color import lab_lightness, lab_to_rgb, rgb_to_lab
from ssl_toolkit.errors import UserError
from ssl_toolkit.losses.rebalanced_soft_ce import RebalancedSoftCrossEntropy
from ssl_toolkit.pretext.base import (
    DataFacts,
    PretextTask,
    TaskConfig,
    TaskInfo,
    building_inputs,
    register_input_transform,
    register_task,
)
from ssl_toolkit.pretext.patches import to_spatial

if TYPE_CHECKING:
    from ssl_toolkit.backbones import TimmModel

AB_GRID = 10.0
AB_RANGE = 110.0
MIN_CHROMA = 5.0  # Lab a/b magnitude some pixel of a colour set exceeds; JPEG rounding of gray stays near 1

LAB_L = "lab_l"


@register_input_transform(LAB_L)
def lab_l(x: torch.Tensor) -> torch.Tensor:
    """What a colorization backbone sees: ``(B, C, H, W)`` RGB in [0, 1] -> ``(B, 1, H, W)`` Lab ``L / 100``."""
    return lab_lightness(x)


class ColorizationConfig(TaskConfig):
    """Attributes:
    out_stride: The predicted ``ab`` map has ``1 / out_stride`` of the image's side (the paper: 4).
    decoder_dim: Channels of the decoder head.
    prior_lambda: Weight of the uniform mixed into the smoothed prior for class rebalancing (above 0:
        without it a colour absent from the prior would weigh infinitely).
    prior_sigma: Gaussian smoothing of the empirical ``ab`` prior, in ``ab`` units.
    rebalance: Weight each pixel's loss by the rarity of its colour.
    soft_neighbours: Bins sharing each pixel's soft-encoded target.
    soft_sigma: Gaussian width of the soft encoding, in ``ab`` units.
    temperature: Annealed-mean temperature for decoding colours (1 = mean, towards 0 = mode).
    prior_images: Training images used to estimate the prior and the ``L`` statistics.
    """

    out_stride: int = Field(default=4, ge=1)
    decoder_dim: int = Field(default=128, ge=1)
    prior_lambda: float = Field(default=0.5, gt=0.0, le=1.0)  # 0: infinite weights for unseen colours
    prior_sigma: float = Field(default=5.0, ge=0.01)
    rebalance: bool = True
    soft_neighbours: int = Field(default=5, ge=1, le=313)
    soft_sigma: float = Field(default=5.0, ge=0.01)
    temperature: float = Field(default=0.38, ge=0.01, le=1)
    prior_images: int = Field(default=4096, ge=1)


@lru_cache(maxsize=1)
def _gamut_bins() -> np.ndarray:
    from scipy.spatial import ConvexHull

    levels = torch.linspace(0, 1, 32, dtype=torch.float64)
    rgb = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).view(1, 3, -1, 1)
    ab = rgb_to_lab(rgb).view(3, -1)[1:].T.numpy()  # (32^3, 2) ab of sRGB colours over all L
    hull = ab[ConvexHull(ab).vertices]  # (V, 2) counter-clockwise
    edge = np.roll(hull, -1, axis=0) - hull
    normal = np.stack([edge[:, 1], -edge[:, 0]], axis=1)  # (V, 2) outward normals
    c = np.arange(-AB_RANGE, AB_RANGE + 1, AB_GRID)
    grid = np.stack(np.meshgrid(c, c, indexing="ij"), axis=-1).reshape(-1, 2)  # (23*23, 2) (a, b)
    # keep grid points whose square of half-side one grid step meets the hull (separating-axis test)
    corners = grid[:, None, :] + AB_GRID * np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]])  # (G, 4, 2)
    apart = (grid[:, None, :] + AB_GRID < hull.min(0)).any(-1).any(-1) | (grid[:, None, :] - AB_GRID > hull.max(0)).any(-1).any(-1)
    reach = (hull @ normal.T).max(0)  # (V,) support of the hull along each normal
    apart |= ((corners @ normal.T).min(1) > reach + 1e-9).any(1)
    return grid[~apart]


def ab_bins() -> torch.Tensor:
    """The ``(313, 2)`` centres ``(a, b)`` of the quantised in-gamut ``ab`` bins (grid 10).

    A grid point (multiples of 10 in [-110, 110]) is kept when it is a corner of a grid
    cell that meets the ``ab`` gamut of sRGB over all lightnesses (its convex hull):
    equivalently, the square of half-side 10 around it meets the hull. Every in-gamut
    colour then lies in a cell whose four corners are all bins. This reproduces Zhang et
    al.'s ``Q = 313``.
    """
    return torch.from_numpy(_gamut_bins().copy()).float()


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, k: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets over bins and the nearest bin of every pixel.

    Args:
        ab: ``(N, 2)`` colours.
        bins: ``(Q, 2)`` bin centres.
        k: Neighbours sharing the target mass.
        sigma: Gaussian width of the weights.

    Returns:
        ``(N, Q)`` target distributions and ``(N,)`` nearest-bin indices.
    """
    d2 = torch.cdist(ab, bins).pow(2)  # (N, Q)
    near_d2, near = d2.topk(k, dim=1, largest=False)  # (N, k)
    w = torch.softmax(-near_d2 / (2 * sigma**2), dim=1)  # (N, k) Gaussian weights, normalised
    target = torch.zeros_like(d2).scatter_(1, near, w)
    return target, near[:, 0]


def rebalancing_weights(prior: torch.Tensor, bins: torch.Tensor, sigma: float, lam: float) -> torch.Tensor:
    """Zhang et al.'s class-rebalancing weights ``w ~ ((1 - lam) * smooth(p) + lam / Q)^-1``, normalised so ``E_p[w] = 1``.

    Args:
        prior: ``(Q,)`` empirical distribution of colours over bins.
        bins: ``(Q, 2)`` bin centres.
        sigma: Gaussian smoothing of the prior in ``ab`` units.
        lam: Weight of the uniform.
    """
    kernel = torch.exp(-torch.cdist(bins, bins).pow(2) / (2 * sigma**2))  # (Q, Q)
    smooth = kernel @ prior
    smooth = smooth / smooth.sum()
    w = 1.0 / ((1 - lam) * smooth + lam / len(prior))
    return w / (smooth * w).sum()


def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(B, Q, h, w)`` logits -> ``(B, 2, h, w)`` ab: mean of the distribution sharpened by ``temperature``."""
    p = torch.softmax(logits / temperature, dim=1)  # softmax(log z / T) with z = softmax(logits)
    return torch.einsum("bqhw,qc->bchw", p, bins)


@register_task("colorization")
class ColorizationTask(PretextTask):
    """Predict the colours of a grayscale image as a distribution over ab bins (Zhang et al., ECCV 2016)."""

    Config = ColorizationConfig
    info = TaskInfo(
        description="predict the ab colours (313 bins) of an image from its Lab lightness",
        paper="Zhang, Isola & Efros, Colorful Image Colorization, ECCV 2016",
        needs_colour=True,
    )
    default_lr = 1e-3
    config: ColorizationConfig
    bins: torch.Tensor  # buffers registered in __init__
    prior: torch.Tensor
    weights: torch.Tensor
    l_stats: torch.Tensor

    @classmethod
    def check_data(cls, config: TaskConfig, data: DataFacts) -> None:
        """Colour images, and a prediction map of at least one pixel (``out_stride`` at most the image side)."""
        super().check_data(config, data)
        assert isinstance(config, ColorizationConfig)  # always this task's validated Config
        if config.out_stride > data.image_size:
            raise UserError(
                f"colorization: out_stride {config.out_stride} is larger than {data.name or 'the data'}'s "
                f"{data.image_size} px images (the prediction map would be under one pixel); use at most {data.image_size}"
            )

    @classmethod
    def backbone_in_chans(cls, config: TaskConfig, data: DataFacts) -> int:
        return 1  # the backbone sees L only

    def __init__(self, feature_dim: int, config: ColorizationConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        bins = ab_bins()
        q = len(bins)
        self.register_buffer("bins", bins, persistent=False)  # (Q, 2)
        self.register_buffer("prior", torch.full((q,), 1.0 / q))  # (Q,) empirical ab prior (fit_data_prior)
        self.register_buffer("weights", torch.ones(q))  # (Q,) rebalancing weights
        self.loss = RebalancedSoftCrossEntropy()
        self.register_buffer("l_stats", torch.tensor([0.5, 0.25]))  # mean, std of L / 100
        self.reduce = nn.Sequential(nn.Conv2d(feature_dim, config.decoder_dim, 1), nn.BatchNorm2d(config.decoder_dim), nn.ReLU())
        self.refine = nn.Sequential(
            nn.Conv2d(config.decoder_dim, config.decoder_dim, 3, padding=1),
            nn.BatchNorm2d(config.decoder_dim),
            nn.ReLU(),
            nn.Conv2d(config.decoder_dim, q, 1),
        )

    # ----- what the backbone sees ----------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> ``(B, 1, H, W)`` normalised Lab lightness."""
        return (lab_lightness(x) - self.l_stats[0]) / self.l_stats[1]

    def backbone_input(self):
        return {"in_chans": 1, "mean": [float(self.l_stats[0])], "std": [float(self.l_stats[1])], "input_transform": LAB_L}

    @torch.no_grad()
    def fit_data_prior(self, images: torch.Tensor) -> None:
        """Empirical ab prior (nearest bins of reduced-resolution pixels) and L statistics of a strided sample."""
        n = images.shape[0]
        sample = images[torch.linspace(0, n - 1, min(n, self.config.prior_images)).round().long()]
        counts = torch.zeros_like(self.prior)
        l_sum = l_sq = chroma = 0.0
        pixels = 0
        for chunk in sample.split(256):
            x = chunk.to(self.bins.device).float().div_(255.0)
            lab = rgb_to_lab(x)  # (b, 3, S, S)
            chroma = max(chroma, float(lab[:, 1:].abs().amax()))
            ll = lab[:, :1] / 100
            l_sum, l_sq, pixels = l_sum + float(ll.sum()), l_sq + float((ll**2).sum()), pixels + ll.numel()
            ab = self._target_ab(lab)  # (b, 2, h, w)
            near = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.bins).argmin(dim=1)
            counts += torch.bincount(near, minlength=len(self.bins)).to(counts.dtype)
        if chroma < MIN_CHROMA:
            raise UserError(
                f"colorization needs colour images; the {len(sample):,} training images sampled hold none "
                f"(a and b at most {chroma:.1f} in Lab): a grayscale set saved as RGB"
            )
        mean = l_sum / pixels
        self.l_stats.copy_(torch.tensor([mean, max((l_sq / pixels - mean**2) ** 0.5, 1e-3)]))
        self.prior.copy_(counts / counts.sum())
        if self.config.rebalance:
            self.weights.copy_(rebalancing_weights(self.prior, self.bins, self.config.prior_sigma, self.config.prior_lambda))

    # ----- training ------------------------------------------------------------------
    def _target_ab(self, lab: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` Lab -> ``(B, 2, h, w)`` ab at the prediction resolution (area average)."""
        side = max(1, lab.shape[-1] // self.config.out_stride)
        return F.adaptive_avg_pool2d(lab[:, 1:], side)

    def predict(self, backbone: nn.Module, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` Lab -> ``(B, Q, h, w)`` bin logits and ``(B, D)`` pooled backbone features."""
        x = ((lab[:, :1] / 100) - self.l_stats[0]) / self.l_stats[1]  # (B, 1, S, S)
        timm_backbone = cast("TimmModel", backbone)
        raw = timm_backbone.forward_features(x)
        pooled = timm_backbone.forward_head(raw)  # (B, D), what backbone(x) returns
        f = self.reduce(to_spatial(backbone, raw))  # (B, decoder_dim, h', w')
        side = max(1, lab.shape[-1] // self.config.out_stride)
        f = F.interpolate(f, size=(side, side), mode="bilinear", align_corners=False)
        return self.refine(f), pooled

    def forward(self, backbone, images):
        with building_inputs():
            lab = rgb_to_lab(images)  # (B, 3, S, S)
            ab = self._target_ab(lab)  # (B, 2, h, w)
            target, near = soft_encode(
                ab.permute(0, 2, 3, 1).reshape(-1, 2), self.bins, self.config.soft_neighbours, self.config.soft_sigma
            )
        logits, pooled = self.predict(backbone, lab)  # (B, Q, h, w), (B, D)
        flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # (N, Q)
        loss = self.loss(flat_logits, target, self.weights[near])  # rarity-weighted soft cross-entropy
        with torch.no_grad():
            acc = (flat_logits.argmax(dim=1) == near).float().mean()
            err = (annealed_mean(logits, self.bins, self.config.temperature) - ab).norm(dim=1).mean()  # ab units
        return loss, {"pretext_acc": acc, "recon_error": err, "features": pooled.detach()}

    # ----- pictures ------------------------------------------------------------------
    @torch.no_grad()
    def colorize(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` RGB in [0, 1] -> ``(B, 3, S, S)`` RGB with predicted colours on the original L."""
        lab = rgb_to_lab(images)
        logits, _ = self.predict(backbone, lab)
        ab = annealed_mean(logits, self.bins, self.config.temperature)  # (B, 2, h, w)
        ab = F.interpolate(ab, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1))

    def save_samples(self, backbone, images, out_dir: Path, epoch: int) -> list[Path]:
        from torchvision.utils import save_image

        gray = lab_lightness(images).expand(-1, 3, -1, -1)
        rows = torch.cat([gray, self.colorize(backbone, images), images])  # rows: input L, prediction, truth
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"colorization-epoch{epoch:03d}.png"
        save_image(rows, path, nrow=images.shape[0], padding=1)
        return [path]
