"""Tied weights in the planner: a copy on every stage that reads one, a gradient sum over their ranks.

The trace attributes a parameter read by several operators (`TracedGraph.shared_params`,
GPT's `wte`/`lm_head`) to its first reader, so a stage's `UnitCost` counts it only where
that reader runs. What runs (parplan.runtime.tied) gives every other stage reading it a
copy and, once per step before the data-parallel reduction, sums the copies' gradients
over the pipeline ranks holding them. So a placement pays for both here:

  * memory: each stage holding a copy counts its parameters, gradients and optimizer
    state (`with_copies`, split t ways under tensor parallelism like the owner's);
  * time: one ring all-reduce of the gradient per tied weight over the ranks holding a
    copy, on the slowest pipeline link among them (`tied_sync_s`); nothing when every copy
    is on one rank (a V placement puts `wte` and `lm_head` on rank 0: summed locally).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from parplan.cost.hardware import ClusterProfile
from parplan.planner.costing import UnitCost, ring_allreduce_s
from parplan.planner.degrees import Degrees
from parplan.planner.memory import MemoryModel
from parplan.schedule.placement import Family
from parplan.trace.graph import SharedParam, TracedGraph

__all__ = ["TiedCopies", "tied_copies", "with_copies", "tied_sync_s"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TiedCopies:
    """A parameter read on two or more stages of a placement."""

    param: SharedParam
    stages: tuple[int, ...]  # the stages reading it, ascending
    owner: int  # the stage its trace attribution (its first reader) is on


def tied_copies(traced: TracedGraph, ops_per_stage: Sequence[Sequence[str]]) -> tuple[TiedCopies, ...]:
    """The shared parameters of `traced` that the stages' operators read on two or more stages."""
    stage_of = {op: s for s, ops in enumerate(ops_per_stage) for op in ops}
    out = []
    for param in traced.shared_params:
        stages = sorted({stage_of[op] for op in param.readers if op in stage_of})
        if len(stages) > 1:
            out.append(TiedCopies(param=param, stages=tuple(stages), owner=stage_of.get(param.readers[0], stages[0])))
    return tuple(out)


def with_copies(cost: UnitCost, stage: int, tied: Sequence[TiedCopies], *, tp: int) -> UnitCost:
    """`cost` of stage `stage` plus the copies it holds of parameters attributed to another stage."""
    held = [t.param for t in tied if stage in t.stages and stage != t.owner]
    if not held:
        return cost
    split = max(tp, 1)
    return replace(cost, param_bytes=cost.param_bytes + sum(p.param_bytes for p in held) / split,
                   param_count=cost.param_count + sum(p.param_count for p in held) / split)


def tied_sync_s(tied: Sequence[TiedCopies], family: Family, degrees: Degrees, cluster: ClusterProfile,
                memory: MemoryModel) -> float:
    """Seconds per step of the tied gradient sums: each a ring all-reduce over the pipeline ranks
    holding a copy, on the slowest link between neighbours of that ring."""
    if memory.mode != "train":
        return 0.0
    total = 0.0
    for t in tied:
        ranks = sorted({r for s in t.stages for r in family.ranks_of_stage(s, degrees.pp)})
        if len(ranks) < 2:
            continue
        nbytes = t.param.param_bytes / max(degrees.tp, 1) * memory.grad_bytes_per_param_byte
        ring = zip(ranks, ranks[1:] + ranks[:1])
        total += max(ring_allreduce_s(nbytes, len(ranks), degrees.pp_link(cluster, a, b)) for a, b in ring)
    return total
