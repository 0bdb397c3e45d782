"""Lazy package attributes (PEP 562): a package names what it offers without importing it.

Package ``__init__`` modules use :func:`lazy_exports` so that ``import ssl_toolkit.eval``
costs nothing until an attribute is used; this keeps ``ssl --help`` and
``ssl checkpoints list`` free of Lightning, FAISS and UMAP.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``name`` from ``exports[name]`` on first use.

    Args:
        package: The package's ``__name__``.
        exports: Attribute name -> dotted name of the module that defines it.

    Returns:
        The module-level ``__getattr__`` and ``__dir__`` functions.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
