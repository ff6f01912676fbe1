"""Evaluate a hand configuration: a fixed expert schedule timed as given, not searched.

A user holding a recipe (torchtitan's, Megatron's) fixes the choices — `--schedule`,
`--chunks`, `--pp`, `--tp`, `--ep`, `-m`, `--batch`, and whatever else `PlannerConfig`
carries — and wants that configuration's step time, memory and chart beside parplan's
plan. So with `PlannerConfig.schedule` set the planner skips the upper and lower MIPs:

1. the degrees are the fixed ones (or, with --pp left out, every candidate the search
   would screen, and the fastest that fits is kept: the schedule fixed, the degrees searched);
2. the model is split the way an expert splits it: whole layers (repeated blocks and the
   top-level modules), contiguous, balanced by cost (`balanced_contiguous`) — the split
   the search times every baseline on, so the evaluated row equals the searched plan's
   row for that schedule at those degrees. If that split overflows the memory cap, the
   layers are re-split under the cap on each stage's parameters and optimizer state (the
   even split's memory-aware form); the notes say so;
3. the named schedule is built by its baseline (`parplan.baselines`, which checks its
   own preconditions: DualPipe's even ranks and micro-batches, a schedule's chunk count)
   and timed by the one simulator (`lower.evaluate_schedule`), costed by the one cost
   function at those degrees (`bilevel.degree_coster`), memory by the same `MemoryModel`.

A configuration that does not fit the memory cap is refused, with the memory it needs
per device: its step time is not one a run could reach. To see it anyway, raise
--memory-limit to the figure the message names.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from dataclasses import replace

from parplan.baselines import build_baseline
from parplan.errors import ParplanError
from parplan.cost.hardware import ClusterProfile
from parplan.planner.bilevel import (PlannerConfig, PlanResult, Progress, _contiguous, _Search, degree_candidates,
                                     degree_coster, new_search)
from parplan.planner.degrees import Degrees
from parplan.planner.lower import Evaluated, evaluate_schedule, place
from parplan.plan import Techniques
from parplan.schedule.placement import Family, family_of_schedule
from parplan.sizes import format_bytes, memory_flag
from parplan.trace.graph import TracedGraph

__all__ = ["evaluate_traced", "schedule_family", "other_choices"]

# PlannerConfig fields that steer the search or are recorded beside the choices (degrees,
# schedule, cap); every other field is a modelling choice a recipe fixes (the memory model,
# and whatever techniques PlannerConfig gains), written to plan.json as it stands.
_NOT_CHOICES = frozenset({"microbatches", "memory_limit", "work", "time_limit", "objective", "degrees", "ep", "tp",
                          "families", "use_mip", "seed", "workers", "schedule", "chunks"})


def schedule_family(name: str, chunks: int | None) -> Family:
    """The placement `name` runs on, with `chunks` stage chunks per rank (a loop's v)."""
    fam = family_of_schedule(name)
    return fam if chunks is None else replace(fam, stages_per_rank=chunks)


def other_choices(config: PlannerConfig) -> dict:
    """The modelling choices in force besides degrees and schedule, by PlannerConfig field
    name, as plain JSON values (nested dataclasses as dicts, enums as their values)."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, enum.Enum):
            return value.value
        raise TypeError(f"planner choice {value!r} has no JSON form")  # an internal bug: a new field type

    return {f.name: json.loads(json.dumps(getattr(config, f.name), default=plain))
            for f in dataclasses.fields(config) if f.name not in _NOT_CHOICES}


def evaluate_traced(traced: TracedGraph, cluster: ClusterProfile, config: PlannerConfig,
                    progress: Progress | None = None) -> PlanResult:
    """`config.schedule` at the fixed (or each candidate) degrees: module docstring.
    (`progress` is accepted for the same call as `plan_traced`; there are no phases to report.)"""
    if config.schedule is None:
        raise ParplanError("evaluate_traced times a fixed schedule: give the config a schedule= "
                           "(or search with parplan.planner.plan_traced)")
    run = new_search(traced, cluster, config, progress)
    family = schedule_family(config.schedule, config.chunks)
    candidates = degree_candidates(run)
    timed: list[Evaluated] = []
    refused: list[ParplanError] = []
    for degrees in candidates:
        try:
            timed.append(_evaluate_at(run, degrees, family))
        except ParplanError as err:
            refused.append(err)
    if not timed:
        if len(candidates) == 1:
            raise refused[0]
        raise ParplanError(f"--schedule {config.schedule} runs at none of the {len(candidates)} degree candidates; "
                           f"at {candidates[0]}: {refused[0]}")
    best = min(timed, key=run.key)  # the fastest that fits, when one does
    if not best.fits:
        raise _overflow(min(timed, key=lambda e: max(e.peak_memory_bytes)), run.cap, searched=len(candidates) > 1)
    if len(candidates) > 1:
        run.notes.append(f"--schedule {config.schedule} at {len(timed)} degree candidates "
                         f"({len(refused)} refused by the schedule or the split): the fastest that fits is kept")
    return PlanResult(best=best, baselines=(), units=run.ops, memory_cap=run.cap,
                      planning_seconds=time.perf_counter() - run.stop.started,
                      reports={"evaluated": len(timed), "refused": [str(e) for e in refused]},
                      notes=tuple(dict.fromkeys(run.notes)), search="evaluated")


def _evaluate_at(run: _Search, degrees: Degrees, family: Family) -> Evaluated:
    config = run.config
    name = config.schedule
    micro = config.microbatches // degrees.dp
    where = f"--schedule {name} at {degrees} ({micro} micro-batches per replica)"
    try:
        schedule = build_baseline(name, degrees.pp, micro, num_chunks=config.chunks)
    except ParplanError as err:  # the builder says N (= --pp) and M (per replica)
        raise ParplanError(f"{where}: {err}") from None
    stages = family.num_stages(degrees.pp)
    if stages > len(run.layers):
        raise ParplanError(f"{where} needs {stages} model stages but the model has {len(run.layers)} layers "
                           f"(repeated blocks and top-level modules) to split; use a smaller --pp or --chunks")
    techniques = config.techniques.plain(degrees)
    coster = degree_coster(run, degrees, techniques)
    even = _layer_split(run, coster, degrees, family, techniques, aware=False)
    if even is None:
        raise ParplanError(f"{where}: the {len(run.layers)} layers do not split into {stages} stages that each "
                           f"hold parameters; use a smaller --pp or --chunks")
    result = _timed(run, coster, degrees, family, even, schedule, techniques)
    if result.fits:
        return result
    capped = _layer_split(run, coster, degrees, family, techniques, aware=True)
    if capped is None or capped == even:
        return result
    lighter = _timed(run, coster, degrees, family, capped, schedule, techniques)
    if not lighter.fits and max(lighter.peak_memory_bytes) >= max(result.peak_memory_bytes):
        return result
    run.notes.append(f"the layer split balanced by cost needs {format_bytes(max(result.peak_memory_bytes))} per "
                     f"device at {degrees}, over the cap of {format_bytes(run.cap)}; the layers were re-split "
                     f"under the cap ({format_bytes(max(lighter.peak_memory_bytes))})")
    return lighter


def _layer_split(run: _Search, coster, degrees: Degrees, family: Family, techniques: Techniques, *,
                 aware: bool) -> list[int] | None:
    """Whole layers, contiguous, balanced by cost; `aware`: on each stage's device and under
    the memory cap on its static bytes. None when no such split holds parameters on every stage."""
    split = _contiguous(run.layers, coster, run.cluster, degrees, family, aware=aware, memory=run.config.memory,
                        cap=run.cap, techniques=techniques)
    return split if split is not None and not run.layers.pieceless_stages(split) else None


def _timed(run: _Search, coster, degrees: Degrees, family: Family, split: list[int], schedule,
           techniques: Techniques) -> Evaluated:
    placed = place(run.layers, coster, run.cluster, degrees, family, split, run.config.memory, techniques)
    return evaluate_schedule(run.config.schedule, placed, schedule, run.cap,
                             {"schedule": run.config.schedule, "placement": family.name, "degrees": str(degrees),
                              "evaluated": True})


def _overflow(e: Evaluated, cap: float, *, searched: bool) -> ParplanError:
    peaks = e.peak_memory_bytes
    rank = max(range(len(peaks)), key=peaks.__getitem__)
    static = e.placed.static_bytes[rank]
    which = "the smallest peak of any degree candidate" if searched else "it needs"
    return ParplanError(
        f"--schedule {e.label} at {e.placed.degrees} does not fit the memory cap of {format_bytes(cap)} per device: "
        f"{which} {format_bytes(peaks[rank])} on pipeline rank {rank} ({format_bytes(static)} parameters, "
        f"gradients and optimizer state, {format_bytes(peaks[rank] - static)} activations); use --memory-limit "
        f"{memory_flag(peaks[rank])} or more to see its step time anyway, or other degrees, more GPUs, or "
        f"a schedule that holds fewer micro-batches' activations")
