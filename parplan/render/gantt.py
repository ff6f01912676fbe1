"""Gantt charts of simulated schedules: ranks down, time across, one panel per schedule.

Several schedules share one time axis, so the shortest bar is the least wasteful. Boxes
are coloured by kind (F, I, W, B, overlapped F&B), carry their micro-batch number, and a
rank's second stage is drawn in a lighter shade; white is idle.
"""

from __future__ import annotations

import io

from parplan.errors import ParplanError
from parplan.schedule.ir import Kind
from parplan.schedule.simulate import SimResult

__all__ = ["render_gantt", "KIND_COLOURS"]

KIND_COLOURS = {
    Kind.F: "#4C78A8",
    Kind.B: "#9D5FB8",
    Kind.I: "#F28E2B",
    Kind.W: "#59A14F",
    Kind.OVERLAP_F_B: "#E15759",
}
_LABELS = {Kind.F: "F forward", Kind.B: "B full backward", Kind.I: "I backward-input",
           Kind.W: "W backward-weight", Kind.OVERLAP_F_B: "F&B overlapped cell"}


def _lighten(hex_colour: str, amount: float = 0.45) -> tuple[float, float, float]:
    rgb = [int(hex_colour[k:k + 2], 16) / 255 for k in (1, 3, 5)]
    return tuple(c + (1 - c) * amount for c in rgb)


def _label(action) -> str:
    if action.sub_actions:
        return "/".join(str(a.microbatch) for a in action.sub_actions)
    return str(action.microbatch)


def render_gantt(results: list[SimResult], *, fmt: str = "png", title: str | None = None) -> bytes:
    """One stacked figure for `results`; returns the encoded image (png or svg)."""
    if fmt not in ("png", "svg"):
        raise ParplanError(f"Gantt format {fmt!r} is not supported; use a .png or .svg file name")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    heights = [r.num_ranks + 1.6 for r in results]
    fig, axes = plt.subplots(
        len(results), 1, sharex=True, squeeze=False,
        figsize=(16, 0.28 * sum(heights) + 1.2), gridspec_kw={"height_ratios": heights},
    )
    horizon = max(r.makespan for r in results)
    for ax, result in zip(axes[:, 0], results):
        schedule = result.schedule
        for row in result.timeline:
            first_stage = min(schedule.stages_of_rank(row[0].rank)) if row else 0
            for t in row:
                width = t.end - t.start
                stage = t.action.atoms[0].stage
                colour = KIND_COLOURS[t.action.kind]
                face = colour if stage == first_stage or t.action.sub_actions else _lighten(colour)
                ax.barh(t.rank, width, left=t.start, height=0.82, color=face, edgecolor="white", linewidth=0.4)
                text = _label(t.action)
                if width >= 0.0075 * horizon * len(text):
                    ax.text(t.start + width / 2, t.rank, text, ha="center", va="center", fontsize=5.5,
                            color="black" if face != colour else "white")
        ax.set_ylim(result.num_ranks - 0.5, -0.5)
        ax.set_yticks(range(result.num_ranks), [f"rank {r}" for r in range(result.num_ranks)], fontsize=7)
        ax.axvline(result.makespan, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(
            f"{schedule.name}: makespan {result.makespan:.4g}, bubble ratio {result.bubble_ratio:.1%}, "
            f"max bubble/rank {result.max_bubble:.4g}, peak act {max(result.peak_activation_per_rank):.3g}",
            fontsize=9, loc="left",
        )
        ax.set_xlim(0, horizon * 1.01)
        ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    axes[-1, 0].set_xlabel("time (cost units)")
    kinds = sorted({t.action.kind for r in results for row in r.timeline for t in row}, key=list(Kind).index)
    fig.legend(
        handles=[Patch(color=KIND_COLOURS[k], label=_LABELS[k]) for k in kinds]
        + [Patch(color=_lighten(KIND_COLOURS[Kind.F]), label="lighter: rank's second stage")],
        loc="lower center", ncol=len(kinds) + 1, fontsize=8, frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97 if title else 1))
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=130)
    plt.close(fig)
    return buf.getvalue()
