"""``digits``: scikit-learn's 8x8 handwritten digits (1,797 images), the embedded default."""

from __future__ import annotations

import numpy as np
import torch

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.base import DataSource, Split, register_source, resize_uint8
from ssl_toolkit.sampling import stratified_split


@register_source("digits")
def digits(cfg: DataConfig) -> DataSource:
    """scikit-learn's 8x8 handwritten digits, upsampled to ``image_size`` (default 32)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    x = resize_uint8(x, cfg.image_size or 32)
    y = d.target.astype(np.int64)
    tr, te = stratified_split(y, cfg.test_fraction, cfg.split_seed)
    ids = [f"digits:{i}" for i in range(len(y))]
    yt = torch.from_numpy(y)
    return DataSource(
        name="digits",
        train=Split(x[tr], yt[tr], [ids[i] for i in tr]),
        test=Split(x[te], yt[te], [ids[i] for i in te]),
        classes=[str(c) for c in range(10)],
        grayscale_origin=True,
    )
