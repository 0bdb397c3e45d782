"""Augmentation policies of the supervised evaluators (``--augment``).

- ``none``: the images as they are.
- ``basic``: random resized crop (scale 0.5-1) and horizontal flip, batched on the device
  (:class:`~ssl_toolkit.data.augment.BatchedViews`).
- ``randaugment`` (Cubuk et al., 2020), ``autoaugment`` (Cubuk et al., 2019, the ImageNet
  policy), ``trivialaugment`` (Muller & Hutter, 2021): torchvision's ``transforms.v2``
  policies on uint8 tensors, on the device, after ``basic``. A policy draws one operation
  for everything it is called on, so it is called on groups of ``GROUP`` images.
- ``FILE.yaml``/``.yml``/``.json``: an albumentations pipeline saved with
  ``albumentations.save``, applied image by image on the CPU (numpy HWC uint8), so a
  pipeline users already have carries over unchanged.

Every policy maps ``(B, C, S, S)`` uint8 to ``(B, C, S, S)`` uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssl_toolkit.data.augment import BatchedViews, ViewConfig
from ssl_toolkit.errors import UserError, did_you_mean

POLICIES = ("none", "basic", "randaugment", "autoaugment", "trivialaugment")
FILE_SUFFIXES = (".yaml", ".yml", ".json")
GROUP = 4  # images that share one drawn operation of a torchvision policy
# crop + flip only: colour jitter, grayscale, blur and solarisation are off
BASIC_VIEWS = ViewConfig(crop_scale=(0.5, 1.0), flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)


def check_augment(spec: str) -> str:
    """Validate ``--augment`` before anything runs: a policy name or a readable albumentations file."""
    if spec in POLICIES:
        return spec
    path = Path(spec).expanduser()
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise UserError(
            f"--augment {spec}: expected one of {', '.join(POLICIES)} or an albumentations file (.yaml, .yml, .json)"
            + did_you_mean(spec, POLICIES)
        )
    load_albumentations(path)
    return spec


def load_albumentations(path: Path):
    """Load a pipeline saved with ``albumentations.save``; a missing or malformed file is a :class:`UserError`."""
    import albumentations as A

    if not path.is_file():
        raise UserError(f"--augment: file does not exist: {path}")
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    try:
        return A.load(str(path), data_format=fmt)
    except Exception as e:  # noqa: BLE001  (albumentations raises many kinds on a bad file)
        raise UserError(
            f"--augment {path}: not an albumentations pipeline ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


class TorchvisionPolicy(nn.Module):
    """A torchvision ``v2`` policy applied to groups of ``GROUP`` images: uint8 in, uint8 out."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from torchvision.transforms import v2

        self.policy = {"randaugment": v2.RandAugment, "autoaugment": v2.AutoAugment, "trivialaugment": v2.TrivialAugmentWide}[name]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.policy(chunk) for chunk in x.split(GROUP)])  # (B, C, S, S) uint8


class AlbumentationsPolicy(nn.Module):
    """An albumentations pipeline applied image by image on the CPU: uint8 in, uint8 out (same size)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.pipeline = load_albumentations(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, device = x.shape[-1], x.device
        out = []
        for img in x.permute(0, 2, 3, 1).cpu().numpy():  # (S, S, C) uint8
            a = self.pipeline(image=img)["image"]
            a = a if a.ndim == 3 else a[..., None]
            if a.shape[:2] != (size, size):
                raise UserError(
                    f"--augment {self.path}: the pipeline returns {a.shape[1]}x{a.shape[0]} images; it must keep {size}x{size} (end it with a Resize)"
                )
            out.append(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.uint8))
        return torch.from_numpy(np.stack(out)).to(device)


class BasicViews(nn.Module):
    """``basic``: batched crop + flip on the device, uint8 in, uint8 out."""

    def __init__(self, image_size: int, channels: int) -> None:
        super().__init__()
        self.views = BatchedViews(BASIC_VIEWS, image_size, (0.0,) * channels, (1.0,) * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.views(x.float().div_(255.0))  # (B, C, S, S) in [0, 1]
        return v.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


def build_augment(spec: str, image_size: int, channels: int) -> nn.Module:
    """The ``--augment`` policy as a module mapping ``(B, C, S, S)`` uint8 batches to augmented ones."""
    spec = check_augment(spec)
    if spec == "none":
        return nn.Identity()
    if spec == "basic":
        return BasicViews(image_size, channels)
    if spec in POLICIES:
        return nn.Sequential(BasicViews(image_size, channels), TorchvisionPolicy(spec))
    return AlbumentationsPolicy(Path(spec).expanduser())
