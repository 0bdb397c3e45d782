"""The names and metadata of backbone files, without torch: what listing the library needs.

A backbone is ``backbone.safetensors`` plus ``meta.json`` (see :mod:`ssl_toolkit.checkpoints`
for saving and loading the weights). This module only knows the file names, the SHA-256
of the weights and how to read the metadata, so ``ssl checkpoints list`` starts in a
fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ssl_toolkit.atomic import atomic_write_pair
from ssl_toolkit.errors import UserError

WEIGHTS = "backbone.safetensors"
META = "meta.json"
FORMATS = ("safetensors", "timm", "torch")


def sidecar_path(weights: str | Path) -> Path:
    """Where an exported weights file keeps its metadata: ``<file name>.json`` beside it."""
    weights = Path(weights)
    return weights.with_name(weights.name + ".json")


def write_with_sidecar(weights: str | Path, data: bytes, meta: dict[str, Any]) -> None:
    """Write an exported file and its ``<file name>.json`` metadata, both or neither.

    Each goes to a temp file beside its target first; the two are renamed into place only
    once both are written and synced (:func:`~ssl_toolkit.atomic.atomic_write_pair`), so a
    full disk or an interrupt leaves any earlier export whole.
    """
    weights = Path(weights)
    atomic_write_pair(weights, data, sidecar_path(weights), (json.dumps(meta, indent=2, default=str) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_meta(meta_path: Path) -> dict[str, Any]:
    """A backbone's ``meta.json``; a :class:`UserError` when unreadable or not backbone metadata."""
    try:
        meta = json.loads(Path(meta_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {meta_path}: {e}") from None
    except RecursionError:  # nested deeper than the parser's stack: not metadata the toolkit wrote
        raise UserError(f"cannot read {meta_path}: JSON nested too deeply") from None
    from ssl_toolkit.meta_schema import check_meta

    return check_meta(meta, str(meta_path))
