"""Large-neighbourhood search: re-optimise one time window of an incumbent at a time.

The full CP-SAT model of a 1,500-task instance with F&B cells finds nothing better than
its warm start within a minute on two cores; the same model with all but a window of
~100–200 tasks pinned solves in well under a second. Each step here:

  data        the incumbent timetable (canonical: FIFO per stage, as the model expects)
  window      `target` consecutive tasks by start, counted in from the end (cool-down) or
              the start (warm-up) of the incumbent: that is where the bubbles are
  pin         tasks ending before the window keep their times; the other tasks outside the
              window keep their per-rank order (they may move earlier, not swap); every cell
              touching a pinned task keeps its incumbent value; cells among free tasks are free
  objective   the makespan (a secondary "sum of ends" term made each step a weak-bound
              search that never finished; with the makespan alone a window that cannot
              help is proven so in ~0.1 s)
  solve       CP-SAT from the incumbent as a complete hint, a slice of deterministic time
  accept      a strictly better makespan; the window stays while it pays, moves inwards
              when proven exhausted (restarting 1.5× larger past the middle), and shrinks
              after a step that used its slice without gain

The budget is deterministic work (a number of windows and CP-SAT deterministic seconds),
so the same incumbent gives the same result on any machine.

The model is built once (`cpsat.build_model`) and cloned per step. The incumbent never
gets worse, so the result is never worse than the warm start.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

from ortools.sat.python import cp_model

from parplan.budget import clock_stopped, set_cpsat_budget
from parplan.mip.cpsat import CpSatOptions, ProgressEvent, build_model, extract_timetable
from parplan.mip.problem import Problem, Task
from parplan.mip.timetable import Cell, Timetable
from parplan.schedule.ir import Kind

__all__ = ["LnsOutcome", "improve"]

# Above this many tasks the sub-solves run without CP-SAT's LP relaxation: on a 6,144-task
# window model the LP workers (default_lp, feasibility_pump) sat 15–18 s in loading it,
# past a 3–5 s limit and without a single branch; the LP-free portfolio keeps the limit.
_NO_LP_TASKS = 2000


@dataclass(frozen=True, kw_only=True, slots=True)
class LnsOutcome:
    timetable: Timetable
    objective: int  # integer time units; the incumbent's when nothing better was found
    improved: bool
    steps: int
    improving_steps: int
    seconds: float
    work: float  # deterministic seconds spent in the sub-solves
    clock_stopped: bool  # the wall-clock safety stop ended the search before its work budget


def improve(
    problem: Problem,
    incumbent: Timetable,
    *,
    options: CpSatOptions,
    work: float,
    deadline: float | None = None,
    target: int = 150,
    step_work: float = 0.5,
    max_steps: int = 400,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> LnsOutcome:
    """Windowed re-optimisation of `incumbent` for `work` deterministic seconds of CP-SAT
    (at most `max_steps` windows, `step_work` each); `deadline` (a `time.perf_counter()`
    value) is only a safety stop. Same inputs, same windows, same result."""
    started = time.perf_counter()
    # ---- data: one model, horizon = the incumbent's makespan --------------------------------
    model, v, _ = build_model(problem, incumbent, dataclasses.replace(options, whole_model_symmetry=False))
    tasks = problem.tasks()
    best = incumbent
    best_value = first_value = _value(problem, best, options)
    steps = improving = 0
    spent = 0.0
    stopped = False
    target = min(target, len(tasks))
    offset = {"tail": 0, "head": 0}
    side = "tail"
    while steps < max_steps and work - spent >= 0.01:
        if deadline is not None and time.perf_counter() >= deadline:
            stopped = True
            break
        free = _window(tasks, best, side, offset[side], target)
        sub, var = _window_model(problem, model, v, best, free, options)
        # ---- solve: one window, a slice of the work ---------------------------------------------
        steps += 1
        solver = cp_model.CpSolver()
        params = solver.parameters
        step = min(step_work, work - spent)
        safety = None if deadline is None else deadline - time.perf_counter()
        set_cpsat_budget(params, work=step, safety_seconds=safety, workers=options.workers, seed=options.seed + steps,
                         interleave=options.deterministic)
        if len(tasks) > _NO_LP_TASKS:
            params.subsolvers.append("no_lp")
            params.ignore_subsolvers.append("feasibility_pump")
        code = solver.Solve(sub)
        spent += round(min(solver.response_proto.deterministic_time, step), 6)
        stopped = stopped or clock_stopped(solver, code, safety, step)
        found = code in (cp_model.OPTIMAL, cp_model.FEASIBLE)
        better = False
        if found:
            candidate = extract_timetable(problem, solver, v, var)
            value = _value(problem, candidate, options)
            if value < best_value:
                best, best_value, better = candidate, value, True
                improving += 1
                if progress is not None:
                    progress(ProgressEvent(value / problem.time_scale, None, None, time.perf_counter() - started))
        # ---- next window: stay while it pays, else move inwards / grow / shrink ---------------------
        if code == cp_model.OPTIMAL and not better and len(free) == len(tasks):
            break  # the window was the whole model: the incumbent is optimal
        if code == cp_model.OPTIMAL and not better:
            # this window is exhausted: move it inwards; past the middle, restart larger
            offset[side] += max(1, target // 2)
            if offset[side] + target > len(tasks) // 2 + target // 2:
                offset[side] = 0
                target = min(len(tasks), int(target * 1.5))
        elif not found or (not better and code != cp_model.OPTIMAL):
            target = max(30, int(target * 0.7))
        if not better:
            side = "head" if side == "tail" else "tail"
    return LnsOutcome(timetable=best, objective=best_value, improved=best_value < first_value, steps=steps,
                      improving_steps=improving, seconds=time.perf_counter() - started, work=spent,
                      clock_stopped=stopped)


def _window(tasks: list[Task], best: Timetable, side: str, offset: int, target: int) -> set[Task]:
    """`target` consecutive tasks by start, `offset` tasks in from one end of the incumbent."""
    order = sorted(tasks, key=lambda t: (best.start[t], best.end[t]))
    if side == "tail":
        order.reverse()
    lo = min(offset, max(0, len(order) - target))
    return set(order[lo:lo + target])


def _window_model(problem: Problem, model: cp_model.CpModel, v, best: Timetable, free: set[Task],
                  options: CpSatOptions) -> tuple[cp_model.CpModel, Callable]:
    """A clone of the full model with everything outside the window pinned, and `var`,
    which maps the full model's variables to the clone's."""
    sub = model.clone()
    sub.clear_hints()
    var = lambda x: sub.get_int_var_from_proto_index(x.Index())  # noqa: E731
    t0 = min(best.start[t] for t in free)
    for t in problem.tasks():
        if t not in free and best.end[t] <= t0:
            sub.Add(var(v.start[t]) == best.start[t])
    _pin_order(problem, best, free, sub, v, var)
    hinted = set(best.cells)
    for cell, lit in v.cell.items():
        if not all(p in free for p in _parts(cell)):
            sub.Add(var(lit) == int(cell in hinted))
    for t, alone in v.alone.items():
        if alone is not True and t not in free:
            sub.Add(var(alone) == int(not any(_touches(c, t) for c in hinted)))
    sub.Minimize(var(v.objective))
    _hint(sub, problem, best, v, var, options)
    return sub, var


def _value(problem: Problem, timetable: Timetable, options: CpSatOptions) -> int:
    if options.objective == "makespan":
        return timetable.makespan
    spans = []
    for r in range(problem.num_ranks):
        mine = problem.tasks_of_rank(r)
        first = min(timetable.start[t] for t in mine if t[1] is Kind.F)
        spans.append(max(timetable.end[t] for t in mine if t[1] is Kind.W) - first)
    return max(spans)


def _parts(cell: Cell) -> list[Task]:
    return [cell.forward, cell.backward] + ([(cell.backward[0], Kind.W, cell.backward[2])] if cell.full else [])


def _touches(cell: Cell, task: Task) -> bool:
    return task in _parts(cell)


def _pin_order(problem: Problem, best: Timetable, free: set[Task], sub: cp_model.CpModel, v, var) -> None:
    """Outside the window each rank keeps its incumbent order: consecutive pinned items
    (a task, or a cell's shared interval) stay in sequence but may move earlier."""
    for r in range(problem.num_ranks):
        items = sorted(((best.start[t], best.end[t], t) for t in problem.tasks_of_rank(r) if t not in free))
        previous = None
        for start, end, t in items:
            if previous is not None and (previous[0], previous[1]) != (start, end):
                sub.Add(var(v.start[t]) >= var(v.end[previous[2]]))
            if previous is None or (previous[0], previous[1]) != (start, end):
                previous = (start, end, t)


def _hint(sub: cp_model.CpModel, problem: Problem, best: Timetable, v, var, options: CpSatOptions) -> None:
    hinted = set(best.cells)
    for t in problem.tasks():
        sub.AddHint(var(v.start[t]), best.start[t])
        sub.AddHint(var(v.end[t]), best.end[t])
        if v.alone[t] is not True:
            sub.AddHint(var(v.alone[t]), not any(_touches(c, t) for c in hinted))
    for cell, lit in v.cell.items():
        sub.AddHint(var(lit), cell in hinted)
    sub.AddHint(var(v.objective), _value(problem, best, options))
