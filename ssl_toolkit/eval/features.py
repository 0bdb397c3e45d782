"""Feature extraction from a frozen backbone, once, with an on-disk cache.

Features are computed in eval mode without gradients, in batches, and cached under
``$SSL_TOOLKIT_HOME/cache/features`` keyed by (model hash, dataset, its files, split,
preprocessing): a second evaluation of the same backbone does no forward pass, and images
rewritten under the same names (a folder's files, shards written again) are read afresh. The model
hash covers the module tree as well as the weights, so two networks with the same
parameters and a different forward pass (a ResNet with and without its stem max-pool, a
different pooling) never share features.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_toolkit.atomic import atomic_file
from ssl_toolkit.backbones import feature_dim
from ssl_toolkit.data.color import LUMA
from ssl_toolkit.data.images import DECODE_VERSION
from ssl_toolkit.data.sources import DataSource
from ssl_toolkit.errors import UserError
from ssl_toolkit.settings import cache_dir


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
    processing: dict | None = None  # data.color_space / equalize / normalize of the pretraining (ssl_toolkit.data.processing)
    task: str | None = None  # the pretext task that trained the backbone (it registers ``transform``)

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocess:
        """The preprocessing recorded in a backbone's ``meta.json``."""
        task = meta.get("task") if isinstance(meta.get("task"), str) else None
        return cls(
            int(meta["in_chans"]), tuple(meta["mean"]), tuple(meta["std"]), meta.get("input_transform"), meta.get("processing"), task
        )

    def input_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The registered function of ``transform``; one that is not registered names the task that provides it."""
        from ssl_toolkit.pretext.base import INPUT_TRANSFORMS

        if self.transform is None or self.transform not in INPUT_TRANSFORMS.names():
            by = f"task '{self.task}'" if self.task else "the task that trained the backbone"
            raise UserError(
                f"the backbone sees the input transform '{self.transform}' of {by}, which is not registered here: install the package "
                f"that provides {by} (docs/plugins.md); registered transforms: {', '.join(INPUT_TRANSFORMS.names()) or 'none'}"
            )
        return INPUT_TRANSFORMS.get(self.transform)

    def __call__(self, x_u8: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` uint8 -> ``(B, in_chans, S, S)`` normalised float."""
        x = x_u8.float().div_(255.0)
        if self.processing:
            from ssl_toolkit.data.processing import Processing

            proc = Processing(**self.processing)
            if x.shape[1] == 1 and proc.color_space not in ("rgb", "gray"):
                x = x.expand(-1, 3, -1, -1)  # a colour-space backbone on single-channel data
            x = proc(x)
        c = x.shape[1]
        if self.transform is not None:
            x = self.input_transform()(x)  # (B, in_chans, S, S)
        elif c == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and self.in_chans == 1:
            x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mean = x.new_tensor(self.mean).view(1, -1, 1, 1)
        std = x.new_tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def key(self) -> dict:
        key = {"in_chans": self.in_chans, "mean": list(self.mean), "std": list(self.std)}
        if self.processing and self.processing != {"color_space": "rgb", "equalize": "none", "normalize": "zscore"}:
            key["processing"] = dict(self.processing)
        return {**key, "transform": self.transform} if self.transform else key


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the module tree (``repr``: layers and their settings) and of every
    parameter and buffer (names, shapes and bytes).

    The module tree is part of it because some layers have no parameters: timm's resnet18
    with and without its stem max-pool has the same ``state_dict``, and a random-init
    baseline built from the same seed has the same weights, but their features differ.
    """
    h = hashlib.sha256()
    h.update(repr(model).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


CPU_FORWARD_PIXELS = 64 * 224 * 224  # input pixels per forward pass on the CPU (64 images at 224 px; 256 up to 112 px)


@torch.no_grad()
def extract_into(
    model: nn.Module,
    images: Any,
    pre: Preprocess,
    out: np.ndarray,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    what: str = "features",
) -> None:
    """Write the pooled features of ``images`` into ``out`` (``(N, D)``, e.g. a memmap), one batch at a time.

    Eval mode, no gradients. ``images`` is a split (in memory, or files decoded by
    DataLoader workers) or an ``(N, C, S, S)`` uint8 tensor. On the CPU a pass holds at
    most ``CPU_FORWARD_PIXELS`` input pixels, so that the activations of large images
    (a batch of 256 at 224 px peaked at 4.6 GB) stay bounded; features do not depend on it.
    A long pass shows its progress on stderr (:class:`~ssl_toolkit.pass_progress.PassProgress`,
    named by ``what``).
    """
    from ssl_toolkit.pass_progress import PassProgress

    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    side = int(images.shape[-1]) if isinstance(images, torch.Tensor) else int(images.size)
    if torch.device(device).type == "cpu":  # host memory holds the activations: bound the pixels per pass
        batch_size = max(1, min(batch_size, CPU_FORWARD_PIXELS // max(side * side, 1)))
    was_training = model.training
    model.eval().to(device)
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images.batches(batch_size)
    start = 0
    progress = PassProgress(len(out), what)
    try:
        for chunk in batches:  # (B, C, S, S) uint8
            out[start : start + len(chunk)] = model(pre(chunk.to(device, non_blocking=True))).float().cpu().numpy()
            start += len(chunk)
            progress.update(len(chunk))
    finally:
        progress.close()
    model.train(was_training)
    if start != len(out):  # never let a short pass reach the cache as zeros
        raise RuntimeError(f"features written for {start} of {len(out)} images")


def extract(model: nn.Module, images: Any, pre: Preprocess, batch_size: int = 512, device: str | torch.device = "cpu") -> torch.Tensor:
    """Pooled features of ``images`` -> ``(N, D)`` float32 (see :func:`extract_into`)."""
    out = np.empty((len(images), feature_dim(model)), dtype=np.float32)
    extract_into(model, images, pre, out, batch_size, device)
    return torch.from_numpy(out)


def unwritten_why(folder: Path, e: RuntimeError) -> str:
    """Why ``torch.save`` could not write into ``folder``: the free space when it is nearly gone, else the error's first line."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        from ssl_toolkit.units import human_size

        return f"no space left on the device: {human_size(free)} free"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class FeatureCache:
    """Features of (backbone, data, split, preprocessing) on disk; ``forward_passes`` counts real extractions."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir("features")
        self.forward_passes = 0
        self.unwritable: str | None = None  # why features could not be stored (said once; later ones are not tried)

    def key(self, fingerprint: str, source: DataSource, split: str, pre: Preprocess) -> str:
        desc = {
            "model": fingerprint,
            "data": source.describe(),
            "content": source.content,  # a folder's files rewritten under the same names are not the cached ones
            "ids_hash": hashlib.sha256("\n".join(getattr(source, split).ids).encode("utf-8", "surrogateescape")).hexdigest(),
            "decode": DECODE_VERSION,  # files decoded by an older rule (before EXIF orientation) are not reused
            "split": split,
            "pre": pre.key(),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, fingerprint: str, source: DataSource, split: str, pre: Preprocess) -> Path:
        """The cache file of (weights, data, split, preprocessing)."""
        return self.root / f"{self.key(fingerprint, source, split, pre)}.pt"

    def features(
        self,
        model: nn.Module,
        source: DataSource,
        split: str,
        pre: Preprocess,
        fingerprint: str | None = None,
        device: str | torch.device | None = None,
        out: np.ndarray | None = None,
        batch_size: int = 512,
    ) -> tuple[np.ndarray, bool]:
        """Features of ``source.<split>``: memory-mapped from the cache, or extracted and stored.

        Args:
            model: The backbone (pooled output).
            source: The data.
            split: ``"train"`` or ``"test"``.
            pre: Input preprocessing.
            fingerprint: :func:`model_fingerprint` of ``model`` (computed if ``None``).
            device: Where to run the backbone (default: :func:`~ssl_toolkit.devices.choose_device`).
            out: Where to put the features (e.g. a slice of a memmap); a new array if ``None``.
            batch_size: Images per forward pass.

        Returns:
            The ``(N, D)`` float32 features (``out`` when given) and whether they came from the cache.
        """
        images = getattr(source, split)
        path = self.path(fingerprint or model_fingerprint(model), source, split, pre)
        cached = self._load(path, len(images), feature_dim(model))
        if cached is not None:
            if out is None:
                return cached, True
            for start in range(0, len(cached), 65536):
                out[start : start + 65536] = cached[start : start + 65536]
            return out, True
        if out is None:
            out = np.empty((len(images), feature_dim(model)), dtype=np.float32)
        from ssl_toolkit.devices import choose_device

        extract_into(model, images, pre, out, batch_size, device or choose_device(), what=f"features ({split})")
        self.forward_passes += 1
        self._store(path, out)
        return out, False

    def _store(self, path: Path, features: np.ndarray) -> None:
        """Write ``features`` to the cache; a cache that cannot be written (read-only, full) is one warning, not a lost result."""
        if self.unwritable is not None:
            return
        try:
            with atomic_file(path) as tmp:  # the tensor file, written without another copy in memory
                torch.save(torch.from_numpy(np.asarray(features)), tmp)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write (a full disk) as a RuntimeError
            if isinstance(e, OSError):
                self.unwritable = f"{e.strerror or e} ({e.filename or path.parent})"
            else:
                self.unwritable = f"writing {features.nbytes:,} bytes into {path.parent} failed ({unwritten_why(path.parent, e)})"
            print(f"warning: features are not cached: {self.unwritable}", file=sys.stderr, flush=True)

    @staticmethod
    def _load(path: Path, rows: int, dim: int) -> np.ndarray | None:
        """The cached ``(rows, dim)`` float32 features memory-mapped, or ``None`` (missing, unreadable, stale or not finite)."""
        if not path.is_file():
            return None
        try:
            t = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001  (an unreadable cache entry is recomputed)
            return None
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (rows, dim):
            return None
        x = t.numpy()
        for start in range(0, rows, 65536):  # a chunk at a time: the entry stays memory-mapped
            if not np.isfinite(x[start : start + 65536]).all():
                return None
        return x

    def get(
        self,
        model: nn.Module,
        source: DataSource,
        split: str,
        pre: Preprocess,
        fingerprint: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 512,
    ) -> torch.Tensor:
        """Features of ``source.<split>`` as a tensor (see :meth:`features`)."""
        return torch.from_numpy(self.features(model, source, split, pre, fingerprint, device, batch_size=batch_size)[0])
