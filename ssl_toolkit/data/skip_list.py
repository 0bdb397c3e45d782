"""The ``skipped.txt`` format: one ``path<TAB>reason`` line per unreadable file.

A file name may hold a tab, a newline or a backslash, so the path is written with those
as ``\\t``, ``\\n``, ``\\r`` and ``\\\\`` (and read back the same way); other bytes, names
that are not UTF-8 included, are written as they are. The reason is free text, its control
characters written as escapes. Runs, streaming workers and ``ssl shard`` write this format.
"""

from __future__ import annotations

import os
import re

from ssl_toolkit.terminal import terminal_safe

_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def absolute(path: str | bytes) -> bytes:
    """``path`` as the list writes and compares it: absolute, as bytes.

    A run names its data folder as typed the first time and as an absolute path when it is
    resumed (its ``config.yaml`` records that), so the list names every file absolutely.
    """
    return os.path.abspath(os.fsencode(path))


def skip_line(path: str | bytes, reason: str) -> bytes:
    """One line of the list (newline included): the path (made absolute) escaped, a tab, the reason."""
    name = re.sub(rb"[\\\t\n\r]", lambda m: _ESCAPES[m.group()], absolute(path))
    return name + b"\t" + terminal_safe(reason).encode("utf-8", "surrogateescape") + b"\n"


def listed_names(data: bytes) -> list[bytes]:
    """The paths (as bytes, escapes undone, made absolute: :func:`absolute`) named by the lines ``data`` holds, in order."""
    return [absolute(path) for path, _ in listed_entries(data)]


def listed_entries(data: bytes) -> list[tuple[str, str]]:
    """The ``(path, reason)`` pairs the lines of ``data`` hold, in order (a line without a tab: no reason)."""
    entries = []
    for line in data.splitlines():
        if line:
            name, _, why = line.partition(b"\t")
            path = re.sub(rb"\\[\\tnr]", lambda m: _UNESCAPES[m.group()], name)
            entries.append((os.fsdecode(path), why.decode("utf-8", "surrogateescape")))
    return entries
