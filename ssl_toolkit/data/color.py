"""sRGB <-> CIE Lab (D65) on tensors, batched, differentiable, on any device.

The conversion follows the CIE definitions with the sRGB primaries and D65 white point
(IEC 61966-2-1): gamma-expand sRGB, multiply by the RGB -> XYZ matrix, divide by the
white point, apply the CIE ``f`` (cube root with a linear toe). ``L`` is in [0, 100],
``a`` and ``b`` roughly in [-110, 110].
"""

from __future__ import annotations

import torch

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B in a gray value

# linear sRGB -> XYZ, derived from the sRGB primaries and the D65 white point (x, y = 0.3127, 0.3290);
# the white point is the image of RGB = (1, 1, 1), so white maps to a = b = 0 exactly
_RGB2XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64
)
_XYZ2RGB = torch.linalg.inv(_RGB2XYZ)
_WHITE = _RGB2XYZ.sum(dim=1)  # (3,) Xn, Yn, Zn
_EPS = 216 / 24389  # (6/29)^3
_KAPPA = 24389 / 27


def _mat(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return m.to(device=like.device, dtype=like.dtype)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Gamma-expand sRGB values in [0, 1]."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Gamma-compress linear RGB values (no clamping)."""
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` sRGB in [0, 1] -> ``(B, 3, H, W)`` Lab (L in [0, 100])."""
    lin = srgb_to_linear(rgb)
    xyz = torch.einsum("ij,bjhw->bihw", _mat(_RGB2XYZ, rgb), lin)  # (B, 3, H, W)
    t = xyz / _mat(_WHITE, rgb).view(1, 3, 1, 1)
    f = torch.where(t > _EPS, t.clamp_min(_EPS) ** (1 / 3), (_KAPPA * t + 16) / 116)  # (B, 3, H, W)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_linear_rgb(lab: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` Lab -> linear RGB (unclamped; values outside [0, 1] are out of the sRGB gamut)."""
    L, a, b = lab.unbind(dim=1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)  # (B, 3, H, W)
    t = torch.where(f > 6 / 29, f**3, (116 * f - 16) / _KAPPA)
    xyz = t * _mat(_WHITE, lab).view(1, 3, 1, 1)
    return torch.einsum("ij,bjhw->bihw", _mat(_XYZ2RGB, lab), xyz)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` Lab -> sRGB clamped to [0, 1]."""
    return linear_to_srgb(lab_to_linear_rgb(lab).clamp(0, 1)).clamp(0, 1)


def lab_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` sRGB (C = 1 or 3) -> ``(B, 1, H, W)`` Lab lightness scaled to [0, 1] (``L / 100``)."""
    if rgb.shape[1] == 1:
        rgb = rgb.expand(-1, 3, -1, -1)
    lin = srgb_to_linear(rgb)
    y = torch.einsum("j,bjhw->bhw", _mat(_RGB2XYZ[1], rgb), lin).unsqueeze(1) / float(_WHITE[1])
    fy = torch.where(y > _EPS, y.clamp_min(_EPS) ** (1 / 3), (_KAPPA * y + 16) / 116)
    return (116 * fy - 16) / 100
