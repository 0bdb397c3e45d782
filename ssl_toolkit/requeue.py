"""SIGUSR1 stops a run with its checkpoint and, under SLURM, requeues the job.

SLURM sends a signal ahead of a job's time limit when the job asks for one
(``#SBATCH --signal=USR1@120``). Lightning's own handler for it writes a checkpoint of its
own (``hpc_ckpt_N.ckpt``), which ``--resume`` does not read, asks for the requeue and trains
on. Here the signal stops the run as SIGTERM does (``last.ckpt`` written, exit 143), and
the first process then asks SLURM to requeue the job (``scontrol requeue``); the requeued
job runs the same command, which with ``--auto-resume`` continues the run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

#: The signal that stops a run for a requeue (absent on Windows).
REQUEUE_SIGNAL = getattr(signal, "SIGUSR1", None)


def slurm_job_id() -> str | None:
    """This job's id as ``scontrol`` takes it (``ARRAYJOB_TASK`` for a job array's task), ``None`` outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9]+(_[0-9]+)?", job) else None


def requeue_job() -> str:
    """Ask SLURM to requeue this job; returns what happened, as a clause of the stop message."""
    from ssl_toolkit.errors import one_line

    job = slurm_job_id()
    if job is None:
        return "not requeued: not a SLURM job (no SLURM_JOB_ID)"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return f"SLURM job {job} not requeued: scontrol not found"
    except subprocess.TimeoutExpired:
        return f"SLURM job {job} not requeued: scontrol requeue {job} did not answer in 60 s"
    if done.returncode != 0:
        said = one_line(done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")
        return f"SLURM job {job} not requeued: scontrol requeue {job} failed ({said})"
    return f"SLURM job {job} requeued: it runs the same command again (with --auto-resume it continues the run)"
