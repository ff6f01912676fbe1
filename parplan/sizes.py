"""Byte sizes as a person reads them: one home for the binary prefixes every message,
table and chart uses."""

from __future__ import annotations

__all__ = ["BINARY_UNITS", "binary_unit", "format_bytes"]

BINARY_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "B"))


def binary_unit(amount: float) -> tuple[str, float]:
    """(unit, size of one unit) for amounts up to `amount`: the largest prefix below it."""
    return next(((name, size) for size, name in BINARY_UNITS if abs(amount) >= size), ("B", 1.0))


def format_bytes(amount: float) -> str:
    """`75.6 GiB`, `1.50 KiB`, `1000 MiB`, `12 B`: three significant figures (more for 1000–1023,
    never an exponent) in the largest unit below the amount."""
    unit, size = binary_unit(amount)
    value = amount / size
    if unit == "B":
        return f"{value:.0f} B"
    return f"{value:.0f} {unit}" if abs(value) >= 100 else f"{value:.{1 if abs(value) >= 10 else 2}f} {unit}"
