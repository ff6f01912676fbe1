"""The Gantt chart of a plan: ranks × time with a transfer lane, and memory over time per rank.

The title names the model, cluster, degrees, schedule and predicted step time. Top panel:
each rank's compute row (kinds coloured, micro-batch numbers on every block, the rank's
second stage lighter and hatched, as in `parplan.render.gantt`) with a thin lane under it
for the transfers that rank sends, when any costs time, and one for its all-to-alls when its
stages have them (drawn as in `parplan.render.gantt`). Bottom panel: each rank's
activation memory over the step (held from an F's start to its W's end, or its B's end),
in GiB/MiB/KiB for a plan in bytes. Times are in s, ms or µs for a plan in seconds. With
`measured`, a third panel draws the measured step on its own time axis, with the time
spent blocked on receives in grey.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from parplan.render._draw import (KIND_COLOURS, TRANSFER_COLOUR, check_format, draw_rank_rows, encode, figure_width,
                                  format_memory, format_time, label_blocks, legend_handles, legend_room,
                                  memory_scale, tick_formatter, time_axis)
from parplan.render.chrome_trace import plan_parts, plan_transfers
from parplan.schedule.ir import Kind

if TYPE_CHECKING:
    from parplan.plan import Plan

__all__ = ["render_plan_gantt", "plan_figure", "plan_title", "memory_over_time"]

_KIND_BY_LETTER = {"F": Kind.F, "I": Kind.I, "W": Kind.W, "B": Kind.B}


def memory_over_time(plan: "Plan") -> list[list[tuple[float, float]]]:
    """Per rank, the activation held as (time, amount) steps through the predicted step."""
    schedule, costs = plan.schedule, plan.costs
    split = {(a.stage, a.microbatch) for row in plan.timeline for t in row for a in t.action.atoms if a.kind is Kind.I}
    curves = []
    for row in plan.timeline:
        deltas = []
        for t in row:
            for a in t.action.atoms:
                size = costs.activation[schedule.model_stage[a.stage]]
                if a.kind is Kind.F:
                    deltas.append((t.start, size))
                elif a.kind is Kind.W or (a.kind is Kind.B and (a.stage, a.microbatch) not in split):
                    deltas.append((t.end, -size))
        deltas.sort(key=lambda d: (d[0], d[1]))  # frees before allocations at the same instant
        level, curve = 0.0, [(0.0, 0.0)]
        for time, delta in deltas:
            level += delta
            curve.append((time, level))
        curves.append(curve)
    return curves


def plan_title(plan: "Plan") -> str:
    """Model, cluster, degrees (when the plan's solver report names them), schedule and step time."""
    degrees = plan.solver.get("lower", {}).get("degrees") or f"{plan.num_ranks} ranks"
    p = plan.predicted
    return (f"{plan.model.spec} on {plan.cluster.name}, {degrees}: {plan.schedule.name}, "
            f"predicted step {format_time(p.step_time, plan.time_unit)}, bubble ratio {p.bubble_ratio:.1%}, "
            f"{plan.num_microbatches} micro-batches")


def _memory_panel(ax, plan: "Plan", horizon: float) -> None:
    curves = memory_over_time(plan)
    unit, size = memory_scale(plan.memory_unit, max(level for curve in curves for _, level in curve))
    for r, curve in enumerate(curves):
        times, levels = zip(*curve)
        ax.step(list(times) + [horizon], [v / size for v in levels + (levels[-1],)], where="post",
                label=f"rank {r}", linewidth=1)
    ax.set_ylabel(f"activation ({unit})", fontsize=7)
    ax.legend(fontsize=6, ncol=min(plan.num_ranks, 8), loc="upper right")
    ax.grid(linewidth=0.3, alpha=0.5)
    peaks = ", ".join(format_memory(v, plan.memory_unit) for v in plan.predicted.peak_activation_per_rank)
    ax.set_title(f"activation memory held per rank (peak per rank: {peaks})", fontsize=8, loc="left")


def _measured_panel(ax, plan: "Plan", measured) -> None:
    n = plan.num_ranks
    for r, row in enumerate(measured.timeline):
        for m in row:
            if m.lane == "compute":
                colour = KIND_COLOURS[_KIND_BY_LETTER[m.label.rstrip("0123456789")[-1]]]
                ax.barh(r - 0.1, m.end - m.start, left=m.start, height=0.6, color=colour, edgecolor="white",
                        linewidth=0.3)
            else:
                ax.barh(r + 0.32, m.end - m.start, left=m.start, height=0.16, color=TRANSFER_COLOUR)
    ax.set_yticks([r - 0.1 for r in range(n)], [f"rank {r}" for r in range(n)], fontsize=7)
    ax.set_ylim(n - 0.5, -0.5)
    axis = time_axis("s", measured.step_time)
    ax.xaxis.set_major_formatter(tick_formatter(axis))
    ax.set_xlabel(axis.label, fontsize=8)
    ax.set_title(f"measured step on {measured.device}: {format_time(measured.step_time, 's')} "
                 f"(grey lane: blocked on receives/sends)", fontsize=9, loc="left")


def plan_figure(plan: "Plan", *, measured=None):
    """The matplotlib Figure of `plan` (the caller closes it); `measured` is a `Measured`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = plan.num_ranks
    parts = plan_parts(plan)
    ratios = [n * (1.55 if parts else 1.3), max(2.0, n * 0.7)] + ([n * 1.3] if measured is not None else [])
    fig, axes = plt.subplots(len(ratios), 1, figsize=(figure_width([plan.timeline]), 0.45 * sum(ratios) + 2.2),
                             gridspec_kw={"height_ratios": ratios})
    horizon = plan.predicted.step_time or 1.0
    axis = time_axis(plan.time_unit, horizon)
    transfers = plan_transfers(plan)
    rows = draw_rank_rows(axes[0], plan.schedule, plan.timeline, transfers, xlim=horizon * 1.01, parts=parts)
    axes[0].axvline(horizon, color="black", linewidth=0.8, linestyle="--")
    lanes = " and ".join(name for name, drawn in (("all-to-alls", parts), ("sends", transfers)) if drawn)
    lanes = f", {lanes} in the lane{'s' if parts and transfers else ''} under each row" if lanes else ""
    axes[0].set_title(f"predicted step: compute per rank{lanes}", fontsize=8, loc="left")
    _memory_panel(axes[1], plan, horizon)
    for ax in axes[:2]:
        ax.set_xlim(0, horizon * 1.01)
        ax.xaxis.set_major_formatter(tick_formatter(axis))
        ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    axes[1].set_xlabel(axis.label, fontsize=8)
    if measured is not None:
        _measured_panel(axes[2], plan, measured)
    kinds = [t.action.kind for row in plan.timeline for t in row]
    handles = legend_handles(kinds, stacked=rows.stacked, transfers=bool(transfers), all_to_all=bool(parts))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(plan_title(plan), fontsize=10)
    fig.tight_layout(rect=(0, legend_room(fig), 1, 0.97))
    label_blocks(axes[0], rows)
    return fig


def render_plan_gantt(plan: "Plan", *, fmt: str = "png", measured=None) -> bytes:
    """`plan_figure` as png or svg bytes; `measured` is a `parplan.runtime.launch.Measured`."""
    check_format(fmt)
    return encode(plan_figure(plan, measured=measured), fmt, dpi=130)
