"""A Ctrl-C that a library swallows still stops the command.

Numba (under UMAP) catches exceptions while it compiles, so a ``KeyboardInterrupt`` raised
there can vanish and the command run on to write its output and exit 0. Inside
:func:`remembered_sigint`, Ctrl-C raises as usual and is also remembered; the command calls
``check()`` before it writes, and raises again if one was swallowed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def remembered_sigint() -> Iterator[Callable[[], None]]:
    """Yield ``check()``: raises ``KeyboardInterrupt`` if Ctrl-C came since the block began."""
    received: list[int] = []

    def check() -> None:
        if received:
            raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if before is None or before == signal.SIG_IGN:  # not the main thread (signals reach it only), or Ctrl-C is ignored
        yield check
        return

    def remember(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, remember)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, before)
