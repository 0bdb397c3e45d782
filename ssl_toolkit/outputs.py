"""Output paths checked before any work starts: a file under a regular file, a read-only or
virtual filesystem (procfs, sysfs) or a folder given where a file is expected is a one-line
:class:`~ssl_toolkit.errors.UserError`, and nothing is left behind by the check itself.

A disk that fills up later (``ENOSPC``) is caught by the CLI as one line too; every writer
goes through :mod:`ssl_toolkit.atomic`, so no half-written file stays.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ssl_toolkit.errors import UserError


def named_file(out: str | Path, suffixes: tuple[str, ...], option: str = "--out", ignore_case: bool = False) -> Path:
    """``out`` as a path, when it names a file: not empty, ending in one of ``suffixes``, with a name before it.

    Raises:
        UserError: One line naming ``option`` and what it lacks.
    """
    wanted = " or ".join(suffixes)
    if not str(out).strip():
        raise UserError(f"{option} is empty: give a file name ending in {wanted}")
    path = Path(out).expanduser()
    name = path.name.lower() if ignore_case else path.name
    if name in suffixes:  # '.html' is a hidden file without a suffix, not a page
        raise UserError(f"{option} {path} has no name before {path.name}: give one, e.g. {path.with_name('out' + path.name)}")
    if not name.endswith(suffixes) or path.suffix == "":
        raise UserError(f"{option} must end in {wanted}, not '{path.name}'")
    return path


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (symlinks followed)."""
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def check_writable_dir(folder: str | Path, what: str) -> Path:
    """Refuse ``folder`` unless it is (or can be created as) a folder this process can write into.

    Args:
        folder: The folder that will be written.
        what: How the user named it in errors, e.g. ``--out``.

    Returns:
        ``folder`` with ``~`` expanded.
    """
    folder = Path(folder).expanduser()
    _check_dir(folder, f"{what} {folder}")
    return folder


def refuse_empty(path: str | Path, what: str) -> None:
    """Refuse an empty path (``Path("")`` is the working folder)."""
    if not str(path).strip():
        raise UserError(f"{what} is empty: give a file name")


def check_writable_file(path: str | Path, what: str) -> Path:
    """Refuse a file path that is empty, whose folder cannot be written, or that names an existing folder."""
    refuse_empty(path, what)
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file path")
    _check_dir(path.parent, f"{what} {path}")
    return path


def _check_dir(folder: Path, label: str) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"{label}: {existing} is a file, not a folder" if existing.exists() else f"{label}: {existing} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ssl-write-check-", dir=existing)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:  # ENOENT for an existing folder: a file system that holds no new files (/proc, /sys)
        why = "no file can be created in it" if e.errno == errno.ENOENT else e.strerror or e
        raise UserError(f"{label} is not writable ({existing}: {why})") from None


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error met while reading or writing (e.g. a full disk)."""
    from ssl_toolkit.settings import HOME_ENV, toolkit_home

    where = f" ({e.filename})" if e.filename else ""
    home = toolkit_home()
    if e.filename and (Path(str(e.filename)).expanduser() == home or home in Path(str(e.filename)).expanduser().parents):
        where += f"; the toolkit's files live under {HOME_ENV}={home}"
    return f"{e.strerror or e}{where}"
