"""Which process of a multi-process (DDP) run this is, read from the launcher's environment.

Lightning's launcher starts the extra processes of a run by re-running the same command
with ``LOCAL_RANK`` (and ``RANK``, ``NODE_RANK`` on several nodes) set, and ``torchrun``
sets the same variables. ``srun`` starts every task of a SLURM job step itself and numbers
them in ``SLURM_PROCID`` instead; Lightning reads it when it detects SLURM (``SLURM_NTASKS``
set, and a job name other than ``bash`` or ``interactive``, which mark an interactive
allocation whose processes are started some other way), unless ``torchrun`` started the
process inside the job. Only the primary process writes the run folder and speaks to the
user.
"""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")
INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # as Lightning's SLURMEnvironment reads them


def slurm_tasks() -> int | None:
    """The task count of the SLURM job step that started this process, ``None`` outside one.

    Judged as Lightning chooses its cluster environment (``TorchElasticEnvironment`` first,
    then ``SLURMEnvironment.detect()``), without importing Lightning.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun inside a SLURM job: its variables number the processes
        return None
    if "SLURM_NTASKS" not in os.environ or os.environ.get("SLURM_JOB_NAME") in INTERACTIVE_JOB_NAMES:
        return None
    try:
        return int(os.environ["SLURM_NTASKS"])
    except ValueError:
        return None


def is_primary_process() -> bool:
    """False in the extra processes a DDP launcher starts (they re-run the same command) and in SLURM tasks other than the first."""
    if any(os.environ.get(k, "0") != "0" for k in RANK_VARIABLES):
        return False
    return slurm_tasks() is None or os.environ.get("SLURM_PROCID", "0") == "0"
