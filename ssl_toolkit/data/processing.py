"""Image processing before the backbone: histogram equalisation, colour space, normalisation.

``data.equalize``, ``data.color_space`` and ``data.normalize`` describe how a backbone is
fed. They are applied on the training device to whole batches (kornia's batched colour
conversions and equalisation), recorded in the backbone's ``meta.json`` under
``processing``, and applied again from there by ``probe``, ``embed``, ``report`` and
exported backbones, so no flag is ever repeated.

Order: uint8 -> [0, 1] -> equalisation (per image and channel: ``global`` histogram
equalisation, or ``clahe``, contrast-limited adaptive equalisation, Zuiderveld 1994, on an
8x8 grid with clip limit 2) -> colour space, each channel scaled to [0, 1] -> the
normalisation statistics, which are measured on the processed training images:

- ``zscore``: ``(x - mean) / std`` per channel;
- ``minmax``: ``(x - min) / (max - min)`` per channel, i.e. mean = min and std = max - min.

Colour spaces (from sRGB): ``rgb``; ``hsv`` (hue / 2 pi, saturation, value); ``lab``
(CIE Lab, D65: L / 100, (a + 128) / 255, (b + 128) / 255); ``ycbcr`` (ITU-R BT.601);
``gray`` (one channel, BT.601 luma). Single-channel data allows ``rgb`` and ``gray`` only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ssl_toolkit.errors import UserError

COLOR_SPACES = ("rgb", "hsv", "lab", "ycbcr", "gray")
EQUALIZE = ("none", "global", "clahe")
NORMALIZE = ("zscore", "minmax")
CLAHE_GRID = (8, 8)
CLAHE_CLIP = 2.0
STATS_IMAGES = 4096  # training images the statistics are measured on (seeded sample)


@dataclass(frozen=True)
class Processing:
    """The three choices, applied by :meth:`__call__` to ``(B, C, H, W)`` float batches in [0, 1]."""

    color_space: str = "rgb"
    equalize: str = "none"
    normalize: str = "zscore"

    @classmethod
    def from_config(cls, data_cfg: Any) -> Processing:
        """From a :class:`~ssl_toolkit.config.DataConfig`."""
        return cls(data_cfg.color_space, data_cfg.equalize, data_cfg.normalize)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Processing:
        """From a backbone's ``meta.json`` (backbones without the entry were fed plain RGB, z-scored)."""
        return cls(**(meta.get("processing") or {}))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def changes_pixels(self) -> bool:
        """Whether :meth:`__call__` does anything."""
        return self.color_space != "rgb" or self.equalize != "none"

    def out_channels(self, channels: int) -> int:
        """Channels after processing ``channels``-channel images."""
        return 1 if self.color_space == "gray" else channels

    def check(self, channels: int, name: str, size: int | None = None) -> None:
        """Refuse a colour space that needs colour on single-channel data, and CLAHE on images smaller than its grid."""
        if channels == 1 and self.color_space not in ("rgb", "gray"):
            raise UserError(
                f"data.color_space={self.color_space} needs colour images; {name or 'the data'} is single-channel (use rgb or gray)"
            )
        smallest = CLAHE_GRID[0] + 1  # kornia's tiles need more pixels than grid cells
        if self.equalize == "clahe" and size is not None and size < smallest:
            raise UserError(
                f"data.equalize=clahe needs images of at least {smallest} px (an {CLAHE_GRID[0]}x{CLAHE_GRID[1]} grid); "
                f"{name or 'the data'} is {size} px (--image-size {smallest}, or data.equalize=global)"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` or ``(B, V, C, H, W)`` in [0, 1] -> processed, every channel in [0, 1]."""
        if not self.changes_pixels:
            return x
        if x.dim() == 5:  # views cut by the data workers
            b, v = x.shape[:2]
            y = self(x.flatten(0, 1))
            return y.view(b, v, *y.shape[1:])
        from kornia import color, enhance

        if self.equalize == "global":
            x = enhance.equalize(x)
        elif self.equalize == "clahe":
            x = enhance.equalize_clahe(x, clip_limit=CLAHE_CLIP, grid_size=CLAHE_GRID)
        if self.color_space == "gray":
            return color.rgb_to_grayscale(x) if x.shape[1] == 3 else x
        if self.color_space == "hsv":
            return color.rgb_to_hsv(x) / x.new_tensor([2 * math.pi, 1.0, 1.0]).view(1, 3, 1, 1)
        if self.color_space == "lab":
            lab = color.rgb_to_lab(x.clamp(0, 1))  # (B, 3, H, W): L in [0, 100], a, b in about [-128, 127]
            return (lab + lab.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1)) / lab.new_tensor([100.0, 255.0, 255.0]).view(1, 3, 1, 1)
        if self.color_space == "ycbcr":
            return color.rgb_to_ycbcr(x)
        return x

    def recipe(self) -> list[str]:
        """What :meth:`__call__` does, as kornia calls on ``x`` (``(B, 3, H, W)`` RGB in [0, 1]), one line per step."""
        steps = {
            "global": "x = kornia.enhance.equalize(x)",
            "clahe": f"x = kornia.enhance.equalize_clahe(x, clip_limit={CLAHE_CLIP}, grid_size={CLAHE_GRID})",
        }
        lines = [steps[self.equalize]] if self.equalize in steps else []
        lines += {
            "gray": ["x = kornia.color.rgb_to_grayscale(x)"],
            "hsv": ["x = kornia.color.rgb_to_hsv(x) / torch.tensor([2 * math.pi, 1.0, 1.0]).view(1, 3, 1, 1)"],
            "lab": [
                "x = (kornia.color.rgb_to_lab(x.clamp(0, 1)) + torch.tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1))",
                "x = x / torch.tensor([100.0, 255.0, 255.0]).view(1, 3, 1, 1)",
            ],
            "ycbcr": ["x = kornia.color.rgb_to_ycbcr(x)"],
        }.get(self.color_space, [])
        return lines

    @torch.no_grad()
    def statistics(self, images: torch.Tensor, batch_size: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` of the normalisation, measured on ``(N, C, H, W)`` uint8 images after processing.

        ``zscore``: per-channel mean and standard deviation; ``minmax``: per-channel
        minimum and range (std floors at 1e-3 so a constant channel stays finite).
        """
        s1: torch.Tensor | None = None
        s2: torch.Tensor | None = None
        lo: torch.Tensor | None = None
        hi: torch.Tensor | None = None
        n = 0
        for chunk in images.split(batch_size):
            x = self(chunk.float().div_(255.0)).double().transpose(0, 1).flatten(1)  # (C, b*H*W)
            s1 = x.sum(1) if s1 is None else s1 + x.sum(1)
            s2 = (x * x).sum(1) if s2 is None else s2 + (x * x).sum(1)
            lo = x.amin(1) if lo is None else torch.minimum(lo, x.amin(1))
            hi = x.amax(1) if hi is None else torch.maximum(hi, x.amax(1))
            n += x.shape[1]
        if n == 0 or s1 is None or s2 is None or lo is None or hi is None:  # all set once n > 0
            raise UserError("no images to measure the normalisation statistics on")
        if self.normalize == "minmax":
            mean, std = lo, (hi - lo).clamp_min(1e-3)
        else:
            mean = s1 / n
            std = ((s2 - s1 * s1 / n).clamp_min(0) / max(n - 1, 1)).sqrt().clamp_min(1e-3)
        return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def processed_stats(processing: Processing, source: Any) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Channels, mean and std of what ``processing`` makes of ``source``'s training images.

    The source's own statistics are reused when processing is the default (plain RGB, z-score).
    """
    processing.check(source.channels, source.name, source.image_size)
    if not processing.changes_pixels and processing.normalize == "zscore":
        return source.channels, tuple(source.mean), tuple(source.std)
    sample = source.train.sample(STATS_IMAGES, seed=0)
    mean, std = processing.statistics(sample)
    return processing.out_channels(source.channels), mean, std
