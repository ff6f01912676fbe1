"""The Gantt chart of a plan: ranks × time with a transfer lane, and memory over time per rank.

Top panel: each rank's compute row (kinds coloured as in `parplan.render.gantt`, micro-batch
numbers on the boxes) with a thin lane under it for the transfers that rank sends.
Bottom panel: each rank's activation memory over the step (held from an F's start to its
W's end, or its B's end). With `measured`, a third panel draws the measured step on its
own time axis, with the time spent blocked on receives in grey.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from parplan.render.chrome_trace import plan_transfers
from parplan.errors import ParplanError
from parplan.render.gantt import KIND_COLOURS
from parplan.schedule.ir import Kind

if TYPE_CHECKING:
    from parplan.plan import Plan

__all__ = ["render_plan_gantt", "memory_over_time"]

_TRANSFER_COLOUR = "#7F7F7F"
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


def _label(action) -> str:
    return "/".join(str(a.microbatch) for a in action.atoms)


def render_plan_gantt(plan: "Plan", *, fmt: str = "png", measured=None) -> bytes:
    """The chart as png or svg bytes; `measured` is a `parplan.runtime.launch.Measured`."""
    if fmt not in ("png", "svg"):
        raise ParplanError(f"Gantt format {fmt!r} is not supported; use a .png or .svg file name")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = plan.num_ranks
    panels = 3 if measured is not None else 2
    ratios = [n * 1.3, max(2.0, n * 0.7)] + ([n * 1.3] if measured is not None else [])
    fig, axes = plt.subplots(panels, 1, figsize=(15, 0.5 * sum(ratios) + 2), gridspec_kw={"height_ratios": ratios})
    unit = "s" if plan.time_unit == "s" else "cost units"
    horizon = plan.predicted.step_time or 1.0

    ax = axes[0]
    for r, row in enumerate(plan.timeline):
        for t in row:
            colour = KIND_COLOURS[t.action.kind]
            ax.barh(r, t.end - t.start, left=t.start, height=0.6, color=colour, edgecolor="white", linewidth=0.4)
            text = _label(t.action)
            if t.end - t.start >= 0.008 * horizon * len(text):
                ax.text((t.start + t.end) / 2, r, text, ha="center", va="center", fontsize=5.5, color="white")
    for r, _, start, end in plan_transfers(plan):
        ax.barh(r + 0.42, max(end - start, horizon * 0.002), left=start, height=0.16, color=_TRANSFER_COLOUR)
    ax.set_yticks(range(n), [f"rank {r}" for r in range(n)], fontsize=7)
    ax.set_ylim(n - 0.3, -0.6)
    ax.set_xlim(0, horizon * 1.01)
    ax.axvline(horizon, color="black", linewidth=0.8, linestyle="--")
    ax.set_title(
        f"{plan.schedule.name} on {plan.model.spec}: predicted step {plan.predicted.step_time:.4g} {unit}, "
        f"bubble ratio {plan.predicted.bubble_ratio:.1%} (grey lane: transfers sent)", fontsize=9, loc="left")

    ax = axes[1]
    for r, curve in enumerate(memory_over_time(plan)):
        times, levels = zip(*curve)
        ax.step(list(times) + [horizon], list(levels) + [levels[-1]], where="post", label=f"rank {r}", linewidth=1)
    ax.set_xlim(0, horizon * 1.01)
    ax.set_ylabel(f"activation ({plan.memory_unit})", fontsize=7)
    ax.set_xlabel(f"time ({unit})", fontsize=8)
    ax.legend(fontsize=6, ncol=min(n, 8), loc="upper right")
    ax.grid(linewidth=0.3, alpha=0.5)

    if measured is not None:
        ax = axes[2]
        for r, row in enumerate(measured.timeline):
            for m in row:
                if m.lane == "compute":
                    colour = KIND_COLOURS[_KIND_BY_LETTER[m.label.rstrip("0123456789")[-1]]]
                    ax.barh(r, m.end - m.start, left=m.start, height=0.6, color=colour, edgecolor="white", linewidth=0.3)
                else:
                    ax.barh(r + 0.42, m.end - m.start, left=m.start, height=0.16, color=_TRANSFER_COLOUR)
        ax.set_yticks(range(n), [f"rank {r}" for r in range(n)], fontsize=7)
        ax.set_ylim(n - 0.3, -0.6)
        ax.set_xlabel("time (s)", fontsize=8)
        ax.set_title(f"measured step on {measured.device}: {measured.step_time:.4g} s "
                     f"(grey lane: blocked on receives/sends)", fontsize=9, loc="left")

    kinds = sorted({t.action.kind for row in plan.timeline for t in row}, key=list(Kind).index)
    fig.legend(handles=[Patch(color=KIND_COLOURS[k], label=k.value) for k in kinds]
               + [Patch(color=_TRANSFER_COLOUR, label="transfer / wait")],
               loc="lower center", ncol=len(kinds) + 1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    plt.close(fig)
    return buf.getvalue()
