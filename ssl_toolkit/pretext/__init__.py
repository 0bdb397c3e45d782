"""Pretext tasks; importing this package registers every built-in task."""

from ssl_toolkit.pretext import (  # noqa: F401  (registration)
    byol,
    colorization,
    contrastive,
    inpainting,
    jigsaw,
    moco,
    relative_position,
    rotation,
)
from ssl_toolkit.pretext.base import TASKS, DataFacts, PretextTask, TaskConfig, TaskInfo, build_task, register_task

__all__ = ["TASKS", "DataFacts", "PretextTask", "TaskConfig", "TaskInfo", "build_task", "register_task"]
