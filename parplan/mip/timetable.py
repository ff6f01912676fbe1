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

from parplan.mip.problem import CellKind, Problem, Task
from parplan.schedule.ir import Action, Kind, Schedule

__all__ = ["Cell", "CellKind", "Timetable", "to_schedule", "from_schedule", "canonical", "without_cells"]


@dataclass(frozen=True, slots=True)
class Cell:
    forward: Task
    backward: Task  # the I task; a CellKind.FB cell also runs that micro-batch's W (a B)
    kind: CellKind

    @property
    def full(self) -> bool:
        """The cell runs a full B (I and W)."""
        return self.kind is CellKind.FB


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
    """`schedule`'s as-soon-as-possible timetable in the problem's integer time.

    The order is timed again with the problem's integer durations and delays, not read off
    the exact simulation and rounded: rounded starts and ends need not differ by the
    rounded durations, and a hint that breaks `end = start + duration` is no hint at all.
    A full B outside a cell becomes its I followed at once by its W (same times, the
    gradient released no later).
    """
    start: dict[Task, int] = {}
    end: dict[Task, int] = {}
    cells: list[Cell] = []
    orders = schedule.orders
    pos = [0] * len(orders)
    free = [0] * len(orders)
    remaining = sum(len(o) for o in orders)

    def tasks_of(action: Action) -> list[Task]:
        out = []
        for a in action.atoms:
            if a.kind is Kind.B:
                out += [(a.stage, Kind.I, a.microbatch), (a.stage, Kind.W, a.microbatch)]
            else:
                out.append((a.stage, a.kind, a.microbatch))
        return out

    while remaining:
        progressed = False
        for r, order in enumerate(orders):
            while pos[r] < len(order):
                action = order[pos[r]]
                own = tasks_of(action)
                needs = [(p, d) for t in own for p, d in problem.predecessors(t) if p not in own]
                if any(p not in end for p, _ in needs):
                    break
                t0 = max([free[r]] + [end[p] + d for p, d in needs])
                if action.kind is Kind.OVERLAP_F_B:
                    fwd = next(a for a in action.atoms if a.kind is Kind.F)
                    back = next(a for a in action.atoms if a.kind is not Kind.F)
                    kind = CellKind.FB if back.kind is Kind.B else CellKind.FI
                    cells.append(Cell((fwd.stage, Kind.F, fwd.microbatch), (back.stage, Kind.I, back.microbatch), kind))
                    t1 = t0 + problem.cell_duration(fwd.stage, back.stage, kind)
                    for t in own:
                        start[t], end[t] = t0, t1
                elif action.kind is Kind.B:
                    i_task, w_task = own
                    split = t0 + problem.duration(i_task)
                    start[i_task], end[i_task] = t0, split
                    t1 = split + problem.duration(w_task)
                    start[w_task], end[w_task] = split, t1
                else:
                    t1 = t0 + problem.duration(own[0])
                    start[own[0]], end[own[0]] = t0, t1
                free[r] = t1
                pos[r] += 1
                remaining -= 1
                progressed = True
        assert progressed, "a validated schedule cannot deadlock"
    return Timetable(start=start, end=end, cells=tuple(cells))


def canonical(problem: Problem, timetable: Timetable, *, fifo_weights: bool) -> Timetable:
    """Relabel micro-batches so that, per stage, F's and I's run in micro-batch order (and
    W's too when `fifo_weights`; otherwise the W's run alone keep that order among themselves).

    Same times, same cells, so the same schedule up to names: micro-batches of a chain
    are interchangeable and each dependency edge joins the k-th producer to the k-th
    consumer of the relabelled order no later than the old matching did (docs/mip.md §3).
    On DualPipe's placement the timetable is also mirrored (rank r ↔ N−1−r, chains
    swapped) when that puts the first chain earlier in total, as the model requires.
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
            # A W in a full-B cell follows its I; the W's run alone take the remaining
            # labels in start order (the cell model keeps those in order).
            in_cell = {c.backward[2] for c in timetable.cells if c.full and c.backward[0] == s}
            for j in in_cell:
                rename[(s, Kind.W, j)] = (s, Kind.W, rename[(s, Kind.I, j)][2])
            alone = [j for j in problem.microbatches if j not in in_cell]
            labels = sorted(rename[(s, Kind.I, j)][2] for j in alone)
            by_start = sorted(alone, key=lambda j: (timetable.start[(s, Kind.W, j)], j))
            for new_j, old_j in zip(labels, by_start):
                rename[(s, Kind.W, old_j)] = (s, Kind.W, new_j)
    out = _renamed(timetable, rename)
    chains = problem.mirror_chains()
    if chains is not None:
        # The model keeps the mirror image whose first chain starts no later in total.
        first, second = chains
        in_first = sum(v for t, v in out.start.items() if t[0] in first)
        if 2 * in_first > sum(out.start.values()):
            swap = {**dict(zip(first, second)), **dict(zip(second, first))}
            out = _renamed(out, {t: (swap[t[0]], t[1], t[2]) for t in out.start})
    return out


def _renamed(timetable: Timetable, rename: dict[Task, Task]) -> Timetable:
    return Timetable(
        start={rename[t]: v for t, v in timetable.start.items()},
        end={rename[t]: v for t, v in timetable.end.items()},
        cells=tuple(Cell(rename[c.forward], rename[c.backward], c.kind) for c in timetable.cells),
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
