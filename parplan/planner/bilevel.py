"""The bi-level planner: trace → coarsen → place (upper MIP) → schedule (lower MIP) → best plan.

1. Screen every parallel-degree candidate (PP × DP × TP) and placement family with fast
   moves: the expert baselines on a contiguous *layer* split balanced by cost (what a
   careful engineer writes by hand), and parplan's own *operator-level*, device-aware split
   under the same schedules.
2. Refine the most promising parplan placements: boundary moves, then the upper-level
   CP-SAT model (units may cross layer boundaries and branches may reorder; rank loads
   balanced, memory capped).
3. Run the lower-level MIP on the best placement of each family, warm-started from the
   best schedule on it.
4. Keep the best plan that fits memory — the baselines are candidates too, so the result is
   never worse than the best of them.

Every phase is bounded by work (`PlannerConfig.work`, CP-SAT deterministic seconds, each
phase a fixed multiple of it; trial and candidate counts for the heuristics), so the same input
gives the same plan on any machine; `time_limit` is a wall-clock safety stop, and the
notes say which phases it cut when it fires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

from parplan.baselines import BASELINES, CHUNKED
from parplan.baselines._common import reject_chunks
from parplan.budget import EFFORT_LEVELS, SafetyStop, check_work
from parplan.cost.hardware import ClusterProfile
from parplan.errors import ParplanError
from parplan.sizes import format_bytes
from parplan.planner.costing import Coster
from parplan.planner.degrees import Degrees, candidate_degrees
from parplan.planner.experts import check_ep, expert_counts, layer_a2a
from parplan.planner.events import Phase, PlanProgress, Step
from parplan.planner.lower import (Evaluated, Placed, baseline_schedules, evaluate_schedule, parplan_schedules, place,
                                   stage_gpus)
from parplan.planner.memory import MemoryModel
from parplan.plan import Techniques
from parplan.planner.techniques import TechniqueChoice, check_techniques, technique_choices
from parplan.planner.partition import FAMILIES, Family, balanced_contiguous, place_units, rank_loads
from parplan.planner.units import Granularity, UnitGraph, coarsen
from parplan.schedule.placement import family_of_schedule
from parplan.schedule.simulate import costs_for_schedule
from parplan.trace.graph import TracedGraph

__all__ = ["PlannerConfig", "PlanResult", "plan_traced"]

# Each phase's budget is a fixed multiple of the work (CP-SAT deterministic seconds): the
# lower-level MIPs share `work` by family; the upper-level MIP gets _UPPER_WORK × work for
# each of the _REFINED_TAGS most promising (family, degrees); the memory pass gets
# _MEMORY_WORK × work; boundary moves (before and after the upper MIP) try
# _BOUNDARY_TRIALS_PER_WORK × work (+ 20) placements per (family, degrees). The ratios keep
# the README's default job near a minute on 2 cores at `normal` (docs/benchmarks.md).
_UPPER_WORK = 0.4
_MEMORY_WORK = 0.25
_BOUNDARY_TRIALS_PER_WORK = 20
_REFINED_TAGS = 2
_MAX_DEGREES = 16  # degree candidates screened, most promising first ...
_SCREENS_PER_WORK = 150  # ... while fewer than this × work schedules were screened (once one fits)
_SCREEN_SLACK = 1.1  # not simulated: candidates whose busiest rank alone is 10 % above the best
_MEMORY_BOUND = 1.25  # second-pass techniques where the fastest plan within the cap is 25 % slower than one over it
_MEMORY_BOUND_CANDIDATES = 2  # ... on at most this many degree candidates (each pass-2 screen of a large model is slow)


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannerConfig:
    microbatches: int = 16
    memory_limit: float | None = None  # bytes per device; default: the smallest device's HBM
    work: float = EFFORT_LEVELS["normal"]  # CP-SAT deterministic seconds for the whole search
    time_limit: float | None = None  # wall-clock safety stop, seconds (None: none)
    mode: Literal["train", "inference"] = "train"
    objective: Literal["makespan", "utilization", "latency"] = "makespan"
    memory: MemoryModel = field(default_factory=MemoryModel)
    degrees: Degrees | None = None  # fixed PP × DP × TP; None searches
    techniques: TechniqueChoice = field(default_factory=TechniqueChoice)  # ZeRO, layout, recompute, SP; None searches
    ep: int | None = None  # fixed expert-parallel degree; None searches (MoE models)
    tp: int | None = None  # with degrees None: search only splits of this tensor-parallel degree
    families: tuple[str, ...] = ("chain", "loop", "v", "dualpipe")
    use_mip: bool = True
    seed: int = 0
    workers: int = 2
    # a fixed expert schedule: the configuration is evaluated, not searched (planner.evaluate)
    schedule: str | None = None
    chunks: int | None = None  # stage chunks per rank of a loop schedule; None: its default

    def __post_init__(self) -> None:
        if isinstance(self.microbatches, bool) or not isinstance(self.microbatches, int) or self.microbatches < 1:
            raise ParplanError(f"--microbatches {self.microbatches} is invalid: need an integer >= 1")
        check_work(self.work, "--effort")
        SafetyStop(seconds=self.time_limit)  # validates it
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ParplanError(f"--workers {self.workers!r} is invalid: need an integer >= 1")
        if self.objective not in ("makespan", "utilization", "latency"):
            raise ParplanError(f"--objective {self.objective!r} is unknown; use makespan, utilization or latency")
        if self.mode not in ("train", "inference"):
            raise ParplanError(f"--mode {self.mode!r} is unknown; use train or inference")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ParplanError(f"placement family {unknown[0]!r} is unknown; use {', '.join(FAMILIES)}")
        if self.memory.mode != self.mode:
            object.__setattr__(self, "memory", replace(self.memory, mode=self.mode))
        self.techniques.check(mode=self.mode, tp=self.degrees.tp if self.degrees is not None else self.tp)
        if self.degrees is not None:
            check_techniques(self.techniques, self.degrees)
        self._check_schedule()

    def _check_schedule(self) -> None:
        """--schedule and --chunks; a fixed schedule keeps only the placement family it runs on."""
        if self.schedule is None:
            if self.chunks is not None:
                raise ParplanError(f"--chunks {self.chunks} needs --schedule: it sets the stage chunks per rank of "
                                   f"the schedule evaluated ({', '.join(CHUNKED)}); add --schedule, or drop --chunks")
            return
        if self.schedule not in BASELINES:
            raise ParplanError(f"--schedule {self.schedule!r} is unknown; choose one of {', '.join(BASELINES)}")
        if self.mode != "train":
            raise ParplanError(f"--schedule {self.schedule} orders forwards and backwards (training); inference runs "
                               f"each stage's forwards in order: drop --schedule, or use --mode train")
        fam = family_of_schedule(self.schedule)
        if self.chunks is not None:
            if isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or self.chunks < 1:
                raise ParplanError(f"--chunks {self.chunks!r} is invalid: need an integer >= 1 stage chunks per rank")
            if self.schedule not in CHUNKED:  # the schedule's own rule, as `parplan schedule` states it
                reject_chunks(self.schedule, self.chunks, allowed=fam.stages_per_rank)
        if fam.name not in self.families:
            raise ParplanError(f"--placement {', '.join(self.families)} cannot run --schedule {self.schedule}, "
                               f"which runs on placement {fam.name}; use --placement {fam.name} or auto")
        object.__setattr__(self, "families", (fam.name,))


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanResult:
    best: Evaluated
    baselines: tuple[Evaluated, ...]  # the best of each expert schedule, any degrees
    units: UnitGraph
    memory_cap: float
    planning_seconds: float
    reports: dict
    notes: tuple[str, ...]
    stopped_early: tuple[str, ...] = ()  # phases the wall-clock safety stop cut (empty: reproducible)
    search: Literal["searched", "evaluated"] = "searched"  # evaluated: a fixed --schedule, timed as given


Progress = Callable[[PlanProgress], None]


def _key(config: PlannerConfig) -> Callable[[Evaluated], tuple]:
    if config.objective == "utilization":
        return lambda e: (not e.fits, -e.utilization, e.step_time_s)
    if config.objective == "latency":  # inference: the first request's time through the pipeline
        return lambda e: (not e.fits, e.latency_s, e.step_time_s)
    return lambda e: (not e.fits, e.step_time_s)


@dataclass(kw_only=True, slots=True)
class _Search:
    """What every step of one planning run shares."""

    traced: TracedGraph
    cluster: ClusterProfile
    config: PlannerConfig
    cap: float
    layers: UnitGraph
    ops: UnitGraph
    stop: SafetyStop
    progress: Progress | None
    key: Callable[[Evaluated], tuple]
    notes: list[str] = field(default_factory=list)
    costers: dict[tuple, Coster] = field(default_factory=dict)

    def coster(self, degrees: Degrees, recompute: str, sequence_parallel: bool) -> Coster:
        """The one Coster of a (degrees, recomputation, SP): estimates and placements share its caches."""
        key = (degrees, recompute, sequence_parallel)
        if key not in self.costers:
            self.costers[key] = Coster(self.traced, tp=degrees.tp, tp_link=degrees.tp_link(self.cluster),
                                       ep=degrees.ep, recompute=recompute, sequence_parallel=sequence_parallel)
        return self.costers[key]

    def begin(self, phase: Phase, subject: str) -> None:
        if self.progress is not None:
            self.progress(PlanProgress(phase=phase, step=Step.BEGIN, subject=subject))

    def end(self, phase: Phase, subject: str, message: str) -> None:
        if self.progress is not None:
            self.progress(PlanProgress(phase=phase, step=Step.END, subject=subject, message=message))

    def solver_updates(self, phase: Phase, subject: str):
        """A `solve_schedule(progress=...)` callback, or None when nobody listens (the solver
        then registers no callback at all)."""
        if self.progress is None:
            return None
        report = self.progress
        return lambda event: report(PlanProgress.from_solver(phase, subject, event))


@dataclass(kw_only=True, slots=True)
class _Screened:
    baselines: dict[str, Evaluated]
    ours: list[tuple[Evaluated, Coster]]
    screened: int
    pruned: int
    skipped: list[str]
    considered: list[str]
    fitting: int = 0  # simulated schedules within the memory cap
    # per degree candidate: the fastest step screened within the cap and the fastest over it
    fastest: dict[Degrees, tuple[float, float]] = field(default_factory=dict)

    def memory_bound(self, degrees: Degrees) -> bool:
        """The cap costs these degrees dearly: their fastest schedule over it beats every
        one within it by more than `_MEMORY_BOUND` (a near-serial order is all that fits)."""
        fit, over = self.fastest.get(degrees, (float("inf"), float("inf")))
        return over * _MEMORY_BOUND < fit


def plan_traced(traced: TracedGraph, cluster: ClusterProfile, config: PlannerConfig,
                progress: Progress | None = None) -> PlanResult:
    """screen → refine → lower-level MIP → choose (module docstring)."""
    if config.schedule is not None:
        raise ParplanError(f"plan_traced searches; a config with schedule={config.schedule!r} is evaluated as given "
                           f"by parplan.planner.evaluate.evaluate_traced (parplan.plan_with_report picks it)")
    run = new_search(traced, cluster, config, progress)
    stop = run.stop
    screened = _screen(run)
    refined, upper_reports = _refine_best(run, screened)
    reports: dict = {"upper": upper_reports, "lower": None, "screened": screened.screened,
                     "pruned": screened.pruned, "degrees_skipped": screened.skipped,
                     "degrees_considered": screened.considered}
    mips = _lower_all(run, refined, screened.ours, work=config.work) if (
        config.use_mip and config.mode == "train" and refined) else []
    if mips:
        reports["lower_all"] = [m.mip.as_dict() for m in mips]
        reports["lower"] = min(mips, key=run.key).mip.as_dict()
    mark = len(run.notes)
    best = _choose(run, mips + refined, screened, work=_MEMORY_WORK * config.work)
    run.notes[mark:mark] = _mip_notes(best, mips)
    if stop.cut:
        run.notes.append(stop.note)
    reports["stopped_early"] = list(stop.cut)
    return PlanResult(best=best, baselines=tuple(screened.baselines[n] for n in sorted(screened.baselines)),
                      units=run.ops, memory_cap=run.cap, planning_seconds=time.perf_counter() - stop.started,
                      reports=reports, notes=tuple(dict.fromkeys(run.notes)), stopped_early=tuple(stop.cut))


def new_search(traced: TracedGraph, cluster: ClusterProfile, config: PlannerConfig,
               progress: Progress | None = None) -> _Search:
    """What a planning run shares, from its start: the cap, both unit graphs, the safety stop."""
    stop = SafetyStop(seconds=config.time_limit)  # started first: the clock covers coarsening too
    cap = config.memory_limit if config.memory_limit is not None else min(g.gpu.hbm_bytes for g in cluster.groups)
    return _Search(traced=traced, cluster=cluster, config=config, cap=cap, layers=coarsen(traced, Granularity.LAYER),
                   ops=coarsen(traced, Granularity.OPERATOR), stop=stop, progress=progress, key=_key(config))


def _screen(run: _Search) -> _Screened:
    """Step 1: degree candidates, most promising first (at most _MAX_DEGREES of them, and no
    new one once a plan fits and _SCREENS_PER_WORK × work schedules were screened) × family:
    the baselines on layer splits, parplan on operator splits. A schedule cannot beat its
    busiest rank's work, so candidates whose bound is already 10 % above the best
    simulated step of their kind are not simulated."""
    config, cluster = run.config, run.cluster
    families = [FAMILIES["chain"]] if config.mode == "inference" else [FAMILIES[f] for f in config.families]
    degree_list = _promising_first(degree_candidates(run), run.traced, cluster, config, run.cap)
    out = _Screened(baselines={}, ours=[], screened=0, pruned=0, skipped=[str(d) for d in degree_list[_MAX_DEGREES:]],
                    considered=[str(d) for d in degree_list])
    subject = f"{len(degree_list)} degree candidates"
    run.begin(Phase.SCREEN, subject)
    best_ours = float("inf")
    max_screens = _SCREENS_PER_WORK * config.work
    deferred = []  # (degrees, the rest of its techniques), for the second pass
    bound_tries = 0  # memory-bound candidates deferred (the most promising first)
    for degrees in degree_list[:_MAX_DEGREES]:
        if best_ours < float("inf") and out.screened + out.pruned >= max_screens:
            out.skipped.append(str(degrees))  # the rest of the work goes to refining what was found
            continue
        if run.stop.expired():
            run.stop.fired("screening")
            out.skipped.append(str(degrees))
            continue
        first, rest = technique_choices(config.techniques, degrees, coster_for=run.coster, cluster=cluster,
                                        memory=config.memory, microbatches=config.microbatches, cap=run.cap)
        fitted = out.fitting
        best_ours = _screen_techniques(run, out, degrees, families, first, best_ours)
        if out.fitting == fitted:
            deferred.append((degrees, rest))
        elif out.memory_bound(degrees) and bound_tries < _MEMORY_BOUND_CANDIDATES:
            bound_tries += 1
            deferred.append((degrees, rest))
    # second pass: memory techniques where the plain choice gave no plan within the cap, or
    # only plans far slower than what the cap rules out
    for degrees, rest in deferred:
        if best_ours < float("inf") and out.screened + out.pruned >= max_screens:
            break
        if run.stop.expired():
            run.stop.fired("screening")
            break
        best_ours = _screen_techniques(run, out, degrees, families, rest(), best_ours)
    if not out.ours and not out.baselines:
        raise ParplanError("no placement fits the model on this cluster (or none meets the fixed --dp-shard / "
                           "--dp-replicate / --sequence-parallel); use more GPUs or fewer stages")
    if out.skipped:
        run.notes.append(f"{len(out.skipped)} degree candidates not screened ({', '.join(out.skipped[:4])}"
                         f"{', …' if len(out.skipped) > 4 else ''}): the most promising used the screening's "
                         f"share of the work; raise --effort, or fix --pp/--tp to plan one of the others")
    run.end(Phase.SCREEN, subject, f"{len(run.traced.nodes)} operators → {len(run.layers)} layer units, "
                                   f"{len(run.ops)} operator units; {out.screened} (placement, schedule) pairs "
                                   f"simulated, {out.pruned} pruned by their bound")
    return out


def degree_candidates(run: _Search) -> list[Degrees]:
    """The PP × DP × TP (× EP) splits the run may use: the fixed ones, or every one that
    shares the micro-batches evenly (only --tp's with --tp alone)."""
    config, cluster = run.config, run.cluster
    degree_list = candidate_degrees(cluster, microbatches=config.microbatches, max_pp=len(run.layers),
                                    fixed=config.degrees, experts=expert_counts(run.traced), ep=config.ep)
    if config.tp is not None:
        degree_list = [d for d in degree_list if d.tp == config.tp]
    allowed = [d for d in degree_list if config.techniques.fits_degrees(d)]
    if degree_list and not allowed:
        c = config.techniques
        raise ParplanError(
            f"no PP × DP × TP split of {cluster.num_gpus} GPUs has a data-parallel group that --dp-shard "
            f"{c.dp_shard} × --dp-replicate {c.dp_replicate} (None: what is left) fits"
            f"{' with TP > 1 for --sequence-parallel' if c.sequence_parallel else ''} (data-parallel degrees "
            f"{sorted({d.dp for d in degree_list})}); choose a layout dividing one of them")
    degree_list = allowed
    if config.ep is not None:
        check_ep(run.traced, config.ep, config.degrees.dp if config.degrees else None)
    if not degree_list:
        raise ParplanError(
            f"no PP × DP × TP split of {cluster.num_gpus} GPUs divides {config.microbatches} micro-batches "
            f"among the replicas; use a micro-batch count divisible by the data-parallel degree"
        )
    return degree_list


def degree_coster(run: _Search, degrees: Degrees, techniques: Techniques) -> Coster:
    """The one cost function at these degrees and techniques (searched and evaluated plans alike)."""
    return run.coster(degrees, techniques.recompute, techniques.sequence_parallel)


def _screen_techniques(run: _Search, out: _Screened, degrees: Degrees, families, techniques: list[Techniques],
                       best_ours: float) -> float:
    """Screen `degrees` under each of `techniques` in turn, until one gives a plan that fits."""
    for t in techniques:
        coster = degree_coster(run, degrees, t)
        fitted = out.fitting
        for family in families:
            for label, placed in _screen_candidates(run, coster, degrees, family, t):
                best_ours = _screen_one(run, out, label, placed, coster, best_ours)
        if out.fitting > fitted:
            break
    return best_ours


def _screen_candidates(run: _Search, coster: Coster, degrees: Degrees, family: Family, techniques: Techniques):
    """(label, placement) to screen: the baseline's layer split; parplan's operator split
    by rank and by stage, and the hand split seen at operator level (so its own search
    space contains the baseline's placement)."""
    if family.num_stages(degrees.pp) > len(run.layers):
        return
    split = lambda graph, **kw: _contiguous(graph, coster, run.cluster, degrees, family,  # noqa: E731
                                            memory=run.config.memory, cap=run.cap, techniques=techniques, **kw)
    layer_split = split(run.layers, aware=False)
    op_split = split(run.ops, aware=True)
    op_even = split(run.ops, aware=True, by_rank=False)
    candidates = [("baseline", run.layers, layer_split), ("parplan", run.ops, op_split),
                  ("parplan", run.ops, _refine_units(layer_split, run.layers, run.ops))]
    if op_even != op_split:
        candidates.append(("parplan", run.ops, op_even))
    for label, graph, stage_of_unit in candidates:
        if stage_of_unit is not None and not graph.pieceless_stages(stage_of_unit):
            yield label, place(graph, coster, run.cluster, degrees, family, stage_of_unit, run.config.memory,
                               techniques)


def _screen_one(run: _Search, out: _Screened, label: str, placed: Placed, coster: Coster, best_ours: float) -> float:
    micro = run.config.microbatches // placed.degrees.dp
    schedules = baseline_schedules(placed, micro, run.config.mode) if label == "baseline" else \
        parplan_schedules(placed, micro, run.config.mode, run.cap)
    for name, schedule in schedules:
        rival = out.baselines[name].step_time_s if label == "baseline" and name in out.baselines else best_ours
        if _busiest_rank_bound(placed, schedule) > _SCREEN_SLACK * rival:
            out.pruned += 1
            continue
        result = evaluate_schedule(name if label == "baseline" else "parplan", placed, schedule, run.cap,
                                   {"schedule": name, "placement": placed.family.name,
                                    "degrees": str(placed.degrees)})
        out.screened += 1
        out.fitting += result.fits
        fit, over = out.fastest.get(placed.degrees, (float("inf"), float("inf")))
        out.fastest[placed.degrees] = (min(fit, result.step_time_s), over) if result.fits else \
            (fit, min(over, result.step_time_s))
        if label == "baseline":
            if name not in out.baselines or run.key(result) < run.key(out.baselines[name]):
                out.baselines[name] = result
        else:
            out.ours.append((result, coster))
            if result.fits:
                best_ours = min(best_ours, result.step_time_s)
    return best_ours


def _tag(e: Evaluated) -> tuple[str, str, str]:
    return e.placed.family.name, str(e.placed.degrees), e.placed.techniques.label()


def _refine_best(run: _Search, screened: _Screened) -> tuple[list[Evaluated], list[dict]]:
    """Step 2: boundary moves, then the upper MIP, on the _REFINED_TAGS most promising
    (family, degrees), ordered by the best plan on them, baselines included: that is the
    bar to clear."""
    best_of_tag: dict[tuple, tuple] = {}
    for e in [e for e, _ in screened.ours] + list(screened.baselines.values()):
        best_of_tag[_tag(e)] = min(best_of_tag.get(_tag(e), run.key(e)), run.key(e))
    screened.ours.sort(key=lambda pair: (best_of_tag[_tag(pair[0])], run.key(pair[0])))
    refined: list[Evaluated] = [e for e, _ in screened.ours[:8]]
    reports: list[dict] = []
    seen: set = set()
    for result, coster in screened.ours:
        tag = _tag(result)
        if tag in seen:
            continue
        seen.add(tag)
        if len(seen) > _REFINED_TAGS:
            break
        if run.stop.expired():
            run.stop.fired("refinement")
            break
        trials = [int(_BOUNDARY_TRIALS_PER_WORK * run.config.work) + 20]  # shared by both rounds of moves
        moved = _moves(result, coster, run, trials)
        if moved is not None:
            refined.append(moved)
            result = moved
        subject = " ".join(tag)
        run.begin(Phase.UPPER_MIP, subject)
        improved, report = _refine(result, coster, run)
        reports.append(report)
        if improved is None:
            run.end(Phase.UPPER_MIP, subject, f"{report['status']}, no other split")
            continue
        refined.append(improved)
        # its objective (rank loads) is a proxy: the simulator may find its split slower
        verdict = "faster" if run.key(improved) < run.key(result) else "not faster; both kept as candidates"
        run.end(Phase.UPPER_MIP, subject, f"{report['status']}, its split {result.step_time_s:.4g} s → "
                                          f"{improved.step_time_s:.4g} s ({verdict})")
        moved = _moves(improved, coster, run, trials)
        if moved is not None:
            refined.append(moved)
    return refined, reports


def _moves(start: Evaluated, coster: Coster, run: _Search, trials: list[int]) -> Evaluated | None:
    """Boundary moves from `start`, reported as a phase: the better plan, or None."""
    subject = " ".join(_tag(start))
    run.begin(Phase.BOUNDARY_MOVES, subject)
    left = trials[0]
    moved = _local_search(start, coster, run, trials)  # only ever a faster plan, or None
    tried = f"{left - trials[0]} splits tried" if left > trials[0] else "no trials left"
    run.end(Phase.BOUNDARY_MOVES, subject, f"step {start.step_time_s:.4g} s → {moved.step_time_s:.4g} s, {tried}"
            if moved is not None else f"no better split, {tried}")
    return moved


def _lower_all(run: _Search, refined: list[Evaluated], ours: list[tuple[Evaluated, Coster]], *,
               work: float) -> list[Evaluated]:
    """Step 3: the lower-level MIP on the best placement of each family. The MIP changes
    the ranking: DualPipe's placement with its cells split halves its bubble, a V under
    ZB-V's order may stall. So every family's best placement gets a share of the work;
    families the MIP settles early (proven optimal) hand the rest of theirs on, up to
    twice an equal share."""
    per_family: dict[str, Evaluated] = {}
    for e in refined + [e for e, _ in ours]:
        name = e.placed.family.name
        if e.fits and (name not in per_family or run.key(e) < run.key(per_family[name])):
            per_family[name] = e
    starts = sorted(per_family.values(), key=run.key)
    out = []
    equal = work / max(1, len(starts))
    for k, first in enumerate(starts):
        # what families settled early hand on, up to twice an equal share (a large model's
        # last family would otherwise take all of it, at many seconds per deterministic one)
        share = min(work / (len(starts) - k), 2 * equal)
        subject = " ".join(_tag(first))
        run.begin(Phase.LOWER_MIP, subject)
        mip = _lower_mip(first, run, share)
        if mip is None:
            run.end(Phase.LOWER_MIP, subject, "not run (see the notes)")
            continue
        work -= mip.mip.work
        out.append(mip)
        run.end(Phase.LOWER_MIP, subject, f"{mip.mip.status}, step {first.step_time_s:.4g} s → "
                                          f"{mip.step_time_s:.4g} s")
    return out


def _choose(run: _Search, refined: list[Evaluated], screened: _Screened, *, work: float) -> Evaluated:
    """Step 4: the best plan that fits, baselines included (on equal step times the first
    in `refined`: the caller puts the MIP's plans, which carry a bound, first); a parplan
    plan then gets the memory pass (the same step time at a lower peak)."""
    pool = refined + list(screened.baselines.values())
    best = min(pool, key=run.key)
    if not best.fits:
        leanest = min(pool, key=lambda e: max(e.peak_memory_bytes))
        raise ParplanError(
            f"no plan fits the memory cap of {format_bytes(run.cap)} per device; the smallest peak any "
            f"candidate needs is {format_bytes(max(leanest.peak_memory_bytes))} ({leanest.placed.degrees}, "
            f"{leanest.placed.techniques.label()}) — raise --memory-limit to at least that, "
            f"add GPUs, or shrink the micro-batch"
        )
    if best.label == "parplan" and run.config.mode == "train":
        subject = " ".join(_tag(best))
        run.begin(Phase.MEMORY_PASS, subject)
        best = _leaner(best, run, work)
        run.end(Phase.MEMORY_PASS, subject, run.notes[-1])  # _leaner's note says what it did
    if best.label != "parplan":
        run.notes.append(f"no parplan placement beat the {best.label} baseline; the plan is that baseline")
    return best


def _mip_notes(best: Evaluated, mips: list[Evaluated]) -> list[str]:
    """The lower MIPs' notes: the kept plan's as they are, every other family's named by
    it, so that none reads as a remark on the plan shown (one family's "optimal without
    search" is not the kept plan's status). The safety stop's own note comes once, last."""
    kept = best.mip
    own = kept.notes if kept is not None else ()
    others: dict[str, list[str]] = {}  # note -> the families whose MIP wrote it
    for m in mips:
        if m.mip is not kept:
            for n in m.mip.notes:
                if n not in own:
                    others.setdefault(n, []).append(m.placed.family.name)
    return [n for n in own if not n.startswith("stopped early")] + [
        f"lower MIP on {', '.join(families)} (not kept): {n}" for n, families in others.items()
        if not n.startswith("stopped early")]


def _promising_first(degree_list: list[Degrees], traced: TracedGraph, cluster: ClusterProfile,
                     config: PlannerConfig, cap: float) -> list[Degrees]:
    """Screen likely winners first, so a time limit cuts off the unlikely ones.

    Estimate: the work per device, stretched by a 1F1B-like fill (pp−1)/m, a few percent per
    TP doubling for its collectives; with EP the all-to-alls, mostly hidden (the longer of
    compute and all-to-all plus a fifth of the shorter); degrees whose parameters and
    optimizer state alone overflow the cap go last.
    """
    coster = Coster(traced)
    gpu = cluster.gpu(0)
    total = coster.ops((n.name for n in traced.nodes), gpu)
    routed = coster.ops(coster.routed, gpu)
    work = total.total_s if config.mode == "train" else total.forward_s

    fixed = config.techniques.zero
    leanest = fixed if fixed is not None else (3 if config.mode == "train" else 1)

    def estimate(d: Degrees) -> tuple[bool, bool, float]:
        micro = config.microbatches // d.dp
        moved = 1 - 1 / d.ep  # the routed experts' share that other EP ranks hold

        def static(zero: int) -> float:
            return config.memory.static_bytes(
                total.param_bytes - moved * routed.param_bytes, total.param_count - moved * routed.param_count,
                Techniques(zero=zero, dp_shard=d.dp), expert_bytes=routed.param_bytes / d.ep,
                expert_count=routed.param_count / d.ep, ep=d.ep) / (d.pp * d.tp)
        a2a = sum(a.total for a in layer_a2a(traced, d, cluster, 0).values()) if d.ep > 1 else 0.0
        compute, comm = work / (d.pp * d.tp) * (1 + 0.05 * (d.tp.bit_length() - 1)), a2a / d.pp
        # an overlapping schedule hides the shorter of compute and all-to-all, all but its slowdown
        per_micro = max(compute, comm) + 0.2 * min(compute, comm)
        step = per_micro * micro * (1 + (d.pp - 1) / micro)
        # ZeRO-1 (or the fixed level) overflowing goes after, ZeRO-3 overflowing last
        return (static(leanest) > cap, static(fixed if fixed is not None else 1) > cap, step)

    return sorted(degree_list, key=estimate)


def _refine_units(split: list[int] | None, coarse: UnitGraph, fine: UnitGraph) -> list[int] | None:
    """A split of coarse units expressed on finer units (each fine unit follows its first operator)."""
    if split is None:
        return None
    stage_of_op = {op: split[u.index] for u in coarse.units for op in u.ops}
    out = [stage_of_op[u.ops[0]] for u in fine.units]
    return out if len(set(out)) == len(set(split)) else None


def _busiest_rank_bound(placed: Placed, schedule) -> float:
    """Step time can be no less than the busiest rank's compute plus the gradient sync (an
    all-to-all a cell may hide does not count)."""
    costs = costs_for_schedule(schedule, placed.costs)
    busy = [0.0] * schedule.num_ranks
    for s in range(schedule.num_stages):
        hidden = costs.phases[s].comm_seconds() if costs.phases and costs.phases[s] else 0.0
        busy[schedule.stage_to_rank[s]] += schedule.microbatches_per_chain * (
            costs.forward[s] + costs.backward_input[s] + costs.backward_weight[s] - hidden)
    return max(busy) + placed.dp_sync_s


def _unit_functions(graph: UnitGraph, coster: Coster, gpu_of, memory: MemoryModel, degrees: Degrees,
                    cluster: ClusterProfile, techniques: Techniques):
    """(cost(u, s), static(u, s)): seconds of unit u on stage s's device — its all-to-alls
    run in line included —, and its static bytes."""
    units = graph.units
    a2a = _a2a_by_op(coster, degrees, cluster, memory.mode)
    unit_a2a = [sum(a2a.get(op, 0.0) for op in u.ops) for u in units]
    cost = lambda u, s: coster.unit(units[u], gpu_of(s)).total_s + unit_a2a[u]  # noqa: E731

    def static(u: int, s: int) -> float:
        c = coster.unit(units[u], gpu_of(s))  # parameter bytes do not depend on the device
        return memory.static_bytes(c.param_bytes, c.param_count, techniques, expert_bytes=c.expert_param_bytes,
                                   expert_count=c.expert_param_count, ep=degrees.ep)

    return cost, static


def _a2a_by_op(coster: Coster, degrees: Degrees, cluster: ClusterProfile, mode: str) -> dict[str, float]:
    """The all-to-alls each operator opens or closes (dispatch before a layer's first routed
    op, combine after its last), forward and backward, at pipeline position 0."""
    if degrees.ep == 1:
        return {}
    out: dict[str, float] = {}
    train = mode == "train"
    a2a = layer_a2a(coster.traced, degrees, cluster, 0)
    for layer in coster.traced.moe_layers:
        a = a2a[layer.path]
        for op, t in ((layer.routed_ops[0], a.dispatch + a.other * train), (layer.routed_ops[-1], a.other * (1 + train))):
            out[op] = out.get(op, 0.0) + t
    return out


def _contiguous(graph: UnitGraph, coster: Coster, cluster: ClusterProfile, degrees: Degrees, family: Family,
                *, aware: bool, memory: MemoryModel, cap: float, techniques: Techniques,
                by_rank: bool = True) -> list[int] | None:
    device = stage_gpus(cluster, degrees, family)
    gpu_of = device.__getitem__ if aware else (lambda s: device[0])
    cost, static = _unit_functions(graph, coster, gpu_of, memory, degrees, cluster, techniques)
    units = graph.units
    n = degrees.pp
    by_stage = lambda split: max(rank_loads(split, FAMILIES["chain"], family.num_stages(n), cost))  # noqa: E731
    score = (lambda split: (max(rank_loads(split, family, n, cost)), by_stage(split))) if by_rank else \
        (lambda split: (by_stage(split),))
    try:
        return balanced_contiguous(len(units), family.num_stages(n), cost, score=score,
                                   static=static if aware else None, static_cap=cap if aware else None)
    except ParplanError:
        return None


def _refine(result: Evaluated, coster: Coster, run: _Search) -> tuple[Evaluated | None, dict]:
    placed: Placed = result.placed
    degrees, family, config, graph = placed.degrees, placed.family, run.config, run.ops
    cost, static = _unit_functions(graph, coster, stage_gpus(run.cluster, degrees, family).__getitem__,
                                   config.memory, degrees, run.cluster, placed.techniques)
    split, report = place_units(
        num_units=len(graph.units), edges=list(graph.edges), family=family, num_ranks=degrees.pp, cost=cost,
        static=static, static_cap=run.cap, hint=list(placed.stage_of_unit), work=_UPPER_WORK * config.work,
        safety_seconds=None if run.stop.seconds is None else max(0.01, run.stop.left()),
        seed=config.seed, workers=config.workers, anchored=graph.anchored,
    )
    if report.get("clock_stopped"):
        run.stop.fired("the upper-level MIP")
    report = {**report, "family": family.name, "degrees": str(degrees)}
    if list(split) == list(placed.stage_of_unit):
        return None, report
    new = place(graph, coster, run.cluster, degrees, family, split, config.memory, placed.techniques)
    return _best_on(new, run, {"upper": report}), report


def _best_on(placed: Placed, run: _Search, extra: dict) -> Evaluated | None:
    best = None
    micro = run.config.microbatches // placed.degrees.dp
    for name, schedule in parplan_schedules(placed, micro, run.config.mode, run.cap):
        candidate = evaluate_schedule("parplan", placed, schedule, run.cap,
                                      {"schedule": name, "placement": placed.family.name,
                                       "degrees": str(placed.degrees), **extra})
        if best is None or run.key(candidate) < run.key(best):
            best = candidate
    return best


def _local_search(start: Evaluated, coster: Coster, run: _Search, trials: list[int]) -> Evaluated | None:
    """Move stage boundaries while the simulated step time drops: one boundary at a time
    (by 1, 2, 4, 8 units), and runs of consecutive boundaries shifted together, which
    carry load from one end of the pipeline to the other without unbalancing the stages
    in between (a move single boundaries cannot make when each one alone is worse).

    The moves are tried in a cycle, each improvement kept at once and the cycle continued
    from the next move, until a whole cycle improves nothing; a split seen before is not
    tried again. Proxies such as the largest rank load miss what a schedule does with
    uneven stages; the simulator does not, so every move is judged by it (expert orders and
    the list schedule). The search is bounded by a trial count (`trials[0]` left,
    deterministic, decremented here); the safety stop only guards a runaway run.
    """
    split = list(start.placed.stage_of_unit)
    if any(b < a for a, b in zip(split, split[1:])):
        return None  # only contiguous splits have boundaries to move
    placed, graph = start.placed, run.ops
    cuts = tuple(split.index(s) for s in range(1, max(split) + 1))  # first unit of each stage after the first
    moves = _boundary_moves(len(cuts))
    best, improved, seen = start, 0, {cuts}
    k = since = 0  # next move; moves tried since the last improvement
    while since < len(moves) and trials[0] > 0:
        moved = _moved(cuts, moves[k], len(split))
        k, since = (k + 1) % len(moves), since + 1
        if moved is None or moved in seen:
            continue
        seen.add(moved)
        trial = [sum(u >= c for c in moved) for u in range(len(split))]
        if graph.pieceless_stages(trial):
            continue  # a stage would hold no module of its own
        if run.stop.expired():
            run.stop.fired("boundary moves")
            break
        trials[0] -= 1
        candidate = _best_on(place(graph, coster, run.cluster, placed.degrees, placed.family, trial,
                                   run.config.memory, placed.techniques), run, {"refined": "boundary moves"})
        if candidate is not None and run.key(candidate) < run.key(best):
            best, cuts, improved, since = candidate, moved, improved + 1, 0
    return best if improved else None


def _boundary_moves(num_cuts: int) -> list[tuple[int, int, int]]:
    """(first boundary, how many consecutive ones, step): single boundaries first, then
    runs of 2, 3, …, each by ±1, 2, 4, 8 units."""
    return [(first, span, step) for span in range(1, num_cuts + 1) for first in range(num_cuts - span + 1)
            for step in (1, -1, 2, -2, 4, -4, 8, -8)]


def _moved(cuts: tuple[int, ...], move: tuple[int, int, int], num_units: int) -> tuple[int, ...] | None:
    """The boundaries after the move, or None when they would leave the units or cross."""
    first, span, step = move
    out = cuts[:first] + tuple(c + step for c in cuts[first:first + span]) + cuts[first + span:]
    return out if 0 < out[0] and out[-1] < num_units and all(a < b for a, b in zip(out, out[1:])) else None


def _leaner(best: Evaluated, run: _Search, work: float) -> Evaluated:
    """The kept plan's step time at less activation memory (the MIP's makespan objective
    does not see memory below the cap), with the memory pass's share of the work. Run
    once, on the plan kept: each MIP call doing it would take work from the next."""
    from parplan.mip import lower_memory

    placed, config = best.placed, run.config
    # one activation cap for every rank: the plan's own peak when its ranks' static bytes
    # differ enough (ZeRO-3's gathers) that it fits per rank but not under cap − max(static);
    # what the pass returns is checked per rank below
    act_cap = max(run.cap - max(placed.static_bytes), max(best.simulation.peak_activation_per_rank))
    lean = lower_memory(best.schedule, costs=placed.costs, placement=placed.family.name,
                        memory_cap=act_cap, work=max(0.05, work),
                        time_limit=None if run.stop.seconds is None else max(1e-6, run.stop.left()),
                        seed=config.seed, workers=config.workers)
    if lean.ran and lean.solver_status != "OPTIMAL" and run.stop.expired():  # a finished pass was not cut
        run.stop.fired("the memory pass")
    leaner = replace(best, schedule=lean.schedule, simulation=evaluate_schedule(
        best.label, placed, lean.schedule, run.cap).simulation) if lean.lowered else best
    if leaner.step_time_s > best.step_time_s + 1e-12 or not leaner.fits:
        leaner = best
    if not lean.ran:  # only the safety stop keeps the pass from running
        if run.stop.seconds is not None:
            run.stop.fired("the memory pass")
        run.notes.append(lean.note)
    elif leaner is best:
        run.notes.append(f"{lean.head}: no lower peak memory at this step time")
    else:  # the pass counts activation bytes; say it per device, parameters included
        before, after = format_bytes(max(best.peak_memory_bytes)), format_bytes(max(leaner.peak_memory_bytes))
        run.notes.append(f"{lean.head}: peak memory per device {before} -> {after} at the same step time")
    return leaner


def _lower_mip(start: Evaluated, run: _Search, work: float) -> Evaluated | None:
    from parplan.mip import MipOptions, solve_schedule

    placed, config = start.placed, run.config
    if run.stop.expired():
        run.stop.fired(f"the lower-level MIP on {placed.family.name}")
        return None
    # with all-to-alls to hide, (F; I) cells too: the W then runs apart, filling the compute
    # lane where another all-to-all would leave it idle
    options = MipOptions(placement=placed.family.name, memory_cap=run.cap - max(placed.static_bytes),
                         cells="any" if placed.costs.communicates else "fb",
                         work=max(0.05, work), seed=config.seed, workers=config.workers,
                         time_limit=None if run.stop.seconds is None else max(1e-6, run.stop.left()))
    try:
        result = solve_schedule(num_ranks=placed.degrees.pp, num_microbatches=config.microbatches // placed.degrees.dp,
                                costs=placed.costs, options=options,
                                progress=run.solver_updates(Phase.LOWER_MIP, " ".join(_tag(start))))
    except ParplanError as err:
        run.notes.append(f"lower-level MIP skipped on {placed.family.name}: {err}")
        return None
    if result.stopped_early:
        run.stop.fired(f"the lower-level MIP on {placed.family.name}")
    report = result.report(degrees=str(placed.degrees))
    return evaluate_schedule("parplan", placed, result.schedule, run.cap,
                             {"schedule": "mip", "placement": placed.family.name, "degrees": str(placed.degrees)},
                             mip=report)
