"""Byte sizes as a person reads them: one home for the binary prefixes every message,
table and chart uses."""

from __future__ import annotations

import math

__all__ = ["BINARY_UNITS", "binary_unit", "format_bytes", "memory_flag"]

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


def memory_flag(amount: float) -> str:
    """A --memory-limit value no smaller than `amount` (`1.51GiB`): three significant figures
    as `format_bytes` writes them, rounded up, so the advice it gives is always enough."""
    unit, size = binary_unit(amount)
    value = amount / size
    digits = 0 if unit == "B" or abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{math.ceil(value * 10**digits) / 10**digits:.{digits}f}{unit}"
