"""Chain plans: a contiguous split of the model's pieces over a one-schedule pipeline.

`plan_chain` is the pass list of a chain plan — model → pieces → contiguous split →
costs → schedule → validate/simulate → `Plan`. It makes plans for every baseline (and the
MIP when `parplan.mip` is present). The split is the planner's `balanced_contiguous`, the
costs go through `placement_costs`, and the plan is built by the planner's own
`plan_from_schedule`, as the bi-level planner's plans are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

from parplan.cost.contiguous import balanced_contiguous
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.plan import ClusterSummary, Plan
from parplan.planner.api import local_cpu_cluster, plan_from_schedule
from parplan.schedule.ir import Schedule
from parplan.schedule.placement import family
from parplan.schedule.stage_costs import StageCost, placement_costs

if TYPE_CHECKING:
    from parplan.mip import MipOptions

__all__ = ["plan_chain", "balanced_split", "local_cpu_cluster", "load_plan_model", "plan_from_schedule"]

CostSource = Literal["params", "measure"]


def load_plan_model(spec: str, *, batch: int, seq: int, device: str = "meta"):
    """The zoo model of `spec` (`gpt:…`, `file.py:factory`) with example inputs at (batch, seq)."""
    from parplan.zoo import load_model

    return load_model(spec, batch=batch, seq=seq, device=device)


def balanced_split(weights: Sequence[float], num_parts: int) -> list[int]:
    """Sizes of `num_parts` non-empty contiguous parts of `weights`, the heaviest as light as
    possible (`balanced_contiguous`, the planner's split)."""
    n = len(weights)
    if num_parts > n:
        raise ParplanError(
            f"the model has {n} pieces but the schedule needs {num_parts} stages; use fewer ranks or a "
            f"schedule with fewer stages per rank, or a model with more layers"
        )
    part_of = balanced_contiguous(n, num_parts, lambda u, s: float(weights[u]))
    return [part_of.count(k) for k in range(num_parts)]


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
    share = [round(w / mean, 2) for w in weights]
    return placement_costs([StageCost(forward=x, backward_input=x, backward_weight=x, activation=1.0, params=float(p))
                            for x, p in zip(share, params)])


def _build_schedule(schedule: str | Schedule, num_ranks, num_microbatches, num_chunks) -> Schedule | None:
    if isinstance(schedule, Schedule):
        return schedule
    if num_ranks is None or num_microbatches is None:
        raise ParplanError(f"schedule {schedule!r}: give num_ranks and num_microbatches")
    if schedule == "mip":
        return None  # solved after the costs are known
    from parplan.baselines import build_baseline

    return build_baseline(schedule, num_ranks, num_microbatches, num_chunks=num_chunks)


def _mip_stage_count(num_ranks: int, options: "MipOptions") -> int:
    """Model stages of the MIP's placement (default V); 'auto' picks among the 2N-stage ones."""
    placement = options.placement
    return 2 * num_ranks if placement == "auto" else family(placement).num_stages(num_ranks)


def _solve_mip(num_ranks: int, num_microbatches: int, costs: PipelineCosts,
               options: "MipOptions") -> tuple[Schedule, dict]:
    from parplan.mip import solve_schedule

    result = solve_schedule(num_ranks=num_ranks, num_microbatches=num_microbatches, costs=costs, options=options)
    return result.schedule, result.report().as_dict()


def _piece_weights(pieces: Sequence[str], counts: Sequence[int], piece_costs: dict[str, float] | None) -> list[float]:
    """What the split balances: `piece_costs`, one per piece, or else parameter counts."""
    if piece_costs is None:
        return [float(c) for c in counts]
    unknown = sorted(set(piece_costs) - set(pieces))
    if unknown or len(piece_costs) != len(pieces):
        raise ParplanError(
            f"piece_costs must give one cost per piece {list(pieces)}; "
            f"{'unknown ' + str(unknown) if unknown else 'some are missing'}"
        )
    return [piece_costs[p] for p in pieces]


def _split_pieces(pieces: Sequence[str], weights: Sequence[float], split: Sequence[Sequence[str]] | None,
                  num_stages: int) -> list[tuple[str, ...]]:
    """The pieces of each model stage: `split` checked, or a balanced contiguous split."""
    if split is None:
        groups, k = [], 0
        for size in balanced_split(weights, num_stages):
            groups.append(tuple(pieces[k:k + size]))
            k += size
        return groups
    groups = [tuple(g) for g in split]
    if [p for g in groups for p in g] != list(pieces) or len(groups) != num_stages or not all(groups):
        raise ParplanError(
            f"split must cut the pieces {list(pieces)} in order into {num_stages} non-empty "
            f"stages; got {[list(g) for g in groups]}"
        )
    return groups


def _stage_costs(costs: CostSource | PipelineCosts, groups: Sequence[tuple[str, ...]], *, pieces, weights, counts,
                 model_spec: str, micro_batch: int, seq: int) -> tuple[PipelineCosts, str | None, str | None]:
    """Costs per model stage, with their time and memory units (None: the caller's)."""
    if isinstance(costs, PipelineCosts):
        stage_costs, units = costs, (None, None)
    elif costs == "params":
        index = {p: k for k, p in enumerate(pieces)}
        stage_costs = _abstract_costs([sum(weights[index[p]] for p in g) for g in groups],
                                      [sum(counts[index[p]] for p in g) for g in groups])
        units = ("unit", "unit")
    elif costs == "measure":
        from parplan.runtime.measure import measure_stage_costs

        stage_costs, units = measure_stage_costs(model_spec, groups, batch=micro_batch, seq=seq), ("s", "bytes")
    else:
        raise ParplanError(f"costs={costs!r} is unknown; use 'params', 'measure' or a PipelineCosts")
    if stage_costs.num_stages != len(groups):
        raise ParplanError(
            f"costs describe {stage_costs.num_stages} stages but the plan has {len(groups)} model stages; "
            f"give one cost entry per model stage"
        )
    return (stage_costs, *units)


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

    `schedule` is a baseline name, "mip" (placement V: 2 stages per rank, unless
    `mip_options` names another) or a `Schedule`.
    `split` gives each model stage's pieces explicitly; by default the pieces are split to
    balance `piece_costs` (piece path → cost), or parameter counts without it.
    `costs`: "params" makes abstract unit costs proportional to that balance; "measure"
    times every stage on this machine (seconds, `parplan.runtime.measure`); or give
    `PipelineCosts` with one entry per model stage, in `time_unit` / `memory_unit`.
    """
    from parplan.runtime.split import default_pieces

    zoo = load_plan_model(model_spec, batch=batch, seq=seq)
    pieces = default_pieces(zoo.model)
    counts = _param_counts(zoo.model, pieces)
    fixed = _build_schedule(schedule, num_ranks, num_microbatches, num_chunks)
    if fixed is None:
        from parplan.mip import MipOptions

        options = mip_options or MipOptions(placement="v")
    num_stages = fixed.num_model_stages if fixed is not None else _mip_stage_count(num_ranks, options)
    weights = _piece_weights(pieces, counts, piece_costs)
    groups = _split_pieces(pieces, weights, split, num_stages)
    micro_batch = batch // (num_microbatches or fixed.total_microbatches)
    stage_costs, time_unit_of, memory_unit_of = _stage_costs(
        costs, groups, pieces=pieces, weights=weights, counts=counts, model_spec=model_spec,
        micro_batch=micro_batch, seq=seq)
    solver: dict[str, dict] = {}
    if fixed is None:
        fixed, solver["schedule"] = _solve_mip(num_ranks, num_microbatches, stage_costs, options)
    return plan_from_schedule(
        model=zoo.model, model_spec=model_spec, batch=batch, seq=seq, schedule=fixed,
        model_stage_pieces=groups, costs=stage_costs, time_unit=time_unit_of or time_unit,
        memory_unit=memory_unit_of or memory_unit, cluster=cluster, solver=solver,
        stage_extras=_chain_extras(zoo, fixed, groups, batch),
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
