"""What the backbone will see: per-channel histograms and sample images before and after processing.

``ssl inspect DATA --set data.color_space=lab --set data.equalize=clahe`` measures, on a
seeded sample of training images, the histogram of every channel as stored (R, G, B or L)
and as processed (:mod:`ssl_toolkit.data.processing`), and shows sample images side by
side. Processed channels are all scaled to [0, 1]; a 3-channel colour space is shown with
its channels as R, G and B (false colour).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from ssl_toolkit.data.processing import Processing

SAMPLE = 512  # training images the histograms are measured on
SHOWN = 8  # sample images before / after
BINS = 16
CHANNEL_NAMES = {"rgb": ("R", "G", "B"), "hsv": ("H", "S", "V"), "lab": ("L", "a", "b"), "ycbcr": ("Y", "Cb", "Cr"), "gray": ("gray",)}


def channel_histograms(x: torch.Tensor, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """``(N, C, H, W)`` values in [0, 1] -> per channel: name, mean, std and a ``BINS``-bin histogram over [0, 1]."""
    out = []
    for c in range(x.shape[1]):
        v = x[:, c].flatten().clamp(0, 1).double()
        counts = torch.histc(v, bins=BINS, min=0.0, max=1.0)
        out.append(
            {
                "channel": names[c] if c < len(names) else str(c),
                "mean": round(float(v.mean()), 4),
                "std": round(float(v.std()), 4) if v.numel() > 1 else 0.0,
                "edges": [round(k / BINS, 4) for k in range(BINS + 1)],
                "counts": [int(n) for n in counts.tolist()],
            }
        )
    return out


def strip_png(x: torch.Tensor) -> bytes:
    """``(N, C, H, W)`` in [0, 1] (C = 1 or 3) -> one PNG with the images side by side."""
    from PIL import Image

    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # (N, C, H, W)
    a = u8.permute(2, 0, 3, 1).reshape(x.shape[2], -1, x.shape[1]).numpy()  # (H, N*W, C)
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def processing_section(source: Any, processing: Processing, seed: int = 0) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The report's ``processing`` entry and the before/after PNG strips (``before``, ``after``).

    Args:
        source: A data source; ``SAMPLE`` training images are drawn from it (seeded).
        processing: The ``data.color_space`` / ``equalize`` / ``normalize`` choice.
    """
    processing.check(source.channels, source.name, source.image_size)
    images = source.train.sample(SAMPLE, seed=seed)  # (n, C, S, S) uint8
    x = images.float().div_(255.0)
    before_names = ("L",) if x.shape[1] == 1 else CHANNEL_NAMES["rgb"]
    y = torch.cat([processing(chunk) for chunk in x.split(256)]) if len(x) else x
    mean, std = processing.statistics(images) if len(images) else ((), ())
    section = {
        "settings": processing.to_dict(),
        "images": int(len(images)),
        "before": channel_histograms(x, before_names),
        "after": channel_histograms(
            y, CHANNEL_NAMES[processing.color_space] if y.shape[1] > 1 or processing.color_space == "gray" else ("L",)
        ),
        "normalisation": {"mean": list(mean), "std": list(std)},
    }
    shown = np.arange(min(SHOWN, len(x)))
    pngs = {"before": strip_png(x[shown]), "after": strip_png(y[shown])} if len(shown) else {}
    return section, pngs
