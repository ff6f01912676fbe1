"""`parplan` command line: a thin layer over the Python API.

Each command family lives next to the code it drives and exposes `add_parsers(sub)`;
a parser sets `func(args) -> int`. User errors (`ParplanError`) print one message and
exit 2; nothing is written when a command fails, because commands build their whole
output in memory and write files last (see `parplan.io.write_outputs`).
"""

from __future__ import annotations

import argparse
import sys

from parplan.errors import ParplanError

__all__ = ["main", "build_parser"]


def _command_modules():
    # Imported lazily so `parplan --help` stays fast and optional parts stay optional.
    from parplan import schedule_cli

    modules = [schedule_cli]
    try:
        from parplan.trace import cli as trace_cli
    except ImportError:  # the tracer is an independent pass; absent in minimal installs
        trace_cli = None
    if trace_cli is not None:
        modules.append(trace_cli)
    return modules


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


if __name__ == "__main__":
    sys.exit(main())
