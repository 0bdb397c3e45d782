"""Text for the terminal: names taken from files (class folders, paths) may hold control characters.

A newline or an escape sequence in a folder name must not break a table or drive the
terminal, so such characters are shown escaped (``\\n``, ``\\x1b``) wherever names are printed.
"""

from __future__ import annotations


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character (newline, tab, ESC, ...) written as its escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
