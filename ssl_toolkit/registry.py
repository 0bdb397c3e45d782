"""A small name -> factory registry, one instance per kind (tasks, datasets, evaluators).

A registry built with ``package`` and ``group`` fills itself on its first lookup: it
imports every module of ``package`` (the built-ins) and loads the entry points of
``group`` (third-party packages); see :mod:`ssl_toolkit.plugins`. Nothing is imported
before a name is asked for, so commands that never look up a task never import one.

A registered class must be one that can be built: not abstract, and, when its base classes
declare a settings model as ``Config`` (a task's ``TaskConfig``, an evaluator's
``EvaluatorConfig``), with a ``Config`` that subclasses it. Listings and help read the
``Config`` of every registered name, so a wrong one is refused when it is registered instead
of breaking them for every name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

from ssl_toolkit.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects, with a decorator to register them.

    Args:
        kind: What is registered, used in error messages ("task", "dataset", ...).
        package: Dotted name of the subpackage whose modules are the built-ins.
        group: The ``importlib.metadata`` entry-point group of third-party plugins.
    """

    #: Why the failed plugins of each entry-point group loaded so far did not load, by group:
    #: registries that share a group (tasks, and the input transforms their modules register)
    #: import its modules, and warn about them, once per process.
    _groups: ClassVar[dict[str, dict[str, str]]] = {}
    #: Every registry, so that an entry point is judged by all the registries of its group.
    _all: ClassVar[list[Registry]] = []

    def __init__(self, kind: str, package: str | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.group = group
        self._items: dict[str, T] = {}
        self._failed: dict[str, str] = {}  # entry-point name -> why its plugin did not load
        self._discovered = package is None and group is None
        self._discovering = False
        Registry._all.append(self)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise UserError(f"{self.kind} '{name}' is registered twice: by {_origin(self._items[name])} and by {_origin(obj)}")
            check_concrete(self.kind, name, obj)
            check_settings_model(self.kind, name, obj)
            self._items[name] = obj
            return obj

        return deco

    def discover(self) -> None:
        """Import the built-in modules and load the entry points, once."""
        if self._discovered or self._discovering:
            return
        from ssl_toolkit.plugins import import_submodules

        self._discovering = True  # a module imported here may look a name up
        try:
            if self.package:
                import_submodules(self.package)  # a plugin imported before that took a built-in's name: raised on every lookup
            if self.group:
                self.load_plugins(self.group)
            self._discovered = True
        finally:
            self._discovering = False

    def load_plugins(self, group: str, adopt: Callable[[str, Any], None] | None = None) -> None:
        """Load the entry points of ``group`` (:func:`ssl_toolkit.plugins.load_entry_points`), remembering why any failed.

        A group another registry has loaded is not loaded again: its modules are imported and
        their warnings printed once per process; this registry takes its failures.
        """
        from ssl_toolkit.plugins import load_entry_points

        if group not in Registry._groups:
            peers = [r for r in Registry._all if r.group == group and r is not self] + [self]
            Registry._groups[group] = load_entry_points(
                group, self._items, adopt, owns=lambda obj: any(r.holds(obj) for r in peers), undone=[r._items for r in peers]
            )
        self._failed.update(Registry._groups[group])

    def holds(self, obj: object) -> bool:
        """Whether ``obj`` is registered here, or is the module (or a package above the module) of something registered.

        An object without a ``__module__`` (an instance) cannot be traced to a module: a
        registry holding one counts as holding every module.
        """
        if inspect.ismodule(obj):
            modules = {getattr(v, "__module__", None) for v in self._items.values()}
            return any(m is None or m == obj.__name__ or str(m).startswith(obj.__name__ + ".") for m in modules)
        return any(v is obj for v in self._items.values())

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
            # a module that failed registers none of its names, not only the entry point's
            failed = "".join(
                f"; plugin '{n}' did not load, so nothing it registers is here: {why}" for n, why in sorted(self._failed.items())
            )
            raise UserError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; valid: {valid}{failed}") from None

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


def check_concrete(kind: str, name: str, obj: object) -> None:
    """Refuse an abstract class: a name is looked up to be built, and building it would fail then.

    Raises:
        UserError: ``obj`` leaves abstract methods of its bases (``forward``, ``evaluate``) unimplemented.
    """
    if isinstance(obj, type) and inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise UserError(f"{kind} '{name}': {_origin(obj)} does not implement {missing}")


def check_settings_model(kind: str, name: str, obj: object) -> None:
    """Refuse a class whose ``Config`` is not a subclass of the settings model its base classes declare.

    The declared model is the one of the farthest base that sets ``Config`` (``PretextTask``'s
    ``TaskConfig``, ``Evaluator``'s ``EvaluatorConfig``), so a task may subclass another task
    and bring settings of its own. Objects that are not classes, and classes whose bases
    declare no ``Config``, are left alone.

    Raises:
        UserError: ``Config`` is missing its base's contract (not a class, or not a subclass).
    """
    if not isinstance(obj, type):
        return
    declared = [c.__dict__["Config"] for c in obj.__mro__[1:] if "Config" in c.__dict__]
    if not declared or not isinstance(declared[-1], type):
        return
    config = obj.Config  # type: ignore[attr-defined]  # a base declares it
    if not (isinstance(config, type) and issubclass(config, declared[-1])):
        raise UserError(f"{kind} '{name}': {_origin(obj)}.Config must be a subclass of {_origin(declared[-1])}, not {config!r}")
    _check_defaults(kind, name, obj, config)


def _check_defaults(kind: str, name: str, obj: type, config: type) -> None:
    """Refuse a ``Config`` whose own defaults fail its fields' checks (pydantic validates only the values given)."""
    from pydantic import BaseModel, ValidationError

    if not issubclass(config, BaseModel):
        return
    defaults = {key: field.get_default(call_default_factory=True) for key, field in config.model_fields.items() if not field.is_required()}
    try:
        config.model_validate(defaults)
    except ValidationError as e:
        bad = [err for err in e.errors() if err["type"] != "missing"]  # a required field is the user's to give
        if bad:
            where = ".".join(str(p) for p in bad[0]["loc"])
            raise UserError(
                f"{kind} '{name}': {_origin(obj)}.Config's default {where}={bad[0].get('input')!r} fails its own check: {bad[0]['msg']}"
            ) from None
