"""Drawing pieces shared by the schedule and plan charts: units, rank rows, labels, legend.

A rank's row holds its compute blocks, coloured by kind; the rank's first stage is drawn
solid, its second (third, ...) stage lighter and hatched (an F&B cell, which runs a forward
and a backward of the rank's two stages together, is drawn solid). When the schedule has
transfers, a thin lane under the row holds the sends that rank makes. When its tasks have
parts on the communication lane (an MoE layer's all-to-alls), another thin lane, between
the row and the sends, holds those parts at their times, and each F&B cell gets a strip
along its lower edge coloured by whose compute (the F's or the backward's) runs when.
Every block carries its micro-batch number: inside when it fits, in a smaller font, turned
upright in a narrow block, or, when even that does not fit, in a small font above the
block (alternating below, so neighbours do not collide).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

from parplan.errors import ParplanError
from parplan.sizes import binary_unit, format_bytes
from parplan.schedule.ir import Kind, Schedule

__all__ = ["KIND_COLOURS", "KIND_LABELS", "TRANSFER_COLOUR", "ALL_TO_ALL_COLOUR", "TimeAxis", "time_axis",
           "format_time", "format_memory", "memory_scale", "Rows", "draw_rank_rows", "label_blocks", "legend_handles",
           "legend_room", "figure_width", "tick_formatter", "stage_style", "micro_label", "encode", "check_format"]

KIND_COLOURS = {
    Kind.F: "#4C78A8",
    Kind.B: "#9D5FB8",
    Kind.I: "#F28E2B",
    Kind.W: "#59A14F",
    Kind.OVERLAP_F_B: "#E15759",
}
KIND_LABELS = {Kind.F: "F forward", Kind.B: "B full backward", Kind.I: "I backward-input",
               Kind.W: "W backward-weight", Kind.OVERLAP_F_B: "F&B overlapped cell"}
TRANSFER_COLOUR = "#7F7F7F"
ALL_TO_ALL_COLOUR = "#17A2B8"  # teal: apart from the kinds' colours and the sends' grey
_HATCHES = ("", "///", "\\\\\\", "xxx")  # a rank's 1st, 2nd, 3rd, 4th stage
_FONT, _SMALL = 6.0, 4.5  # points
_CHAR_W, _LINE_H = 0.62, 1.25  # a digit's width and a line's height, in font sizes
_UPRIGHT_PT = 6.0  # the block width an upright small label wants


@dataclass(frozen=True, slots=True)
class TimeAxis:
    """How a time in the data's unit is written: `value * factor` followed by `unit`."""

    unit: str  # "s", "ms", "µs" or "cost units"
    factor: float

    @property
    def label(self) -> str:
        return f"time ({self.unit})"


def time_axis(time_unit: str, horizon: float) -> TimeAxis:
    """Seconds shown in s, ms or µs, whichever keeps the horizon between 1 and 1000; unit costs as is."""
    if time_unit != "s":
        return TimeAxis("cost units", 1.0)
    if horizon >= 1.0:
        return TimeAxis("s", 1.0)
    if horizon >= 1e-3:
        return TimeAxis("ms", 1e3)
    return TimeAxis("µs", 1e6)


def format_time(value: float, time_unit: str) -> str:
    axis = time_axis(time_unit, abs(value))
    suffix = "" if axis.unit == "cost units" else f" {axis.unit}"
    return f"{value * axis.factor:.4g}{suffix}"


def memory_scale(memory_unit: str, peak: float) -> tuple[str, float]:
    """(unit, divisor) for amounts up to `peak`: binary prefixes for bytes, "units" otherwise."""
    return binary_unit(peak) if memory_unit == "bytes" else ("units", 1.0)


def format_memory(amount: float, memory_unit: str) -> str:
    """`75.6 GiB` for bytes, `8 units` for rank-share units."""
    return format_bytes(amount) if memory_unit == "bytes" else f"{amount:.3g} units"


def check_format(fmt: str) -> None:
    if fmt not in ("png", "svg"):
        raise ParplanError(f"Gantt format {fmt!r} is not supported; use a .png or .svg file name")


def encode(fig, fmt: str, dpi: int) -> bytes:
    """The figure as png or svg bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _lighten(hex_colour: str, amount: float) -> tuple[float, float, float]:
    rgb = [int(hex_colour[k:k + 2], 16) / 255 for k in (1, 3, 5)]
    return tuple(c + (1 - c) * amount for c in rgb)


def stage_style(kind: Kind, nth: int) -> tuple[tuple[float, float, float], str]:
    """(face colour, hatch) of a `kind` block of the rank's `nth` stage (0 = its first)."""
    return _lighten(KIND_COLOURS[kind], min(0.42 * nth, 0.7)), _HATCHES[min(nth, len(_HATCHES) - 1)]


def micro_label(action) -> str:
    return "/".join(str(a.microbatch) for a in action.atoms)


def _nth_stage(schedule: Schedule, rank: int, action) -> int:
    """Which of its rank's stages `action` runs: 0 for the rank's first. F&B cells count as the first."""
    if action.sub_actions:
        return 0
    return sorted(schedule.stages_of_rank(rank)).index(action.stage)


@dataclass(frozen=True, slots=True)
class Rows:
    """What `draw_rank_rows` drew: the blocks to label, their bar height, and whether a rank has two stages."""

    blocks: tuple[tuple[float, object, int], ...]  # (bar centre, timed action, nth stage of its rank)
    height: float
    stacked: bool


@dataclass(frozen=True, slots=True)
class _RowLayout:
    """Where a rank's compute bar and thin lanes sit, as offsets from the row's centre line."""

    centre: float
    height: float
    lanes: tuple[tuple[str, float, float], ...]  # (lane, centre, height): "all-to-all" and/or "sends"


def _row_layout(*, sends: bool, all_to_all: bool) -> _RowLayout:
    # The all-to-alls get a lane of their own, right under the compute they hide under (or
    # hold up): sends are link delays that overlap them, and in one lane would cover them.
    if sends and all_to_all:
        return _RowLayout(-0.15, 0.5, (("all-to-all", 0.2, 0.14), ("sends", 0.36, 0.12)))
    if sends or all_to_all:
        return _RowLayout(-0.1, 0.6, (("sends" if sends else "all-to-all", 0.32, 0.16),))
    return _RowLayout(0.0, 0.8, ())


def draw_rank_rows(ax, schedule: Schedule, timeline, transfers: Sequence[tuple[int, str, float, float]],
                   *, xlim: float, parts: Sequence = ()) -> Rows:
    """Compute blocks, a send lane per rank when `transfers` is non-empty, an all-to-all
    lane when `parts` has comm parts; labels come later.

    `timeline` is one row per rank of items with `.action`, `.start`, `.end`; `transfers`
    holds (sending rank, label, start, end); `parts` the tasks' `chrome_trace.TimedPart`s.
    Call `label_blocks` once the layout is final.
    """
    num_ranks = len(timeline)
    comm = [p for p in parts if p.lane == "comm"]
    layout = _row_layout(sends=bool(transfers), all_to_all=bool(comm))
    centre, height = layout.centre, layout.height
    ax.set_xlim(0, xlim)
    ax.set_ylim(num_ranks - 0.5, -0.5)
    blocks, stacked = [], False
    for r, row in enumerate(timeline):
        for t in row:
            nth = _nth_stage(schedule, r, t.action)
            stacked |= nth > 0
            face, hatch = stage_style(t.action.kind, nth)
            ax.barh(r + centre, t.end - t.start, left=t.start, height=height, color=face, hatch=hatch,
                    edgecolor="white", linewidth=0.4, gid="compute")
            blocks.append((r + centre, t, nth))
    lane_y = {name: (y, h) for name, y, h in layout.lanes}
    for r, _, start, end in transfers:
        y, h = lane_y["sends"]
        ax.barh(r + y, end - start, left=start, height=h, color=TRANSFER_COLOUR, alpha=0.7,
                linewidth=0, gid="transfer")
    if comm:
        _draw_parts(ax, parts, layout, lane_y["all-to-all"])
    ax.set_yticks([r + centre for r in range(num_ranks)], [f"rank {r}" for r in range(num_ranks)], fontsize=7)
    _lane_ticks(ax, num_ranks, layout)
    return Rows(tuple(blocks), height, stacked)


def _draw_parts(ax, parts: Sequence, layout: _RowLayout, lane: tuple[float, float]) -> None:
    """Each comm part in the all-to-all lane; in an F&B cell, a strip along the block's lower
    edge in the colour of whose compute runs (F's, B's or I's), so a gap in it is the
    compute lane waiting, and the part in the lane below is what runs meanwhile."""
    y, h = lane
    strip = 0.22 * layout.height
    strip_y = layout.centre + layout.height / 2 - strip / 2
    for p in parts:
        if p.lane == "comm":
            ax.barh(p.rank + y, p.end - p.start, left=p.start, height=h, color=ALL_TO_ALL_COLOUR,
                    edgecolor="white", linewidth=0.2, gid="all-to-all")
        elif p.task.action.sub_actions:
            ax.barh(p.rank + strip_y, p.end - p.start, left=p.start, height=strip, color=KIND_COLOURS[p.atom.kind],
                    linewidth=0, gid="cell-part")


def _lane_ticks(ax, num_ranks: int, layout: _RowLayout) -> None:
    if not layout.lanes:
        return
    ticks = sorted((r + y, name) for r in range(num_ranks) for name, y, _ in layout.lanes)
    ax.set_yticks([y for y, _ in ticks], [name for _, name in ticks], minor=True, fontsize=4.5)
    for label, (_, name) in zip(ax.get_yticklabels(minor=True), ticks):
        label.set_color(TRANSFER_COLOUR if name == "sends" else ALL_TO_ALL_COLOUR)
    ax.tick_params(axis="y", which="minor", length=0)


def label_blocks(ax, rows: Rows) -> None:
    """One micro-batch text per block, placed by the room the block has (see the module docstring)."""
    from matplotlib.patheffects import withStroke

    fig, pos = ax.figure, ax.get_position()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pt_per_x = pos.width * fig.get_figwidth() * 72 / (x1 - x0)  # in points, so the save dpi does not matter
    h_pt = rows.height * pos.height * fig.get_figheight() * 72 / abs(y1 - y0)
    width_of = lambda text, size: len(text) * size * _CHAR_W + 1.5  # noqa: E731
    flip: dict[float, bool] = {}
    for y, t, nth in rows.blocks:
        text = micro_label(t.action)
        w_pt, x = (t.end - t.start) * pt_per_x, (t.start + t.end) / 2
        face, _ = stage_style(t.action.kind, nth)
        # on a hatched block the digits get a rim of the block's colour, so the hatch stays off them
        inside = {"ha": "center", "va": "center", "color": "white" if nth == 0 else "black",
                  "path_effects": [withStroke(linewidth=1.2, foreground=face)] if nth else None}
        if w_pt >= width_of(text, _FONT) and h_pt >= _FONT * _LINE_H:
            ax.text(x, y, text, fontsize=_FONT, **inside)
        elif w_pt >= width_of(text, _SMALL) and h_pt >= _SMALL * _LINE_H:
            ax.text(x, y, text, fontsize=_SMALL, **inside)
        elif w_pt >= _SMALL and h_pt >= width_of(text, _SMALL):
            ax.text(x, y, text, fontsize=_SMALL, rotation=90, **inside)
        else:  # too narrow even upright: a small label outside, alternately above and below
            above = flip[y] = not flip.get(y, False)
            edge = y - rows.height / 2 if above else y + rows.height / 2
            ax.text(x, edge, text, ha="center", va="bottom" if above else "top", fontsize=_SMALL - 0.5,
                    color="black", clip_on=True)


def legend_handles(kinds, *, stacked: bool, transfers: bool, all_to_all: bool = False) -> list:
    from matplotlib.patches import Patch

    ordered = sorted(set(kinds), key=list(Kind).index)
    handles = [Patch(facecolor=KIND_COLOURS[k], label=KIND_LABELS[k]) for k in ordered]
    if stacked:
        face, hatch = stage_style(Kind.F, 1)
        handles.append(Patch(facecolor=face, hatch=hatch, edgecolor="white",
                             label="lighter, hatched: the rank's second stage"))
    if transfers:
        handles.append(Patch(facecolor=TRANSFER_COLOUR, alpha=0.7,
                             label="send (activation after F, gradient after I/B)"))
    if all_to_all:  # short: the line is full; a cell's strip is in the kinds' own colours
        handles.append(Patch(facecolor=ALL_TO_ALL_COLOUR, label="all-to-all"))
    return handles


def legend_room(fig) -> float:
    """The figure fraction a one-line legend along the bottom needs (0.45 in, whatever the height)."""
    return 0.45 / fig.get_figheight()


def figure_width(timelines) -> float:
    """Inches: wide enough that nine blocks in ten have room for an upright label (15 to 34 in)."""
    blocks = [t for rows in timelines for row in rows for t in row]
    durations = sorted(t.end - t.start for t in blocks if t.end > t.start)
    if not durations:
        return 15.0
    horizon = max(t.end for t in blocks)
    narrow = durations[len(durations) // 10]
    return min(max(15.0, _UPRIGHT_PT * horizon / narrow / 72 + 2.5), 34.0)


def tick_formatter(axis: TimeAxis):
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x * axis.factor:g}" if not math.isclose(x, 0) else "0")
