"""Data: sources (built-in sets, image folders, shards), the worker stage, loaders, batched augmentation.

Imports run one way: ``images`` (reading one file) <- ``scan`` (file facts) <- ``layout``
(folder listing) <- ``index`` (cached file index) <- ``stream`` (file splits) <- ``folder``
<- ``sources`` (lookup by name); ``base`` (splits, sources, registry) and ``stage`` (the
worker-stage contract) are leaves that everything may import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SOURCES", "DataSource", "Split", "load_source", "register_source"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ssl_toolkit.data import sources

        return getattr(sources, name)
    raise AttributeError(name)
