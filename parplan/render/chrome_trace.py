"""Chrome-trace JSON (Perfetto, chrome://tracing) of a plan's predicted step or a measured one.

One process per rank ("rank r"), two threads in each: 0 "compute" (F, I, W, B and F&B
cells) and 1 "communication" (predicted: each cross-rank transfer of non-zero cost, on the
sender, from the producer's end for the planned transfer time; measured: the time a rank
blocked waiting for a received tensor, or for its sends at the end). Timestamps are
microseconds; a plan in abstract units is drawn with one unit = one second.

A predicted plan whose stages have parts on the communication lane (`PipelineCosts.phases`:
an MoE layer's dispatch and combine all-to-alls) gets a third thread, 2 "all-to-all", with
one slice per such part ("dispatch 3F5", cat "all-to-all"), and every task of more than one
part gets its compute parts as child slices on the compute thread ("experts 3F5" under
"(3F5;4B1)OVERLAP_F_B"), so an F&B cell shows whose compute runs while the other's
all-to-all is in flight. The all-to-alls have a thread of their own because the sends are
link delays that overlap them in time: on one thread Perfetto would draw an all-to-all as a
child of the send it overlaps, or cut it where the two only partly overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Iterable

from parplan.schedule.costs import PipelineCosts
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.phases import COMM
from parplan.schedule.simulate import costs_for_schedule, task_parts

if TYPE_CHECKING:
    from parplan.plan import Plan
    from parplan.runtime.launch import MeasuredAction

__all__ = ["plan_trace", "measured_trace", "plan_transfers", "transfer_intervals", "TimedPart", "timed_parts",
           "plan_parts"]

_US = 1e6
_COMPUTE, _COMM, _ALL_TO_ALL = 0, 1, 2


def _header(num_ranks: int, label: str, *, all_to_all: bool = False) -> list[dict]:
    events = []
    for r in range(num_ranks):
        events.append({"ph": "M", "name": "process_name", "pid": r, "args": {"name": f"rank {r} ({label})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": r, "args": {"sort_index": r}})
        events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": _COMPUTE, "args": {"name": "compute"}})
        events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": _COMM, "args": {"name": "communication"}})
        if all_to_all:
            events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": _ALL_TO_ALL,
                           "args": {"name": "all-to-all"}})
    return events


def _slice(rank: int, tid: int, name: str, start: float, end: float, cat: str, args: dict | None = None) -> dict:
    return {"ph": "X", "pid": rank, "tid": tid, "name": name, "cat": cat,
            "ts": start * _US, "dur": max(end - start, 0.0) * _US, "args": args or {}}


def transfer_intervals(schedule: Schedule, costs: PipelineCosts, timeline) -> list[tuple[int, str, float, float]]:
    """(sending rank, label, start, end) of every cross-rank transfer with a non-zero cost.

    As the simulator implies them: an activation leaves when its F ends, a gradient when
    its I (or B) ends, and each takes its boundary's `transfer` time. `costs` is per
    model stage; `timeline` is one row per rank of items with `.action` and `.end`.
    """
    rank_of = schedule.stage_to_rank
    transfers = []
    for row in timeline:
        for t in row:
            for a in t.action.atoms:
                s = a.stage
                if a.kind is Kind.F:
                    peer = schedule.next_stage(s)
                    label = f"act {s}->{peer} mb{a.microbatch}"
                    boundary = s
                elif a.kind in (Kind.I, Kind.B):
                    peer = schedule.prev_stage(s)
                    label = f"grad {s}->{peer} mb{a.microbatch}"
                    boundary = peer
                else:
                    continue
                if peer is None or rank_of[peer] == rank_of[s]:
                    continue
                delay = costs.transfer[schedule.model_stage[boundary]]
                if delay > 0:
                    transfers.append((rank_of[s], label, t.end, t.end + delay))
    return transfers


def plan_transfers(plan: "Plan") -> list[tuple[int, str, float, float]]:
    """(sending rank, label, start, end) of every cross-rank transfer the plan predicts."""
    return transfer_intervals(plan.schedule, plan.costs, plan.timeline)


@dataclass(frozen=True, slots=True)
class TimedPart:
    """One part of a timed task (`simulate.task_parts`) at its absolute time."""

    rank: int
    task: object  # the timed action it runs in: `.action`, `.start`, `.end`
    atom: Action  # the plain action it belongs to: the task's own, or one of a cell's
    lane: str  # "compute" or "comm"
    label: str
    start: float
    end: float


def timed_parts(schedule: Schedule, costs: PipelineCosts, timeline) -> list[TimedPart]:
    """Every task's parts on its rank's compute and communication lanes, task after task.

    Empty when no stage has an all-to-all (`costs.communicates` is false): every task is
    then one stretch of compute, which its block already shows. `costs` is per model
    stage; `timeline` is one row per rank of items with `.action`, `.start`, `.end`.
    Parts are clamped to their task: a plain task's parts sum to its cost only up to
    rounding, and a part reaching past its task would overlap the next one on its lane
    (in a trace, a slice Perfetto cannot nest).
    """
    if not costs.communicates:
        return []
    staged = costs_for_schedule(schedule, costs)
    out = []
    for r, row in enumerate(timeline):
        for t in row:
            atoms = t.action.atoms
            out += [TimedPart(r, t, atoms[p.atom], p.lane, p.label, min(t.start + p.start, t.end),
                              min(t.start + p.end, t.end)) for p in task_parts(t.action, staged)]
    return out


def plan_parts(plan: "Plan") -> list[TimedPart]:
    """`timed_parts` of the plan's predicted step."""
    return timed_parts(plan.schedule, plan.costs, plan.timeline)


def _part_slices(parts: list[TimedPart]) -> list[dict]:
    """An all-to-all slice per comm part; a task of several parts gets its compute parts as children."""
    events = []
    for _, group in groupby(parts, key=lambda p: id(p.task)):
        group = list(group)
        for p in group:
            name, args = f"{p.label} {p.atom}", {"task": str(p.task.action)}
            if p.lane == COMM:
                events.append(_slice(p.rank, _ALL_TO_ALL, name, p.start, p.end, "all-to-all", args))
            elif len(group) > 1:  # one part would only repeat its task
                events.append(_slice(p.rank, _COMPUTE, name, p.start, p.end, "compute part", args))
    return events


def plan_trace(plan: "Plan") -> dict:
    """The predicted step of `plan` as a Chrome trace."""
    parts = plan_parts(plan)
    events = _header(plan.num_ranks, "predicted", all_to_all=bool(parts))
    for r, row in enumerate(plan.timeline):
        for t in row:
            kind = t.action.kind.value
            events.append(_slice(r, _COMPUTE, str(t.action), t.start, t.end, kind))
    for r, label, start, end in plan_transfers(plan):
        events.append(_slice(r, _COMM, label, start, end, "transfer"))
    events += _part_slices(parts)  # after their parents: at one timestamp, the parent comes first
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"schedule": plan.schedule.name, "time_unit": plan.time_unit,
                          "predicted_step_time": plan.predicted.step_time}}


def measured_trace(timeline: Iterable[Iterable["MeasuredAction"]], *, schedule_name: str, step_time: float) -> dict:
    """A measured step (from `parplan run`) as a Chrome trace, in the same layout as `plan_trace`."""
    rows = [list(row) for row in timeline]
    events = _header(len(rows), "measured")
    for r, row in enumerate(rows):
        for m in row:
            tid = _COMPUTE if m.lane == "compute" else _COMM
            cat = m.label.rstrip("0123456789")[-1:] if tid == _COMPUTE else "wait"
            events.append(_slice(r, tid, m.label, m.start, m.end, cat))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"schedule": schedule_name, "time_unit": "s", "measured_step_time": step_time}}
