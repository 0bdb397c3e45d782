"""``synthetic``: procedural colour shapes, deterministic by seed (no files needed)."""

from __future__ import annotations

import torch

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.base import DataSource, Split, register_source

SYNTHETIC_CLASSES = ["disk", "square", "triangle", "cross", "ring", "ell"]


def make_synthetic(n: int, size: int, seed: int, num_classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labelled colour images of ``size`` px; the class is the shape kind.

    Each image has a vertical-gradient background with texture noise in a random colour,
    one shape of a random colour, size and position, and a darker drop shadow below-right
    of it (so the images have a canonical "up", which rotation prediction can learn).

    Returns:
        ``(n, 3, size, size)`` uint8 images and ``(n,)`` int64 labels.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    r = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (S, S)
    yy, xx = yy.expand(n, size, size), xx.expand(n, size, size)
    # background: colour with a vertical light gradient and noise texture
    bg = r(n, 3, 1, 1) * 0.6
    light = (1.0 - 0.35 * yy).unsqueeze(1)  # (n, 1, S, S), brighter at the top
    img = bg * light + 0.08 * r(n, 1, size, size)
    # shape geometry
    radius = 0.16 + 0.14 * r(n, 1, 1)  # (n, 1, 1)
    cy = radius + (1 - 2 * radius) * r(n, 1, 1)
    cx = radius + (1 - 2 * radius) * r(n, 1, 1)
    fg = 0.35 + 0.65 * r(n, 3, 1, 1)

    def mask_at(dy: float, dx: float) -> torch.Tensor:
        y, x = yy - cy - dy, xx - cx - dx  # (n, S, S) offsets from the centre
        ay, ax = y.abs(), x.abs()
        rr = radius
        shapes = torch.stack(
            [
                (x**2 + y**2) <= rr**2,  # disk
                (ay <= rr * 0.8) & (ax <= rr * 0.8),  # square
                (y <= rr * 0.8) & (y >= -rr) & (ax <= (y + rr) * 0.55),  # triangle pointing up
                ((ay <= rr * 0.3) & (ax <= rr)) | ((ax <= rr * 0.3) & (ay <= rr)),  # cross
                ((x**2 + y**2) <= rr**2) & ((x**2 + y**2) >= (rr * 0.55) ** 2),  # ring
                ((ax <= rr) & (y >= rr * 0.4) & (y <= rr)) | ((x >= -rr) & (x <= -rr * 0.4) & (ay <= rr)),  # L
            ]
        )[:num_classes]  # (K, n, S, S)
        return shapes.gather(0, labels.view(1, n, 1, 1).expand(1, n, size, size))[0].unsqueeze(1).float()

    shadow = mask_at(-0.06, -0.06)
    img = img * (1 - 0.5 * shadow)
    shape = mask_at(0.0, 0.0)
    img = img * (1 - shape) + fg * (1 - 0.3 * yy.unsqueeze(1)) * shape
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels.long()


@register_source("synthetic")
def synthetic(cfg: DataConfig) -> DataSource:
    """Procedural colour shapes; ``synthetic_train``/``synthetic_test`` images, seeded by ``split_seed``."""
    size = cfg.image_size or 32
    xtr, ytr = make_synthetic(cfg.synthetic_train, size, seed=cfg.split_seed * 2 + 1, num_classes=cfg.synthetic_classes)
    xte, yte = make_synthetic(cfg.synthetic_test, size, seed=cfg.split_seed * 2 + 2, num_classes=cfg.synthetic_classes)
    return DataSource(
        name="synthetic",
        train=Split(xtr, ytr, [f"synthetic:train:{i}" for i in range(len(ytr))]),
        test=Split(xte, yte, [f"synthetic:test:{i}" for i in range(len(yte))]),
        classes=SYNTHETIC_CLASSES[: cfg.synthetic_classes],
    )
