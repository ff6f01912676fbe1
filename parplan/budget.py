"""Search budgets: bounded by work, not by the clock.

The same model, cluster, options, seed and worker count must give the same plan on any
machine and under any load, so every search phase is bounded by work:

* CP-SAT runs under `max_deterministic_time` (its own count of work done, identical from
  run to run for a fixed seed and worker count, since the multi-worker search interleaves
  its workers deterministically);
* the heuristics around it run a fixed number of trials, windows or moves.

`work` is counted in CP-SAT deterministic seconds; on the reference 2-core machine one
of them takes a few wall seconds (the ratio depends on the model), so `--effort normal`
plans the README's default job in about a minute there. A wall-clock limit remains as a
safety stop (`SafetyStop`): when it fires, the phase it cut is recorded and the result
says it stopped early — the only way a plan can then depend on the machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from parplan.errors import ParplanError

__all__ = ["EFFORT_LEVELS", "SafetyStop", "effort_work", "check_work", "clock_stopped", "set_cpsat_budget"]

# CP-SAT deterministic seconds for the whole plan (every solver phase together), by level.
EFFORT_LEVELS: dict[str, float] = {"quick": 2.0, "normal": 8.0, "thorough": 32.0}


def effort_work(effort: str | float) -> float:
    """The work budget an `--effort` value names: a level, or a positive number of
    deterministic seconds."""
    if not isinstance(effort, str):
        return check_work(effort, "--effort")
    if effort in EFFORT_LEVELS:
        return EFFORT_LEVELS[effort]
    try:
        value = float(effort)
    except ValueError:
        raise ParplanError(
            f"--effort {effort!r} is unknown; use one of {', '.join(EFFORT_LEVELS)} or a positive number "
            f"of CP-SAT deterministic seconds (normal = {EFFORT_LEVELS['normal']:g})") from None
    if not (math.isfinite(value) and value > 0):
        raise ParplanError(f"--effort {effort} is invalid: the work budget must be a positive number of "
                           f"deterministic seconds (e.g. {EFFORT_LEVELS['normal']:g}), or quick, normal, thorough")
    return value


def check_work(work: float, flag: str = "work") -> float:
    if isinstance(work, bool) or not isinstance(work, (int, float)) or not math.isfinite(work) or work <= 0:
        raise ParplanError(f"{flag} {work!r} is invalid: the work budget must be a positive number of "
                           f"deterministic seconds (e.g. {EFFORT_LEVELS['normal']:g})")
    return float(work)


@dataclass(kw_only=True, slots=True)
class SafetyStop:
    """A wall-clock limit that only guards against a runaway search.

    Phases ask `left()` for the seconds they may still run and call `fired(phase)` when the
    clock, not their work budget, ended them; `cut` then names every phase it cut, in order."""

    seconds: float | None  # None: no wall-clock limit
    started: float = field(default_factory=time.perf_counter)
    cut: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seconds is not None and not (isinstance(self.seconds, (int, float)) and self.seconds > 0):
            raise ParplanError(f"--time-limit {self.seconds!r} is invalid: give a positive number of seconds "
                               f"(it is a safety stop; the work budget is --effort)")

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.perf_counter() - self.started)

    def expired(self) -> bool:
        return self.left() <= 0

    def fired(self, phase: str) -> None:
        if phase not in self.cut:
            self.cut.append(phase)

    @property
    def note(self) -> str | None:
        if not self.cut:
            return None
        return (f"stopped early: the time limit of {self.seconds:g} s fired in {', '.join(self.cut)}; this plan "
                f"depends on the machine's speed — raise --time-limit (or lower --effort) for a reproducible one")


def clock_stopped(solver, code: int, safety: float | None, work: float) -> bool:
    """Did the wall-clock safety stop, rather than the work budget, end this CP-SAT solve?"""
    from ortools.sat.python import cp_model

    if safety is None or code in (cp_model.OPTIMAL, cp_model.INFEASIBLE):
        return False
    return solver.WallTime() >= 0.98 * safety and solver.response_proto.deterministic_time < 0.98 * work


def set_cpsat_budget(params, *, work: float, safety_seconds: float | None, workers: int, seed: int,
                     interleave: bool = True) -> None:
    """A CP-SAT solve bounded by work: deterministic time, a fixed worker count whose
    workers interleave deterministically (one task per worker in each batch: a batch of one
    ran the workers one at a time, on one core), and the wall clock only as a safety stop."""
    params.max_deterministic_time = work
    if safety_seconds is not None:
        params.max_time_in_seconds = max(0.01, safety_seconds)
    params.num_workers = workers
    params.random_seed = seed
    params.interleave_search = interleave and workers > 1
    params.interleave_batch_size = workers
