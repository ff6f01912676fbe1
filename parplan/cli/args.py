"""Argument types and checks the CLI command families share."""

from __future__ import annotations

import argparse
from pathlib import Path

from parplan.errors import ParplanError

__all__ = ["positive_int", "positive_float", "chart_format", "format_columns", "model_args"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: must be >= 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid: must be > 0")
    return value


def chart_format(path: str | None, flag: str = "--gantt") -> str | None:
    """'png' or 'svg' from a chart file name (None without one)."""
    if path is None:
        return None
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("png", "svg"):
        raise ParplanError(f"{flag} {path!r}: the file must end in .png or .svg")
    return suffix


def format_columns(header: list[str], rows: list[list[str]]) -> list[str]:
    """A plain-text table: the header, a rule, one line per row, columns padded to fit."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def model_args(p: argparse.ArgumentParser) -> None:
    """The MODEL argument and the shape options `trace` and `profile` share."""
    p.add_argument("model", help="zoo name with options (gpt:hidden=4096,heads=32,layers=1), "
                                 "path/to/file.py:factory, or hf:llama")
    p.add_argument("--batch", type=int, default=1, help="micro-batch size (default 1)")
    p.add_argument("--seq", type=int, default=1024, help="sequence length (default 1024)")
    p.add_argument("--leaf", action="append", default=[], metavar="MODULE.CLASS",
                   help="keep this nn.Module class as one opaque operator (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
