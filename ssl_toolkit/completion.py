"""Shell completion of the values users type most: tasks, data, probe modes, precisions, backbones by name.

click completes commands and options by itself (``eval "$(_SSL_COMPLETE=bash_source ssl)"``,
``zsh_source``, ``fish_source``); these functions complete option values and arguments. A
Tab must answer at once, so nothing here imports torch: the built-in names are listed here
(a test keeps them equal to the registries), plugins' names come from their entry points,
and the checkpoint library is read as a folder listing. ``ssl pretrain --help`` lists the
same names, for the same reason.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any

from click.shell_completion import CompletionItem

BUILTIN_TASKS = ("byol", "colorization", "inpainting", "jigsaw", "moco", "relative-position", "rotation", "simclr")
BUILTIN_MODES = ("finetune", "knn", "linear", "partial")
BUILTIN_DATA = ("digits", "fashion-mnist", "synthetic")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


def names(builtin: tuple[str, ...], group: str) -> list[str]:
    """The built-in names and those of the installed plugins' ``group`` entry points, sorted (no plugin is imported)."""
    return sorted(set(builtin) | {ep.name for ep in entry_points(group=group)})


def task_names() -> list[str]:
    return names(BUILTIN_TASKS, "ssl_toolkit.tasks")


def data_names() -> list[str]:
    return names(BUILTIN_DATA, "ssl_toolkit.sources")


def _named(builtin: tuple[str, ...], group: str, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(n) for n in names(builtin, group) if n.startswith(incomplete)]


def _library_names(incomplete: str) -> list[CompletionItem]:
    from ssl_toolkit.settings import toolkit_home

    try:
        entries = os.listdir(toolkit_home() / "checkpoints")
    except OSError:
        return []
    return [CompletionItem(n) for n in sorted(entries) if n.startswith(incomplete) and not n.startswith(".")]


def complete_task(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    return _named(BUILTIN_TASKS, "ssl_toolkit.tasks", incomplete)


def complete_mode(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    return _named(BUILTIN_MODES, "ssl_toolkit.evaluators", incomplete)


def complete_precision(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(p) for p in PRECISIONS if p.startswith(incomplete)]


def complete_data(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    """Dataset names, or folders when no name matches (the shell lists those)."""
    return [CompletionItem(incomplete, type="dir"), *_named(BUILTIN_DATA, "ssl_toolkit.sources", incomplete)]


def complete_target(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    """Backbones of the checkpoint library by name, or run folders and files when no name matches (the shell lists those)."""
    return [CompletionItem(incomplete, type="file"), *_library_names(incomplete)]


def complete_library_name(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    return _library_names(incomplete)
