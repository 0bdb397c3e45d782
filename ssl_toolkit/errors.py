"""User-facing errors.

A :class:`UserError` is a problem with what the user asked for (a missing path, an
unknown name, a bad config key). The CLI prints its message on one line and exits
with code 2, without a traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class UserError(Exception):
    """An error caused by user input; shown as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(one_line(str(message)))


def one_line(message: str) -> str:
    """``message`` on one line: each line break, with the indentation around it, becomes one space.

    Other runs of spaces are kept and other control characters (a tab, ESC) are shown escaped,
    so a name or path quoted in the message reads as it was given.
    """
    text = re.sub(r"\s*[\r\n]\s*", " ", message).strip()
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class WorkerUserError(UserError):
    """A :class:`UserError` raised in a DataLoader worker.

    The worker's exception is re-raised in the main process with the worker's traceback as
    its message; only the original one-line message is kept.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        super().__init__(message.rsplit(marker, 1)[-1] if marker in message else message)


class Interrupted(Exception):
    """Training was stopped by a signal after saving a checkpoint; carries the exit code (130, 143)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM to a multi-process run, raised where it arrives, as Ctrl-C is (see :class:`ssl_toolkit.callbacks.CheckpointOnInterrupt`)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a `did you mean` hint for ``name`` among ``choices`` (or an empty string); case does not count."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(str(choice).lower(), str(choice))
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def out_of_memory(e: BaseException) -> str | None:
    """How much a failed allocation asked for (``"190.7 GiB"``, or ``"memory"`` when the error does not say), else ``None``.

    torch reports a failed CPU allocation as a ``RuntimeError`` ("DefaultCPUAllocator: can't
    allocate memory: you tried to allocate N bytes") and a failed GPU one as
    ``torch.OutOfMemoryError`` (a ``RuntimeError`` whose text holds "out of memory").
    """
    import re

    text = str(e)
    if not isinstance(e, MemoryError) and not (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
    ):
        return None
    asked = re.search(r"allocate (\d+) bytes", text) or re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
    if asked is None:
        return "memory"
    if asked.group(1).isdigit():
        from ssl_toolkit.units import human_size

        return human_size(int(asked.group(1)))
    return asked.group(1)


#: What a collective's error says when another process of the run has gone (gloo's TCP transport).
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_peer(e: BaseException) -> str | None:
    """What a collective's ``RuntimeError`` says of a process of the run that ended (killed, say), else ``None``."""
    if not isinstance(e, RuntimeError):
        return None
    return next((marker.lower() for marker in PEER_LOST if marker in str(e)), None)
