"""Timetables: what every solver returns, and the bridge to and from `Schedule`.

A `Timetable` gives each plain task (stage, F/I/W, micro-batch) an integer start and end
(in 1/time_scale units) and lists the F&B cells. `to_schedule` sorts each rank's tasks
by start into an IR order (a cell becomes `(sF j;s'I j')OVERLAP_F_B`, or `…B…` when it
also runs the W); `from_schedule` simulates a schedule (a baseline warm start) and reads
its timetable back, relabelled into the canonical micro-batch order the symmetry-broken
model expects.
"""

from __future__ import annotations

from dataclasses import dataclass

from parplan.mip.problem import Problem, Task
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.simulate import simulate

__all__ = ["Cell", "Timetable", "to_schedule", "from_schedule", "canonical", "without_cells"]


@dataclass(frozen=True, slots=True)
class Cell:
    forward: Task
    backward: Task  # the I task; with `full` the cell also runs that micro-batch's W (a B)
    full: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class Timetable:
    start: dict[Task, int]
    end: dict[Task, int]
    cells: tuple[Cell, ...] = ()

    @property
    def makespan(self) -> int:
        return max(self.end.values(), default=0)


def to_schedule(problem: Problem, timetable: Timetable) -> Schedule:
    """Each rank's actions sorted by start time; ties broken by dependency order."""
    topo = {t: k for k, t in enumerate(problem.topological_tasks())}
    in_cell: dict[Task, Cell] = {}
    for cell in timetable.cells:
        in_cell[cell.forward] = in_cell[cell.backward] = cell
        if cell.full:
            in_cell[(cell.backward[0], Kind.W, cell.backward[2])] = cell
    orders: list[list[tuple[tuple, Action]]] = [[] for _ in range(problem.num_ranks)]
    for t in problem.tasks():
        s, kind, j = t
        key = (timetable.start[t], timetable.end[t], topo[t])
        cell = in_cell.get(t)
        if cell is None:
            orders[problem.rank(s)].append((key, Action(s, kind, j)))
        elif t == cell.forward:
            bs, _, bj = cell.backward
            back = Action(bs, Kind.B if cell.full else Kind.I, bj)
            orders[problem.rank(s)].append((key, Action.overlap(Action(s, Kind.F, j), back)))
    sk = problem.skeleton
    return Schedule(
        name="mip",
        stage_to_rank=sk.stage_to_rank,
        microbatches_per_chain=sk.microbatches_per_chain,
        orders=tuple(tuple(a for _, a in sorted(row, key=lambda x: x[0])) for row in orders),
        chains=sk.chains,
        model_stage=sk.model_stage,
    )


def from_schedule(problem: Problem, schedule: Schedule) -> Timetable:
    """The simulated timetable of `schedule` under the problem's costs, in integer time.

    A full B outside a cell becomes its I followed at once by its W (same times, the
    gradient released no later). Times are rounded to the problem's grid.
    """
    result = simulate(schedule, problem.model_costs)
    scale = problem.time_scale
    start: dict[Task, int] = {}
    end: dict[Task, int] = {}
    cells: list[Cell] = []
    for row in result.timeline:
        for timed in row:
            t0, t1 = round(timed.start * scale), round(timed.end * scale)
            atoms = timed.action.atoms
            if timed.action.kind is Kind.OVERLAP_F_B:
                fwd = next(a for a in atoms if a.kind is Kind.F)
                back = next(a for a in atoms if a.kind is not Kind.F)
                cells.append(Cell((fwd.stage, Kind.F, fwd.microbatch), (back.stage, Kind.I, back.microbatch),
                                  back.kind is Kind.B))
            for a in atoms:
                if a.kind is Kind.B:
                    split = t0 if timed.action.kind is Kind.OVERLAP_F_B else t0 + problem.dur[Kind.I][a.stage]
                    mid_end = t1 if timed.action.kind is Kind.OVERLAP_F_B else split
                    start[(a.stage, Kind.I, a.microbatch)], end[(a.stage, Kind.I, a.microbatch)] = t0, mid_end
                    start[(a.stage, Kind.W, a.microbatch)] = split
                    end[(a.stage, Kind.W, a.microbatch)] = t1
                else:
                    start[(a.stage, a.kind, a.microbatch)], end[(a.stage, a.kind, a.microbatch)] = t0, t1
    return Timetable(start=start, end=end, cells=tuple(cells))


def canonical(problem: Problem, timetable: Timetable, *, fifo_weights: bool) -> Timetable:
    """Relabel micro-batches so that, per stage, F's and I's run in micro-batch order (and
    W's too when `fifo_weights`; otherwise each W keeps following its own I).

    Same times, same cells, so the same schedule up to names: micro-batches of a chain
    are interchangeable and each dependency edge joins the k-th producer to the k-th
    consumer of the relabelled order no later than the old matching did (docs/mip.md §3).
    """
    rename: dict[Task, Task] = {}
    for s in range(problem.num_stages):
        for kind in (Kind.F, Kind.I, Kind.W):
            if kind is Kind.W and not fifo_weights:
                continue
            old = sorted(problem.microbatches, key=lambda j: (timetable.start[(s, kind, j)], j))
            for new_j, old_j in enumerate(old):
                rename[(s, kind, old_j)] = (s, kind, new_j)
        if not fifo_weights:
            for j in problem.microbatches:
                rename[(s, Kind.W, j)] = (s, Kind.W, rename[(s, Kind.I, j)][2])
    return Timetable(
        start={rename[t]: v for t, v in timetable.start.items()},
        end={rename[t]: v for t, v in timetable.end.items()},
        cells=tuple(Cell(rename[c.forward], rename[c.backward], c.full) for c in timetable.cells),
    )


def without_cells(schedule: Schedule) -> Schedule:
    """The same order with every F&B cell run as its F then its backward.

    When cells are no shorter than their parts (overlap_ratio >= 1) this never delays
    anything, and it makes a baseline a valid warm start for a model without cells.
    """
    orders = tuple(
        tuple(a for action in order for a in (action.atoms if action.kind is Kind.OVERLAP_F_B else (action,)))
        for order in schedule.orders
    )
    return Schedule(
        name=schedule.name, stage_to_rank=schedule.stage_to_rank,
        microbatches_per_chain=schedule.microbatches_per_chain, orders=orders,
        chains=schedule.chains, model_stage=schedule.model_stage,
    )
