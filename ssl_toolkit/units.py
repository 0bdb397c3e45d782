"""Numbers for people: byte sizes and label fractions."""

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


def fraction_text(value: float | None) -> str:
    """A label fraction as written in records: the shortest text that reads back as the same float.

    ``1.0`` -> ``1``, ``0.1`` -> ``0.1``, ``0.999999999999`` -> ``0.999999999999`` (never
    rounded, so two fractions that differ read differently); ``None`` -> ``-``.
    """
    if value is None:
        return "-"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
