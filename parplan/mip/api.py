"""`solve_schedule`: the lower-level MIP scheduler as one call.

Pass order: placement → problem (integer times, memory and parameter checks) → warm
starts (baselines of that placement feasible under the cap, plus the always-feasible
serial order) → static lower bound → solver (CP-SAT on the full model, then windowed LNS
on large instances; or the Pyomo big-M model on HiGHS) → schedule → validate → simulate.
The search is bounded by work (`MipOptions.work`, CP-SAT deterministic seconds, shared out
by fixed fractions), so the same options give the same schedule on any machine; the
wall-clock `time_limit` is only a safety stop, and the result says when it fired. The
returned schedule is the better of the solver's and the warm start's, so it is never
worse than the best baseline of its placement under the same cap (with placement='auto':
of any placement).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Literal

from parplan.baselines import build_baseline
from parplan.budget import SafetyStop, check_work
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.mip.cpsat import (
    CpSatOptions, ProgressEvent, makespan_lower_bound, solve_cpsat,
)
from parplan.mip.greedy import greedy_timetable
from parplan.mip.lean import if_leaner, leaner_list_schedule, pull_frees_forward
from parplan.mip.problem import PLACEMENTS, CellKind, Problem, build_problem, check_param_cap, num_model_stages
from parplan.mip.timetable import Timetable, canonical, from_schedule, to_schedule, without_cells
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.placement import FAMILIES
from parplan.schedule.simulate import SimResult
from parplan.schedule.validate import ScheduleError, validate

__all__ = ["MemoryPass", "MipOptions", "MipResult", "SolverReport", "ProgressEvent", "solve_schedule",
           "lower_memory", "list_schedule", "serial_schedule", "WARM_STARTS"]

# Baselines that run on each placement (same stage→rank map, so they can seed the model).
WARM_STARTS: dict[str, tuple[str, ...]] = {name: f.schedules for name, f in FAMILIES.items()}

# `cells=`: which F&B cells the model may form (CpSatOptions.cell_kinds). DualPipe's cells
# run a full B; an (F;I) cell leaves the W free to fill a bubble later.
CELL_KINDS: dict[str, tuple[CellKind, ...]] = {"fb": (CellKind.FB,), "any": (CellKind.FI, CellKind.FB)}

# How the work is shared out. Up to _FULL_MODEL_TASKS tasks the whole model gets all of
# it; above, the full model runs first (it proves small instances and gives the bound),
# then windowed LNS (lns.py) improves its best with the rest: a 1,500-task model finds
# little on its own.
_FULL_MODEL_TASKS = 200
_FULL_MODEL_SHARE = {800: 0.6, None: 0.3}  # share of the search's work by task count
# Up to this many tasks CP-SAT runs its proof portfolio (no LNS of its own): it proved
# 4x8 and 6x8 cell models (96, 144 tasks) within 60 s, and found as good or better
# schedules than the default on 4x10 and 4x12 (proven by neither); at 192 the default
# one's LNS found the better schedules (docs/mip.md §3, "Search portfolio").
_PROOF_PORTFOLIO_TASKS = 150
_AUTO_ROUND_ONE = 0.4  # placement 'auto': share of the work its first round splits
_MEMORY_SHARE = 0.25  # minimise_memory: share of the work the memory pass keeps
_PULL_TRIALS_PER_ACTION = 4  # the memory pass's W-pulling: simulated moves per action


@dataclass(frozen=True, kw_only=True, slots=True)
class MipOptions:
    """How `solve_schedule` searches. `work` bounds the search (CP-SAT deterministic
    seconds, parplan.budget); `time_limit` (wall seconds, None: none) is a safety stop."""

    placement: Literal["dualpipe", "v", "loop", "chain", "auto"] = "dualpipe"
    memory_cap: float | None = None  # activation units per rank
    param_cap: float | None = None
    work: float = 10.0
    time_limit: float | None = None
    seed: int = 0
    workers: int = 2
    solver: Literal["cpsat", "highs"] = "cpsat"
    objective: Literal["makespan", "throughput"] = "makespan"
    dump_model: str | None = None  # CP-SAT: .pb/.pbtxt; HiGHS: .lp/.mps
    link_contention: bool = False
    lns: bool = True  # False keeps the search to the full model
    # 'fb' pairs an F with a full backward, as DualPipe does; 'any' may also pair it with an
    # I alone, the W then running apart (when the costs make F&B cells shorter)
    cells: Literal["fb", "any"] = "fb"
    # the search keeps a quarter of the work back for the memory pass: the same makespan at
    # a lower largest per-rank activation peak (the makespan objective does not see memory
    # below the cap; the planner runs the pass on the plan it keeps)
    minimise_memory: bool = False

    def __post_init__(self) -> None:
        if self.placement not in (*PLACEMENTS, "auto"):
            raise ParplanError(f"--placement {self.placement!r} is unknown; choose one of "
                               f"{', '.join(PLACEMENTS)}, auto")
        check_work(self.work, "--work")
        SafetyStop(seconds=self.time_limit)  # validates the safety stop
        if isinstance(self.workers, bool) or not (isinstance(self.workers, int) and self.workers >= 1):
            raise ParplanError(f"--workers {self.workers!r} is invalid: need an integer >= 1")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ParplanError(f"--seed {self.seed!r} is invalid: need an integer")
        if self.solver not in ("cpsat", "highs"):
            raise ParplanError(f"--solver {self.solver!r} is unknown; choose cpsat or highs")
        if self.objective not in ("makespan", "throughput"):
            raise ParplanError(f"objective {self.objective!r} is unknown; choose makespan or throughput")
        if self.cells not in CELL_KINDS:
            raise ParplanError(f"--cells {self.cells!r} is unknown; choose fb (F with a full B, as DualPipe) "
                               f"or any (also F with an I alone)")

    @property
    def runs_memory_pass(self) -> bool:
        return (self.minimise_memory and self.solver == "cpsat" and self.objective == "makespan"
                and not self.link_contention)


@dataclass(frozen=True, kw_only=True, slots=True)
class SolverReport:
    """What a lower-level solve did, as plan.json and the CLI tables show it."""

    schedule: str  # "mip"
    placement: str
    status: str  # OPTIMAL | FEASIBLE | WARM_START_ONLY
    objective: float
    bound: float | None
    gap: float | None
    solve_seconds: float  # wall time, for information: it never steers the search
    work: float  # CP-SAT deterministic seconds spent
    warm_start: str
    stopped_early: bool  # the wall-clock safety stop cut the search short
    notes: tuple[str, ...] = ()
    degrees: str | None = None  # the planner's parallel degrees, when it made the call

    def as_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryPass:
    """What the memory pass did (`lower_memory`; `solve_schedule(minimise_memory=True)`
    puts its `note` in the result's notes). Peaks are the largest per-rank activation, in
    the cost model's units (bytes from the planner)."""

    schedule: Schedule  # the schedule to keep: the given one unless `lowered`
    lowered: bool  # a schedule no longer and holding strictly less was found
    ran: bool  # False: the safety stop left it no time, nothing was tried
    solver_status: str | None  # the CP-SAT max-peak model's status (None when not run)
    solver_seconds: float
    peak_before: float
    peak_after: float
    makespan_before: float
    makespan_after: float

    @property
    def head(self) -> str:
        # no seconds here: notes go into plan.json, which must not depend on the machine
        return f"memory pass ({self.solver_status})" if self.ran else "memory pass"

    @property
    def note(self) -> str:
        if not self.ran:
            return "memory pass skipped: the time limit (a safety stop) had fired; raise --time-limit"
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
    work: float = 0.0  # CP-SAT deterministic seconds spent
    stopped_early: bool = False  # the wall-clock safety stop cut the search short
    notes: tuple[str, ...] = field(default_factory=tuple)

    def report(self, *, degrees: str | None = None) -> SolverReport:
        return SolverReport(schedule="mip", placement=self.placement, status=self.status, objective=self.objective,
                            bound=self.bound, gap=self.gap, solve_seconds=self.solve_seconds, work=self.work,
                            warm_start=self.warm_start, stopped_early=self.stopped_early, notes=self.notes,
                            degrees=degrees)


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
    cell_kinds: tuple[CellKind, ...]  # which F&B cells the model may form (CpSatOptions.cell_kinds)
    lower: int  # integer-time lower bound on the makespan known before any search
    notes: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class _Run:
    """One search call's fixed inputs: the options, the safety stop, progress reporting."""

    options: MipOptions
    stop: SafetyStop
    progress: Callable[[ProgressEvent], None] | None

    @property
    def deadline(self) -> float | None:
        return None if self.stop.seconds is None else self.stop.started + self.stop.seconds

    def safety_seconds(self) -> float | None:
        left = self.stop.left()
        return None if math.isinf(left) else max(0.01, left)


def solve_schedule(
    *,
    num_ranks: int,
    num_microbatches: int,
    costs: PipelineCosts | None = None,
    rank_costs: Callable[[int], PipelineCosts] | None = None,
    options: MipOptions | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> MipResult:
    """Order and time every task of a pipeline on `num_ranks` ranks, with `options.work`
    deterministic seconds of search (the same answer on any machine).

    `costs` are per model stage of the placement (dualpipe and chain: N stages, v/loop:
    2N); or give `rank_costs(S)` returning costs for S model stages (needed for
    placement='auto' across stage counts). 'auto' prepares every placement, drops those
    whose lower bound cannot beat the best warm start, gives the rest a short search each
    and the best one the remaining work.
    """
    options = options or MipOptions()
    run = _Run(options=options, stop=SafetyStop(seconds=options.time_limit), progress=progress)
    if costs is None and rank_costs is None:
        raise ParplanError("solve_schedule needs costs (per model stage) or rank_costs(num_stages)")
    chosen = _placements(options.placement, num_ranks, num_microbatches, costs, rank_costs)
    prepared = [
        _prepare(placement=name, num_ranks=num_ranks, num_microbatches=num_microbatches,
                 costs=rank_costs(num_model_stages(name, num_ranks)) if rank_costs is not None else costs,
                 options=options)
        for name in chosen
    ]
    lean = options.runs_memory_pass
    # Asked for, the memory pass keeps its share of the work even when the search could use it all.
    work = options.work * (1 - _MEMORY_SHARE) if lean else options.work
    if len(prepared) == 1:
        result = _search(prepared[0], run, work=work)
    else:
        result = _auto(prepared, run, work=work)
    if lean:
        prep = next(p for p in prepared if p.problem.placement == result.placement)
        result = _lower_peak(result, prep, run, work=options.work - result.work)
    elif options.minimise_memory:
        result = _with_notes(result, "memory pass skipped: it needs the CP-SAT solver, the makespan objective "
                                     "and no link contention")
    if run.stop.cut:
        result = _with_notes(result, run.stop.note, stopped_early=True)
    return replace(result, solve_seconds=time.perf_counter() - run.stop.started)


def _placements(placement: str, num_ranks: int, num_microbatches: int, costs: PipelineCosts | None,
                rank_costs) -> tuple[str, ...]:
    if placement != "auto":
        return (placement,)
    chosen = tuple(p for p in PLACEMENTS if FAMILIES[p].accepts(num_ranks, num_microbatches))
    if rank_costs is None:
        chosen = tuple(p for p in chosen if num_model_stages(p, num_ranks) == costs.num_stages)
    if not chosen:
        raise ParplanError(
            f"placement 'auto' found no placement for costs of {costs.num_stages} stages on "
            f"{num_ranks} ranks; pass rank_costs so each placement gets costs for its own stage count"
        )
    return chosen


def _lower_peak(result: MipResult, prep: _Prepared, run: _Run, *, work: float) -> MipResult:
    """`solve_schedule(minimise_memory=True)`: the memory pass on the result; status and
    bound still refer to the makespan."""
    lean = _memory_pass(prep.problem, result.schedule, result.simulation, cell_kinds=prep.cell_kinds, run=run,
                        work=max(0.05, work))
    spent = result.work + lean.solver_work
    if not lean.found.lowered:
        return _with_notes(result, lean.found.note, work=spent)
    lowered = _result(prep.problem, lean.found.schedule, result.status, result.bound, result.warm_start,
                      list(result.notes), "makespan", work=spent)
    return _with_notes(lowered, lean.found.note)


def lower_memory(schedule: Schedule, *, costs: PipelineCosts, placement: str, memory_cap: float | None,
                 work: float, time_limit: float | None = None, seed: int = 0, workers: int = 2,
                 cells: Literal["fb", "any"] = "fb") -> MemoryPass:
    """The memory pass on any schedule of a placement: the same makespan at a lower largest
    per-rank activation peak, with `work` deterministic seconds (`time_limit`: a safety
    stop). `MemoryPass.schedule` is the one to keep (the given one, under its own name,
    when nothing lower was found). The planner runs it once, on the plan it keeps."""
    options = MipOptions(placement=placement, memory_cap=memory_cap, work=work, time_limit=time_limit, seed=seed,
                         workers=workers, cells=cells)
    run = _Run(options=options, stop=SafetyStop(seconds=time_limit), progress=None)
    problem = build_problem(placement=placement, num_ranks=schedule.num_ranks,
                            num_microbatches=schedule.microbatches_per_chain * len(schedule.chains),
                            costs=costs, memory_cap=memory_cap)
    sim = validate(schedule, problem.model_costs, memory_cap=memory_cap)
    lean = _memory_pass(problem, schedule, sim, cell_kinds=CELL_KINDS[cells], run=run, work=work).found
    return replace(lean, schedule=_renamed(lean.schedule, schedule.name)) if lean.lowered else lean


@dataclass(frozen=True, slots=True)
class _PassOutcome:
    found: MemoryPass
    solver_work: float


def _memory_pass(problem: Problem, schedule: Schedule, sim: SimResult, *, cell_kinds: tuple[CellKind, ...],
                 run: _Run, work: float) -> _PassOutcome:
    """A schedule no longer than `sim` that holds strictly less at its largest per-rank
    peak, if one is found. The list schedule under caps stepped down from the peak and W's
    pulled forward (`lean.py`: no solver, a fixed number of trial moves, so they also serve
    models CP-SAT can do little with), then CP-SAT minimising the peak with `work`."""
    before, makespan = max(sim.peak_activation_per_rank), sim.makespan
    unchanged = dict(schedule=schedule, lowered=False, peak_before=before, peak_after=before,
                     makespan_before=makespan, makespan_after=makespan)
    if run.stop.expired():
        run.stop.fired("the memory pass")
        return _PassOutcome(MemoryPass(ran=False, solver_status=None, solver_seconds=0.0, **unchanged), 0.0)
    best = leaner_list_schedule(problem, makespan, before)
    start_from = best[0] if best is not None else schedule
    # W's pulled forward: a local optimum in milliseconds on small models, seconds on the
    # planner's largest, where CP-SAT barely moves the peak. CP-SAT starts from the list
    # schedule all the same: hinted with the pulled schedule it proved less in a test.
    num_actions = sum(len(order) for order in start_from.orders)
    pulled = pull_frees_forward(start_from, problem.model_costs, makespan=makespan,
                                max_trials=_PULL_TRIALS_PER_ACTION * num_actions, deadline=run.deadline)
    hint = canonical(problem, from_schedule(problem, start_from), fifo_weights=not problem.cells_help)
    outcome = solve_cpsat(problem, hint=hint, options=CpSatOptions(
        work=work, time_limit=run.safety_seconds(), seed=run.options.seed, workers=run.options.workers,
        cell_kinds=cell_kinds, minimise_peak=True))
    if outcome.clock_stopped or run.stop.expired():
        run.stop.fired("the memory pass")
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
        return _PassOutcome(MemoryPass(**ran, **unchanged), outcome.work)
    return _PassOutcome(MemoryPass(**ran, schedule=best[0], lowered=True, peak_before=before, peak_after=least,
                                   makespan_before=makespan, makespan_after=best[1].makespan), outcome.work)


def _auto(prepared: list[_Prepared], run: _Run, *, work: float) -> MipResult:
    """Placement 'auto': prune by bound, a short search each, then the rest to the best.

    Round 1 gives each surviving placement an equal part of 40 % of the work (a placement
    certified by its bound costs nothing); round 2 continues the best unproven one from its
    round-1 schedule with the rest. A placement is pruned when its lower bound is at
    least the best warm start of all placements: it could at best tie. The bound reported is
    the lowest over placements, and OPTIMAL means no placement can do better. A placement
    whose static bound reaches the round-1 best of those searched before it is skipped too."""
    notes: list[str] = []
    objective = run.options.objective

    def cannot_win(p: _Prepared, incumbent: float, what: str) -> bool:
        """Its static bound is at least the incumbent: at best it would tie."""
        lower = p.lower / p.problem.time_scale
        if (p.problem.exact_times and objective == "makespan" and not run.options.link_contention
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
    share = _AUTO_ROUND_ONE * work / len(candidates) if len(candidates) > 1 else work
    for p in candidates:
        # Searched in order of warm start, so a later placement may already be beaten.
        if results and cannot_win(p, min(r.objective for r in results), "the round-1 best"):
            continue
        alive.append(p)
        results.append(_search(p, run, work=share))
    spent = sum(r.work for r in results)
    key = lambda r: (r.objective, r.status != "OPTIMAL", r.gap if r.gap is not None else 1.0)  # noqa: E731
    best = min(results, key=key)
    # ---- round 2: the best placement that may still improve gets the rest ----------------------
    open_ = [(r, p) for r, p in zip(results, alive)
             if r.status != "OPTIMAL" and (r.bound is None or r.bound < best.objective - 1e-9)]
    if open_ and work - spent >= 0.05 and not run.stop.expired():
        r, p = min(open_, key=lambda rp: key(rp[0]))
        again = _search(p, run, work=work - spent, warm=_Warm(f"{r.warm_start} → round 1", r.schedule, r.simulation))
        spent += again.work
        again = _with_notes(again, f"round 2 continued placement {p.problem.placement} from its round-1 "
                                   f"schedule ({r.objective:g})",
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
    return _with_notes(best, "; ".join(notes), bound=overall, status=status, work=spent)


def _max_bound(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _prepare(*, placement: str, num_ranks: int, num_microbatches: int, costs: PipelineCosts,
             options: MipOptions) -> _Prepared:
    problem = build_problem(placement=placement, num_ranks=num_ranks, num_microbatches=num_microbatches,
                            costs=costs, memory_cap=options.memory_cap)
    check_param_cap(problem, options.param_cap)
    notes = list(problem.notes)
    use_cells = problem.cells_help
    warm = _best_warm_start(problem, use_cells, options.objective, notes)
    hint = canonical(problem, from_schedule(problem, warm.schedule), fifo_weights=not use_cells)
    lower = 0
    cell_kinds = CELL_KINDS[options.cells]
    if options.objective == "makespan":
        lower = makespan_lower_bound(problem, cell_kinds if use_cells else ())
    return _Prepared(problem=problem, warm=warm, hint=hint, use_cells=use_cells, lower=lower, notes=tuple(notes),
                     cell_kinds=cell_kinds)


def _search(prep: _Prepared, run: _Run, *, work: float, warm: _Warm | None = None) -> MipResult:
    """One placement's search with `work` deterministic seconds: CP-SAT on the full model
    (all of the work up to _FULL_MODEL_TASKS tasks), then windowed LNS with the rest; or
    the big-M model on HiGHS. Never returns worse than the warm start."""
    options = run.options
    problem, notes = prep.problem, list(prep.notes)
    scale, objective, solver = problem.time_scale, options.objective, options.solver
    if warm is None:
        warm, hint = prep.warm, prep.hint
    else:
        hint = canonical(problem, from_schedule(problem, warm.schedule), fifo_weights=not prep.use_cells)

    # Fast path: a warm start that meets the lower bound is optimal; no search needed
    # (unless the model was asked for: then it is built, dumped and solved).
    if (solver == "cpsat" and objective == "makespan" and not options.link_contention and problem.exact_times
            and hint.makespan <= prep.lower and options.dump_model is None):
        notes.append(f"the warm start meets the lower bound {prep.lower / scale:g}: optimal without search")
        return _result(problem, warm.schedule, "OPTIMAL", prep.lower / scale, warm.name, notes, objective)

    if run.stop.expired():
        run.stop.fired(f"the lower-level MIP on {problem.placement}")
        notes.append("the time limit had fired before the search; returning the warm start")
        return _result(problem, warm.schedule, "WARM_START_ONLY", None, warm.name, notes, objective)
    if solver == "cpsat":
        found = _cpsat_then_lns(prep, run, hint, work, notes)
    else:
        found = _highs(prep, run, hint, work, notes)
    if found.stopped:
        run.stop.fired(f"the lower-level MIP on {problem.placement}")
    return _checked(prep, warm, found, notes, objective)


@dataclass(frozen=True, slots=True)
class _Found:
    """What a solver run left: its best timetable (None: none), status, bounds, work."""

    table: Timetable | None
    status: str
    bound: int | None  # the solver's own bound, integer time units
    work: float
    stopped: bool  # the safety stop cut it


def _cpsat_then_lns(prep: _Prepared, run: _Run, hint: Timetable, work: float, notes: list[str]) -> _Found:
    options, problem = run.options, prep.problem
    num_tasks = len(problem.tasks())
    share = 1.0 if (num_tasks <= _FULL_MODEL_TASKS or not options.lns) else (
        _FULL_MODEL_SHARE[800] if num_tasks <= 800 else _FULL_MODEL_SHARE[None])
    cp_options = CpSatOptions(work=max(0.01, share * work), time_limit=run.safety_seconds(), seed=options.seed,
                              workers=options.workers, objective=options.objective,
                              link_contention=options.link_contention, dump_path=options.dump_model,
                              cell_kinds=prep.cell_kinds,
                              portfolio="proof" if num_tasks <= _PROOF_PORTFOLIO_TASKS else "default")
    outcome = solve_cpsat(problem, hint=hint, options=cp_options, progress=run.progress)
    notes += outcome.notes
    spent, stopped, table = outcome.work, outcome.clock_stopped, outcome.timetable
    if options.lns and outcome.status != "OPTIMAL" and work - spent >= 0.05 and not stopped:
        from parplan.mip.lns import improve

        improved = improve(problem, table or hint, options=cp_options, work=work - spent, deadline=run.deadline,
                           progress=run.progress)
        spent += improved.work
        stopped = stopped or improved.clock_stopped
        notes.append(f"windowed LNS: {improved.steps} windows, {improved.improving_steps} improving, "
                     f"{improved.work:.2f} deterministic s; integer objective {improved.objective / problem.time_scale:g}")
        if improved.improved or table is None:
            table = None if improved.timetable is hint else improved.timetable
    return _Found(table, outcome.status, outcome.bound, spent, stopped)


def _highs(prep: _Prepared, run: _Run, hint: Timetable, work: float, notes: list[str]) -> _Found:
    from parplan.mip.bigm import solve_bigm

    options = run.options
    # HiGHS has no deterministic time: the cross-check is bounded by the wall clock (work
    # read as seconds), so its answers may vary with machine load.
    outcome = solve_bigm(prep.problem, hint=hint, time_limit=max(0.05, min(work, run.stop.left())),
                         objective=options.objective, dump_path=options.dump_model,
                         link_contention=options.link_contention)
    notes += outcome.notes
    notes.append("HiGHS is bounded by wall-clock seconds (it has no deterministic time); "
                 "its answer may depend on the machine")
    return _Found(outcome.timetable, outcome.status, outcome.bound, 0.0, False)


def _checked(prep: _Prepared, warm: _Warm, found: _Found, notes: list[str], objective: str) -> MipResult:
    """The solver's schedule, validated under exact costs, unless the warm start is better."""
    problem, scale = prep.problem, prep.problem.time_scale
    bound_int = prep.lower if found.bound is None else max(found.bound, prep.lower)
    bound = bound_int / scale if (found.bound is not None or prep.lower > 0) else None
    if found.table is None:
        notes.append(f"the search ended ({found.status}) without a solution; returning the warm start "
                     f"{warm.name!r}")
        return _result(problem, warm.schedule, "WARM_START_ONLY", bound, warm.name, notes, objective, work=found.work)
    schedule = to_schedule(problem, found.table)
    try:
        candidate = validate(schedule, problem.model_costs, memory_cap=problem.memory_cap)
    except ScheduleError as err:  # only with rounded times: the exact re-timing may break the cap
        assert not problem.exact_times, f"solver schedule failed validation: {err}"
        notes.append(f"the solver's order broke an invariant under exact costs; returning the warm start ({err})")
        return _result(problem, warm.schedule, "WARM_START_ONLY", None, warm.name, notes, objective, work=found.work)
    proven = found.status == "OPTIMAL" or (objective == "makespan" and found.table.makespan <= bound_int)
    status = "OPTIMAL" if proven else "FEASIBLE"
    if _objective(candidate, objective) > _objective(warm.simulation, objective) + 1e-9:
        notes.append(f"the solver's best ({_objective(candidate, objective):g}) is worse than the warm start "
                     f"{warm.name!r} ({_objective(warm.simulation, objective):g}) under exact costs; "
                     f"returning the warm start")
        schedule, status = warm.schedule, "WARM_START_ONLY"
    return _result(problem, schedule, status, bound, warm.name, notes, objective, work=found.work)


def _objective(sim: SimResult, objective: str) -> float:
    if objective == "makespan":
        return sim.makespan
    return max((row[-1].end - row[0].start for row in sim.timeline if row), default=0.0)


def _result(problem: Problem, schedule: Schedule, status: str, bound: float | None, warm_name: str,
            notes: list[str], objective: str, *, work: float = 0.0) -> MipResult:
    schedule = _renamed(schedule, "mip")
    sim = validate(schedule, problem.model_costs, memory_cap=problem.memory_cap)
    value = _objective(sim, objective)
    if bound is not None and problem.exact_times:
        bound = min(bound, value)  # the bound is on the integer model; exact costs agree
    return MipResult(
        schedule=schedule, simulation=sim, status=status, objective=value, bound=bound, gap=_gap(value, bound),
        solve_seconds=0.0, warm_start=warm_name, placement=problem.placement, work=work, notes=tuple(notes),
    )


def _gap(value: float, bound: float | None) -> float | None:
    return None if bound is None else (0.0 if value <= 0 else max(0.0, (value - bound) / value))


def _with_notes(result: MipResult, note: str, *, warm_start: str | None = None, bound: float | None = None,
                status: str | None = None, work: float | None = None, stopped_early: bool = False) -> MipResult:
    bound = result.bound if bound is None else min(bound, result.objective)
    return replace(result, status=status or result.status, bound=bound, gap=_gap(result.objective, bound),
                   warm_start=warm_start or result.warm_start, work=result.work if work is None else work,
                   stopped_early=result.stopped_early or stopped_early, notes=(*result.notes, note))


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


def list_schedule(*, placement: str, num_ranks: int, num_microbatches: int, costs: PipelineCosts,
                  memory_cap: float | None) -> Schedule | None:
    """The memory-aware list schedule (`greedy.py`) of a placement, without the MIP: in
    hundredths of a second it tracks what the MIP will reach far better than the expert
    orders do (an I first, W's into the gaps), so the planner judges placements by it as
    well. None when no schedule of the placement fits the cap."""
    try:
        problem = build_problem(placement=placement, num_ranks=num_ranks, num_microbatches=num_microbatches,
                                costs=costs, memory_cap=memory_cap)
    except ParplanError:
        return None
    return _renamed(to_schedule(problem, greedy_timetable(problem)), "list")


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

