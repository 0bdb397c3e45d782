"""Batched, per-sample-random image augmentation on the training device.

The views of contrastive methods (SimCLR, MoCo v2, BYOL) are made here for a whole batch
at once with tensor ops: every sample draws its own crop, flip, jitter, grayscale and
blur parameters, but no Python loop runs over the images. The transform never touches a
model; a task asks it for views.

Colour jitter applies brightness, contrast, saturation and hue in that fixed order
(torchvision shuffles the order per call); hue is a rotation of the chroma plane in YIQ
space. On single-channel images only brightness and contrast apply.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from ssl_toolkit.config import StrictModel
from ssl_toolkit.data.color import LUMA

# ITU-R BT.601 luma weights and the RGB <-> YIQ transforms used for hue rotation
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


class ViewConfig(StrictModel):
    """Parameters of one augmented view (defaults follow SimCLR, Chen et al. 2020, Appendix A).

    Attributes:
        crop_scale: Range of the crop's area as a fraction of the image.
        crop_ratio: Range of the crop's aspect ratio.
        flip_p: Probability of a horizontal flip.
        jitter_p: Probability of colour jitter.
        brightness: Brightness factor drawn from ``[max(0, 1 - b), 1 + b]``.
        contrast: Contrast factor drawn from ``[max(0, 1 - c), 1 + c]``.
        saturation: Saturation factor drawn from ``[max(0, 1 - s), 1 + s]`` (colour only).
        hue: Hue shift drawn from ``[-h, h]`` turns (colour only).
        gray_p: Probability of converting to grayscale (colour only).
        blur_p: Probability of a Gaussian blur (SimCLR used 0.5 on ImageNet, none on CIFAR).
        blur_sigma: Range of the blur's standard deviation, in pixels at 224 px, scaled to the image size.
        solarize_p: Probability of solarisation (BYOL's second view uses 0.2).
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(default=0.5, ge=0, le=1)
    jitter_p: float = Field(default=0.8, ge=0, le=1)
    brightness: float = Field(default=0.4, ge=0, le=1)
    contrast: float = Field(default=0.4, ge=0, le=1)
    saturation: float = Field(default=0.4, ge=0)
    hue: float = Field(default=0.1, ge=0, le=0.5)
    gray_p: float = Field(default=0.2, ge=0, le=1)
    blur_p: float = Field(default=0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = Field(default=0.0, ge=0, le=1)

    @field_validator("crop_scale", "crop_ratio", "blur_sigma")
    @classmethod
    def _a_range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        """``(low, high)`` with ``low <= high``: crop areas in (0, 1], aspect ratios above 0, sigmas at least 0."""
        lo, hi = value
        if info.field_name == "crop_scale" and not 0 < lo <= hi <= 1:
            raise ValueError("should be [low, high] shares of the image with 0 < low <= high <= 1")
        if info.field_name == "crop_ratio" and not 0 < lo <= hi:
            raise ValueError("should be [low, high] aspect ratios with 0 < low <= high")
        if info.field_name == "blur_sigma" and not 0 <= lo <= hi:
            raise ValueError("should be [low, high] sigmas with 0 <= low <= high")
        return value


def _gray(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 1, H, W)`` luma (identity for one channel)."""
    if x.shape[1] == 1:
        return x
    w = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _uniform(n: int, lo: float, hi: float, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo


def _coin(n: int, p: float, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def random_resized_crop(
    x: torch.Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float], flip_p: float, generator=None
) -> torch.Tensor:
    """Per-sample random resized crop with optional horizontal flip, as one ``grid_sample``.

    Args:
        x: ``(B, C, H, W)`` float images.
        size: Output side.
        scale: Range of the crop area (fraction of the image).
        ratio: Range of the crop aspect ratio (width / height).
        flip_p: Probability of mirroring the crop.

    Returns:
        ``(B, C, size, size)`` crops.
    """
    b, dev = x.shape[0], x.device
    area = _uniform(b, scale[0], scale[1], dev, generator)  # (B,)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), dev, generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, device=dev, generator=generator) * (1 - w) + w / 2) * 2 - 1  # centre in [-1, 1]
    cy = (torch.rand(b, device=dev, generator=generator) * (1 - h) + h / 2) * 2 - 1
    sign = torch.where(_coin(b, flip_p, dev, generator), -1.0, 1.0).to(x.dtype)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)  # (B, 2, 3) affine from output to input coords
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(x: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Mirror a random ``p`` share of ``(B, C, H, W)`` images horizontally."""
    if p <= 0:
        return x
    on = _coin(x.shape[0], p, x.device, generator).view(-1, 1, 1, 1)
    return torch.where(on, x.flip(-1), x)


def color_jitter(x: torch.Tensor, cfg: ViewConfig, generator=None) -> torch.Tensor:
    """Apply brightness, contrast, saturation and hue jitter to a random ``jitter_p`` share of ``x``."""
    b, c, dev = x.shape[0], x.shape[1], x.device
    on = _coin(b, cfg.jitter_p, dev, generator).view(b, 1, 1, 1)

    def factor(strength: float) -> torch.Tensor:  # from [max(0, 1 - s), 1 + s], as torchvision: never negative
        f = _uniform(b, max(0.0, 1 - strength), 1 + strength, dev, generator).view(b, 1, 1, 1)
        return torch.where(on, f, torch.ones_like(f))

    out = (x * factor(cfg.brightness)).clamp(0, 1)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    out = ((out - mean) * factor(cfg.contrast) + mean).clamp(0, 1)
    if c == 3:
        g = _gray(out)
        out = ((out - g) * factor(cfg.saturation) + g).clamp(0, 1)
        if cfg.hue > 0:
            angle = _uniform(b, -cfg.hue, cfg.hue, dev, generator) * (2 * math.pi) * on.view(b).to(x.dtype)
            cos, sin = torch.cos(angle), torch.sin(angle)
            rot = torch.zeros(b, 3, 3, device=dev, dtype=x.dtype)  # rotation of the (I, Q) chroma plane
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
            m = _YIQ2RGB.to(dev, x.dtype) @ rot @ _RGB2YIQ.to(dev, x.dtype)  # (B, 3, 3)
            out = torch.einsum("bij,bjhw->bihw", m, out).clamp(0, 1)
    return out


def random_grayscale(x: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Replace a random ``p`` share of colour images by their luma (kept as 3 channels)."""
    if x.shape[1] == 1 or p <= 0:
        return x
    on = _coin(x.shape[0], p, x.device, generator).view(-1, 1, 1, 1)
    return torch.where(on, _gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, p: float, sigma: tuple[float, float], generator=None) -> torch.Tensor:
    """Blur a random ``p`` share of ``x`` with per-sample sigma, as one grouped separable conv.

    ``sigma`` is given in pixels at 224 px (as in SimCLR) and scaled to the image size;
    the kernel spans about 10% of the image side.
    """
    if p <= 0:
        return x
    b, c, h, w = x.shape
    scale = h / 224.0
    k = max(3, int(round(0.1 * h)) | 1)  # odd kernel size
    s = _uniform(b, sigma[0], sigma[1], x.device, generator).mul_(scale).clamp_min_(1e-3)  # (B,)
    s = torch.where(_coin(b, p, x.device, generator), s, torch.full_like(s, 1e-3))  # ~identity when off
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2  # (k,)
    ker = torch.exp(-(t.view(1, k) ** 2) / (2 * s.view(b, 1).to(x.dtype) ** 2))
    ker = (ker / ker.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), ker.view(b * c, 1, k, 1), groups=b * c)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), ker.view(b * c, 1, 1, k), groups=b * c)
    return y.view(b, c, h, w)


def random_solarize(x: torch.Tensor, p: float, threshold: float = 0.5, generator=None) -> torch.Tensor:
    """Invert pixels above ``threshold`` in a random ``p`` share of images."""
    if p <= 0:
        return x
    on = _coin(x.shape[0], p, x.device, generator).view(-1, 1, 1, 1)
    return torch.where(on & (x >= threshold), 1 - x, x)


class BatchedViews(nn.Module):
    """Makes augmented views of a batch, each sample with its own random parameters.

    Args:
        cfg: The view parameters.
        size: Output side of the views.
        mean: Per-channel mean used to normalise the output.
        std: Per-channel std used to normalise the output.
    """

    mean: torch.Tensor  # (1, C, 1, 1) buffers
    std: torch.Tensor

    def __init__(self, cfg: ViewConfig, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, cropped: bool = False) -> torch.Tensor:
        """``(B, C, H, W)`` images in [0, 1] -> ``(B, C, size, size)`` normalised views.

        With ``cropped``, ``x`` already holds the random-resized crops (cut by the data workers
        from the original photos): they are only resized to ``size`` when their side differs,
        and the flip and what follows it run here.
        """
        cfg = self.cfg
        if cropped:
            if x.shape[-1] != self.size:  # small views of multi-crop: cut at the image size
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            v = random_flip(x, cfg.flip_p, generator)
        else:
            v = random_resized_crop(x, self.size, cfg.crop_scale, cfg.crop_ratio, cfg.flip_p, generator)
        v = color_jitter(v, cfg, generator)
        v = random_grayscale(v, cfg.gray_p, generator)
        v = gaussian_blur(v, cfg.blur_p, cfg.blur_sigma, generator)
        v = random_solarize(v, cfg.solarize_p, generator=generator)
        return (v - self.mean) / self.std
