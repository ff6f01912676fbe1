"""`parplan.plan`: model + cluster in, a `Plan` out — the Python entry the CLI also uses.

`plan_from_schedule` is the one way a placed schedule becomes a `Plan`: the bi-level
planner's `to_plan` and the runtime's chain planner (`plan_chain`) both call it."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

from parplan.cost.hardware import ClusterProfile, load_cluster
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.plan import (
    ClusterSummary,
    EvaluatedConfig,
    ModelSummary,
    Plan,
    PlannedAction,
    PredictedMetrics,
    StagePlan,
    model_fingerprint,
)
from parplan.planner.bilevel import PlannerConfig, PlanResult, plan_traced
from parplan.planner.degrees import Degrees
from parplan.planner.evaluate import evaluate_traced, other_choices
from parplan.planner.events import PlanProgress
from parplan.planner.lower import Evaluated
from parplan.planner.units import stage_pieces
from parplan.schedule.ir import Schedule

__all__ = ["plan", "plan_with_report", "plan_from_schedule", "local_cpu_cluster", "evaluated_summary"]


def _cluster(cluster: str | ClusterProfile) -> ClusterProfile:
    return cluster if isinstance(cluster, ClusterProfile) else load_cluster(cluster)


def plan_with_report(
    model,
    example_inputs: tuple,
    *,
    cluster: str | ClusterProfile = "h100x8",
    microbatches: int = 16,
    spec: str | None = None,
    progress: Callable[[PlanProgress], None] | None = None,
    leaf_modules: Iterable[type] = (),
    **options: Any,
) -> tuple[Plan, PlanResult]:
    """Plan `model` (fed `example_inputs`, one micro-batch) on `cluster`.

    `options` are `PlannerConfig` fields (memory_limit in bytes, work, time_limit, mode,
    objective, degrees, families, use_mip, seed, workers, techniques: a
    `parplan.planner.techniques.TechniqueChoice` fixing ZeRO level, layout, recomputation
    or sequence parallelism; schedule and chunks fix an expert schedule, which is then
    evaluated as given, not searched: `planner.evaluate`). Returns the plan and the full
    report (every baseline, both levels' solver reports). `progress`, when given, is called
    with a `PlanProgress` as each phase begins, as the lower MIP's incumbent or bound moves,
    and as each phase ends; it only observes (the plan is the same without it).
    `leaf_modules`: nn.Module classes whose instances are kept whole, so no stage boundary
    falls inside one (`parplan.trace.trace`); the warnings capture emitted are on
    `result.units.traced.capture_warnings`.
    """
    from parplan.trace import trace

    profile = _cluster(cluster)
    config = PlannerConfig(microbatches=microbatches, **options)
    traced = trace(model, example_inputs, leaf_modules=leaf_modules)
    run = plan_traced if config.schedule is None else evaluate_traced  # a fixed schedule: evaluated as given
    result = run(traced, profile, config, progress=progress)
    return to_plan(result, model, example_inputs, profile, config, spec), result


def plan(model, example_inputs: tuple, **kwargs: Any) -> Plan:
    """The best plan for `model` on the cluster: see `plan_with_report` for the options."""
    return plan_with_report(model, example_inputs, **kwargs)[0]


def _micro_shape(example_inputs: tuple) -> tuple[int, int]:
    tokens = [t for t in example_inputs if hasattr(t, "shape") and len(t.shape) == 2]
    first = tokens[0] if tokens else example_inputs[0]
    return int(first.shape[0]), int(first.shape[1]) if len(first.shape) > 1 else 1


def to_plan(result: PlanResult, model, example_inputs: tuple, cluster: ClusterProfile, config: PlannerConfig,
            spec: str | None) -> Plan:
    best = result.best
    placed = best.placed
    schedule = best.schedule
    pieces = stage_pieces(placed.units, list(placed.stage_of_unit), placed.costs.num_stages)
    micro, seq = _micro_shape(example_inputs)
    degrees = placed.degrees
    # device_names: what the profile was measured on, so `parplan run` can tell another machine
    devices = tuple({"name": name, "pipeline_rank": r, "global_rank": degrees.rank(0, r),
                     "device_names": list(degrees.gpu(cluster, r).device_names)}
                    for r, name in enumerate(placed.gpu_names))
    evaluated = result.search == "evaluated"
    solver = {
        "upper": {"degrees": str(degrees), "placement": placed.family.name, "reports": result.reports.get("upper", [])},
        "lower": {**best.solver, **(best.mip.as_dict() if best.mip is not None else {})},
        "comparison": {best.label if evaluated else "parplan": evaluated_summary(best),
                       **{e.label: evaluated_summary(e) for e in result.baselines}},
        "planning": {"seconds": result.planning_seconds, "notes": list(result.notes),
                     "work": config.work, "stopped_early": list(result.stopped_early),
                     "memory_cap_bytes": result.memory_cap, "dp_sync_s": placed.dp_sync_s,
                     "data_parallel": degrees.dp, "tensor_parallel": degrees.tp,
                     "expert_parallel": degrees.ep,
                     "techniques": {"label": placed.techniques.label(),
                                    **placed.technique_cost(schedule.total_microbatches)}},
    }
    out = plan_from_schedule(
        model=model, model_spec=spec or type(model).__name__, batch=micro * schedule.total_microbatches, seq=seq,
        schedule=schedule, model_stage_pieces=pieces, costs=placed.costs, time_unit="s", memory_unit="bytes",
        cluster=ClusterSummary(name=cluster.name, devices=devices), solver=solver,
    )
    out = dataclasses.replace(out, techniques=placed.techniques)
    if config.mode == "inference":
        out = dataclasses.replace(out, mode="inference")
    if evaluated:
        out = dataclasses.replace(out, evaluated=EvaluatedConfig(
            schedule=config.schedule, chunks=config.chunks, placement=placed.family.name, pp=degrees.pp,
            dp=degrees.dp, tp=degrees.tp, ep=degrees.ep, microbatches=config.microbatches,
            step_time=best.step_time_s, peak_memory_per_rank=best.peak_memory_bytes, memory_cap=result.memory_cap,
            options=other_choices(config)))
    return out


def local_cpu_cluster(num_ranks: int) -> ClusterSummary:
    return ClusterSummary(name="local-cpu", devices=tuple({"name": f"cpu:{r}", "kind": "cpu"} for r in range(num_ranks)))


def plan_from_schedule(
    *,
    model,
    model_spec: str,
    batch: int,
    seq: int,
    schedule: Schedule,
    model_stage_pieces: Sequence[Sequence[str]],
    costs: PipelineCosts,
    time_unit: str,
    memory_unit: str,
    cluster: ClusterSummary | None = None,
    solver: dict | None = None,
    stage_extras: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None,
) -> Plan:
    """Validate and simulate `schedule` under `costs` and wrap everything into a `Plan`.

    `model_stage_pieces[m]` are model stage m's pieces; schedule stage s runs
    `model_stage_pieces[schedule.model_stage[s]]`. `stage_extras[s]` = (receives, passes)
    names the extra tensors of schedule stage s (branches; default none).
    """
    from parplan.schedule.validate import validate

    sim = validate(schedule, costs)
    extras = stage_extras or [((), ())] * schedule.num_stages
    stages = tuple(
        StagePlan(index=s, rank=schedule.stage_to_rank[s], pieces=tuple(model_stage_pieces[schedule.model_stage[s]]),
                  receives=tuple(extras[s][0]), passes=tuple(extras[s][1]))
        for s in range(schedule.num_stages)
    )
    if cluster is None:
        cluster = local_cpu_cluster(schedule.num_ranks)
    return Plan(
        model=ModelSummary(
            spec=model_spec, batch=batch, seq=seq,
            num_parameters=sum(p.numel() for p in model.parameters()), fingerprint=model_fingerprint(model),
        ),
        cluster=cluster,
        mode="train",
        num_microbatches=schedule.total_microbatches,
        stages=stages,
        schedule=schedule,
        costs=costs,
        time_unit=time_unit,
        memory_unit=memory_unit,
        timeline=tuple(tuple(PlannedAction(action=t.action, start=t.start, end=t.end) for t in row)
                       for row in sim.timeline),
        predicted=PredictedMetrics(
            step_time=sim.makespan, bubble_ratio=sim.bubble_ratio,
            peak_activation_per_rank=sim.peak_activation_per_rank, params_per_rank=sim.params_per_rank,
        ),
        solver=dict(solver or {}),
    )


def evaluated_summary(e: Evaluated) -> dict:
    return {
        "schedule": e.solver.get("schedule", e.schedule.name),
        "placement": e.placed.family.name,
        "degrees": str(e.placed.degrees),
        "step_time_s": e.step_time_s,
        "bubble_ratio": e.bubble_ratio,
        "peak_memory_bytes": list(e.peak_memory_bytes),
        "fits": e.fits,
        "techniques": e.placed.techniques.label(),
        "technique_cost": e.placed.technique_cost(e.schedule.total_microbatches),
    }


def parse_degrees(pp: int | None, tp: int | None, cluster: ClusterProfile) -> Degrees | None:
    if pp is None and tp is None:
        return None
    total = cluster.num_gpus
    for flag, value in (("--pp", pp), ("--tp", tp)):
        if value is not None and value < 1:
            raise ParplanError(f"{flag} {value} is invalid: a parallel degree is an integer >= 1 "
                               f"(leave it out to search)")
        if value is not None and value > total:
            raise ParplanError(f"{flag} {value} is larger than the {total} GPUs of {cluster.name}; "
                               f"choose a degree that divides {total}")
    if pp is None:  # --tp alone: the pipeline degree is still searched (PlannerConfig.tp)
        if total % tp:
            raise ParplanError(f"--tp {tp} does not divide the {total} GPUs of {cluster.name}; "
                               f"choose a degree that divides {total}")
        return None
    tp = tp or 1
    if total % (pp * tp):
        raise ParplanError(
            f"--pp {pp} × --tp {tp} does not divide the {total} GPUs of {cluster.name}; "
            f"choose degrees whose product divides {total}"
        )
    return Degrees(pp=pp, dp=total // (pp * tp), tp=tp)
