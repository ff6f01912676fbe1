"""Gantt charts of simulated schedules: ranks down, time across, one panel per schedule.

Several schedules share one time axis, so the shortest bar is the least wasteful. Blocks
are coloured by kind (F, I, W, B, overlapped F&B) and carry their micro-batch number; a
rank's second stage is lighter and hatched; white is idle. A panel given the costs it was
simulated with draws each rank's sends in a thin lane under its row (when any transfer
costs more than zero) and, when its stages have all-to-alls (`PipelineCosts.phases`),
every all-to-all part at its time in a lane of its own just under the compute row, with a
strip in each F&B cell showing whose compute runs meanwhile. Times are written in s/ms/µs
when the costs are seconds, in cost units otherwise; activation memory in GiB (or MiB,
KiB) when it is bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from parplan.render._draw import (KIND_COLOURS, check_format, draw_rank_rows, encode, figure_width, format_memory,
                                  format_time, label_blocks, legend_handles, legend_room, tick_formatter, time_axis)
from parplan.render.chrome_trace import timed_parts, transfer_intervals
from parplan.schedule.costs import PipelineCosts
from parplan.schedule.simulate import SimResult

if TYPE_CHECKING:
    from parplan.plan import MemoryUnit, TimeUnit

__all__ = ["GanttPanel", "gantt_figure", "render_gantt", "KIND_COLOURS"]


@dataclass(frozen=True, kw_only=True, slots=True)
class GanttPanel:
    """One schedule's panel: its simulation and, optionally, what the title should add."""

    simulation: SimResult
    costs: PipelineCosts | None = None  # per model stage, as simulated; draws the send and all-to-all lanes
    label: str = ""  # leads the panel title, e.g. "parplan (PP4×DP2×TP1)"
    step_time: float | None = None  # when a step is more than the pipeline (e.g. + DP gradient sync)


def _panel_title(panel: GanttPanel, time_unit: str, memory_unit: str) -> str:
    sim = panel.simulation
    t = lambda v: format_time(v, time_unit)  # noqa: E731
    lead = f"{panel.label}: {sim.schedule.name}" if panel.label else sim.schedule.name
    step = f"step {t(panel.step_time)} (pipeline {t(sim.makespan)}), " if panel.step_time is not None else \
        f"makespan {t(sim.makespan)}, "
    return (f"{lead}: {step}bubble ratio {sim.bubble_ratio:.1%}, max bubble/rank {t(sim.max_bubble)}, "
            f"peak act {format_memory(max(sim.peak_activation_per_rank), memory_unit)}")


def gantt_figure(panels: Sequence[SimResult | GanttPanel], *, time_unit: "TimeUnit" = "unit",
                 memory_unit: "MemoryUnit" = "unit", title: str | None = None):
    """The matplotlib Figure of `panels` stacked on one time axis (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p if isinstance(p, GanttPanel) else GanttPanel(simulation=p) for p in panels]
    lanes = [transfer_intervals(p.simulation.schedule, p.costs, p.simulation.timeline) if p.costs else []
             for p in panels]
    parts = [timed_parts(p.simulation.schedule, p.costs, p.simulation.timeline) if p.costs else [] for p in panels]
    heights = [p.simulation.num_ranks * (1.0 + 0.25 * bool(lane) + 0.25 * bool(part)) + 1.4
               for p, lane, part in zip(panels, lanes, parts)]
    fig, axes = plt.subplots(
        len(panels), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights},
        figsize=(figure_width([p.simulation.timeline for p in panels]), 0.3 * sum(heights) + 1.4),
    )
    horizon = max(p.simulation.makespan for p in panels)
    axis = time_axis(time_unit, horizon)
    drawn = []
    for ax, panel, lane, part in zip(axes[:, 0], panels, lanes, parts):
        sim = panel.simulation
        drawn.append(draw_rank_rows(ax, sim.schedule, sim.timeline, lane, xlim=horizon * 1.01, parts=part))
        ax.axvline(sim.makespan, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(_panel_title(panel, time_unit, memory_unit), fontsize=9, loc="left")
        ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    axes[-1, 0].xaxis.set_major_formatter(tick_formatter(axis))
    axes[-1, 0].set_xlabel(axis.label)
    kinds = [t.action.kind for p in panels for row in p.simulation.timeline for t in row]
    handles = legend_handles(kinds, stacked=any(r.stacked for r in drawn), transfers=any(lanes),
                             all_to_all=any(parts))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, legend_room(fig), 1, 0.97 if title else 1))
    for ax, rows in zip(axes[:, 0], drawn):
        label_blocks(ax, rows)
    return fig


def render_gantt(panels: Sequence[SimResult | GanttPanel], *, fmt: str = "png", time_unit: "TimeUnit" = "unit",
                 memory_unit: "MemoryUnit" = "unit", title: str | None = None) -> bytes:
    """`gantt_figure` encoded as png or svg bytes."""
    check_format(fmt)
    return encode(gantt_figure(panels, time_unit=time_unit, memory_unit=memory_unit, title=title), fmt, dpi=130)
