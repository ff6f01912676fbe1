"""Discrete-event simulation of a fixed per-rank order: as-soon-as-possible timing.

An action starts when its rank has finished the previous action in its list and every
input has arrived: a forward needs the previous stage's forward of the same micro-batch
(plus a transfer if that stage is on another rank); a backward (I or B) needs its own
stage's forward and the next stage's backward (plus a transfer); W needs its own I. An
overlapped F&B cell waits for all inputs of its parts, runs for the cell's duration and
releases all their outputs at its end.

Transfers are pure delays: they never block a rank and never queue on a link. The
lower-level MIP models link channels explicitly; this simulator is the measuring stick
for orders, not for link contention.
"""

from __future__ import annotations

from dataclasses import dataclass

from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.schedule.ir import Action, Kind, Schedule

__all__ = ["TimedAction", "SimResult", "DeadlockError", "simulate", "costs_for_schedule", "cell_atoms", "task_parts"]

Key = tuple[int, Kind, int]  # (stage, kind, micro-batch) of one plain action


class DeadlockError(ParplanError):
    """The order cannot run: every rank waits on something that never (or not yet) happens.

    `blocked` lists (rank, step) of each blocked rank's next action."""

    def __init__(self, message: str, blocked: tuple[tuple[int, int], ...] = ()) -> None:
        super().__init__(message)
        self.blocked = blocked


@dataclass(frozen=True, slots=True)
class TimedAction:
    rank: int
    step: int  # index in the rank's order
    action: Action
    start: float
    end: float


@dataclass(frozen=True, kw_only=True, slots=True)
class SimResult:
    schedule: Schedule
    timeline: tuple[tuple[TimedAction, ...], ...]  # per rank, in order
    makespan: float
    busy_per_rank: tuple[float, ...]
    peak_activation_per_rank: tuple[float, ...]
    params_per_rank: tuple[float, ...]

    @property
    def num_ranks(self) -> int:
        return len(self.timeline)

    @property
    def bubble_per_rank(self) -> tuple[float, ...]:
        return tuple(self.makespan - b for b in self.busy_per_rank)

    @property
    def bubble_ratio(self) -> float:
        if self.makespan <= 0:
            return 0.0
        return 1.0 - sum(self.busy_per_rank) / (self.num_ranks * self.makespan)

    @property
    def max_bubble(self) -> float:
        return max(self.bubble_per_rank)

    def ends(self) -> dict[Key, float]:
        return {_key(a): t.end for row in self.timeline for t in row for a in t.action.atoms}

    def starts(self) -> dict[Key, float]:
        return {_key(a): t.start for row in self.timeline for t in row for a in t.action.atoms}


def _key(a: Action) -> Key:
    return (a.stage, a.kind, a.microbatch)


def costs_for_schedule(schedule: Schedule, costs: PipelineCosts) -> PipelineCosts:
    """Costs indexed by the schedule's stages (DualPipe's stage copies inherit their model stage's)."""
    if costs.num_stages == schedule.num_stages and schedule.model_stage == tuple(range(schedule.num_stages)):
        return costs
    if costs.num_stages == schedule.num_model_stages:
        return costs.restaged(schedule.model_stage)
    raise ParplanError(
        f"costs describe {costs.num_stages} stages but schedule {schedule.name!r} has "
        f"{schedule.num_model_stages} model stages; give one cost entry per model stage"
    )


def duration(action: Action, costs: PipelineCosts) -> float:
    if action.kind is Kind.OVERLAP_F_B:
        return costs.cell_time(cell_atoms(action))
    return costs.task_time(action.stage, action.kind.value)


def cell_atoms(action: Action) -> tuple[tuple[int, str], ...]:
    """An overlap cell's plain actions as (stage, kind) pairs, for `PipelineCosts.cell_time`."""
    return tuple((a.stage, a.kind.value) for a in action.sub_actions)


def task_parts(action: Action, costs: PipelineCosts):
    """The parts (`parplan.schedule.phases.PlacedSegment`, offsets from the action's start) an
    action runs on its rank's compute and communication lanes: a cell's laid out together,
    a plain action's in line. `costs` are indexed by schedule stage (`costs_for_schedule`)."""
    if action.kind is Kind.OVERLAP_F_B:
        return costs.cell_parts(cell_atoms(action))
    return costs.cell_parts(((action.stage, action.kind.value),))


def dependencies(a: Action, schedule: Schedule, costs: PipelineCosts, split: set) -> list[tuple[Key, float]]:
    """(producer, delay after the producer ends) pairs that plain action `a` waits for.

    `split` holds the (stage, micro-batch) pairs whose backward is I + W; the others run
    a full B (DualPipe mixes both within one stage).
    """
    s, j = a.stage, a.microbatch
    rank_of = schedule.stage_to_rank
    if a.kind is Kind.F:
        prev = schedule.prev_stage(s)
        if prev is None:
            return []
        return [((prev, Kind.F, j), costs.transfer[prev] if rank_of[prev] != rank_of[s] else 0.0)]
    if a.kind in (Kind.I, Kind.B):
        deps = [((s, Kind.F, j), 0.0)]
        nxt = schedule.next_stage(s)
        if nxt is not None:
            grad = Kind.I if (nxt, j) in split else Kind.B
            deps.append(((nxt, grad, j), costs.transfer[s] if rank_of[nxt] != rank_of[s] else 0.0))
        return deps
    assert a.kind is Kind.W
    return [((s, Kind.I, j), 0.0)]


def simulate(schedule: Schedule, costs: PipelineCosts) -> SimResult:
    costs = costs_for_schedule(schedule, costs)
    split = split_pairs(schedule)
    ends: dict[Key, float] = {}
    where: dict[Key, tuple[int, int]] = {}
    for r, order in enumerate(schedule.orders):
        for step, action in enumerate(order):
            for a in action.atoms:
                if _key(a) in where:
                    raise ParplanError(
                        f"{a} appears twice (rank {where[_key(a)][0]} step {where[_key(a)][1]} and "
                        f"rank {r} step {step}); each action must run exactly once"
                    )
                where[_key(a)] = (r, step)
    deps = {
        key: dependencies(a, schedule, costs, split)
        for order in schedule.orders for action in order for a in action.atoms
        for key in [_key(a)]
    }

    num_ranks = schedule.num_ranks
    pos = [0] * num_ranks
    free_at = [0.0] * num_ranks
    timeline: list[list[TimedAction]] = [[] for _ in range(num_ranks)]
    remaining = sum(len(o) for o in schedule.orders)
    while remaining:
        progressed = False
        for r in range(num_ranks):
            order = schedule.orders[r]
            while pos[r] < len(order):
                action = order[pos[r]]
                inputs = [(dep, delay) for a in action.atoms for dep, delay in deps[_key(a)]]
                if any(dep not in ends for dep, _ in inputs):
                    break
                start = max([free_at[r]] + [ends[dep] + delay for dep, delay in inputs])
                end = start + duration(action, costs)
                for a in action.atoms:
                    ends[_key(a)] = end
                timeline[r].append(TimedAction(r, pos[r], action, start, end))
                free_at[r] = end
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise DeadlockError(_deadlock_message(schedule, pos, deps, ends, where),
                                tuple((r, p) for r, p in enumerate(pos) if p < len(schedule.orders[r])))

    busy = tuple(sum(t.end - t.start for t in row) for row in timeline)
    makespan = max((row[-1].end for row in timeline if row), default=0.0)
    return SimResult(
        schedule=schedule,
        timeline=tuple(tuple(row) for row in timeline),
        makespan=makespan,
        busy_per_rank=busy,
        peak_activation_per_rank=activation_peaks(timeline, costs, split),
        params_per_rank=tuple(
            sum(costs.params[s] for s in schedule.stages_of_rank(r)) for r in range(num_ranks)
        ),
    )


def split_pairs(schedule: Schedule) -> set[tuple[int, int]]:
    """(stage, micro-batch) pairs whose backward is split into I and W."""
    return {(a.stage, a.microbatch) for o in schedule.orders for x in o for a in x.atoms if a.kind is Kind.I}


def activation_peaks(timeline, costs: PipelineCosts, split: set) -> tuple[float, ...]:
    """Peak activation per rank: (stage, mb) held from its F's start to its W's (or B's) end."""
    peaks = []
    for row in timeline:
        events = []
        for t in row:
            for a in t.action.atoms:
                if a.kind is Kind.F:
                    events.append((t.start, 1, costs.activation[a.stage]))
                elif a.kind is (Kind.W if (a.stage, a.microbatch) in split else Kind.B):
                    events.append((t.end, 0, -costs.activation[a.stage]))
        # At equal times frees (0) sort before allocations (1): a rank runs one thing at a time.
        level = peak = 0.0
        for _, _, delta in sorted(events):
            level += delta
            peak = max(peak, level)
        peaks.append(peak)
    return tuple(peaks)


def _deadlock_message(schedule: Schedule, pos, deps, ends, where) -> str:
    lines = ["the order deadlocks; each blocked rank and what it waits on:"]
    for r, order in enumerate(schedule.orders):
        if pos[r] >= len(order):
            continue
        action = order[pos[r]]
        waits = []
        for a in action.atoms:
            for dep, _ in deps[_key(a)]:
                if dep in ends:
                    continue
                label = f"{dep[0]}{dep[1].value}{dep[2]}"
                if dep in where:
                    wr, ws = where[dep]
                    waits.append(f"{label} (rank {wr} step {ws})")
                else:
                    waits.append(f"{label} (no rank runs it)")
        lines.append(f"  rank {r} step {pos[r]} {action} waits on {', '.join(waits)}")
    return "\n".join(lines)
