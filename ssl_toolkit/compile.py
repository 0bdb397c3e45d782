"""``trainer.compile``: ``torch.compile`` (inductor) of the backbone, where it pays.

``true`` compiles the backbone in place (``nn.Module.compile``: parameter names, state
dicts and checkpoints stay those of the eager module), ``false`` never does, and ``auto``
compiles only where a measurement showed it winning end to end, compile time included, for
a run of the planned length: :data:`BREAK_EVEN_STEPS` lists, per device type and precision,
the optimiser steps after which the time saved per step has repaid the compilation.

Measured so far (``docs/benchmarks.md``, "torch.compile"): on a quiet 2-core CPU in
float32, resnet18's SimCLR step at 32 px took 0.827 s compiled against 0.836 s eager (1%,
within the run-to-run spread) after 54 s of compilation; in bfloat16 on a CPU with AMX, at
28 px without the stem's max-pool, 1.080 s against 1.133 s (4.7%) after 24 s of compilation,
about 2% more steps in a 15-minute run. No GPU has been measured. With no established win,
the table is empty and ``auto`` leaves every run eager.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

CompileSetting = Literal["auto"] | bool

# (device type, Lightning precision) -> optimiser steps from which compiling wins end to end.
# Only measured wins belong here; a missing entry means ``auto`` stays eager.
BREAK_EVEN_STEPS: dict[tuple[str, str], int] = {}


def should_compile(setting: CompileSetting, device_type: str, precision: str, planned_steps: int) -> bool:
    """Whether ``trainer.compile`` turns compilation on for this run.

    Args:
        setting: ``true``, ``false`` or ``"auto"``.
        device_type: ``cpu`` or ``cuda``.
        precision: The run's resolved Lightning precision (``32-true``, ``bf16-mixed``, ...).
        planned_steps: Optimiser steps the run is expected to make.
    """
    if setting != "auto":
        return bool(setting)
    break_even = BREAK_EVEN_STEPS.get((device_type, precision))
    return break_even is not None and planned_steps >= break_even


def compile_backbone(backbone: nn.Module, setting: CompileSetting, device_type: str, precision: str, planned_steps: int) -> bool:
    """Compile ``backbone`` in place with inductor when :func:`should_compile` says so; returns whether it did."""
    if not should_compile(setting, device_type, precision, planned_steps):
        return False
    backbone.compile(backend="inductor")
    return True
