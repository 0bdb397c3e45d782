"""Pretext tasks; importing this package registers every built-in task."""

from ssl_toolkit.pretext import contrastive, rotation  # noqa: F401  (registration)
from ssl_toolkit.pretext.base import TASKS, DataFacts, PretextTask, TaskConfig, TaskInfo, build_task, register_task

__all__ = ["TASKS", "DataFacts", "PretextTask", "TaskConfig", "TaskInfo", "build_task", "register_task"]
