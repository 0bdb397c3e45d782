"""Finding plugins: built-in modules of a subpackage and third-party entry points.

A task, evaluator or data source is one module whose class carries one registering
decorator. Importing the module registers it, so finding plugins means importing modules:

* built-ins: every module of a subpackage (``ssl_toolkit.pretext``, ``ssl_toolkit.eval``),
  found with :mod:`pkgutil`, so adding a file is enough;
* third-party packages: the entry points of a group (``ssl_toolkit.tasks``,
  ``ssl_toolkit.evaluators``, ``ssl_toolkit.sources``), found with :mod:`importlib.metadata`
  the way pytest finds its plugins. An entry point names the module that holds the
  decorated class (``my_pkg.my_task``) or the class itself (``my_pkg.my_task:MyTask``).

:class:`ssl_toolkit.registry.Registry` calls both lazily, on its first lookup.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from ssl_toolkit.ranks import is_primary_process

GROUPS = {"task": "ssl_toolkit.tasks", "evaluator": "ssl_toolkit.evaluators", "source": "ssl_toolkit.sources"}
DECORATORS = {group: f"@register_{kind}" for kind, group in GROUPS.items()}  # what registers each group's classes

log = logging.getLogger(__name__)


def import_submodules(package: str) -> list[str]:
    """Import every module directly inside ``package`` (names starting with ``_`` skipped).

    Args:
        package: Dotted name of a package, e.g. ``"ssl_toolkit.pretext"``.

    Returns:
        The dotted names of the imported modules, sorted.
    """
    pkg = importlib.import_module(package)
    names = sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(name)
    return names


def load_entry_points(
    group: str,
    registered: Mapping[str, object] | None = None,
    adopt: Callable[[str, Any], None] | None = None,
    owns: Callable[[Any], bool] | None = None,
    undone: Sequence[MutableMapping[str, Any]] = (),
) -> dict[str, str]:
    """Load every entry point of ``group``; one that fails to load is logged and skipped.

    A broken third-party package must not take the command line down with it: its
    error is one warning line on stderr, and looking its name up later says why it is
    missing.

    Args:
        group: Entry-point group, e.g. ``"ssl_toolkit.tasks"``.
        registered: What is registered so far, by name: an entry point whose name another
            module has taken (a built-in's, say) is skipped with a warning.
        adopt: Called with ``(name, object)`` for an entry point that names an object, not
            a module (a data-source factory is registered under the entry point's name);
            what it raises counts as a failure to load.
        owns: Whether a loaded module or class registered something (when ``adopt`` did not
            take it): an entry point that registers nothing (an undecorated class, a module
            without a registering decorator, some other object) counts as a failure to load.
        undone: The name tables of the registries the group's modules register into
            (besides ``registered``): a module that fails to load leaves none of the names it
            registered before failing.

    Returns:
        ``name -> why`` for the entry points that did not load.

    The extra processes of a DDP run re-run the same command and meet the same plugins;
    only the primary process prints the warnings, so each is printed once per run.
    """
    warn = log.warning if is_primary_process() else log.debug
    failed = {}
    for ep in entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "?"
        taken = (registered or {}).get(ep.name)
        if taken is not None and getattr(taken, "__module__", None) != ep.module:
            holder = f"{getattr(taken, '__module__', '?')}.{getattr(taken, '__qualname__', type(taken).__name__)}"
            warn("warning: plugin '%s' of %s (%s) is not loaded: the name is taken by %s", ep.name, dist, group, holder)
            continue
        tables = [t for t in (registered, *undone) if isinstance(t, MutableMapping)]
        before = [set(t) for t in tables]
        try:
            obj = ep.load()
            if adopt is not None and not inspect.ismodule(obj):
                adopt(ep.name, obj)
            elif owns is not None and not owns(obj):
                what = f"module {obj.__name__}" if inspect.ismodule(obj) else repr(obj)
                decorator = DECORATORS.get(group, "its registering decorator")
                raise TypeError(f"{what} registers nothing (a class needs its registering decorator, {decorator})")
        except (Exception, SystemExit) as e:  # noqa: BLE001  (any error of foreign code is reported, not raised)
            for table, names in zip(tables, before):  # a module that fails registers none of its names
                for added in set(table) - names:
                    del table[added]
            failed[ep.name] = f"{dist} ({ep.value}): {type(e).__name__}: {e}"
            warn("warning: plugin '%s' of %s (%s) failed to load: %s: %s", ep.name, dist, group, type(e).__name__, e)
    return failed
