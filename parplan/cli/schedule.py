"""`parplan schedule` and `parplan compare`: build, simulate and compare pipeline schedules."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from parplan.baselines import BASELINES, CHUNKED
from parplan.budget import effort_work
from parplan.compare import ComparisonRow, compare, rank_share_costs
from parplan.schedule.costs import parse_cost_spec
from parplan.errors import ParplanError
from parplan.cli.args import chart_format, effort, format_columns, integer, memory_cap, positive_int, seconds
from parplan.cli.progress import ProgressDisplay, name_written
from parplan.io import check_writable, write_outputs

__all__ = ["add_parsers"]

_SCHEDULE_NAMES = (*BASELINES, "mip")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks", "-n", type=positive_int, required=True, help="pipeline ranks N")
    p.add_argument("--microbatches", "-m", type=positive_int, required=True, help="micro-batches M per step")
    p.add_argument("--chunks", "-v", type=positive_int, default=None,
                   help="stage chunks per rank for interleaved-1f1b (default 2)")
    p.add_argument("--cost", default="F=1,I=1,W=1,C=0",
                   help="costs of one rank's share of the model per micro-batch: F, I, W (or B), "
                        "FB (overlapped F&B cell, default F+B), C (transfer between ranks); default %(default)s")
    mip = p.add_argument_group("MIP options (schedule 'mip')")
    mip.add_argument("--memory-limit", type=memory_cap, default=None,
                     help="activation cap per rank: units of one rank-share activation per micro-batch, "
                          "or match:NAME for a baseline's peak (e.g. match:dualpipe)")
    mip.add_argument("--effort", type=effort, default="normal",
                     help="search work: quick, normal (default) or thorough, or a number of CP-SAT deterministic "
                          "seconds; the same effort, seed and workers give the same schedule on any machine")
    mip.add_argument("--time-limit", type=seconds, default=None,
                     help="wall-clock safety stop in seconds (default none); if it fires, the report says so "
                          "and the schedule may then depend on the machine's speed")
    mip.add_argument("--placement", choices=("dualpipe", "v", "loop", "auto"), default="auto",
                     help="stage-to-rank map for the MIP (default auto: try each, keep the best; "
                          "its status is OPTIMAL only when no placement can do better)")
    mip.add_argument("--cells", choices=("fb", "any"), default="fb",
                     help="F&B cells the MIP may form when FB < F+B: fb pairs an F with a full backward, as "
                          "DualPipe does (default); any may also pair it with an I, its W then running apart")
    mip.add_argument("--minimise-memory", action="store_true",
                     help="keep a quarter of the work for finding the same makespan at a lower "
                          "per-rank activation peak (the search gets the rest)")
    mip.add_argument("--solver", choices=("cpsat", "highs"), default="cpsat")
    mip.add_argument("--seed", type=integer, default=0)
    mip.add_argument("--workers", type=positive_int, default=2)
    mip.add_argument("--dump-model", default=None, metavar="FILE",
                     help="write the solver's model before solving (CP-SAT: .pb/.pbtxt; HiGHS: .lp/.mps)")
    mip.add_argument("--quiet", "-q", action="store_true",
                     help="no solver progress on stderr (by default: a live incumbent, bound and gap on a "
                          "terminal, else one line when the MIP ends)")


def add_parsers(sub) -> None:
    p = sub.add_parser("schedule", help="print one schedule's per-rank order",
                       description="Build one schedule and print it as text, PyTorch CSV or JSON.")
    p.add_argument("name", help=f"one of: {', '.join(_SCHEDULE_NAMES)}")
    _add_common(p)
    p.add_argument("--format", choices=("text", "csv", "json"), default="text")
    p.add_argument("-o", "--output", default=None, help="write to FILE instead of stdout")
    p.set_defaults(func=run_schedule)

    p = sub.add_parser("compare", help="simulate schedules under one cost model and compare bubbles",
                       description="Simulate schedules on the same costs; print makespan, bubbles, memory.")
    _add_common(p)
    p.add_argument("--schedules", default=",".join(BASELINES),
                   help="comma-separated names (default: all eight baselines; add 'mip' for the solver)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.add_argument("--gantt", default=None, help="also draw the schedules stacked on one time axis (.png/.svg)")
    p.set_defaults(func=run_compare)

    p = sub.add_parser("demo", help="the bundled default: compare all eight baselines on 8 ranks x 20 micro-batches",
                       description="Compare the eight expert schedules on 8 ranks × 20 micro-batches at unit "
                                   "costs and draw them stacked on one time axis.")
    p.add_argument("--gantt", default="parplan-demo.png", help="chart file (default %(default)s)")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    parser = argparse.ArgumentParser(prog="parplan demo")
    sub = parser.add_subparsers(dest="command")
    add_parsers(sub)
    compare_args = parser.parse_args(["compare", "--ranks", "8", "--microbatches", "20", "--gantt", args.gantt])
    return run_compare(compare_args)


def _mip_options(args, dump_path: str | None):
    from parplan.mip import MipOptions

    return MipOptions(placement=args.placement, work=effort_work(args.effort), time_limit=args.time_limit,
                      seed=args.seed, workers=args.workers, solver=args.solver, dump_model=dump_path,
                      cells=args.cells, minimise_memory=args.minimise_memory)


def _rows(args, names: list[str], dump_path: str | None = None) -> list[ComparisonRow]:
    if args.chunks is not None and not set(CHUNKED) & set(names) and len(names) > 1:
        print(f"parplan {args.command}: note: --chunks applies only to interleaved-1f1b and combined-1f1b; ignored",
              file=sys.stderr)
    from parplan.planner.events import Phase, PlanProgress, Step

    solving = "mip" in names
    shown = solving and not args.quiet
    subject = f"placement {args.placement}"
    with ProgressDisplay(quiet=not shown) as display:
        if shown:
            display(PlanProgress(phase=Phase.LOWER_MIP, step=Step.BEGIN, subject=subject))
        rows = compare(
            names, num_ranks=args.ranks, num_microbatches=args.microbatches, cost_spec=parse_cost_spec(args.cost),
            num_chunks=args.chunks, memory_limit=args.memory_limit,
            mip_options=_mip_options(args, dump_path) if solving else None,
            progress=(lambda event: display(PlanProgress.from_solver(Phase.LOWER_MIP, subject, event))) if shown
            else None,
        )
        if shown:
            s = next(r.solver for r in rows if r.solver)
            display(PlanProgress(phase=Phase.LOWER_MIP, step=Step.END, subject=subject,
                                 message=f"{s['status']} on {s['placement']}, makespan {s['objective']:.4g}"))
    return rows


def _solved_rows(args, names: list[str]) -> tuple[list[ComparisonRow], dict[str, bytes]]:
    """The rows, and the --dump-model file as an output: the solver dumps its model into a
    temp folder, and the file is written with the command's other outputs."""
    if args.dump_model is None:
        return _rows(args, names), {}
    if "mip" not in names:
        print(f"parplan {args.command}: note: --dump-model applies only to schedule 'mip'; ignored", file=sys.stderr)
        return _rows(args, names), {}
    with tempfile.TemporaryDirectory(prefix="parplan-dump-") as folder:
        dump = Path(folder) / Path(args.dump_model).name
        rows = _rows(args, names, dump_path=str(dump))
        return rows, ({args.dump_model: dump.read_bytes()} if dump.exists() else {})


def run_schedule(args) -> int:
    check_writable(args.output, "-o")
    check_writable(args.dump_model, "--dump-model")
    if args.name not in _SCHEDULE_NAMES:
        raise ParplanError(f"unknown schedule {args.name!r}; choose one of {', '.join(_SCHEDULE_NAMES)}")
    (row,), outputs = _solved_rows(args, [args.name])
    schedule = row.schedule
    if args.format == "csv":
        text = schedule.to_csv()
    elif args.format == "json":
        data = schedule.to_dict()
        data["simulation"] = row.to_dict()
        text = json.dumps(data, indent=1) + "\n"
    else:
        text = schedule.to_text()
    if args.format != "json":  # JSON carries the report; CSV and text stay clean for loaders
        for line in solver_report(row):
            print(line, file=sys.stderr)
    if args.output:
        outputs[args.output] = text
    write_outputs(outputs)
    name_written(outputs)
    if not args.output:
        sys.stdout.write(text)
    return 0


def run_compare(args) -> int:
    names = [n.strip() for n in args.schedules.split(",") if n.strip()]
    if not names:
        raise ParplanError("--schedules is empty; name at least one schedule, e.g. --schedules 1f1b,dualpipe")
    fmt = chart_format(args.gantt)
    check_writable(args.gantt, "--gantt")
    check_writable(args.dump_model, "--dump-model")
    rows, outputs = _solved_rows(args, names)
    if args.gantt:
        from parplan.render.gantt import GanttPanel, render_gantt

        title = f"{args.ranks} ranks × {args.microbatches} micro-batches, cost {args.cost}"
        panels = [GanttPanel(simulation=r.simulation, costs=r.costs) for r in rows]
        outputs[args.gantt] = render_gantt(panels, fmt=fmt, title=title)
    if args.json:
        report = json.dumps([r.to_dict() for r in rows], indent=1) + "\n"
    else:
        report = format_table(rows)
    write_outputs(outputs)
    name_written(outputs)
    sys.stdout.write(report)
    return 0


def format_table(rows: list[ComparisonRow]) -> str:
    header = ["schedule", "makespan", "bubble ratio", "max bubble/rank", "mean bubble/rank",
              "peak act (max rank)", "param copies/rank"]
    with_fit = any(r.fits is not None for r in rows)
    if with_fit:
        header.append("fits cap")
    body = []
    for row in rows:
        d = row.to_dict()
        cells = [
            d["schedule"], f"{d['makespan']:.4g}", f"{d['bubble_ratio']:.2%}", f"{d['max_bubble']:.4g}",
            f"{d['mean_bubble']:.4g}", f"{max(d['peak_activations_per_rank']):.4g}",
            f"{max(d['params_per_rank']):.3g}",
        ]
        if with_fit:
            cells.append("-" if row.fits is None else ("yes" if row.fits else "NO"))
        body.append(cells)
    out = format_columns(header, body)
    for row in rows:
        out += solver_report(row)
    out.append("units: time and memory per the cost spec; activations and params in one rank-share "
               "(a 1F1B stage) per micro-batch")
    return "\n".join(out) + "\n"


def solver_report(row: ComparisonRow) -> list[str]:
    """The MIP's status line and notes (empty for a baseline)."""
    if not row.solver:
        return []
    s = row.solver
    gap = "n/a" if s.get("gap") is None else f"{s['gap']:.2%}"
    lines = [f"{row.schedule.name}: status {s.get('status')}, objective {s.get('objective'):.4g}, "
             f"bound {s.get('bound'):.4g}, gap {gap}, {s.get('solve_seconds'):.1f}s "
             f"({s.get('work', 0.0):.2f} deterministic s), "
             f"placement {s.get('placement')}, warm start {s.get('warm_start')}"]
    return lines + [f"  note: {n}" for n in s.get("notes", [])]


# Re-exported for the Python API of later passes.
__all__ += ["format_table", "rank_share_costs"]
