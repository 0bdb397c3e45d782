"""Which process of a multi-process (DDP) run this is, read from the launcher's environment.

Lightning's launcher starts the extra processes of a run by re-running the same command
with ``LOCAL_RANK`` (and ``RANK``, ``NODE_RANK`` on several nodes) set; ``torchrun`` and
SLURM set the same variables. Only the primary process writes the run folder and speaks to
the user.
"""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")


def is_primary_process() -> bool:
    """False in the extra processes a DDP launcher starts (they re-run the same command)."""
    return all(os.environ.get(k, "0") == "0" for k in RANK_VARIABLES)
