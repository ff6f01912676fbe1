"""`parplan` command line: a thin layer over the Python API.

One module per command (`schedule` also holds `compare` and `demo`, which share its
options), each exposing `add_parsers(sub)`; a parser sets `func(args) -> int`.

The contract every command keeps, enforced in `main`:
  exit 0  success;
  exit 2  a user error: a bad flag (argparse, via the shared types in `parplan.cli.args`)
          or a `ParplanError` naming the value, the rule and the fix, printed as one
          message on stderr;
  exit 1  a bug: one line on stderr naming the exception; `--debug` (before or after the
          command name) shows the traceback instead.
Commands check every output path before any work and write all their files at the end
through `parplan.io.write_outputs`, so a failing command leaves no output behind. Nothing
outside this package imports it.
"""

from __future__ import annotations

import argparse
import sys

from parplan.errors import ParplanError

__all__ = ["main", "build_parser"]

_DEBUG_HELP = "on an internal error, show the Python traceback (for bug reports)"


def _command_modules():
    # Imported here, not at module level, so `parplan --help` stays fast.
    from parplan.cli import calibrate, chain, export, plan, profile, run, schedule, show, trace

    return [schedule, plan, trace, profile, chain, export, show, run, calibrate]  # the order `parplan --help` lists


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parplan",
        description="Operator-level parallelism planning: schedules, simulation, MIP plans.",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules():
        module.add_parsers(sub)
    for command in sub.choices.values():
        # SUPPRESS: a command's parser sets `debug` only when the flag follows the command name,
        # so `parplan --debug plan` keeps the value the main parser read.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 2 user error, 1 internal error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed usage and the message (2), or --help (0)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except ParplanError as err:
        print(f"parplan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"parplan {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"parplan {args.command}: internal error: {type(err).__name__}: {_one_line(err)} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."
