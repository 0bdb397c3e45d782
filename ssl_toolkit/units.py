"""Numbers for people: the one byte-size formatter."""

from __future__ import annotations


def human_size(n: float | None) -> str:
    """Bytes in binary units: ``1536`` -> ``1.5 KiB``, ``None`` -> ``-``.

    Whole bytes below 1 KiB; one decimal from KiB up to TiB.
    """
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
