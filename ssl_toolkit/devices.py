"""Choosing the device for work done outside a Lightning Trainer (feature extraction, embeddings)."""

from __future__ import annotations

import torch


def choose_device(accelerator: str = "auto") -> torch.device:
    """The first CUDA device when there is one and ``accelerator`` allows it, else the CPU.

    Args:
        accelerator: Lightning-style accelerator name; ``"cpu"`` always gives the CPU.
    """
    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
