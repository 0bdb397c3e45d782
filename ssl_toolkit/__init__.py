"""ssl-toolkit: self-supervised representation learning on images.

Python API (mirrors the ``ssl`` command line)::

    import ssl_toolkit as st

    meta = st.pretrain({"task": "rotation", "data": {"name": "digits"}, "trainer": {"epochs": 2}}, out="runs/rot")
    result = st.probe("runs/rot", {"data": {"name": "digits"}, "mode": "linear"})
"""

from __future__ import annotations

from typing import Any

from ssl_toolkit._version import __version__


def pretrain(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Pretrain a backbone; see :func:`ssl_toolkit.pretraining.pretrain`."""
    from ssl_toolkit.pretraining import pretrain as _pretrain

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


def embed(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Write a dataset's embeddings to .npz/.npy; see :func:`ssl_toolkit.eval.embed.embed`."""
    from ssl_toolkit.eval.embed import embed as _embed

    return _embed(*args, **kwargs)


def report(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Write the HTML analysis report; see :func:`ssl_toolkit.eval.report.report`."""
    from ssl_toolkit.eval.report import report as _report

    return _report(*args, **kwargs)


def inspect_data(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Inspect a dataset (facts, labels, duplicates, leakage); see :func:`ssl_toolkit.inspection.inspect_data`."""
    from ssl_toolkit.inspection import inspect_data as _inspect_data

    return _inspect_data(*args, **kwargs)


def list_checkpoints(task: str | None = None, backbone: str | None = None) -> list[dict[str, Any]]:
    """The checkpoint library's entries; see :func:`ssl_toolkit.library.list_checkpoints`."""
    from ssl_toolkit.library import list_checkpoints as _list

    return _list(task=task, backbone=backbone)


__all__ = ["__version__", "embed", "inspect_data", "list_checkpoints", "load_backbone", "pretrain", "probe", "report"]
