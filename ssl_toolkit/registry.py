"""A small name -> factory registry, one instance per kind (tasks, datasets, evaluators).

A registry built with ``package`` and ``group`` fills itself on its first lookup: it
imports every module of ``package`` (the built-ins) and loads the entry points of
``group`` (third-party packages); see :mod:`ssl_toolkit.plugins`. Nothing is imported
before a name is asked for, so commands that never look up a task never import one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from ssl_toolkit.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects, with a decorator to register them.

    Args:
        kind: What is registered, used in error messages ("task", "dataset", ...).
        package: Dotted name of the subpackage whose modules are the built-ins.
        group: The ``importlib.metadata`` entry-point group of third-party plugins.
    """

    def __init__(self, kind: str, package: str | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.group = group
        self._items: dict[str, T] = {}
        self._failed: dict[str, str] = {}  # entry-point name -> why its plugin did not load
        self._discovered = package is None and group is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise UserError(f"{self.kind} '{name}' is registered twice: by {_origin(self._items[name])} and by {_origin(obj)}")
            self._items[name] = obj
            return obj

        return deco

    def discover(self) -> None:
        """Import the built-in modules and load the entry points, once."""
        if self._discovered:
            return
        self._discovered = True
        from ssl_toolkit.plugins import import_submodules

        if self.package:
            import_submodules(self.package)
        if self.group:
            self.load_plugins(self.group)

    def load_plugins(self, group: str, adopt: Callable[[str, Any], None] | None = None) -> None:
        """Load the entry points of ``group`` (:func:`ssl_toolkit.plugins.load_entry_points`), remembering why any failed."""
        from ssl_toolkit.plugins import load_entry_points

        self._failed.update(load_entry_points(group, self._items, adopt))

    def failure(self, name: str) -> str | None:
        """Why the plugin named ``name`` did not load (``None`` if it did, or there is none)."""
        self.discover()
        return self._failed.get(name)

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; a :class:`UserError` listing the valid names otherwise.

        Discovery runs first even when ``name`` is already registered, so a plugin imported
        before the built-ins cannot take a built-in's name unnoticed.
        """
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            if name in self._failed:
                raise UserError(f"{self.kind} plugin '{name}' did not load: {self._failed[name]}") from None
            valid = ", ".join(sorted(self._items))
            raise UserError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; valid: {valid}") from None

    def names(self) -> list[str]:
        """Every registered name, sorted (built-ins and plugins)."""
        self.discover()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _origin(obj: object) -> str:
    """Where a registered object comes from, for messages: ``module.Name``."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
