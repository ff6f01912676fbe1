"""Argument types and helpers the CLI commands share.

Every flag is checked once, here, as argparse parses it: a bad value exits 2 with
`argument FLAG: VALUE is invalid: RULE; FIX` before any work starts. The same type serves
the same kind of flag in every command (counts, parallel degrees, memory sizes, time
limits, effort levels).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from parplan.errors import ParplanError

__all__ = ["positive_int", "non_negative_int", "integer", "degree", "schedule_name", "positive_float", "seconds", "memory_size",
           "memory_cap", "effort", "leaf_class", "leaf_arg", "chart_format", "format_columns", "model_args",
           "capture_warning_lines", "load_checked_plan"]


def _int(text: str, rule: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give {rule}") from None


def positive_int(text: str) -> int:
    """A count (ranks, micro-batches, steps, workers, batch, sequence length): >= 1."""
    value = _int(text, "a whole number >= 1, e.g. 4")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: a count must be >= 1; give a whole number such as 4")
    return value


def non_negative_int(text: str) -> int:
    """A depth or index: >= 0."""
    value = _int(text, "a whole number >= 0, e.g. 1")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid: it must be >= 0; give a whole number such as 1")
    return value


def integer(text: str) -> int:
    """Any integer (a random seed)."""
    return _int(text, "a whole number, e.g. 0")


def degree(text: str) -> int:
    """A parallel degree (--pp, --tp): >= 1."""
    value = _int(text, "a whole number >= 1, or leave the flag out to search")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: a parallel degree is an integer >= 1; "
                                         f"leave the flag out to search")
    return value


def schedule_name(text: str) -> str:
    """An expert schedule's name, as `parplan.baselines` registers it."""
    from parplan.baselines import BASELINES

    if text not in BASELINES:
        raise argparse.ArgumentTypeError(f"{text!r} is unknown; choose one of {', '.join(BASELINES)}")
    return text


def _positive(text: str, what: str, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what}, e.g. {example}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is invalid: {what} must be finite and > 0; give e.g. {example}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _positive(text, "a positive number", "1.5")


def seconds(text: str) -> float:
    """A wall-clock limit or timeout in seconds: finite, > 0."""
    return _positive(text, "a time limit in seconds", "60")


def memory_size(text: str) -> float:
    """Bytes per device from a size with a unit (70GiB, 80GB, 512MiB)."""
    from parplan.compare import parse_memory_limit

    try:
        parsed = parse_memory_limit(text)
    except ParplanError:
        parsed = None
    if parsed is None or parsed[0] != "bytes":
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: a memory limit here is bytes per device with a "
                                         f"unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB); give e.g. 70GiB")
    if not parsed[1] > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: a memory limit must be > 0; give e.g. 70GiB")
    return float(parsed[1])


def memory_cap(text: str) -> str:
    """A schedule's activation cap: units, a size such as 70GiB, or match:NAME (checked, kept as text)."""
    from parplan.compare import parse_memory_limit

    return _checked_by(parse_memory_limit, text, "--memory-limit")


def effort(text: str) -> str:
    """An --effort value: quick, normal, thorough, or a positive number of deterministic seconds (kept as text)."""
    from parplan.budget import effort_work

    return _checked_by(effort_work, text, "--effort")


def _checked_by(check, text: str, flag: str) -> str:
    """`text`, once the API's own `check` accepts it; its ParplanError becomes argparse's
    message (argparse names the flag itself, so the error's leading flag is dropped)."""
    try:
        check(text)
    except ParplanError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"{flag} ")) from None
    return text


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


def leaf_class(text: str) -> type:
    """A --leaf value: an importable nn.Module subclass, written package.module.ClassName."""
    import importlib

    from torch import nn

    module, _, name = text.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception as err:  # ImportError, AttributeError, an empty module name, or the module failing
        raise argparse.ArgumentTypeError(f"{text!r} is not an importable class ({type(err).__name__}); "
                                         f"write package.module.ClassName, e.g. parplan.zoo.gpt.MLP") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise argparse.ArgumentTypeError(f"{text!r} is not an nn.Module class; name the module class to keep whole")
    return cls


def leaf_arg(p: argparse.ArgumentParser) -> None:
    """--leaf, for every command that traces a model."""
    p.add_argument("--leaf", type=leaf_class, action="append", default=[], metavar="MODULE.CLASS",
                   help="keep every instance of this nn.Module class whole: one unit no stage boundary "
                        "cuts (repeatable; e.g. parplan.zoo.gpt.MLP)")


def model_args(p: argparse.ArgumentParser) -> None:
    """The MODEL argument and the shape options `trace` and `profile` share."""
    p.add_argument("model", help="zoo name with options (gpt:hidden=4096,heads=32,layers=1), "
                                 "path/to/file.py:factory, hf:llama or titan:llama3:debugmodel")
    p.add_argument("--batch", type=positive_int, default=1, help="micro-batch size (default 1)")
    p.add_argument("--seq", type=positive_int, default=1024, help="sequence length (default 1024)")
    leaf_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def capture_warning_lines(traced, debug: bool) -> list[str]:
    """What the CLI prints on stderr about the warnings capture emitted: one note, or with
    --debug the note and every distinct message."""
    count, distinct = traced.capture_warning_count, traced.capture_warnings
    if not count:
        return []
    kinds = f"{len(distinct)} distinct" if len(distinct) > 1 else "1 distinct"
    if debug:
        return [f"note: torch emitted {count} warning(s) during capture ({kinds}):", *(f"  {w}" for w in distinct)]
    return [f"note: torch emitted {count} warning(s) during capture ({kinds}; first: {distinct[0][:160]}); "
            f"run with --debug to see them all"]


def load_checked_plan(path: str):
    """The plan file at `path`, its schedule checked by the validator (every action once,
    dependencies met) and its timeline against the schedule's orders, so a hand-edited plan
    fails here rather than in a chart or a run."""
    from parplan.plan import Plan
    from parplan.schedule.validate import validate

    plan = Plan.load(path)
    try:
        validate(plan.schedule)
    except ParplanError as err:
        raise ParplanError(f"plan file {path!r}: {err}\nregenerate the plan with parplan, or restore the order") from None
    for rank, (row, order) in enumerate(zip(plan.timeline, plan.schedule.orders)):
        timed = tuple(step.action for step in row)
        if timed != tuple(order) or any(not 0 <= step.start <= step.end for step in row):
            raise ParplanError(f"plan file {path!r}: timeline row {rank} does not time rank {rank}'s order "
                               f"({len(timed)} timed actions, {len(order)} in the order, each with "
                               f"0 <= start <= end); regenerate the plan with parplan")
    return plan
