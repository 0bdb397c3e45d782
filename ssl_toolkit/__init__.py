"""ssl-toolkit: self-supervised representation learning on images.

Python API (mirrors the ``ssl`` command line)::

    import ssl_toolkit as st

    meta = st.pretrain({"task": "rotation", "data": {"name": "digits"}, "trainer": {"epochs": 2}}, out="runs/rot")
    result = st.probe("runs/rot", {"data": {"name": "digits"}, "mode": "linear"})

Each ``ssl`` command has its function: ``pretrain``, ``probe``, ``embed``, ``report``,
``inspect_data`` (``ssl inspect``), ``shard`` (``ssl shard``), ``list_tasks`` (``ssl tasks``) and ``list_checkpoints``,
``show_checkpoint``, ``export_checkpoint``, ``import_checkpoint``, ``remove_checkpoint``
(``ssl checkpoints``); ``load_backbone`` loads a backbone as a module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ssl_toolkit._version import __version__
from ssl_toolkit.api import Flag, public
from ssl_toolkit.lazy import lazy_exports

if TYPE_CHECKING:
    from ssl_toolkit.data.sharding import shard
    from ssl_toolkit.eval.embed import embed
    from ssl_toolkit.eval.probe import probe
    from ssl_toolkit.eval.report import report
    from ssl_toolkit.inspection import inspect_data
    from ssl_toolkit.pretraining import pretrain

# The functions that need torch are imported on first use, so that ``import ssl_toolkit`` (and
# ``ssl --help``) stays light; each is the real function, with its own signature and docstring.
__getattr__, _lazy_dir = lazy_exports(
    __name__,
    {
        "pretrain": "ssl_toolkit.pretraining",
        "probe": "ssl_toolkit.eval.probe",
        "embed": "ssl_toolkit.eval.embed",
        "report": "ssl_toolkit.eval.report",
        "inspect_data": "ssl_toolkit.inspection",
        "shard": "ssl_toolkit.data.sharding",
    },
)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_lazy_dir()))


@public
def load_backbone(target: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load a backbone (library name, run folder or file) as an eval-mode ``nn.Module`` and its metadata."""
    from ssl_toolkit.library import load_backbone_any

    model, meta, _ = load_backbone_any(target)
    return model, meta


@public
def list_tasks() -> list[dict[str, str]]:
    """Every registered pretext task, built-in or plugin (``ssl tasks``).

    Returns:
        One dict per task, sorted by name: ``name``, ``description``, ``paper`` and
        ``needs``, the input it needs (``colour``, ``>= N px``, ``settings KEY`` for task
        settings without a default) or ``any images``.
    """
    from ssl_toolkit.pretext import TASKS

    return [
        {"name": name, "description": cls.info.description, "paper": cls.info.paper, "needs": _task_needs(cls)}
        for name, cls in ((name, TASKS.get(name)) for name in TASKS.names())
    ]


def _task_needs(cls: Any) -> str:
    """What input the task class ``cls`` needs with its default settings, as ``ssl tasks`` prints it."""
    from pydantic import ValidationError

    needs = []
    if cls.info.needs_colour:
        needs.append("colour")
    try:
        default = cls.Config()
    except ValidationError as e:  # a plugin task whose settings have no defaults
        needs.append("settings " + ", ".join(".".join(map(str, err["loc"])) for err in e.errors()))
        need = 0
    else:
        need = cls.size_requirement(default)[0]
    if need:
        smallest = cls.smallest_image_size(default)
        fallback = f" ({smallest} px with a smaller {' and '.join(cls.geometry_fallbacks)})" if smallest and smallest < need else ""
        needs.append(f">= {need} px{fallback}")
    return ", ".join(needs) or "any images"


@public
def list_checkpoints(task: str | None = None, backbone: str | None = None) -> list[dict[str, Any]]:
    """The checkpoint library's entries (``ssl checkpoints list``); see :func:`ssl_toolkit.library.list_checkpoints`."""
    from ssl_toolkit.library import list_checkpoints as _list

    return _list(task=task, backbone=backbone)


@public
def show_checkpoint(name: str) -> dict[str, Any]:
    """Entry ``name``'s metadata with ``intact`` (its weights still match their SHA-256) and ``path`` (``ssl checkpoints show``)."""
    from ssl_toolkit.library import entry_dir, entry_meta, verify_entry

    meta = entry_meta(name)
    return {**meta, "intact": verify_entry(name), "path": str(entry_dir(name))}


@public
def export_checkpoint(
    target: str | Path, out: str | Path, format: Literal["safetensors", "timm", "torch", "onnx"] = "safetensors", overwrite: Flag = False
) -> dict[str, Any]:
    """Export a library entry, run folder or file to ``out`` (``ssl checkpoints export``).

    Returns:
        The written metadata (also in ``<out>.json``) with ``path`` and ``load_code``, the
        Python code that loads the file without the toolkit.
    """
    from ssl_toolkit.export import export_checkpoint as _export

    meta, code = _export(target, out, format, overwrite=overwrite)
    return {**meta, "path": str(out), "load_code": code}


@public
def import_checkpoint(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """Add a run folder, backbone folder or exported file to the library (``ssl checkpoints import``); returns the entry."""
    from ssl_toolkit.library import import_checkpoint as _import

    return _import(path, name)


@public
def remove_checkpoint(name: str) -> str:
    """Delete library entry ``name`` (its run folder, if any, is kept); returns the folder it had (``ssl checkpoints remove``)."""
    from ssl_toolkit.library import remove_checkpoint as _remove

    return str(_remove(name))


__all__ = [
    "__version__",
    "embed",
    "export_checkpoint",
    "import_checkpoint",
    "inspect_data",
    "list_checkpoints",
    "list_tasks",
    "load_backbone",
    "pretrain",
    "probe",
    "remove_checkpoint",
    "report",
    "shard",
    "show_checkpoint",
]
