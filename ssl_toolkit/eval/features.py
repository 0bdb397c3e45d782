"""Feature extraction from a frozen backbone, once, with an on-disk cache.

Features are computed in eval mode without gradients, in batches, and cached under
``$SSL_TOOLKIT_HOME/cache/features`` keyed by (weights hash, dataset, split,
preprocessing): a second evaluation of the same backbone does no forward pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssl_toolkit.backbones import feature_dim
from ssl_toolkit.atomic import atomic_write_bytes
from ssl_toolkit.data.sources import DataSource, Split
from ssl_toolkit.settings import cache_dir
from ssl_toolkit.errors import UserError

LUMA = (0.299, 0.587, 0.114)


@dataclass
class Preprocess:
    """How uint8 images become backbone input: channel adaptation, then normalisation.

    ``transform`` names an input transform registered by the task that trained the
    backbone (:func:`ssl_toolkit.pretext.base.register_input_transform`) and recorded in
    its ``meta.json`` as ``input_transform``; e.g. colorization's ``"lab_l"`` feeds the Lab
    lightness, as its backbone saw it during pretraining.
    """

    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: str | None = None

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocess:
        """The preprocessing recorded in a backbone's ``meta.json``."""
        return cls(int(meta["in_chans"]), tuple(meta["mean"]), tuple(meta["std"]), meta.get("input_transform"))

    def __call__(self, x_u8: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` uint8 -> ``(B, in_chans, S, S)`` normalised float."""
        x = x_u8.float().div_(255.0)
        c = x.shape[1]
        if self.transform is not None:
            from ssl_toolkit.pretext.base import INPUT_TRANSFORMS

            x = INPUT_TRANSFORMS.get(self.transform)(x)  # (B, in_chans, S, S)
        elif c == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and self.in_chans == 1:
            x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mean = x.new_tensor(self.mean).view(1, -1, 1, 1)
        std = x.new_tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def key(self) -> dict:
        key = {"in_chans": self.in_chans, "mean": list(self.mean), "std": list(self.std)}
        return {**key, "transform": self.transform} if self.transform else key


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, shapes and bytes)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def extract(model: nn.Module, images: torch.Tensor, pre: Preprocess, batch_size: int = 512, device: str | torch.device = "cpu") -> torch.Tensor:
    """Pooled features of ``images`` (``(N, C, S, S)`` uint8) -> ``(N, D)`` float32, eval mode, no grad."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    was_training = model.training
    model.eval().to(device)
    out = []
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images.batches(batch_size)
    for chunk in batches:  # (B, C, S, S) uint8, in memory or decoded by DataLoader workers
        out.append(model(pre(chunk.to(device, non_blocking=True))).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, feature_dim(model))


class FeatureCache:
    """Features of (backbone, data, split, preprocessing) on disk; ``forward_passes`` counts real extractions."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir("features")
        self.forward_passes = 0

    def key(self, fingerprint: str, source: DataSource, split: str, pre: Preprocess) -> str:
        desc = {
            "weights": fingerprint,
            "data": source.describe(),
            "ids_hash": hashlib.sha256("\n".join(getattr(source, split).ids).encode()).hexdigest(),
            "split": split,
            "pre": pre.key(),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, model: nn.Module, source: DataSource, split: str, pre: Preprocess, fingerprint: str | None = None, device="cpu") -> torch.Tensor:
        """Features of ``source.<split>``, loaded from the cache or extracted and stored."""
        fingerprint = fingerprint or weights_fingerprint(model)
        path = self.root / f"{self.key(fingerprint, source, split, pre)}.pt"
        data: Split = getattr(source, split)
        if path.is_file():
            try:
                feats = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(feats, torch.Tensor) and feats.shape[0] == len(data):
                    return feats
            except Exception:  # noqa: BLE001  (an unreadable cache entry is recomputed)
                pass
        feats = extract(model, data, pre, device=device)
        self.forward_passes += 1
        import io

        buf = io.BytesIO()
        torch.save(feats, buf)
        atomic_write_bytes(path, buf.getvalue())
        return feats
