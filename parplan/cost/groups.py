"""Costs of operator groups (pipeline stages): what a planner needs to build `PipelineCosts`.

A group is a set of operator names of a `TracedGraph`; groups must be disjoint. For each
group: summed F, I, W seconds, activation bytes saved for backward (each storage once),
parameter bytes, and the boundary: bytes of the tensors it hands to operators outside it,
and their transfer time on a link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from parplan.cost.contiguous import balanced_contiguous
from parplan.cost.hardware import GPUProfile, LinkProfile, NodeGroup
from parplan.cost.model import OpCost, op_cost, transfer_time
from parplan.errors import ParplanError
from parplan.trace.graph import TracedGraph

__all__ = ["GroupCost", "group_costs", "split_contiguous", "groups_by_module", "pipeline_costs"]


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupCost:
    num_ops: int
    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    activation_bytes: int  # saved for backward, per micro-batch
    param_bytes: int
    boundary_bytes: int  # tensors this group sends to operators outside it
    transfer_s: float  # boundary_bytes over the link (0 without a link)


def _check_groups(traced: TracedGraph, groups: Sequence[Sequence[str]]) -> None:
    seen: dict[str, int] = {}
    for g, names in enumerate(groups):
        for name in names:
            if name not in traced.graph:
                raise ParplanError(f"group {g} names operator {name!r}, which is not in the traced graph")
            if name in seen:
                raise ParplanError(f"operator {name!r} is in groups {seen[name]} and {g}; groups must be disjoint")
            seen[name] = g


def group_costs(
    traced: TracedGraph,
    groups: Sequence[Sequence[str]],
    gpu: GPUProfile,
    *,
    link: LinkProfile | None = None,
    measured: Mapping[str, OpCost] | None = None,
) -> tuple[GroupCost, ...]:
    _check_groups(traced, groups)
    out = []
    for names in groups:
        members = set(names)
        f = i = w = 0.0
        params = 0
        for name in names:
            c = op_cost(traced.node(name), gpu, measured=measured)
            f, i, w = f + c.forward_s, i + c.backward_input_s, w + c.backward_weight_s
            params += c.param_bytes
        sent = {u: d["bytes"] for u, v, d in traced.graph.out_edges(members, data=True) if v not in members}
        boundary = sum(sent.values())
        out.append(GroupCost(
            num_ops=len(members), forward_s=f, backward_input_s=i, backward_weight_s=w,
            activation_bytes=traced.saved_bytes(members), param_bytes=params, boundary_bytes=boundary,
            transfer_s=transfer_time(boundary, link) if link is not None else 0.0,
        ))
    return tuple(out)


def split_contiguous(traced: TracedGraph, num_groups: int, gpu: GPUProfile) -> list[list[str]]:
    """Cut the program order into `num_groups` contiguous runs balanced by F + I + W
    (`balanced_contiguous`: the largest group as small as the operators allow)."""
    if not 1 <= num_groups <= len(traced.nodes):
        raise ParplanError(f"num_groups={num_groups} must be in [1, {len(traced.nodes)}] (the operator count)")
    costs = [c.forward_s + c.backward_s for c in (op_cost(n, gpu) for n in traced.nodes)]
    stage_of_op = balanced_contiguous(len(costs), num_groups, lambda u, s: costs[u])
    groups: list[list[str]] = [[] for _ in range(num_groups)]
    for n, g in zip(traced.nodes, stage_of_op):
        groups[g].append(n.name)
    return groups


def groups_by_module(traced: TracedGraph, prefixes: Sequence[Sequence[str]]) -> list[list[str]]:
    """Group g holds the operators whose module path starts with one of `prefixes[g]`
    (matched on whole path components); operators matching no prefix join the nearest
    earlier group (the first group if none)."""

    def matches(path: str, prefix: str) -> bool:
        return prefix == "" or path == prefix or path.startswith(prefix + ".")

    groups: list[list[str]] = [[] for _ in prefixes]
    current = 0
    for n in traced.nodes:
        hit = next((g for g, ps in enumerate(prefixes) if any(matches(n.module_path, p) for p in ps)), None)
        current = hit if hit is not None else current
        groups[current].append(n.name)
    return groups


def pipeline_costs(groups: Sequence[GroupCost], gpu: GPUProfile, *, node: NodeGroup | None = None,
                   rank_of: Sequence[int] | None = None):
    """`parplan.schedule.costs.PipelineCosts` for stages = groups, in seconds and bytes, one chain
    (`placement_costs` folds the transfers' contention into F and I, and what the runtime of
    `node` adds: its per-action overhead and compute share). With `rank_of` (stage -> rank) a
    hand-off between two stages on one rank is free (a V's turn), as the simulator has it."""
    from parplan.schedule.stage_costs import StageCost, placement_costs  # the schedule layer's type

    if rank_of is not None and len(rank_of) != len(groups):
        raise ParplanError(f"rank_of has {len(rank_of)} entries for {len(groups)} groups; give one rank per group")

    def transfer(s: int) -> float:
        local = rank_of is not None and s + 1 < len(groups) and rank_of[s] == rank_of[s + 1]
        return 0.0 if local else groups[s].transfer_s

    return placement_costs(
        [StageCost(forward=g.forward_s, backward_input=g.backward_input_s, backward_weight=g.backward_weight_s,
                   activation=float(g.activation_bytes), params=float(g.param_bytes), transfer=transfer(s),
                   action_overhead=node.action_overhead_s if node else 0.0,
                   compute_share=node.compute_share if node else 1.0)
         for s, g in enumerate(groups)],
        transfer_contention=gpu.efficiency.transfer_contention,
    )
