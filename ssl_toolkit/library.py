"""Resolving a backbone target: a checkpoint-library name, a run folder or a weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ssl_toolkit.checkpoints import load_backbone_files
from ssl_toolkit.errors import UserError
from ssl_toolkit.eval.features import toolkit_home


def library_root() -> Path:
    """``$SSL_TOOLKIT_HOME/checkpoints``."""
    return toolkit_home() / "checkpoints"


def load_backbone_any(target: str | Path) -> tuple[nn.Module, dict[str, Any], Path | None]:
    """Load ``target``; returns (model in eval mode, metadata, folder that holds its metadata or ``None``)."""
    p = Path(target).expanduser()
    if p.exists():
        model, meta = load_backbone_files(p)
        return model, meta, p if p.is_dir() else None
    lib = library_root() / str(target)
    if "/" not in str(target) and lib.is_dir():
        model, meta = load_backbone_files(lib)
        return model, meta, lib
    raise UserError(f"no run folder, backbone file or library checkpoint named '{target}'")
