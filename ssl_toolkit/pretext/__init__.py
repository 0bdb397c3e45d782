"""Pretext tasks, one module each, found by :data:`TASKS` on its first lookup.

Nothing is imported until it is used: ``TASKS.names()`` imports every task module of
this package (and the ``ssl_toolkit.tasks`` entry points of installed plugins).
"""

from ssl_toolkit.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        name: "ssl_toolkit.pretext.base"
        for name in ("TASKS", "DataFacts", "PretextTask", "TaskConfig", "TaskInfo", "build_task", "register_task")
    },
)

__all__ = ["TASKS", "DataFacts", "PretextTask", "TaskConfig", "TaskInfo", "build_task", "register_task"]
