"""`parplan` command line: a thin layer over the Python API.

One module per command (`schedule` also holds `compare` and `demo`, which share its
options), each exposing `add_parsers(sub)`; a parser sets `func(args) -> int`. User
errors (`ParplanError`) print one message and exit 2; nothing is written when a command
fails, because commands build their whole output in memory and write files last (see
`parplan.io.write_outputs`). Nothing outside this package imports it.
"""

from __future__ import annotations

import argparse
import sys

from parplan.errors import ParplanError

__all__ = ["main", "build_parser"]


def _command_modules():
    # Imported here, not at module level, so `parplan --help` stays fast.
    from parplan.cli import chain, export, plan, profile, run, schedule, show, trace

    return [schedule, plan, trace, profile, chain, export, show, run]  # the order `parplan --help` lists


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parplan",
        description="Operator-level parallelism planning: schedules, simulation, MIP plans.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules():
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ParplanError as err:
        print(f"parplan {args.command}: error: {err}", file=sys.stderr)
        return 2
