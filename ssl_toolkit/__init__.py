"""ssl-toolkit: self-supervised representation learning on images.

Python API (mirrors the ``ssl`` command line)::

    import ssl_toolkit as st
    meta = st.pretrain({"task": "rotation", "data": {"name": "digits"}, "trainer": {"epochs": 2}}, out="runs/rot")
    result = st.probe("runs/rot", {"data": {"name": "digits"}, "mode": "linear"})
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def pretrain(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Pretrain a backbone; see :func:`ssl_toolkit.pretrain.pretrain`."""
    from ssl_toolkit.pretrain import pretrain as _pretrain

    return _pretrain(*args, **kwargs)


def probe(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Evaluate a backbone; see :func:`ssl_toolkit.eval.probe.probe`."""
    from ssl_toolkit.eval.probe import probe as _probe

    return _probe(*args, **kwargs)


def load_backbone(target: str) -> tuple[Any, dict[str, Any]]:
    """Load a backbone (library name, run folder or file) as an eval-mode ``nn.Module`` and its metadata."""
    from ssl_toolkit.library import load_backbone_any

    model, meta, _ = load_backbone_any(target)
    return model, meta


__all__ = ["__version__", "load_backbone", "pretrain", "probe"]
