"""`parplan` command line: a thin layer over the Python API.

Each command family lives next to the code it drives and exposes `add_parsers(sub)`;
a parser sets `func(args) -> int`. User errors (`ParplanError`) print one message and
exit 2; nothing is written when a command fails, because commands build their whole
output in memory and write files last (see `parplan.io.write_outputs`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from parplan.errors import ParplanError

__all__ = ["main", "build_parser"]


def _command_modules():
    # Imported here, not at module level, so `parplan --help` stays fast.
    from parplan import schedule_cli
    from parplan.planner import cli as planner_cli
    from parplan.trace import cli as trace_cli

    modules = [schedule_cli, planner_cli, trace_cli]
    if importlib.util.find_spec("parplan.runtime.cli") is not None:  # export/run/show
        from parplan.runtime import cli as runtime_cli

        modules.append(runtime_cli)
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
