"""``noise``: seeded random grey images in two classes, for smoke tests.

The smallest data source a plugin can add: a function ``(DataConfig) -> DataSource`` with
one decorator. It reads the shared data settings (``image_size``, ``split_seed``).
"""

from __future__ import annotations

import torch

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.base import DataSource, Split, register_source


@register_source("noise")
def noise(cfg: DataConfig) -> DataSource:
    """200 uniform-noise images (160 train, 40 test) labelled by the parity of their index."""
    size = cfg.image_size or 16
    g = torch.Generator().manual_seed(cfg.split_seed)
    x = torch.randint(0, 256, (200, 1, size, size), dtype=torch.uint8, generator=g)  # (N, C, S, S)
    y = torch.arange(200) % 2  # (N,)
    ids = [f"noise:{i}" for i in range(200)]
    return DataSource(
        name="noise",
        train=Split(x[:160], y[:160], ids[:160]),
        test=Split(x[160:], y[160:], ids[160:]),
        classes=["even", "odd"],
    )
