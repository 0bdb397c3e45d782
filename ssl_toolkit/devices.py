"""Choosing the device for work done outside a Lightning Trainer (feature extraction, embeddings), and counting cores."""

from __future__ import annotations

import os

import torch

from ssl_toolkit.errors import UserError

CPU_PROCESSES_PER_CORE = 4  # above this, CPU processes spend their time switching between each other


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_device(accelerator: str = "auto") -> torch.device:
    """The first CUDA device when there is one and ``accelerator`` allows it, else the CPU.

    Args:
        accelerator: Lightning-style accelerator name; ``"cpu"`` always gives the CPU.
    """
    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` torch cannot name or this machine does not have."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {device}: no such CUDA device on this machine; use cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: this machine has no MPS device; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device!r} is not supported; use cpu or cuda")
