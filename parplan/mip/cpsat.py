"""The lower-level scheduler as a CP-SAT interval model (OR-Tools).

Sections follow the data → variables → constraints → objective → solve → extract shape
of OR-Tools' `flexible_job_shop_sat.py`. Constraint families are named after the
reference formulation's equations (../shared/reference/mip_formulation.md):

  (3)   duration        every task is an interval of its own length — or, inside an F&B
                        cell, shares the cell's interval
  (4)   precedence      F(s,j) after F(prev,j), I(s,j) after F(s,j) and I(next,j), W after
                        I, each plus the transfer time when the two stages sit on
                        different ranks (11–13 with the channel folded into a delay)
  (7–8) no-overlap      one NoOverlap per rank over its task and cell intervals
  (mem) activation      one Cumulative per rank: (s,j) holds activation[s] from F start to
                        W end, capped by the memory cap
  (14)  channels        optional: each cross-rank transfer is an interval on its directed
                        link, one NoOverlap per link (`link_contention=True`)
  (sym) FIFO per stage  F's and I's of a stage run in micro-batch order (W's too when no
                        cell runs a full B); docs/mip.md §3 shows an optimum survives
  (2,1) makespan        C_max >= every end; minimise it (or the longest per-rank span)

Placement is fixed here (the upper level chooses it), so the x_ij of the reference are
constants and its big-M disjunctions become interval constraints, which propagate far
better.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

from ortools.sat.python import cp_model

from parplan.budget import check_work, clock_stopped, set_cpsat_budget
from parplan.errors import ParplanError
from parplan.mip.problem import CellKind, Problem, Task
from parplan.mip.timetable import Cell, Timetable
from parplan.schedule.ir import Kind

__all__ = ["CpSatOptions", "SolveOutcome", "ProgressEvent", "relative_gap", "solve_cpsat", "cell_candidates",
           "build_model", "extract_timetable", "problem_bounds", "rank_lower_bound", "cell_lower_bound",
           "makespan_lower_bound"]

Objective = Literal["makespan", "throughput"]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One progress report: incumbent and bound in the problem's time units (None when unknown)."""

    incumbent: float | None
    bound: float | None
    gap: float | None
    elapsed: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CpSatOptions:
    # The search's budget in CP-SAT deterministic seconds (parplan.budget): the same work,
    # hence the same answer, on any machine. `time_limit` is only a wall-clock safety stop.
    work: float = 10.0
    time_limit: float | None = None
    seed: int = 0
    workers: int = 2
    objective: Objective = "makespan"
    symmetry_breaking: bool = True
    # With symmetry_breaking: also order the W's run alone and keep one mirror image of
    # DualPipe's placement. LNS turns these off: a window cannot relabel or mirror the
    # tasks outside it, so they would forbid moves that are legal up to names.
    whole_model_symmetry: bool = True
    cells: bool | None = None  # None: allow F&B cells exactly when they are shorter (overlap_ratio < 1)
    max_cell_pairs: int = 6000  # beyond this many candidate (F, I) pairs keep the ones nearest in the warm start
    link_contention: bool = False
    deterministic: bool = True
    # "default": CP-SAT's portfolio (8 full-problem subsolvers and 10 LNS ones, in turn).
    # "proof": its first full-problem subsolvers only, one per worker (at least default_lp
    # and no_lp) and no LNS: it proved three ~100-task models in 9-20 s where the default
    # proved none in 30-60 s (docs/mip.md §3, "Search portfolio").
    portfolio: Literal["default", "proof"] = "default"
    # Cells run a full B with their F, as DualPipe's do; (FI, FB) also allows (F;I)
    # cells, the W then running apart (`solve_schedule(cells="any")`, docs/mip.md §2).
    cell_kinds: tuple[CellKind, ...] = (CellKind.FB,)
    dump_path: str | None = None  # write the model (.pb binary, .pbtxt text) before solving
    cell_bound: bool = True  # with cells: the makespan starts at `cell_lower_bound` (off: to test that bound)
    # Minimise the largest per-rank activation peak instead, the makespan held within the
    # hint's (a second pass once the makespan is settled; the objective is then in memory units).
    minimise_peak: bool = False

    def __post_init__(self) -> None:
        check_work(self.work, "CpSatOptions.work")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ParplanError(f"CpSatOptions.workers {self.workers!r} is invalid: need an integer >= 1")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ParplanError(f"CpSatOptions.time_limit {self.time_limit!r} is invalid: need > 0 seconds or None")
        if self.objective not in ("makespan", "throughput"):
            raise ParplanError(f"objective {self.objective!r} is unknown; choose makespan or throughput")
        if self.portfolio not in ("default", "proof"):
            raise ParplanError(f"portfolio {self.portfolio!r} is unknown; choose default or proof")
        if self.minimise_peak and self.objective != "makespan":
            raise ParplanError("minimise_peak holds the makespan: it needs objective='makespan'")


@dataclass(frozen=True, kw_only=True, slots=True)
class SolveOutcome:
    status: str  # OPTIMAL | FEASIBLE | INFEASIBLE | UNKNOWN
    timetable: Timetable | None
    objective: int | None  # integer time units (memory units with `minimise_peak`)
    bound: int | None
    seconds: float
    work: float = 0.0  # deterministic seconds the search spent
    clock_stopped: bool = False  # the wall-clock safety stop, not the work budget, ended the search
    notes: tuple[str, ...] = ()


@dataclass(slots=True)
class _Vars:
    start: dict[Task, cp_model.IntVar] = field(default_factory=dict)
    end: dict[Task, cp_model.IntVar] = field(default_factory=dict)
    alone: dict[Task, cp_model.IntVar | bool] = field(default_factory=dict)
    cell: dict[Cell, cp_model.IntVar] = field(default_factory=dict)
    in_full_cell: dict[Task, cp_model.IntVar] = field(default_factory=dict)
    objective: cp_model.IntVar | None = None
    peak: cp_model.IntVar | None = None  # with `minimise_peak`: every rank's Cumulative capacity


_ALONE_W_WINDOW = 4  # alone W's of a stage ordered against the next this many micro-batches


# ---- data: which F&B cells the model may form --------------------------------------------
def cell_candidates(problem: Problem, hint: Timetable | None, max_pairs: int,
                    fifo: bool = False) -> tuple[list[tuple[Task, Task]], bool]:
    """(F, I) pairs on one rank that may share a cell, and whether the list is complete.

    A pair is excluded when the I depends on the F (same chain, same micro-batch). Under
    FIFO per stage (`fifo`) a pair of one chain needs j < i: the I of micro-batch j waits
    for F(·, j), which for j ≥ i starts no earlier than F(a, i) — so they cannot start
    together. When more than `max_pairs` remain, the ones whose tasks run nearest in time
    in the warm start are kept, and every cell of the warm start is kept.
    """
    chain_of = {s: k for k, chain in enumerate(problem.skeleton.chains) for s in chain}
    pairs: list[tuple[Task, Task]] = []
    for r in range(problem.num_ranks):
        stages = problem.skeleton.stages_of_rank(r)
        for a in stages:
            for b in stages:
                for i in problem.microbatches:
                    for j in problem.microbatches:
                        if chain_of[a] == chain_of[b] and (i == j or (fifo and j > i)):
                            continue
                        pairs.append(((a, Kind.F, i), (b, Kind.I, j)))
    if len(pairs) <= max_pairs:
        return pairs, True
    if hint is None:
        key = lambda p: (abs(p[0][2] - p[1][2]), p)  # noqa: E731  nearest micro-batch indices
    else:
        key = lambda p: (abs(hint.start[p[0]] - hint.start[p[1]]), p)  # noqa: E731
    kept = sorted(pairs, key=key)[:max_pairs]
    if hint is not None:
        have = set(kept)
        kept += [(c.forward, c.backward) for c in hint.cells if (c.forward, c.backward) not in have]
    return kept, False


# ---- model -------------------------------------------------------------------------------
def build_model(
    problem: Problem, hint: Timetable | None, options: CpSatOptions
) -> tuple[cp_model.CpModel, _Vars, list[str]]:
    """The interval model of `problem` under `options`, warm-started from `hint` when given:
    the model, its variables and notes on what it leaves out."""
    # ---- data: the candidate cells, the horizon, heads and tails -------------------------
    model = cp_model.CpModel()
    v = _Vars()
    use_cells = problem.cells_help if options.cells is None else options.cells
    pairs, notes = _cell_pairs(problem, hint, options) if use_cells else ([], [])
    horizon = hint.makespan if hint is not None else _serial_horizon(problem)
    head, tail = problem_bounds(problem, cells=use_cells)
    tasks = problem.tasks()
    cells_of = _cells_by_task(tasks, pairs, options.cell_kinds)

    # ---- variables: start/end per task, presence of its own interval, cells --------------
    _add_task_times(model, problem, v, cells_of, horizon, head, tail, hinted=hint is not None)
    intervals = _add_task_intervals(model, problem, v)
    _add_cells(model, problem, v, pairs, options.cell_kinds, intervals)
    _add_one_way_to_run(model, v, tasks, cells_of)
    v.in_full_cell = {t: v.alone[t].Not() for t in tasks if t[1] is Kind.W and cells_of[t]}

    # ---- constraints -----------------------------------------------------------------------
    _add_precedence(model, problem, v)
    _add_one_at_a_time(model, intervals)
    if problem.memory_cap is not None or options.minimise_peak:
        assert hint is not None or not options.minimise_peak, "minimise_peak needs the schedule to improve on"
        notes += _add_memory(model, problem, v, horizon, hint, options.minimise_peak)
    if options.link_contention:
        _add_channels(model, problem, v, horizon)
    if options.symmetry_breaking:
        _add_fifo_per_stage(model, problem, v, cells_of, alone_w_order=options.whole_model_symmetry)
        if options.whole_model_symmetry:
            _break_mirror(model, problem, v)

    # ---- objective --------------------------------------------------------------------------
    makespan = _add_makespan(model, problem, v, horizon, _makespan_floor(problem, use_cells, options))
    if use_cells:
        _add_rank_energy(model, problem, v, makespan, head, tail)
    if options.minimise_peak:
        v.objective = v.peak  # the makespan stays within the horizon, the hint's makespan
    elif options.objective == "makespan":
        v.objective = makespan
    else:
        v.objective = _add_longest_rank_span(model, problem, v, horizon)
    model.Minimize(v.objective)

    # ---- warm start ---------------------------------------------------------------------------
    if hint is not None:
        _add_hints(model, problem, v, hint, cells_of, makespan)
    return model, v, notes


def _task_name(t: Task) -> str:
    return f"{t[0]}{t[1].value}{t[2]}"


def _cell_pairs(problem: Problem, hint: Timetable | None,
                options: CpSatOptions) -> tuple[list[tuple[Task, Task]], list[str]]:
    """The (F, I) pairs that may form cells, and a note when they are not all of them."""
    pairs, complete = cell_candidates(problem, hint, options.max_cell_pairs, fifo=options.symmetry_breaking)
    if complete:
        return pairs, []
    return pairs, [f"F&B cells were limited to the {len(pairs)} (F, I) pairs nearest in the warm start; "
                   f"status and bound refer to that restricted model"]


def _cells_by_task(tasks: list[Task], pairs: list[tuple[Task, Task]],
                   cell_kinds: tuple[CellKind, ...]) -> dict[Task, list[Cell]]:
    """Every cell each task may run in: an F and an I in each of theirs, a W in its I's full-B cells."""
    cells_of: dict[Task, list[Cell]] = {t: [] for t in tasks}
    for f, i in pairs:
        for kind in cell_kinds:
            cell = Cell(f, i, kind)
            cells_of[f].append(cell)
            cells_of[i].append(cell)
            if cell.full:
                cells_of[(i[0], Kind.W, i[2])].append(cell)
    return cells_of


def _add_task_times(model: cp_model.CpModel, problem: Problem, v: _Vars, cells_of: dict[Task, list[Cell]],
                    horizon: int, head: dict[Task, int], tail: dict[Task, int], *, hinted: bool) -> None:
    """Start and end per task within its head and tail; `alone` where it may also run in a cell."""
    for t in problem.tasks():
        name = _task_name(t)
        lo, hi = head[t], horizon - tail[t]
        assert lo <= hi or not hinted, f"task {name}: head {lo} > latest start {hi} under horizon {horizon}"
        v.start[t] = model.NewIntVar(lo, max(lo, hi), f"start_{name}")
        v.end[t] = model.NewIntVar(lo, horizon, f"end_{name}")
        v.alone[t] = model.NewBoolVar(f"alone_{name}") if cells_of[t] else True


def _add_task_intervals(model: cp_model.CpModel, problem: Problem, v: _Vars) -> list[list]:
    """(3) every task run alone is an interval of its own length; per rank, for the no-overlap."""
    intervals: list[list] = [[] for _ in range(problem.num_ranks)]
    for t in problem.tasks():
        name = _task_name(t)
        r = problem.rank(t[0])
        if v.alone[t] is True:
            intervals[r].append(model.NewIntervalVar(v.start[t], problem.duration(t), v.end[t], f"run_{name}"))
        else:
            intervals[r].append(model.NewOptionalIntervalVar(
                v.start[t], problem.duration(t), v.end[t], v.alone[t], f"run_{name}"))
    return intervals


def _add_cells(model: cp_model.CpModel, problem: Problem, v: _Vars, pairs: list[tuple[Task, Task]],
               cell_kinds: tuple[CellKind, ...], intervals: list[list]) -> None:
    """(3) a cell is one interval of the cell's length; its parts share its start and end."""
    for f, i in pairs:
        for kind in cell_kinds:
            cell = Cell(f, i, kind)
            lit = model.NewBoolVar(f"cell_{f[0]}F{f[2]}_{i[0]}{'B' if cell.full else 'I'}{i[2]}")
            v.cell[cell] = lit
            intervals[problem.rank(f[0])].append(model.NewOptionalIntervalVar(
                v.start[f], problem.cell_duration(f[0], i[0], kind), v.end[f], lit, f"cellrun_{lit.Name()}"))
            parts = [i, (i[0], Kind.W, i[2])] if cell.full else [i]
            for part in parts:
                model.Add(v.start[part] == v.start[f]).OnlyEnforceIf(lit)
                model.Add(v.end[part] == v.end[f]).OnlyEnforceIf(lit)


def _add_one_way_to_run(model: cp_model.CpModel, v: _Vars, tasks: list[Task],
                        cells_of: dict[Task, list[Cell]]) -> None:
    """(3) a task that may join a cell runs either alone or in exactly one of its cells."""
    for t in tasks:
        if cells_of[t]:
            model.AddExactlyOne([v.alone[t]] + [v.cell[c] for c in cells_of[t]])


def _add_precedence(model: cp_model.CpModel, problem: Problem, v: _Vars) -> None:
    """(4) each task after its inputs plus the transfer delay; a W that may join a full-B
    cell follows its I only when it runs alone (in the cell the two start together)."""
    for t in problem.tasks():
        for p, delay in problem.predecessors(t):
            if t[1] is Kind.W and t in v.in_full_cell:
                model.Add(v.start[t] >= v.end[p]).OnlyEnforceIf(v.in_full_cell[t].Not())
            else:
                model.Add(v.start[t] >= v.end[p] + delay)


def _add_one_at_a_time(model: cp_model.CpModel, intervals: list[list]) -> None:
    """(7–8) one task or cell at a time per rank."""
    for rank_intervals in intervals:
        model.AddNoOverlap(rank_intervals)


def _add_fifo_per_stage(model: cp_model.CpModel, problem: Problem, v: _Vars, cells_of: dict[Task, list[Cell]],
                        *, alone_w_order: bool) -> None:
    """(sym) a stage's F's and I's run in micro-batch order, and its W's where no cell may
    hold them; with `alone_w_order` the W's run alone also keep their order (relabelling
    them keeps an optimum), stated for the next few only so the model stays linear in M."""
    for s in range(problem.num_stages):
        for kind in (Kind.F, Kind.I, Kind.W):
            for j in list(problem.microbatches)[:-1]:
                a, b = (s, kind, j), (s, kind, j + 1)
                if kind is not Kind.W or not (cells_of[a] or cells_of[b]):
                    model.Add(v.end[a] <= v.start[b])
                elif alone_w_order:
                    # A W inside a B cell runs with its I; only the W's run alone are ordered.
                    for k in problem.microbatches[j + 1:j + 1 + _ALONE_W_WINDOW]:
                        later = (s, kind, k)
                        model.Add(v.end[a] <= v.start[later]).OnlyEnforceIf(
                            [x for x in (v.alone[a], v.alone[later]) if x is not True])


def _makespan_floor(problem: Problem, use_cells: bool, options: CpSatOptions) -> int:
    """The static bound the makespan variable starts from (0 with `cell_bound` off)."""
    if not use_cells:
        return makespan_lower_bound(problem, ())
    return cell_lower_bound(problem, options.cell_kinds) if options.cell_bound else 0


def _add_makespan(model: cp_model.CpModel, problem: Problem, v: _Vars, horizon: int, lower: int) -> cp_model.IntVar:
    """(2) C_max >= the end of every W (a W ends each micro-batch's work on its stage)."""
    makespan = model.NewIntVar(min(lower, horizon), horizon, "makespan")
    for t in problem.tasks():
        if t[1] is Kind.W:
            model.Add(makespan >= v.end[t])
    return makespan


def _add_rank_energy(model: cp_model.CpModel, problem: Problem, v: _Vars, makespan: cp_model.IntVar,
                     head: dict[Task, int], tail: dict[Task, int]) -> None:
    """(bound) per-rank energy: the rank's work, less what its cells save, runs between
    its earliest head and its shortest remaining tail."""
    for r in range(problem.num_ranks):
        mine = problem.tasks_of_rank(r)
        first = min(head[t] for t in mine)
        last = min(tail[t] - problem.duration(t) for t in mine)
        last = max(0, min([last] + [tail[t] - problem.cell_duration(t[0], b, CellKind.FB)
                                     for t in mine if t[1] is Kind.F
                                     for b in problem.skeleton.stages_of_rank(r)]))
        saving = [(_cell_saving(problem, c), lit) for c, lit in v.cell.items() if problem.rank(c.forward[0]) == r]
        model.Add(makespan >= first + problem.rank_load(r) + last - sum(k * lit for k, lit in saving))


def _add_longest_rank_span(model: cp_model.CpModel, problem: Problem, v: _Vars, horizon: int) -> cp_model.IntVar:
    """The zero-bubble ILP's objective: the longest per-rank span, first start to last end."""
    span = model.NewIntVar(0, horizon, "longest_rank_span")
    for r in range(problem.num_ranks):
        mine = problem.tasks_of_rank(r)
        first = model.NewIntVar(0, horizon, f"first_start_{r}")
        model.AddMinEquality(first, [v.start[t] for t in mine if t[1] is Kind.F])
        for t in mine:
            if t[1] is Kind.W:
                model.Add(span >= v.end[t] - first)
    return span


def _add_hints(model: cp_model.CpModel, problem: Problem, v: _Vars, hint: Timetable,
               cells_of: dict[Task, list[Cell]], makespan: cp_model.IntVar) -> None:
    """The warm start: its times, which cells it forms, its makespan and activation peak."""
    hinted_cells = set(hint.cells)
    for t in problem.tasks():
        model.AddHint(v.start[t], hint.start[t])
        model.AddHint(v.end[t], hint.end[t])
        if v.alone[t] is not True:
            model.AddHint(v.alone[t], not any(c in hinted_cells for c in cells_of[t]))
    for cell, lit in v.cell.items():
        model.AddHint(lit, cell in hinted_cells)
    model.AddHint(makespan, hint.makespan)
    if v.peak is not None:
        model.AddHint(v.peak, _peak_units(problem, hint, memory_unit(problem, hint.makespan)[0]))


def _break_mirror(model: cp_model.CpModel, problem: Problem, v: _Vars) -> None:
    """Of a schedule and its mirror image (`Problem.mirror_chains`, same makespan) one has
    its first chain start no later in total than the second: require that one."""
    chains = problem.mirror_chains()
    if chains is None:
        return
    first = set(chains[0])
    starts = {True: [], False: []}
    for t in problem.tasks():
        starts[t[0] in first].append(v.start[t])
    model.Add(sum(starts[True]) <= sum(starts[False]))


def problem_bounds(problem: Problem, *, cells: bool) -> tuple[dict[Task, int], dict[Task, int]]:
    """Heads and tails; with cells a task may finish early (inside a short cell) and a W
    may start with its I (a full B cell), so the bounds use those shortest durations."""
    head, tail, _ = _longest_paths(problem, cells=cells, fifo=False)
    return head, tail


def rank_lower_bound(problem: Problem, head: dict[Task, int], tail: dict[Task, int]) -> int:
    """One-machine relaxation per rank: nothing on rank r starts before its earliest head,
    all its work runs back to back, and its last task still has its shortest tail to go.
    Without cells this is a valid bound on the makespan; at unit costs it is already the
    optimum (the middle ranks idle N/2 − 1 steps before their first input arrives)."""
    best = 0
    for r in range(problem.num_ranks):
        mine = problem.tasks_of_rank(r)
        first = min(head[t] for t in mine)
        last = min(tail[t] - problem.duration(t) for t in mine)
        best = max(best, first + problem.rank_load(r) + last)
    return best


def makespan_lower_bound(problem: Problem, cell_kinds: tuple[CellKind, ...]) -> int:
    """The static bound: `cell_lower_bound`, and without cells (`cell_kinds=()`) also the
    one-machine bound with unshortened heads and tails."""
    if cell_kinds:
        return cell_lower_bound(problem, cell_kinds)
    head, tail = problem_bounds(problem, cells=False)
    return max(rank_lower_bound(problem, head, tail), cell_lower_bound(problem, ()))


def cell_lower_bound(problem: Problem, cell_kinds: tuple[CellKind, ...] = (CellKind.FB,)) -> int:
    """A makespan bound with F&B cells that knows when cells cannot form (docs/mip.md §3).

    Per rank: before the earliest head a_I of any of its I's no cell can run, so the rank
    either idles there or runs F's alone; after the last F can end (every F still has at
    least q_F to go, so none ends after C_max − q_F) no cell runs either, so the rank idles
    or runs I/W pairs alone. With k F's run alone early and k' B's alone late,

        C_max ≥ first + load + max(0, a_I − first − k·F̂) + max(0, q_F − last − k'·B̂)
                − ŝ · min(#F − k, #I − k') + last

    (F̂, B̂: longest F and I+W on the rank, ŝ: largest saving of one cell), minimised over
    k ≤ #F with head < a_I and k' ≤ #I (k' counts the micro-batches with any of I or W
    late: a W alone may have been deferred from an early I), both also at most the number
    of the rank's activations the cap holds at once: every F started before a_I is still
    held at a_I, and every B with work after C_max − q_F still holds its F's activation
    then (docs/mip.md §3). Heads and tails use the shortest duration a task may take and
    FIFO order per stage (which keeps an optimum, §3). The late term needs full-B cells
    only: with (F;I) cells a W may run alone late after its I was saved, so it is dropped
    then. `cell_kinds=()` (no cells): ŝ = 0, and the bound is the one-machine bound plus
    the idle the cap forces at either end.
    """
    head, tail, shortest = _longest_paths(problem, cells=True, fifo=True)
    best = 0
    for r in range(problem.num_ranks):
        mine = problem.tasks_of_rank(r)
        stages = problem.skeleton.stages_of_rank(r)
        fs = [t for t in mine if t[1] is Kind.F]
        bs = [t for t in mine if t[1] is Kind.I]
        first = min(head[t] for t in mine)
        last = max(0, min(tail[t] - shortest[t] for t in mine))
        load = problem.rank_load(r)
        saving = max([0] + [_cell_saving(problem, Cell((a, Kind.F, 0), (b, Kind.I, 0), kind))
                            for a in stages for b in stages for kind in cell_kinds])
        a_i = min(head[t] for t in bs)
        f_hat = max(problem.duration(t) for t in fs)
        b_hat = max(problem.duration(t) + problem.duration((t[0], Kind.W, t[2])) for t in bs)
        q_f = min(tail[t] - shortest[t] for t in fs)
        late = tuple(cell_kinds) in ((CellKind.FB,), ())
        held = _most_held(problem, fs)
        k_max = min(held, sum(1 for t in fs if head[t] < a_i))
        k2_max = min(held, len(bs)) if late else 0
        rank_best = None
        for k in range(k_max + 1):
            pre = max(0, a_i - first - k * f_hat)
            points = {0, k2_max, min(k2_max, max(0, len(bs) - (len(fs) - k)))}
            if late and b_hat > 0:
                points |= {min(k2_max, max(0, (q_f - last) // b_hat + d)) for d in (0, 1)}
            for k2 in points:
                post = max(0, q_f - last - k2 * b_hat) if late else 0
                value = first + load + pre + post - saving * min(len(fs) - k, len(bs) - k2) + last
                rank_best = value if rank_best is None else min(rank_best, value)
        best = max(best, rank_best)
    return best


def _most_held(problem: Problem, forwards: list[Task]) -> int:
    """How many of these F's activations can be held at once under the cap (smallest first)."""
    if problem.memory_cap is None:
        return len(forwards)
    room, count = problem.memory_cap * (1 + 1e-9), 0
    for need in sorted(problem.activation(t[0]) for t in forwards):
        if need > room:
            break
        room, count = room - need, count + 1
    return count


def _longest_paths(problem: Problem, *, cells: bool, fifo: bool
                   ) -> tuple[dict[Task, int], dict[Task, int], dict[Task, int]]:
    """Heads, tails and shortest durations along the dependencies and, with `fifo`, FIFO
    per stage (the j-th F/I of a stage after the (j−1)-th: it keeps an optimum, docs/mip.md
    §3, and the model imposes it). With cells, durations are the shortest a task may take
    and a W may run with its I."""
    shortest = _shortest(problem) if cells else {t: problem.duration(t) for t in problem.tasks()}
    order = problem.topological_tasks()  # chain by chain, micro-batch by micro-batch: FIFO edges go forward
    head: dict[Task, int] = {}
    for t in order:
        s, kind, j = t
        deps = problem.predecessors(t)
        if cells and kind is Kind.W:
            value = head[deps[0][0]]  # may start with its I inside a B cell
        else:
            value = max([head[p] + shortest[p] + d for p, d in deps] + [0])
        if fifo and kind is not Kind.W and j > 0:
            value = max(value, head[(s, kind, j - 1)] + shortest[(s, kind, j - 1)])
        head[t] = value
    succ = problem.successors()
    tail: dict[Task, int] = {}
    for t in reversed(order):
        s, kind, j = t
        nxt = [d + tail[q] for q, d in succ[t] if not (cells and q[1] is Kind.W)]
        if fifo and kind is not Kind.W and j + 1 in problem.microbatches:
            nxt.append(tail[(s, kind, j + 1)])
        tail[t] = shortest[t] + max(nxt + [0])
        if cells and kind is Kind.I:
            tail[t] = max(tail[t], tail[(s, Kind.W, j)])
    return head, tail, shortest


def _shortest(problem: Problem) -> dict[Task, int]:
    out = {}
    for t in problem.tasks():
        s, kind, _ = t
        others = problem.skeleton.stages_of_rank(problem.rank(s))
        cell_lengths = []
        if kind is Kind.F:
            cell_lengths = [problem.cell_duration(s, b, kind) for b in others for kind in CellKind]
        elif kind is Kind.I:
            cell_lengths = [problem.cell_duration(a, s, kind) for a in others for kind in CellKind]
        out[t] = min([problem.duration(t)] + cell_lengths)
    return out


def _cell_saving(problem: Problem, cell: Cell) -> int:
    """Rank time a cell saves against running its parts one after another."""
    parts = [cell.forward, cell.backward] + ([(cell.backward[0], Kind.W, cell.backward[2])] if cell.full else [])
    return sum(problem.duration(t) for t in parts) - problem.cell_duration(cell.forward[0], cell.backward[0], cell.kind)


def _serial_horizon(problem: Problem) -> int:
    """Running everything one after another, transfers included, always fits."""
    return sum(problem.duration(t) for t in problem.tasks()) + 2 * len(list(problem.microbatches)) * sum(problem.delay)


def _add_memory(model: cp_model.CpModel, problem: Problem, v: _Vars, horizon: int,
                hint: Timetable | None, minimise_peak: bool = False) -> list[str]:
    unit, exact = memory_unit(problem, horizon)
    cap = memory_cap_units(problem, unit, exact)
    notes = []
    if problem.memory_cap is None:
        cap = _peak_units(problem, hint, unit)  # nothing to respect but the schedule to improve on
    elif not exact and hint is not None:
        # Rounding demands up may push a warm start that sits exactly at the cap a few units
        # over it; keep the warm start feasible (every result is validated in bytes anyway).
        peak = _peak_units(problem, hint, unit)
        if peak > cap:
            notes.append(f"memory cap raised by {peak - cap} units of {unit:.3g} bytes (rounding) to keep the "
                         f"warm start feasible; the result is validated against the exact cap")
            cap = peak
    capacity = cap
    if minimise_peak:
        v.peak = model.NewIntVar(0, cap, "peak_activation")
        capacity = v.peak
    for r in range(problem.num_ranks):
        held, demands = [], []
        for s in problem.skeleton.stages_of_rank(r):
            demand = memory_demand_units(problem.activation(s), unit, exact)
            if demand == 0:
                continue
            for j in problem.microbatches:
                f, w = (s, Kind.F, j), (s, Kind.W, j)
                size = model.NewIntVar(0, horizon, f"held_{s}_{j}")
                held.append(model.NewIntervalVar(v.start[f], size, v.end[w], f"activation_{s}_{j}"))
                demands.append(demand)
        if held:
            model.AddCumulative(held, demands, capacity)
    return notes


def _peak_units(problem: Problem, timetable: Timetable, unit: float) -> int:
    """Largest per-rank sum of rounded-up demands held at once (F start to W end)."""
    peak = 0
    for r in range(problem.num_ranks):
        events = []
        for s in problem.skeleton.stages_of_rank(r):
            demand = memory_demand_units(problem.activation(s), unit, False)
            for j in problem.microbatches:
                events += [(timetable.start[(s, Kind.F, j)], 1, demand), (timetable.end[(s, Kind.W, j)], 0, -demand)]
        held = 0
        for _, _, delta in sorted(events):
            held += delta
            peak = max(peak, held)
    return peak


# The Cumulative's capacity is kept at or below 2^30 units: activations in bytes (1e8–1e9,
# caps ~1e10) times a decimal factor would otherwise reach 1e13, and CP-SAT's energy
# reasoning multiplies demands by durations in int64 and sums them over a rank's intervals.
# On long horizons (a DeepSeek-V3 step: millions of ticks, 64 intervals a rank) 2^30 units
# brought those sums near 2^63 and CP-SAT's presolve aborted the process ("Check failed:
# threshold > 0"), so the resolution also keeps demand × horizon × intervals under 2^52.
_MEMORY_RESOLUTION = 1 << 30
_ENERGY_LIMIT = 1 << 52


def _memory_resolution(problem: Problem, horizon: int) -> int:
    """Integer units the largest activation (or the cap) may span on this horizon."""
    intervals = max((len(problem.skeleton.stages_of_rank(r)) * len(problem.microbatches)
                     for r in range(problem.num_ranks)), default=1)
    return max(1, min(_MEMORY_RESOLUTION, _ENERGY_LIMIT // max(1, horizon * intervals)))


def memory_unit(problem: Problem, horizon: int) -> tuple[float, bool]:
    """(bytes per integer memory unit, exact?). Exact: the smallest of a few decimal
    factors that makes every activation and the cap whole, when the cap then stays within
    the resolution (`_memory_resolution`). Otherwise one unit is cap / resolution and
    demands round up, the cap down: a schedule feasible in units is feasible in bytes (a
    held activation gives away at most one unit, 1e-9 to 1e-6 of the cap)."""
    resolution = _memory_resolution(problem, horizon)
    values = [problem.activation(s) for s in range(problem.num_stages)] + [problem.memory_cap or 0.0]
    largest = max(values, default=0.0)
    for k in (1, 2, 4, 5, 8, 10, 20, 25, 50, 100, 1000):
        if largest * k <= resolution and all(abs(x * k - round(x * k)) < 1e-9 for x in values):
            return 1.0 / k, True
    return max(largest, 1e-300) / resolution, False


def memory_demand_units(activation: float, unit: float, exact: bool) -> int:
    return int(round(activation / unit)) if exact else math.ceil(activation / unit - 1e-9)


def memory_cap_units(problem: Problem, unit: float, exact: bool) -> int:
    cap = problem.memory_cap or 0.0
    return int(round(cap / unit)) if exact else math.floor(cap / unit + 1e-9)


def _add_channels(model: cp_model.CpModel, problem: Problem, v: _Vars, horizon: int) -> None:
    """(11–15) a transfer occupies its directed link for its duration, after its producer
    ends and before its consumer starts; a link carries one transfer at a time."""
    links: dict[tuple[int, int], list] = {}
    for t in problem.tasks():
        for p, delay in problem.predecessors(t):
            if delay == 0 or problem.rank(p[0]) == problem.rank(t[0]):
                continue
            name = f"{p[0]}{p[1].value}{p[2]}_to_{t[0]}"
            send = model.NewIntVar(0, horizon, f"send_{name}")
            model.Add(send >= v.end[p])
            model.Add(v.start[t] >= send + delay)
            links.setdefault((problem.rank(p[0]), problem.rank(t[0])), []).append(
                model.NewFixedSizeIntervalVar(send, delay, f"transfer_{name}"))
    for transfers in links.values():
        model.AddNoOverlap(transfers)


# ---- solve ------------------------------------------------------------------------------------
class _Progress(cp_model.CpSolverSolutionCallback):
    def __init__(self, report: Callable[[ProgressEvent], None], scale: int, started: float):
        super().__init__()
        self._report, self._scale, self._started = report, scale, started
        self.bound: float | None = None
        self.incumbent: float | None = None

    def on_solution_callback(self) -> None:
        self.incumbent = self.ObjectiveValue()
        self.bound = self.BestObjectiveBound()
        self.emit()

    def on_bound(self, bound: float) -> None:
        self.bound = bound
        self.emit()

    def emit(self) -> None:
        inc = None if self.incumbent is None else self.incumbent / self._scale
        bnd = None if self.bound is None else self.bound / self._scale
        gap = None if inc is None or bnd is None else relative_gap(inc, bnd)
        self._report(ProgressEvent(inc, bnd, gap, time.perf_counter() - self._started))


def extract_timetable(problem: Problem, solver: cp_model.CpSolver, v: _Vars, var=lambda x: x) -> Timetable:
    """The solver's timetable; `var` maps the model's variables into a clone's (LNS)."""
    tasks = problem.tasks()
    return Timetable(
        start={t: solver.Value(var(v.start[t])) for t in tasks},
        end={t: solver.Value(var(v.end[t])) for t in tasks},
        cells=tuple(c for c, lit in v.cell.items() if solver.BooleanValue(var(lit))),
    )


def relative_gap(incumbent: float, bound: float) -> float:
    """(incumbent − bound) / incumbent, 0 once the bound meets the incumbent: the gap every
    progress report shows."""
    return 0.0 if incumbent <= bound + 1e-9 else (incumbent - bound) / max(abs(incumbent), 1e-9)


# Full-problem subsolvers for portfolio="proof", in order of use (measured with two).
_PROOF_SUBSOLVERS = ("default_lp", "no_lp", "max_lp", "quick_restart", "reduced_costs", "pseudo_costs",
                     "quick_restart_no_lp", "fixed")


def solve_cpsat(
    problem: Problem,
    *,
    hint: Timetable | None,
    options: CpSatOptions,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> SolveOutcome:
    started = time.perf_counter()
    model, v, notes = build_model(problem, hint, options)
    if options.dump_path:
        model.ExportToFile(options.dump_path)
    solver = cp_model.CpSolver()
    params = solver.parameters
    safety = None if options.time_limit is None else max(0.01, options.time_limit - (time.perf_counter() - started))
    # Same seed and worker count, same answer: the budget is deterministic time (unless the
    # wall-clock safety stop fires first).
    set_cpsat_budget(params, work=options.work, safety_seconds=safety, workers=options.workers, seed=options.seed,
                     interleave=options.deterministic)
    if options.portfolio == "proof":
        params.subsolvers.extend(_PROOF_SUBSOLVERS[:max(2, options.workers)])
        params.use_lns = False
    callback = None
    if progress is not None:
        callback = _Progress(progress, problem.time_scale, started)
        solver.best_bound_callback = callback.on_bound
    code = solver.Solve(model, callback)
    status = solver.StatusName(code)
    seconds = time.perf_counter() - started
    if code == cp_model.MODEL_INVALID:
        raise AssertionError(f"CP-SAT rejected the model: {model.Validate()}")
    # The budget granted, not CP-SAT's own tally (which counts presolve and runs past the
    # limit by up to a fifth): what callers hand on stays within the work they were given.
    # Rounded: the tally's last bits differ from run to run (its threads add it up).
    spent = round(min(solver.response_proto.deterministic_time, options.work), 6)
    stopped = clock_stopped(solver, code, safety, options.work)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return SolveOutcome(status=status, timetable=None, objective=None, bound=None, seconds=seconds,
                            work=spent, clock_stopped=stopped, notes=tuple(notes))

    # ---- extract ------------------------------------------------------------------------------
    timetable = extract_timetable(problem, solver, v)
    return SolveOutcome(
        status=status,
        timetable=timetable,
        objective=int(round(solver.ObjectiveValue())),
        bound=int(round(solver.BestObjectiveBound())),
        seconds=seconds,
        work=spent,
        clock_stopped=stopped,
        notes=tuple(notes),
    )

