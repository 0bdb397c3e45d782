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


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: a wide character (CJK, most emoji) two, a combining mark none."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (:func:`display_width`)."""
    return text + " " * max(0, width - display_width(text))


def quoted_if_odd(text: str) -> str:
    """``text`` as it is when it reads unambiguously, else its Python ``repr`` (quoted, escaped).

    A path holding a tab, a newline or leading or trailing spaces is shown as ``'/data/a\\tb'``,
    so it is told apart from one holding the two characters ``\\t`` (shown bare).
    """
    return text if text.isprintable() and text == text.strip() else repr(text)


def clock(seconds: float) -> str:
    """``H:MM:SS``, as the progress lines show the time left."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
