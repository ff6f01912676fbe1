"""`parplan show PLAN`: summarise a plan; draw its Gantt chart and Chrome trace (parplan.render).

The plan is read and checked before anything is drawn; files are written last.
"""

from __future__ import annotations

import json
import sys

from parplan.cli.args import chart_format, load_checked_plan
from parplan.cli.progress import name_written
from parplan.io import check_writable, write_outputs
from parplan.sizes import format_bytes

__all__ = ["add_parsers", "plan_summary"]


def add_parsers(sub) -> None:
    p = sub.add_parser("show", help="summarise a plan; draw its Gantt chart and Chrome trace",
                       description="Print a plan's stages and predicted metrics; optionally draw it.")
    p.add_argument("plan")
    p.add_argument("--gantt", default=None, metavar="FILE", help="chart (.png or .svg): ranks x time, transfers, memory")
    p.add_argument("--trace", default=None, metavar="FILE", help="Chrome-trace JSON (Perfetto)")
    p.set_defaults(func=run_show)


def plan_summary(plan) -> str:
    """The plan's stages, predicted metrics and solver reports, as `show` and `plan-chain` print them."""
    unit = plan.time_unit
    lines = [f"plan: {plan.schedule.name} on {plan.model.spec} (batch {plan.model.batch}, seq {plan.model.seq}, "
             f"{plan.model.num_parameters} parameters), {plan.num_ranks} ranks, {plan.num_microbatches} micro-batches"]
    for st in plan.stages:
        extra = f"  receives {', '.join(st.receives)}" if st.receives else ""
        extra += f"; passes on {', '.join(st.passes)}" if st.passes else ""
        lines.append(f"  stage {st.index} on rank {st.rank}: {', '.join(st.pieces)}{extra}")
    p = plan.predicted
    lines.append(f"predicted step time {p.step_time:.6g} {unit}, bubble ratio {p.bubble_ratio:.1%}, "
                 f"peak activation per rank {[round(x, 4) for x in p.peak_activation_per_rank]} {plan.memory_unit}")
    if plan.evaluated is not None:
        e = plan.evaluated
        chunks = f", {e.chunks} chunks per rank" if e.chunks is not None else ""
        lines.append(f"evaluated configuration (not searched): {e.schedule}{chunks} on placement {e.placement}, "
                     f"PP{e.pp}×DP{e.dp}×TP{e.tp}" + (f"×EP{e.ep}" if e.ep > 1 else "") +
                     f", -m {e.microbatches}: step time {e.step_time:.6g} {unit} with the gradient sync, peak memory "
                     f"per device {_memory(max(e.peak_memory_per_rank), plan)} of {_memory(e.memory_cap, plan)}")
    if plan.techniques is not None:
        cost = plan.solver.get("planning", {}).get("techniques", {})
        spent = (f": recomputation {cost['recompute_s']:.4g} s, exposed ZeRO collectives {cost['sharding_s']:.4g} s "
                 f"per step on the busiest rank, {cost['held_bytes'] / 2**30:.2f} GiB held"
                 if "recompute_s" in cost else "")
        lines.append(f"techniques: {plan.techniques.label()}{spent}")
    if plan.overlap_note():
        lines.append(plan.overlap_note())
    for level, report in plan.solver.items():
        lines.append(f"solver {level}: {json.dumps(report)}")
    return "\n".join(lines) + "\n"


def _memory(amount: float, plan) -> str:
    return format_bytes(amount) if plan.memory_unit == "bytes" else f"{amount:.6g} {plan.memory_unit}"


def run_show(args) -> int:
    from parplan.render.chrome_trace import plan_trace
    from parplan.render.plan_chart import render_plan_gantt

    fmt = chart_format(args.gantt)
    check_writable(args.gantt, "--gantt")
    check_writable(args.trace, "--trace")
    plan = load_checked_plan(args.plan)
    outputs: dict[str, str | bytes] = {}
    if args.gantt:
        outputs[args.gantt] = render_plan_gantt(plan, fmt=fmt)
    if args.trace:
        outputs[args.trace] = json.dumps(plan_trace(plan)) + "\n"
    write_outputs(outputs)
    name_written(outputs)
    sys.stdout.write(plan_summary(plan))
    return 0
