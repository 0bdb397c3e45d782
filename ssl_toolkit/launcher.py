"""A multi-process run stopped by Ctrl-C or SIGTERM before training ends with that signal's exit code.

Lightning's ``ddp`` launcher starts the other processes and watches them from a thread: when
one exits non-zero, it kills them all and then the launching process with SIGKILL (exit 137,
no message). A Ctrl-C to the whole group in the seconds before training stops the started
processes while they import or wait in DDP's rendezvous, and the launching process, blocked
in the rendezvous where Python's handler cannot run, was killed that way. Here, when every
process that failed was stopped by SIGINT or SIGTERM, the launching process says so in one
line and exits 130 or 143 (nothing is saved before the first step). Any other failure is
left to Lightning. Once training runs, a stopped process exits 0 and the launching process
saves (:class:`ssl_toolkit.callbacks.CheckpointOnInterrupt`); Lightning then kills the
processes it started, and once the command has said how it ended (:func:`command_ended`)
the watch keeps that exit code instead of killing the launching process as it shuts down.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import lightning as L
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

# a process's exit code -> the launching process's exit code and line
STOPPED = {
    130: (130, "interrupted"),  # the toolkit's own exit on Ctrl-C
    -signal.SIGINT: (130, "interrupted"),  # Python's, on a Ctrl-C outside the command (importing)
    143: (143, "terminated"),
    -signal.SIGTERM: (143, "terminated"),
}

ENDED: list[int] = []  # the exit code, once the command line has said how the command ended

#: Set by the launching process for the processes it starts: its own process id. A started
#: process that receives SIGTERM alone passes it up (:func:`launched_by`), so the whole run
#: stops and saves as when every process receives it.
LAUNCHER_PID = "SSL_TOOLKIT_LAUNCHER_PID"


def launched_by() -> int | None:
    """The process id of the launching process when this process was started by it (and it still runs), else ``None``."""
    parent = os.environ.get(LAUNCHER_PID, "")
    return os.getppid() if parent.isdigit() and int(parent) == os.getppid() else None


def command_ended(code: int) -> None:
    """Record that the command has said how it ended, and its exit code (the watch below then keeps it)."""
    ENDED.append(code)


class _StopObserver(_ChildProcessObserver):
    def _terminate_all(self) -> None:
        codes = [p.returncode for p in self._child_processes if p.returncode]
        stops = {STOPPED[c] for c in codes if c in STOPPED}
        if ENDED:  # its line is said (Lightning's Ctrl-C handling kills the processes it started): its own exit code
            code, line = ENDED[0], None
        elif len(stops) != 1 or len(codes) != sum(c in STOPPED for c in codes):
            super()._terminate_all()  # a failure: Lightning's own end
            return
        else:
            code, line = stops.pop()
        for p in self._child_processes:
            p.send_signal(signal.SIGKILL)  # those still in a collective would wait for the others
        if line is not None:
            print(line, file=sys.stderr, flush=True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)  # from this thread: the main one may be blocked in the rendezvous, or in a destructor


class _Launcher(_SubprocessScriptLauncher):
    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        # Lightning's launch, with the observer above
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            os.environ[LAUNCHER_PID] = str(os.getpid())  # inherited by the processes started next
            self._call_children_scripts()
            _StopObserver(main_pid=os.getpid(), child_processes=self.procs, sleep_period=1).start()  # Lightning's: 5 s
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


def end_stopped_runs_by_their_signal(trainer: L.Trainer) -> None:
    """Give a ``ddp`` run the launcher above (no change to any other strategy)."""
    launcher = getattr(trainer.strategy, "_launcher", None)
    if type(launcher) is _SubprocessScriptLauncher:
        trainer.strategy._launcher = _Launcher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)
