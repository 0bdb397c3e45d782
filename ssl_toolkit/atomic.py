"""Atomic file writes: temp file in the same folder, fsync, rename.

A crash or a full disk mid-write leaves the previous file intact, never a half-written one.
A temp file is named ``.NAME.HOST-PID-RANDOM.tmp`` (``HOST``: a hash of the host name, ``RANDOM``: mkstemp's 8 characters); one
that a killed process left (its process gone from this host) is removed by the next write
to the same file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_prefix(name: str) -> str:
    """``.NAME.`` for a temp file beside ``name``, ``NAME`` cut to 96 bytes so that any name the filesystem takes fits."""
    return f".{os.fsencode(name)[:96].decode('utf-8', 'ignore')}."


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def owned_temp(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """An open temp file ``.NAME.HOST-PID-RANDOM{suffix}`` beside ``path`` (``mkstemp``'s fd and path).

    Temp files of the same name and suffix whose process is gone are removed first (a SIGKILL
    or an out-of-memory kill mid-write leaves them); those of another host are left alone.
    """
    from ssl_toolkit.folder_lock import process_alive

    prefix, host = temp_prefix(path.name), _host_tag()
    mine = re.compile(rf"{host}-(\d+)-[a-z0-9_]{{8}}{re.escape(suffix)}")  # mkstemp's 8 random characters
    for old in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        found = mine.fullmatch(old.name[len(prefix) :])
        if found and not old.is_symlink() and old.is_file() and not process_alive(int(found.group(1))):
            old.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{host}-{os.getpid()}-", suffix=suffix, dir=path.parent)
    return fd, Path(tmp)


@contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, Path]]:
    """An open temp file beside ``path``, renamed onto it when the block succeeds, removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = owned_temp(path)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the permissions open() would give, not mkstemp's 0600
        yield fd, Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a write's error (a full disk) names no file: name the output
            e.filename = str(path)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp file beside ``path`` for any writer (``torch.save``, a NumPy memmap, ``open``).

    When the ``with`` block ends without error the file is fsynced and renamed onto
    ``path``; on any error (or interrupt) it is removed and ``path`` is left as it was.
    """
    with _replacing(Path(path)) as (fd, tmp):
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with _replacing(Path(path)) as (fd, _), os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_pair(first: str | Path, first_data: bytes, second: str | Path, second_data: bytes) -> None:
    """Write two files that belong together (weights and their metadata) with the smallest window between them.

    Both are written and fsynced to temp files beside their targets before either is
    renamed, so the two renames follow each other at once: an interrupt or a full disk while
    writing leaves both earlier files, and only a kill between the two renames (microseconds
    apart) can leave the first new beside the second old.
    """
    with _replacing(Path(first)) as (fd1, _), os.fdopen(fd1, "wb") as f1:
        _write_synced(f1, first_data)  # a full disk here names the first file
        with _replacing(Path(second)) as (fd2, _), os.fdopen(fd2, "wb") as f2:
            _write_synced(f2, second_data)
            # leaving the inner block renames the second file, then the outer one the first


def _write_synced(f: Any, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
