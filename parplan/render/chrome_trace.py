"""Chrome-trace JSON (Perfetto, chrome://tracing) of a plan's predicted step or a measured one.

One process per rank ("rank r"), two threads in each: 0 "compute" (F, I, W, B and F&B
cells) and 1 "communication" (predicted: each cross-rank transfer of non-zero cost, on the
sender, from the producer's end for the planned transfer time; measured: the time a rank
blocked waiting for a received tensor, or for its sends at the end). Timestamps are
microseconds; a plan in abstract units is drawn with one unit = one second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from parplan.schedule.costs import PipelineCosts
from parplan.schedule.ir import Kind, Schedule

if TYPE_CHECKING:
    from parplan.plan import Plan
    from parplan.runtime.launch import MeasuredAction

__all__ = ["plan_trace", "measured_trace", "plan_transfers", "transfer_intervals"]

_US = 1e6
_COMPUTE, _COMM = 0, 1


def _header(num_ranks: int, label: str) -> list[dict]:
    events = []
    for r in range(num_ranks):
        events.append({"ph": "M", "name": "process_name", "pid": r, "args": {"name": f"rank {r} ({label})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": r, "args": {"sort_index": r}})
        events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": _COMPUTE, "args": {"name": "compute"}})
        events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": _COMM, "args": {"name": "communication"}})
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


def plan_trace(plan: "Plan") -> dict:
    """The predicted step of `plan` as a Chrome trace."""
    events = _header(plan.num_ranks, "predicted")
    for r, row in enumerate(plan.timeline):
        for t in row:
            kind = t.action.kind.value
            events.append(_slice(r, _COMPUTE, str(t.action), t.start, t.end, kind))
    for r, label, start, end in plan_transfers(plan):
        events.append(_slice(r, _COMM, label, start, end, "transfer"))
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
