"""Chain plans: a contiguous split of the model's pieces over a one-schedule pipeline.

`plan_chain` is the pass list of a chain plan — model → pieces → contiguous split →
costs → schedule → validate/simulate → `Plan`. It makes plans today for every baseline
(and the MIP when `parplan.mip` is present); the bi-level planner (issue #5) produces
richer plans through the same `Plan` dataclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.plan import (
    ClusterSummary,
    ModelSummary,
    Plan,
    PlannedAction,
    PredictedMetrics,
    StagePlan,
    model_fingerprint,
)
from parplan.schedule.ir import Schedule

if TYPE_CHECKING:
    from parplan.mip import MipOptions

__all__ = ["plan_chain", "balanced_split", "local_cpu_cluster", "load_plan_model", "plan_from_schedule"]

CostSource = Literal["params", "measure"]


def local_cpu_cluster(num_ranks: int) -> ClusterSummary:
    return ClusterSummary(name="local-cpu", devices=tuple({"name": f"cpu:{r}", "kind": "cpu"} for r in range(num_ranks)))


def load_plan_model(spec: str, *, batch: int, seq: int, device: str = "meta"):
    """The zoo model of `spec` (`gpt:…`, `file.py:factory`) with example inputs at (batch, seq)."""
    from parplan.zoo import load_model

    return load_model(spec, batch=batch, seq=seq, device=device)


def balanced_split(weights: Sequence[float], num_parts: int) -> list[int]:
    """Cut points of `weights` into `num_parts` non-empty contiguous parts, minimising the heaviest.

    Returns the part sizes. Exact dynamic programme, O(P² · S) for P pieces.
    """
    n = len(weights)
    if num_parts > n:
        raise ParplanError(
            f"the model has {n} pieces but the schedule needs {num_parts} stages; use fewer ranks or a "
            f"schedule with fewer stages per rank, or a model with more layers"
        )
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # best[k][i]: smallest heaviest part splitting the first i pieces into k parts
    best = [[inf] * (n + 1) for _ in range(num_parts + 1)]
    cut = [[0] * (n + 1) for _ in range(num_parts + 1)]
    best[0][0] = 0.0
    for k in range(1, num_parts + 1):
        for i in range(k, n - (num_parts - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    sizes, i = [], n
    for k in range(num_parts, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return sizes[::-1]


def _param_counts(model, pieces: Sequence[str]) -> list[int]:
    counts = []
    for piece in pieces:
        module = model.get_submodule(piece)
        counts.append(sum(p.numel() for p in module.parameters()))
    return counts


def _abstract_costs(weights: Sequence[float], params: Sequence[float]) -> PipelineCosts:
    """Unit costs proportional to each stage's weight: the mean stage costs F = I = W = 1."""
    mean = sum(weights) / len(weights) or 1.0
    # Rounded to 1/100: abstract shares need no more, and tables and integer solvers stay tidy.
    share = tuple(round(w / mean, 2) for w in weights)
    num = len(weights)
    return PipelineCosts(
        forward=share, backward_input=share, backward_weight=share, transfer=(0.0,) * num,
        activation=(1.0,) * num, params=tuple(float(p) for p in params),
    )


def _build_schedule(schedule: str | Schedule, num_ranks, num_microbatches, num_chunks) -> Schedule | None:
    if isinstance(schedule, Schedule):
        return schedule
    if schedule == "mip":
        return None  # solved after the costs are known
    from parplan.baselines import build_baseline

    if num_ranks is None or num_microbatches is None:
        raise ParplanError(f"schedule {schedule!r}: give num_ranks and num_microbatches")
    return build_baseline(schedule, num_ranks, num_microbatches, num_chunks=num_chunks)


def _solve_mip(num_ranks: int, num_microbatches: int, costs: PipelineCosts,
               options: "MipOptions | None") -> tuple[Schedule, dict]:
    from parplan.mip import MipOptions, solve_schedule

    result = solve_schedule(num_ranks=num_ranks, num_microbatches=num_microbatches, costs=costs,
                            options=options or MipOptions(placement="v"))
    return result.schedule, result.report().as_dict()


def plan_chain(
    model_spec: str,
    schedule: str | Schedule,
    *,
    batch: int,
    seq: int,
    num_ranks: int | None = None,
    num_microbatches: int | None = None,
    num_chunks: int | None = None,
    split: Sequence[Sequence[str]] | None = None,
    piece_costs: dict[str, float] | None = None,
    costs: CostSource | PipelineCosts = "params",
    cluster: ClusterSummary | None = None,
    mip_options: "MipOptions | None" = None,
    time_unit: str = "unit",
    memory_unit: str = "unit",
) -> Plan:
    """A training plan running `model_spec`'s pieces, split contiguously, under `schedule`.

    `schedule` is a baseline name, "mip" (placement V: 2 stages per rank) or a `Schedule`.
    `split` gives each model stage's pieces explicitly; by default the pieces are split to
    balance `piece_costs` (piece path → cost), or parameter counts without it.
    `costs`: "params" makes abstract unit costs proportional to that balance; "measure"
    times every stage on this machine (seconds, `parplan.runtime.measure`); or give
    `PipelineCosts` with one entry per model stage, in `time_unit` / `memory_unit`.
    """
    from parplan.runtime.split import default_pieces

    zoo = load_plan_model(model_spec, batch=batch, seq=seq)
    model = zoo.model
    pieces = default_pieces(model)
    counts = _param_counts(model, pieces)
    fixed = _build_schedule(schedule, num_ranks, num_microbatches, num_chunks)
    if fixed is None:
        if num_ranks is None or num_microbatches is None:
            raise ParplanError("schedule 'mip': give num_ranks and num_microbatches")
        num_model_stages = 2 * num_ranks
    else:
        num_model_stages = fixed.num_model_stages

    # ---- split the pieces into contiguous model stages --------------------------------
    if split is None:
        if piece_costs is not None:
            unknown = sorted(set(piece_costs) - set(pieces))
            if unknown or len(piece_costs) != len(pieces):
                raise ParplanError(
                    f"piece_costs must give one cost per piece {list(pieces)}; "
                    f"{'unknown ' + str(unknown) if unknown else 'some are missing'}"
                )
        weights = [piece_costs[p] if piece_costs else c for p, c in zip(pieces, counts)]
        sizes = balanced_split(weights, num_model_stages)
        groups, k = [], 0
        for size in sizes:
            groups.append(tuple(pieces[k:k + size]))
            k += size
    else:
        groups = [tuple(g) for g in split]
        flat = [p for g in groups for p in g]
        if flat != list(pieces) or len(groups) != num_model_stages:
            raise ParplanError(
                f"split must cut the pieces {list(pieces)} in order into {num_model_stages} non-empty "
                f"stages; got {[list(g) for g in groups]}"
            )
    index = {p: k for k, p in enumerate(pieces)}
    weight_of = lambda g: sum(piece_costs[p] if piece_costs else counts[index[p]] for p in g)  # noqa: E731
    params_of = lambda g: sum(counts[index[p]] for p in g)  # noqa: E731

    # ---- costs per model stage ----------------------------------------------------------
    if isinstance(costs, PipelineCosts):
        stage_costs = costs
    elif costs == "params":
        time_unit, memory_unit = "unit", "unit"
        stage_costs = _abstract_costs([weight_of(g) for g in groups], [params_of(g) for g in groups])
    elif costs == "measure":
        from parplan.runtime.measure import measure_stage_costs

        micro = batch // (num_microbatches or fixed.total_microbatches)
        stage_costs = measure_stage_costs(model_spec, groups, batch=micro, seq=seq)
        time_unit, memory_unit = "s", "bytes"
    else:
        raise ParplanError(f"costs={costs!r} is unknown; use 'params', 'measure' or a PipelineCosts")
    if stage_costs.num_stages != num_model_stages:
        raise ParplanError(
            f"costs describe {stage_costs.num_stages} stages but the plan has {num_model_stages} model stages"
        )

    # ---- schedule ---------------------------------------------------------------------------
    solver: dict[str, dict] = {}
    if fixed is None:
        fixed, solver["schedule"] = _solve_mip(num_ranks, num_microbatches, stage_costs, mip_options)
    return plan_from_schedule(
        model=model, model_spec=model_spec, batch=batch, seq=seq, schedule=fixed,
        model_stage_pieces=groups, costs=stage_costs, time_unit=time_unit, memory_unit=memory_unit,
        cluster=cluster, solver=solver, stage_extras=_chain_extras(zoo, fixed, groups, batch),
    )


def _chain_extras(zoo, schedule: Schedule, groups, batch: int):
    """(receives, passes) per stage from splitting the traced graph (meta device: no weights)."""
    if len(schedule.chains) != 1:
        return None  # DualPipe: not runnable, nothing to trace
    from parplan.runtime.split import export_graph, split_graph

    import torch

    micro = batch // schedule.total_microbatches
    if micro < 1 or batch % schedule.total_microbatches:
        raise ParplanError(
            f"batch {batch} does not split into {schedule.total_microbatches} equal micro-batches; "
            f"pick a batch that is a multiple of the micro-batch count"
        )
    inputs = tuple(torch.zeros((micro, *x.shape[1:]), dtype=x.dtype, device="meta") for x in zoo.example_inputs)
    graphs = split_graph(export_graph(zoo.model, inputs), [list(groups[m]) for m in schedule.model_stage])
    return [(g.inputs, g.passed_along) for g in graphs]


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
