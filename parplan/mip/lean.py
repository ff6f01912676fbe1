"""The memory pass's scalable steps: the same makespan at a lower activation peak.

The makespan objective does not see memory below the cap, so a makespan-optimal schedule
may hold far more than it needs. Two steps here need no solver and serve models of any
size; `api._memory_pass` runs them before CP-SAT minimises the peak exactly:

* `leaner_list_schedule`: the list schedule (`greedy.py`) under caps stepped down from
  the peak; the leanest that still meets the makespan.
* `pull_frees_forward`: a local search on the schedule itself. A rank's activation level
  rises at each F's start and falls at each W's end (a B's when the backward is not
  split), in the order the rank runs them, so its peak depends on its order only. On the
  ranks with the highest peaks, a later W (or such a B; F&B cells stay whole) is moved
  to just before the F where the rank first reaches its peak; the move is kept when the
  simulated makespan does not grow and (largest peak, sum of peaks) falls. It stops at a
  local optimum or after a fixed number of simulated moves (a work bound, so the result
  does not depend on the machine).
"""

from __future__ import annotations

import dataclasses
import time

from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.mip.greedy import greedy_timetable
from parplan.mip.problem import Problem
from parplan.mip.timetable import to_schedule
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.simulate import SimResult, costs_for_schedule, simulate, split_pairs
from parplan.schedule.validate import ScheduleError, validate

_LEAN_STEPS = 8  # caps tried by the list schedules, from the smallest feasible up


def if_leaner(problem: Problem, schedule: Schedule, makespan: float,
              least: float) -> tuple[Schedule, SimResult] | None:
    """`schedule` with its simulation when it is valid under the problem's cap, no longer
    than `makespan` and holds strictly less than `least` at its largest per-rank peak: the
    one rule by which the memory pass keeps a candidate."""
    try:
        sim = validate(schedule, problem.model_costs, memory_cap=problem.memory_cap)
    except ScheduleError:
        return None  # a list schedule or solver order re-timed with rounded costs
    if sim.makespan <= makespan + 1e-9 and max(sim.peak_activation_per_rank) < least - 1e-9:
        return schedule, sim
    return None


def leaner_list_schedule(problem: Problem, makespan: float, peak: float) -> tuple[Schedule, SimResult] | None:
    """The list schedule under caps stepped down from `peak` to the smallest feasible one:
    the leanest that still meets `makespan`, with its simulation, or None."""
    floor = problem.smallest_feasible_cap()
    best, least = None, peak
    for k in range(_LEAN_STEPS):
        tighter = dataclasses.replace(problem, memory_cap=floor + (peak - floor) * k / _LEAN_STEPS)
        for window in (False, True):
            found = if_leaner(problem, to_schedule(problem, greedy_timetable(tighter, window=window)), makespan, least)
            if found is not None:
                best, least = found, max(found[1].peak_activation_per_rank)
    return best


def pull_frees_forward(schedule: Schedule, costs: PipelineCosts, *, makespan: float, max_trials: int,
                       deadline: float | None = None) -> tuple[Schedule, SimResult] | None:
    """A reordering of `schedule` no longer than `makespan` whose largest per-rank
    activation peak is strictly lower, with its simulation, or None (module docstring).
    At most `max_trials` reorderings are simulated; `deadline` (a `time.perf_counter()`
    value) is only a safety stop."""
    staged = costs_for_schedule(schedule, costs)
    split = split_pairs(schedule)
    sim = simulate(schedule, costs)
    start_peak = max(sim.peak_activation_per_rank)
    tolerance = 1e-9 * max(1.0, start_peak)

    def better(new: SimResult, old: SimResult) -> bool:
        a, b = new.peak_activation_per_rank, old.peak_activation_per_rank
        return max(a) < max(b) - tolerance or (max(a) <= max(b) + tolerance and sum(a) < sum(b) - tolerance)

    def frees(action: Action) -> bool:
        """A plain W, or a plain B where that micro-batch's backward is not split."""
        return (action.kind is Kind.W
                or (action.kind is Kind.B and (action.stage, action.microbatch) not in split))

    trials = 0

    def out_of_work() -> bool:
        return trials >= max_trials or (deadline is not None and time.perf_counter() > deadline)

    def improving_move(rank: int) -> tuple[Schedule, SimResult] | None:
        nonlocal trials
        order = schedule.orders[rank]
        p = _first_peak(order, staged.activation, frees, tolerance)
        backward_done = {(a.stage, a.microbatch) for x in order[:p] for a in x.atoms if a.kind is Kind.I}
        for q in range(p + 1, len(order)):
            if out_of_work():
                return None
            action = order[q]
            if not frees(action) or (action.kind is Kind.W and (action.stage, action.microbatch) not in backward_done):
                continue  # a W must stay after its own I, which runs on this rank
            moved = order[:p] + (action,) + order[p:q] + order[q + 1:]
            candidate = dataclasses.replace(schedule, orders=schedule.orders[:rank] + (moved,)
                                            + schedule.orders[rank + 1:])
            trials += 1
            try:
                trial = simulate(candidate, costs)
            except ParplanError:  # a B moved ahead of a gradient it waits for: deadlock
                continue
            if trial.makespan <= makespan + 1e-9 * max(1.0, makespan) and better(trial, sim):
                return candidate, trial
        return None

    # A rank whose scan failed is skipped until no other rank can move; then all are
    # scanned again (moves elsewhere change the timing), so the result is a local optimum.
    stuck: set[int] = set()
    while not out_of_work():
        peaks = sim.peak_activation_per_rank
        ranks = [r for r in sorted(range(schedule.num_ranks), key=lambda r: (-peaks[r], r)) if r not in stuck]
        moved = False
        for rank in ranks:
            found = improving_move(rank)
            if found is not None:
                (schedule, sim), moved = found, True
                break
            stuck.add(rank)
        if not moved:
            if len(ranks) == schedule.num_ranks:
                break  # every rank scanned since the last move: a local optimum
            stuck.clear()
    if max(sim.peak_activation_per_rank) < start_peak - tolerance:
        return schedule, sim
    return None


def _first_peak(order: tuple[Action, ...], activation, frees, tolerance: float) -> int:
    """Index of the action at whose start the rank's activation level first reaches its peak."""
    level, levels = 0.0, []
    for action in order:
        atoms = action.atoms
        level += sum(activation[a.stage] for a in atoms if a.kind is Kind.F)
        levels.append(level)
        level -= sum(activation[a.stage] for a in atoms if frees(a))
    top = max(levels)
    return next(k for k, v in enumerate(levels) if v >= top - tolerance)
