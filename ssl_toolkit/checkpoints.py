"""Backbone files: ``backbone.safetensors`` + ``meta.json``, saved atomically, loaded safely.

Weights are stored as safetensors (never pickled); ``meta.json`` carries what rebuilds
the model in plain timm (name, create kwargs, stem change), the preprocessing (image
size, channels, mean/std), the training facts and the SHA-256 of the weights file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ssl_toolkit.atomic import atomic_write_bytes, atomic_write_json
from ssl_toolkit.backbones import BackboneSpec, build_from_spec
from ssl_toolkit.errors import UserError

WEIGHTS = "backbone.safetensors"
META = "meta.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_backbone(folder: str | Path, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s state dict and ``meta`` (plus size and SHA-256) into ``folder`` atomically."""
    folder = Path(folder)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"refusing to save a backbone with non-finite weights ({k})")
    data = st_save(state)
    meta = {**meta, "weights_file": WEIGHTS, "weights_sha256": sha256_bytes(data), "weights_bytes": len(data)}
    atomic_write_bytes(folder / WEIGHTS, data)
    atomic_write_json(folder / META, meta)
    return meta


def resolve_backbone_files(target: str | Path) -> tuple[Path, Path]:
    """``(weights, meta)`` paths for a run folder, a backbone folder or a ``.safetensors`` file."""
    p = Path(target).expanduser()
    if not p.exists():
        raise UserError(f"no such run folder or backbone file: {target}")
    if p.is_dir():
        weights, meta = p / WEIGHTS, p / META
        if not weights.is_file():
            raise UserError(f"{target} has no backbone checkpoint ({WEIGHTS}); did the run finish?")
    else:
        weights, meta = p, p.with_name(META)
        if p.suffix != ".safetensors":
            meta_guess = p.with_suffix(".json")
            meta = meta_guess if meta_guess.is_file() else meta
    if not meta.is_file():
        raise UserError(f"{meta} is missing: a backbone needs its metadata to be rebuilt")
    return weights, meta


def read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        return json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {meta_path}: {e}") from None


def load_state(weights: Path, expected_sha: str | None, name: str) -> dict[str, torch.Tensor]:
    """Read a weights file safely (safetensors, or ``torch.load(weights_only=True)``), checking its hash."""
    data = weights.read_bytes()
    if expected_sha and sha256_bytes(data) != expected_sha:
        raise UserError(f"checkpoint {name} is corrupt (hash mismatch)")
    if weights.suffix == ".safetensors":
        try:
            return st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise UserError(f"checkpoint {name} is corrupt ({str(e).splitlines()[0]})") from None
    try:
        import io

        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unpickling failure means an unusable file)
        raise UserError(f"checkpoint {name} cannot be read safely ({type(e).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def build_with_state(spec: BackboneSpec, state: dict[str, torch.Tensor], name: str) -> nn.Module:
    """Rebuild the model from ``spec`` and load ``state`` strictly; a mismatch is a one-line error."""
    model = build_from_spec(spec)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        detail = (
            f"shape of {wrong[0]}: expected {tuple(own[wrong[0]].shape)}, found {tuple(state[wrong[0]].shape)}"
            if wrong
            else f"{len(missing)} missing and {len(unexpected)} unexpected tensors"
        )
        raise UserError(f"checkpoint {name} does not fit architecture {spec.timm_name} (small_stem={spec.small_stem}): {detail}")
    model.load_state_dict(state)
    return model.eval()


def load_backbone_files(target: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a backbone from a run folder, backbone folder or weights file; returns (model in eval mode, meta)."""
    weights, meta_path = resolve_backbone_files(target)
    meta = read_meta(meta_path)
    spec = BackboneSpec.from_dict(meta["backbone"])
    state = load_state(weights, meta.get("weights_sha256") if weights.name == meta.get("weights_file", WEIGHTS) else None, str(target))
    return build_with_state(spec, state, str(target)), meta
