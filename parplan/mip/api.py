"""`solve_schedule`: the lower-level MIP scheduler as one call.

Pass order: placement → problem (integer times, memory and parameter checks) → warm
starts (baselines of that placement feasible under the cap, plus the always-feasible
serial order) → static lower bound → solver (CP-SAT on the full model, then windowed LNS
on large instances; or the Pyomo big-M model on HiGHS) → schedule → validate → simulate,
all within one deadline of `time_limit` seconds. The returned schedule is the better of
the solver's and the warm start's, so it is never worse than the best baseline of its
placement under the same cap (with placement='auto': of any placement).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

from parplan.baselines import build_baseline
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.mip.cpsat import (
    CpSatOptions, ProgressEvent, makespan_lower_bound, solve_cpsat,
)
from parplan.mip.greedy import greedy_timetable
from parplan.mip.lean import if_leaner, leaner_list_schedule, pull_frees_forward
from parplan.mip.problem import PLACEMENTS, Problem, build_problem, check_param_cap, num_model_stages
from parplan.mip.timetable import Timetable, canonical, from_schedule, to_schedule, without_cells
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.simulate import SimResult
from parplan.schedule.validate import ScheduleError, validate

__all__ = ["MemoryPass", "MipResult", "ProgressEvent", "solve_schedule", "lower_memory", "serial_schedule",
           "WARM_STARTS"]

# Baselines that run on each placement (same stage→rank map, so they can seed the model).
WARM_STARTS: dict[str, tuple[str, ...]] = {
    "dualpipe": ("dualpipe",),
    "v": ("dualpipev", "zb-v"),
    "loop": ("interleaved-1f1b",),
    "chain": ("1f1b", "zb-h1", "zb-h2", "gpipe"),
}

# `cells=`: which F&B cells the model may form (CpSatOptions.cell_kinds; True = full B).
# DualPipe's cells run a full B; an (F;I) cell leaves the W free to fill a bubble later.
CELL_KINDS: dict[str, tuple[bool, ...]] = {"fb": (True,), "any": (False, True)}

# Seconds kept back from the search for turning its timetable into a validated, simulated
# schedule (twice: candidate and result), so that the whole call ends by its deadline.
_RESERVE_SECONDS = 0.3
_RESERVE_PER_TASK = 6e-4
# Up to this many tasks the whole model gets the whole search time; above it the full
# model runs first (it proves small instances and gives the bound), then windowed LNS
# (lns.py) improves its best for the rest: a 1,500-task model finds little on its own.
_FULL_MODEL_TASKS = 200
_FULL_MODEL_SHARE = {800: 0.6, None: 0.3}  # share of the search time by task count
# Up to this many tasks CP-SAT runs its proof portfolio (no LNS of its own): it proved
# 4x8 and 6x8 cell models (96, 144 tasks) within 60 s, and found as good or better
# schedules than the default on 4x10 and 4x12 (proven by neither); at 192 the default
# one's LNS found the better schedules (docs/mip.md §3, "Search portfolio").
_PROOF_PORTFOLIO_TASKS = 150


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryPass:
    """What the memory pass did (`lower_memory`; `solve_schedule(minimise_memory=True)`
    puts its `note` in the result's notes). Peaks are the largest per-rank activation, in
    the cost model's units (bytes from the planner)."""

    schedule: Schedule  # the schedule to keep: the given one unless `lowered`
    lowered: bool  # a schedule no longer and holding strictly less was found
    ran: bool  # False: under 0.5 s was left, nothing was tried
    solver_status: str | None  # the CP-SAT max-peak model's status (None when not run)
    solver_seconds: float
    peak_before: float
    peak_after: float
    makespan_before: float
    makespan_after: float

    @property
    def head(self) -> str:
        return f"memory pass ({self.solver_status}, {self.solver_seconds:.1f} s)" if self.ran else "memory pass"

    @property
    def note(self) -> str:
        if not self.ran:
            return "memory pass skipped: under 0.5 s left; raise the time limit"
        if not self.lowered:
            return f"{self.head}: no lower peak than {self.peak_before:g} at this makespan"
        at = f"makespan {self.makespan_before:g}"
        if self.makespan_after < self.makespan_before - 1e-9:
            at += f" -> {self.makespan_after:g} (shorter too)"
        return f"{self.head}: largest per-rank activation peak {self.peak_before:g} -> {self.peak_after:g} at {at}"


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


@dataclass(frozen=True, kw_only=True, slots=True)
class _Prepared:
    """One placement ready to search: problem, best warm start, its hint, static bound."""

    problem: Problem
    warm: _Warm
    hint: Timetable
    use_cells: bool
    cell_kinds: tuple[bool, ...]  # which F&B cells the model may form (CpSatOptions.cell_kinds)
    lower: int  # integer-time lower bound on the makespan known before any search
    notes: tuple[str, ...]


def solve_schedule(
    *,
    num_ranks: int,
    num_microbatches: int,
    costs: PipelineCosts | None = None,
    placement: Literal["dualpipe", "v", "loop", "chain", "auto"] = "dualpipe",
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
    lns: bool = True,
    cells: Literal["fb", "any"] = "fb",
    minimise_memory: bool = False,
) -> MipResult:
    """Order and time every task of a pipeline on `num_ranks` ranks, within `time_limit`
    seconds of wall time in all (model building and re-timing included).

    `costs` are per model stage of the placement (dualpipe and chain: N stages, v/loop:
    2N); or give `rank_costs(S)` returning costs for S model stages (needed for
    placement='auto' across stage counts). 'auto' prepares every placement, drops those
    whose lower bound cannot beat the best warm start, gives the rest a short search each
    and the best one the remaining time. `lns=False` keeps the search to the full model.
    `dump_model` writes the solver's model (CP-SAT: .pb/.pbtxt; HiGHS: .lp/.mps).
    `cells` (when the costs make F&B cells shorter): 'fb' pairs an F with a full backward,
    as DualPipe does; 'any' may also pair it with an I alone, the W then running apart.
    `minimise_memory`: the search keeps a quarter of `time_limit` back, and the memory
    pass uses it (with whatever the search left over, up to a quarter in all) to find the
    same makespan at a lower largest per-rank activation peak (the makespan objective does
    not see memory below the cap; the planner runs the pass on the plan it keeps).
    """
    started = time.perf_counter()
    deadline = started + time_limit if isinstance(time_limit, (int, float)) else started
    _check_options(placement=placement, time_limit=time_limit, workers=workers, solver=solver,
                   objective=objective, costs=costs, rank_costs=rank_costs, cells=cells)
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
    search = dict(seed=seed, workers=workers, solver=solver, objective=objective, progress=progress,
                  dump_model=dump_model, link_contention=link_contention, lns=lns)
    prepared = [
        _prepare(placement=name, num_ranks=num_ranks, num_microbatches=num_microbatches,
                 costs=rank_costs(num_model_stages(name, num_ranks)) if rank_costs is not None else costs,
                 memory_cap=memory_cap, param_cap=param_cap, objective=objective, link_contention=link_contention,
                 cell_kinds=CELL_KINDS[cells])
        for name in chosen
    ]
    lean = minimise_memory and solver == "cpsat" and objective == "makespan" and not link_contention
    # Asked for, the memory pass keeps a quarter of the time even when the search could use it all.
    search_deadline = deadline - 0.25 * time_limit if lean else deadline
    if len(prepared) == 1:
        result = _search(prepared[0], deadline=search_deadline, started=started, **search)
    else:
        result = _auto(prepared, deadline=search_deadline, started=started, objective=objective, search=search)
    if lean:
        prep = next(p for p in prepared if p.problem.placement == result.placement)
        result = _lower_peak(result, prep, deadline=deadline, budget=0.25 * time_limit, started=started,
                             seed=seed, workers=workers)
    elif minimise_memory:
        result = _with_notes(result, "memory pass skipped: it needs the CP-SAT solver, the makespan objective "
                                     "and no link contention", solve_seconds=result.solve_seconds)
    return result


def _lower_peak(result: MipResult, prep: _Prepared, *, deadline: float, budget: float, started: float,
                seed: int, workers: int) -> MipResult:
    """`solve_schedule(minimise_memory=True)`: the memory pass on the result; status and
    bound still refer to the makespan."""
    lean = _memory_pass(prep.problem, result.schedule, result.simulation, cell_kinds=prep.cell_kinds,
                        deadline=deadline, budget=budget, seed=seed, workers=workers)
    if not lean.lowered:
        return _with_notes(result, lean.note, solve_seconds=time.perf_counter() - started)
    lowered = _result(prep.problem, lean.schedule, result.status, result.bound, result.warm_start,
                      list(result.notes), time.perf_counter() - started, "makespan")
    return _with_notes(lowered, lean.note, solve_seconds=lowered.solve_seconds)


def lower_memory(schedule: Schedule, *, costs: PipelineCosts, placement: str, memory_cap: float | None,
                 time_limit: float, seed: int = 0, workers: int = 2,
                 cells: Literal["fb", "any"] = "fb") -> MemoryPass:
    """The memory pass on any schedule of a placement: the same makespan at a lower largest
    per-rank activation peak, within `time_limit` seconds. `MemoryPass.schedule` is the one
    to keep (the given one, under its own name, when nothing lower was found). The planner
    runs it once, on the plan it keeps."""
    deadline = time.perf_counter() + time_limit
    problem = build_problem(placement=placement, num_ranks=schedule.num_ranks,
                            num_microbatches=schedule.microbatches_per_chain * len(schedule.chains),
                            costs=costs, memory_cap=memory_cap)
    sim = validate(schedule, problem.model_costs, memory_cap=memory_cap)
    lean = _memory_pass(problem, schedule, sim, cell_kinds=CELL_KINDS[cells], deadline=deadline,
                        budget=time_limit, seed=seed, workers=workers)
    return replace(lean, schedule=_renamed(lean.schedule, schedule.name)) if lean.lowered else lean


def _memory_pass(problem: Problem, schedule: Schedule, sim: SimResult, *, cell_kinds: tuple[bool, ...],
                 deadline: float, budget: float, seed: int, workers: int) -> MemoryPass:
    """A schedule no longer than `sim` that holds strictly less at its largest per-rank
    peak, if one is found. The list schedule under caps stepped down from the peak and W's
    pulled forward (`lean.py`: no solver, so they also serve models CP-SAT cannot load in
    the time left), then CP-SAT minimising the peak."""
    before, makespan = max(sim.peak_activation_per_rank), sim.makespan
    unchanged = dict(schedule=schedule, lowered=False, peak_before=before, peak_after=before,
                     makespan_before=makespan, makespan_after=makespan)
    reserve = _RESERVE_SECONDS + _RESERVE_PER_TASK * len(problem.tasks())
    if min(budget, deadline - reserve - time.perf_counter()) < 0.5:
        return MemoryPass(ran=False, solver_status=None, solver_seconds=0.0, **unchanged)
    end = min(deadline - reserve, time.perf_counter() + budget)
    best = leaner_list_schedule(problem, makespan, before)
    start_from = best[0] if best is not None else schedule
    # W's pulled forward: a local optimum in milliseconds on small models, seconds on the
    # planner's largest, where CP-SAT barely moves the peak. CP-SAT starts from the list
    # schedule all the same: hinted with the pulled schedule it proved less in a test.
    pulled = pull_frees_forward(start_from, problem.model_costs, makespan=makespan,
                                deadline=time.perf_counter() + (end - time.perf_counter()) / 3)
    hint = canonical(problem, from_schedule(problem, start_from), fifo_weights=not problem.cells_help)
    outcome = solve_cpsat(problem, hint=hint, options=CpSatOptions(
        time_limit=max(0.05, end - time.perf_counter()), seed=seed, workers=workers, cell_kinds=cell_kinds,
        minimise_peak=True))
    candidates = [pulled[0]] if pulled is not None else []
    if outcome.timetable is not None:
        candidates.append(to_schedule(problem, outcome.timetable))
    least = max(best[1].peak_activation_per_rank) if best else before
    for candidate in candidates:
        found = if_leaner(problem, candidate, makespan, least)
        if found is not None:
            best, least = found, max(found[1].peak_activation_per_rank)
    ran = dict(ran=True, solver_status=outcome.status, solver_seconds=outcome.seconds)
    if best is None:
        return MemoryPass(**ran, **unchanged)
    return MemoryPass(**ran, schedule=best[0], lowered=True, peak_before=before, peak_after=least,
                      makespan_before=makespan, makespan_after=best[1].makespan)


def _auto(prepared: list[_Prepared], *, deadline: float, started: float, objective: str, search: dict) -> MipResult:
    """Placement 'auto': prune by bound, a short search each, then the rest to the best.

    Round 1 gives each surviving placement an equal part of 40 % of the time (a placement
    certified by its bound costs nothing); round 2 continues the best unproven one from its
    round-1 schedule until the deadline. A placement is pruned when its lower bound is at
    least the best warm start of all placements: it could at best tie. The bound reported is
    the lowest over placements, and OPTIMAL means no placement can do better. A placement
    whose static bound reaches the round-1 best of those searched before it is skipped too."""
    notes: list[str] = []

    def cannot_win(p: _Prepared, incumbent: float, what: str) -> bool:
        """Its static bound is at least the incumbent: at best it would tie."""
        lower = p.lower / p.problem.time_scale
        if (p.problem.exact_times and objective == "makespan" and not search["link_contention"]
                and lower >= incumbent - 1e-9 and _objective(p.warm.simulation, objective) > incumbent + 1e-9):
            notes.append(f"placement {p.problem.placement} skipped: its lower bound {lower:g} is no better than "
                         f"{what} {incumbent:g}")
            return True
        return False

    best_warm = min(_objective(p.warm.simulation, objective) for p in prepared)
    candidates = sorted((p for p in prepared if not cannot_win(p, best_warm, "the best warm start")),
                        key=lambda p: _objective(p.warm.simulation, objective))
    alive: list[_Prepared] = []
    results: list[MipResult] = []
    first_round = 0.4 * max(0.0, deadline - time.perf_counter())
    for p in candidates:
        # Searched in order of warm start, so a later placement may already be beaten.
        if results and cannot_win(p, min(r.objective for r in results), "the round-1 best"):
            continue
        share = first_round / len(candidates) if len(candidates) > 1 else deadline - time.perf_counter()
        stop = min(deadline, time.perf_counter() + share)
        alive.append(p)
        results.append(_search(p, deadline=stop, started=time.perf_counter(), **search))
    key = lambda r: (r.objective, r.status != "OPTIMAL", r.gap if r.gap is not None else 1.0)  # noqa: E731
    best = min(results, key=key)
    # ---- round 2: the best placement that may still improve gets the rest ----------------------
    open_ = [(r, p) for r, p in zip(results, alive)
             if r.status != "OPTIMAL" and (r.bound is None or r.bound < best.objective - 1e-9)]
    if open_ and deadline - time.perf_counter() > 1.0:
        r, p = min(open_, key=lambda rp: key(rp[0]))
        again = _search(p, deadline=deadline, started=time.perf_counter(),
                        warm=_Warm(f"{r.warm_start} → round 1", r.schedule, r.simulation), **search)
        again = _with_notes(again, f"round 2 continued placement {p.problem.placement} from its round-1 "
                                   f"schedule ({r.objective:g})", solve_seconds=again.solve_seconds,
                            warm_start=r.warm_start, bound=_max_bound(again.bound, r.bound))
        results[alive.index(p)] = again
        best = min(results, key=key)
    tried = ", ".join(f"{r.placement}: {r.objective:g} ({r.status})" for r in results)
    notes.append(f"placement auto tried {tried}; kept {best.placement}")
    # Over all placements the bound is the weakest one's (a skipped placement's bound is at
    # least an incumbent, so never lower); "optimal" needs every placement covered.
    weakest = min(results, key=lambda r: r.bound if r.bound is not None else 0.0)
    overall = weakest.bound if weakest.bound is not None else 0.0
    status = best.status
    if status == "OPTIMAL" and overall < best.objective - 1e-9:
        status = "FEASIBLE"
        notes.append(f"optimal for placement {best.placement}, but placement {weakest.placement}'s bound "
                     f"{overall:g} leaves room below {best.objective:g}")
    return _with_notes(best, "; ".join(notes), solve_seconds=time.perf_counter() - started, bound=overall,
                       status=status)


def _max_bound(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _check_options(*, placement, time_limit, workers, solver, objective, costs, rank_costs, cells) -> None:
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
    if cells not in CELL_KINDS:
        raise ParplanError(f"--cells {cells!r} is unknown; choose fb (F with a full B, as DualPipe) or any "
                           f"(also F with an I alone)")
    if costs is None and rank_costs is None:
        raise ParplanError("solve_schedule needs costs (per model stage) or rank_costs(num_stages)")


def _prepare(*, placement: str, num_ranks: int, num_microbatches: int, costs: PipelineCosts,
             memory_cap: float | None, param_cap: float | None, objective: str, link_contention: bool,
             cell_kinds: tuple[bool, ...] = (True,)) -> _Prepared:
    problem = build_problem(placement=placement, num_ranks=num_ranks, num_microbatches=num_microbatches,
                            costs=costs, memory_cap=memory_cap)
    check_param_cap(problem, param_cap)
    notes = list(problem.notes)
    use_cells = problem.cells_help
    warm = _best_warm_start(problem, use_cells, objective, notes)
    hint = canonical(problem, from_schedule(problem, warm.schedule), fifo_weights=not use_cells)
    lower = 0
    if objective == "makespan":
        lower = makespan_lower_bound(problem, cell_kinds if use_cells else ())
    return _Prepared(problem=problem, warm=warm, hint=hint, use_cells=use_cells, lower=lower, notes=tuple(notes),
                     cell_kinds=cell_kinds)


def _search(prep: _Prepared, *, deadline: float, started: float, seed: int, workers: int, solver: str,
            objective: str, progress, dump_model: str | None, link_contention: bool, lns: bool,
            warm: _Warm | None = None) -> MipResult:
    problem, notes = prep.problem, list(prep.notes)
    scale = problem.time_scale
    if warm is None:
        warm, hint = prep.warm, prep.hint
    else:
        hint = canonical(problem, from_schedule(problem, warm.schedule), fifo_weights=not prep.use_cells)
    num_tasks = len(problem.tasks())
    reserve = _RESERVE_SECONDS + _RESERVE_PER_TASK * num_tasks
    left = lambda: deadline - reserve - time.perf_counter()  # noqa: E731

    # Fast path: a warm start that meets the lower bound is optimal; no search needed
    # (unless the model was asked for: then it is built, dumped and solved).
    if (solver == "cpsat" and objective == "makespan" and not link_contention and problem.exact_times
            and hint.makespan <= prep.lower and dump_model is None):
        notes.append(f"the warm start meets the lower bound {prep.lower / scale:g}: optimal without search")
        return _result(problem, warm.schedule, "OPTIMAL", prep.lower / scale, warm.name, notes,
                       time.perf_counter() - started, objective)

    if solver == "cpsat":
        share = 1.0 if (num_tasks <= _FULL_MODEL_TASKS or not lns) else (
            _FULL_MODEL_SHARE[800] if num_tasks <= 800 else _FULL_MODEL_SHARE[None])
        options = CpSatOptions(time_limit=max(0.05, share * left()), seed=seed, workers=workers,
                               objective=objective, link_contention=link_contention, dump_path=dump_model,
                               cell_kinds=prep.cell_kinds,
                               portfolio="proof" if num_tasks <= _PROOF_PORTFOLIO_TASKS else "default")
        outcome = solve_cpsat(problem, hint=hint, options=options, progress=progress)
        best_table = outcome.timetable
        if lns and outcome.status != "OPTIMAL" and left() > 1.0:
            from parplan.mip.lns import improve

            improved = improve(problem, best_table or hint, options=options, deadline=deadline - reserve,
                               progress=progress)
            notes.append(f"windowed LNS: {improved.steps} windows, {improved.improving_steps} improving, "
                         f"{improved.seconds:.1f} s; integer objective {improved.objective / scale:g}")
            if improved.improved or best_table is None:
                best_table = improved.timetable
                if best_table is hint:
                    best_table = None
        outcome_status = outcome.status
    else:
        from parplan.mip.bigm import solve_bigm

        outcome = solve_bigm(problem, hint=hint, time_limit=max(0.05, left()),
                             objective=objective, dump_path=dump_model, link_contention=link_contention)
        best_table, outcome_status = outcome.timetable, outcome.status
    notes += outcome.notes
    bound_int = prep.lower if outcome.bound is None else max(outcome.bound, prep.lower)
    bound = bound_int / scale if (outcome.bound is not None or prep.lower > 0) else None
    if best_table is None:
        notes.append(f"the {solver} search ended ({outcome_status}) without a solution; returning the warm start "
                     f"{warm.name!r}")
        return _result(problem, warm.schedule, "WARM_START_ONLY", bound, warm.name, notes,
                       time.perf_counter() - started, objective)
    schedule = to_schedule(problem, best_table)
    try:
        candidate = validate(schedule, problem.model_costs, memory_cap=problem.memory_cap)
    except ScheduleError as err:  # only with rounded times: the exact re-timing may break the cap
        assert not problem.exact_times, f"solver schedule failed validation: {err}"
        notes.append(f"the solver's order broke an invariant under exact costs; returning the warm start ({err})")
        return _result(problem, warm.schedule, "WARM_START_ONLY", None, warm.name, notes,
                       time.perf_counter() - started, objective)
    proven = outcome_status == "OPTIMAL" or (objective == "makespan" and best_table.makespan <= bound_int)
    status = "OPTIMAL" if proven else "FEASIBLE"
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
    gap = _gap(value, bound)
    return MipResult(
        schedule=schedule, simulation=sim, status=status, objective=value, bound=bound, gap=gap,
        solve_seconds=seconds, warm_start=warm_name, placement=problem.placement, notes=tuple(notes),
    )


def _gap(value: float, bound: float | None) -> float | None:
    return None if bound is None else (0.0 if value <= 0 else max(0.0, (value - bound) / value))


def _with_notes(result: MipResult, note: str, *, solve_seconds: float, warm_start: str | None = None,
                bound: float | None = None, status: str | None = None) -> MipResult:
    bound = result.bound if bound is None else min(bound, result.objective)
    gap = _gap(result.objective, bound)
    return MipResult(
        schedule=result.schedule, simulation=result.simulation, status=status or result.status,
        objective=result.objective,
        bound=bound, gap=gap, solve_seconds=solve_seconds, warm_start=warm_start or result.warm_start,
        placement=result.placement, notes=(*result.notes, note),
    )


def _renamed(schedule: Schedule, name: str) -> Schedule:
    return Schedule(name=name, stage_to_rank=schedule.stage_to_rank,
                    microbatches_per_chain=schedule.microbatches_per_chain, orders=schedule.orders,
                    chains=schedule.chains, model_stage=schedule.model_stage)


# ---- warm starts ------------------------------------------------------------------------
def _best_warm_start(problem: Problem, use_cells: bool, objective: str, notes: list[str]) -> _Warm:
    """The best schedule of this placement that runs under the cap: its baselines, each
    also with its F&B cells run apart (never slower when cells gain nothing), a
    memory-aware list schedule with and without 1F1B's in-flight window (`greedy.py`: what
    is left when the baselines exceed the cap), and the one-micro-batch-at-a-time serial
    order, which always fits the smallest feasible cap. Ties go to the lower peak memory."""
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
    candidates.append(("greedy", to_schedule(problem, greedy_timetable(problem))))
    candidates.append(("greedy, 1F1B window", to_schedule(problem, greedy_timetable(problem, window=True))))
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
    # Equal objectives: the one holding less memory (a user keeps the headroom).
    return min(feasible, key=lambda w: (round(_objective(w.simulation, objective), 9),
                                        max(w.simulation.peak_activation_per_rank), w.name == "serial"))


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

