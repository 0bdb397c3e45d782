"""One writer per run folder: ``ssl pretrain`` holds an exclusive lock on its ``--out`` (or
``--resume``) folder while it writes there, so that a second process aimed at the same folder
is refused in one line instead of interleaving its files with the first's.

The lock is an ``flock`` on a file under ``$SSL_TOOLKIT_HOME/locks/`` named by the folder's
resolved path (the run folder itself gets nothing before the run is checked). Releasing it
removes the file, so locks do not pile up one per run folder; a process that opened the file
just before it was removed finds, once it holds the ``flock``, that the path names another
file (or none) and starts again, so two writers never hold one folder. A lock whose recorded
pid is gone (a killed run, whose forked DataLoader workers hold the file for a moment) is
taken over.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ssl_toolkit.errors import UserError
from ssl_toolkit.settings import toolkit_home


class FolderLock:
    """An exclusive, non-blocking lock on a folder path, held until :meth:`release`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        key = hashlib.sha256(os.fsencode(folder.resolve())).hexdigest()[:32]
        self.path = toolkit_home() / "locks" / f"{key}.lock"
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock, or raise a :class:`UserError` naming the process that holds it."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(8):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, self.path):
                    break
                os.close(fd)  # released and removed between the open and the flock: take the path's new file
                continue
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                if holder.isdigit() and not process_alive(int(holder)):
                    # the writer is gone; what holds the lock is a DataLoader worker it forked, orphaned for a moment
                    self.path.unlink(missing_ok=True)
                    continue
                raise UserError(
                    f"{self.folder} is being written by another ssl pretrain (pid {holder or '?'}); wait for it or choose another --out"
                ) from None
        else:
            raise UserError(f"{self.folder} is locked by processes that are gone; remove {self.path} and try again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the folder go: remove the lock's file while holding it, then close it (which releases the flock)."""
        if self._fd is not None:
            if _same_file(self._fd, self.path):
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
