"""`solve_schedule`: the lower-level MIP scheduler as one call.

Pass order: placement → problem (integer times, memory and parameter checks) → warm
starts (baselines of that placement feasible under the cap, plus the always-feasible
serial order) → solver (CP-SAT, or the Pyomo big-M model on HiGHS) → schedule → validate
→ simulate. The returned schedule is the better of the solver's and the warm start's, so
it is never worse than the best baseline of its placement under the same cap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

from parplan.baselines import build_baseline
from parplan.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.mip.cpsat import CpSatOptions, ProgressEvent, problem_bounds, rank_lower_bound, solve_cpsat
from parplan.mip.problem import PLACEMENTS, Problem, build_problem, check_param_cap, num_model_stages
from parplan.mip.timetable import canonical, from_schedule, to_schedule, without_cells
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.simulate import SimResult
from parplan.schedule.validate import ScheduleError, validate

__all__ = ["MipResult", "ProgressEvent", "solve_schedule", "serial_schedule", "WARM_STARTS"]

# Baselines that run on each placement (same stage→rank map, so they can seed the model).
WARM_STARTS: dict[str, tuple[str, ...]] = {
    "dualpipe": ("dualpipe",),
    "v": ("dualpipev", "zb-v"),
    "loop": ("interleaved-1f1b",),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MipResult:
    schedule: Schedule
    simulation: SimResult
    status: str  # OPTIMAL | FEASIBLE | WARM_START_ONLY
    objective: float  # simulated makespan (or longest rank span for objective="throughput")
    bound: float | None  # proven lower bound on the objective, same units
    gap: float | None  # (objective − bound) / objective
    solve_seconds: float
    warm_start: str  # name of the schedule that seeded the solver
    placement: str
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class _Warm:
    name: str
    schedule: Schedule
    simulation: SimResult


def solve_schedule(
    *,
    num_ranks: int,
    num_microbatches: int,
    costs: PipelineCosts | None = None,
    placement: Literal["dualpipe", "v", "loop", "auto"] = "dualpipe",
    memory_cap: float | None = None,
    param_cap: float | None = None,
    time_limit: float = 60.0,
    seed: int = 0,
    workers: int = 2,
    solver: Literal["cpsat", "highs"] = "cpsat",
    objective: Literal["makespan", "throughput"] = "makespan",
    progress: Callable[[ProgressEvent], None] | None = None,
    rank_costs: Callable[[int], PipelineCosts] | None = None,
    dump_model: str | None = None,
    link_contention: bool = False,
) -> MipResult:
    """Order and time every task of a pipeline on `num_ranks` ranks.

    `costs` are per model stage of the placement (DualPipe: N stages, v/loop: 2N); or
    give `rank_costs(S)` returning costs for S model stages (needed for placement='auto',
    which tries each placement within the time limit and keeps the best). `dump_model`
    writes the solver's model (CP-SAT: .pb/.pbtxt; HiGHS: .lp/.mps) before solving.
    """
    _check_options(placement=placement, time_limit=time_limit, workers=workers, solver=solver,
                   objective=objective, costs=costs, rank_costs=rank_costs)
    if placement != "auto":
        chosen = (placement,)
    else:
        chosen = tuple(p for p in PLACEMENTS if not (p == "dualpipe" and (num_ranks % 2 or num_microbatches % 2)))
        if rank_costs is None:
            chosen = tuple(p for p in chosen if num_model_stages(p, num_ranks) == costs.num_stages)
        if not chosen:
            raise ParplanError(
                f"placement 'auto' found no placement for costs of {costs.num_stages} stages on "
                f"{num_ranks} ranks; pass rank_costs so each placement gets costs for its own stage count"
            )
    started = time.perf_counter()
    results = []
    for k, name in enumerate(chosen):
        remaining = time_limit - (time.perf_counter() - started)
        share = max(0.5, remaining / (len(chosen) - k))
        placement_costs = rank_costs(num_model_stages(name, num_ranks)) if rank_costs is not None else costs
        results.append(_solve_one(
            placement=name, num_ranks=num_ranks, num_microbatches=num_microbatches, costs=placement_costs,
            memory_cap=memory_cap, param_cap=param_cap, time_limit=share, seed=seed, workers=workers,
            solver=solver, objective=objective, progress=progress, dump_model=dump_model,
            link_contention=link_contention,
        ))
    best = min(results, key=lambda r: r.objective)
    if len(results) > 1:
        tried = ", ".join(f"{r.placement}: {r.objective:g} ({r.status})" for r in results)
        best = _with_notes(best, f"placement auto tried {tried}; kept {best.placement}",
                           solve_seconds=time.perf_counter() - started)
    return best


def _check_options(*, placement, time_limit, workers, solver, objective, costs, rank_costs) -> None:
    if placement not in (*PLACEMENTS, "auto"):
        raise ParplanError(f"--placement {placement!r} is unknown; choose one of {', '.join(PLACEMENTS)}, auto")
    if not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ParplanError(f"--time-limit {time_limit!r} is invalid: give a positive number of seconds")
    if not (isinstance(workers, int) and workers >= 1):
        raise ParplanError(f"workers = {workers!r} is invalid: need an integer >= 1")
    if solver not in ("cpsat", "highs"):
        raise ParplanError(f"--solver {solver!r} is unknown; choose cpsat or highs")
    if objective not in ("makespan", "throughput"):
        raise ParplanError(f"objective {objective!r} is unknown; choose makespan or throughput")
    if costs is None and rank_costs is None:
        raise ParplanError("solve_schedule needs costs (per model stage) or rank_costs(num_stages)")


def _solve_one(*, placement: str, num_ranks: int, num_microbatches: int, costs: PipelineCosts,
               memory_cap: float | None, param_cap: float | None, time_limit: float, seed: int,
               workers: int, solver: str, objective: str, progress, dump_model: str | None,
               link_contention: bool) -> MipResult:
    started = time.perf_counter()
    problem = build_problem(placement=placement, num_ranks=num_ranks, num_microbatches=num_microbatches,
                            costs=costs, memory_cap=memory_cap)
    check_param_cap(problem, param_cap)
    notes = list(problem.notes)
    use_cells = problem.cells_help
    warm = _best_warm_start(problem, use_cells, objective, notes)
    hint = canonical(problem, from_schedule(problem, warm.schedule), fifo_weights=not use_cells)
    scale = problem.time_scale

    # Fast path: a warm start that meets the lower bound is optimal; no search needed.
    if solver == "cpsat" and not use_cells and objective == "makespan" and not link_contention:
        head, tail = problem_bounds(problem, cells=False)
        lower = rank_lower_bound(problem, head, tail)
        if hint.makespan <= lower and problem.exact_times:
            notes.append(f"the warm start meets the per-rank lower bound {lower / scale:g}: optimal without search")
            return _result(problem, warm.schedule, "OPTIMAL", lower / scale, warm.name, notes,
                           time.perf_counter() - started, objective)

    if solver == "cpsat":
        outcome = solve_cpsat(problem, hint=hint, options=CpSatOptions(
            time_limit=max(0.05, time_limit - (time.perf_counter() - started)), seed=seed, workers=workers,
            objective=objective, link_contention=link_contention, dump_path=dump_model,
        ), progress=progress)
    else:
        from parplan.mip.bigm import solve_bigm

        outcome = solve_bigm(problem, hint=hint, time_limit=max(0.05, time_limit - (time.perf_counter() - started)),
                             objective=objective, dump_path=dump_model, link_contention=link_contention)
    notes += outcome.notes
    bound = None if outcome.bound is None else outcome.bound / scale
    if outcome.timetable is None:
        notes.append(f"the {solver} search ended ({outcome.status}) without a solution; returning the warm start "
                     f"{warm.name!r}")
        return _result(problem, warm.schedule, "WARM_START_ONLY", bound, warm.name, notes,
                       time.perf_counter() - started, objective)
    schedule = to_schedule(problem, outcome.timetable)
    try:
        candidate = validate(schedule, problem.model_costs, memory_cap=memory_cap)
    except ScheduleError as err:  # only with rounded times: the exact re-timing may break the cap
        assert not problem.exact_times, f"solver schedule failed validation: {err}"
        notes.append(f"the solver's order broke an invariant under exact costs; returning the warm start ({err})")
        return _result(problem, warm.schedule, "WARM_START_ONLY", None, warm.name, notes,
                       time.perf_counter() - started, objective)
    status = "OPTIMAL" if outcome.status == "OPTIMAL" else "FEASIBLE"
    if _objective(candidate, objective) > _objective(warm.simulation, objective) + 1e-9:
        notes.append(f"the solver's best ({_objective(candidate, objective):g}) is worse than the warm start "
                     f"{warm.name!r} ({_objective(warm.simulation, objective):g}) under exact costs; returning the warm start")
        schedule, status = warm.schedule, "WARM_START_ONLY"
    return _result(problem, schedule, status, bound, warm.name, notes, time.perf_counter() - started, objective)


def _objective(sim: SimResult, objective: str) -> float:
    if objective == "makespan":
        return sim.makespan
    return max((row[-1].end - row[0].start for row in sim.timeline if row), default=0.0)


def _result(problem: Problem, schedule: Schedule, status: str, bound: float | None, warm_name: str,
            notes: list[str], seconds: float, objective: str) -> MipResult:
    schedule = _renamed(schedule, "mip")
    sim = validate(schedule, problem.model_costs, memory_cap=problem.memory_cap)
    value = _objective(sim, objective)
    if bound is not None and problem.exact_times:
        bound = min(bound, value)  # the bound is on the integer model; exact costs agree
    gap = None if bound is None else (0.0 if value <= 0 else max(0.0, (value - bound) / value))
    return MipResult(
        schedule=schedule, simulation=sim, status=status, objective=value, bound=bound, gap=gap,
        solve_seconds=seconds, warm_start=warm_name, placement=problem.placement, notes=tuple(notes),
    )


def _with_notes(result: MipResult, note: str, *, solve_seconds: float) -> MipResult:
    return MipResult(
        schedule=result.schedule, simulation=result.simulation, status=result.status, objective=result.objective,
        bound=result.bound, gap=result.gap, solve_seconds=solve_seconds, warm_start=result.warm_start,
        placement=result.placement, notes=(*result.notes, note),
    )


def _renamed(schedule: Schedule, name: str) -> Schedule:
    return Schedule(name=name, stage_to_rank=schedule.stage_to_rank,
                    microbatches_per_chain=schedule.microbatches_per_chain, orders=schedule.orders,
                    chains=schedule.chains, model_stage=schedule.model_stage)


# ---- warm starts ------------------------------------------------------------------------
def _best_warm_start(problem: Problem, use_cells: bool, objective: str, notes: list[str]) -> _Warm:
    """The best schedule of this placement that runs under the cap: its baselines, each
    also with its F&B cells run apart (never slower when cells gain nothing), and the
    one-micro-batch-at-a-time serial order, which always fits the smallest feasible cap."""
    sk = problem.skeleton
    m_total = sk.microbatches_per_chain * len(sk.chains)
    candidates: list[tuple[str, Schedule]] = []
    for name in WARM_STARTS[problem.placement]:
        try:
            base = build_baseline(name, problem.num_ranks, m_total)
        except ParplanError:
            continue  # e.g. M < 2N for DualPipe: that baseline does not exist here
        has_cells = any(a.kind is Kind.OVERLAP_F_B for o in base.orders for a in o)
        if has_cells:
            candidates.append((f"{name} (cells split)", without_cells(base)))
            if use_cells:
                candidates.append((name, base))
        else:
            candidates.append((name, base))
    candidates.append(("serial", serial_schedule(problem)))
    feasible: list[_Warm] = []
    for name, schedule in candidates:
        try:
            sim = validate(schedule, problem.model_costs, memory_cap=problem.memory_cap)
        except ScheduleError:
            notes.append(f"warm start {name!r} exceeds the memory cap {problem.memory_cap:g}; skipped")
            continue
        feasible.append(_Warm(name, schedule, sim))
    assert feasible, "the serial order always fits the smallest feasible cap"
    return min(feasible, key=lambda w: (_objective(w.simulation, objective), w.name == "serial"))


def serial_schedule(problem: Problem) -> Schedule:
    """One micro-batch at a time, chain after chain: F's down the chain, I's back up, then
    the W's. Each rank holds at most one micro-batch per chain at once."""
    sk = problem.skeleton
    orders: list[list[Action]] = [[] for _ in range(problem.num_ranks)]
    for chain in sk.chains:
        for j in problem.microbatches:
            for s in chain:
                orders[sk.stage_to_rank[s]].append(Action(s, Kind.F, j))
            for s in reversed(chain):
                orders[sk.stage_to_rank[s]].append(Action(s, Kind.I, j))
            for s in chain:
                orders[sk.stage_to_rank[s]].append(Action(s, Kind.W, j))
    return Schedule(name="serial", stage_to_rank=sk.stage_to_rank, microbatches_per_chain=sk.microbatches_per_chain,
                    orders=orders, chains=sk.chains, model_stage=sk.model_stage)

