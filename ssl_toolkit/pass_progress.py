"""Progress of one pass of a backbone over many images (features for a probe, ``ssl embed``, a report).

On a terminal, a bar that clears itself when the pass ends; elsewhere (CI, ``nohup``, a
pipe), one line every :data:`EVERY_SECONDS` once a pass has run that long, so that a pass
of minutes is not silent and a short one prints nothing. Always on stderr: stdout keeps the
command's result (``--json``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ssl_toolkit.terminal import clock

EVERY_SECONDS = 30.0
_silenced = [False]


@contextmanager
def silenced(quiet: bool = True) -> Iterator[None]:
    """No pass shows progress inside the block when ``quiet`` (``ssl pretrain -q``)."""
    before = _silenced[0]
    _silenced[0] = before or quiet
    try:
        yield
    finally:
        _silenced[0] = before


class PassProgress:
    """Counts the images of a pass; ``update(n)`` after each batch, ``close()`` at its end.

    Args:
        total: Images in the pass.
        what: What is computed, e.g. ``"features (train)"``.
        stream: Where to write (default: stderr).
        every: Seconds between lines off a terminal (default :data:`EVERY_SECONDS`).
    """

    def __init__(self, total: int, what: str, stream: TextIO | None = None, every: float | None = None) -> None:
        self.total, self.what = total, what
        self.every = EVERY_SECONDS if every is None else every
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._t0 = self._last = time.monotonic()
        self._bar: Any = None
        if not _silenced[0] and _is_tty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=" images", leave=False, file=self.stream, dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int) -> None:
        self.done += n
        if _silenced[0]:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last < self.every or self.done >= self.total:
            return
        self._last = now
        rate = self.done / max(now - self._t0, 1e-9)
        left = (self.total - self.done) / max(rate, 1e-9)
        print(f"{self.what}: {self.done:,}/{self.total:,} images  {rate:.0f} images/s  ETA {clock(left)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_tty(stream: TextIO) -> bool:
    """A terminal a bar can be drawn on (a pseudo-terminal of no width, as some job runners open, takes lines)."""
    import os

    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # a closed or replaced stream
        return False
