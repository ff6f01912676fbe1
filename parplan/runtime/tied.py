"""Tied weights at run time: the ranks holding each copy, their process groups, the gradient sum.

A tied weight (`parplan.runtime.split.TiedWeight`, GPT's `wte`/`lm_head`) has a copy on every
stage that reads it, all starting from the model's value (every process builds the model
with the same seed). Each copy's gradient after the schedule is only its own stage's share;
the one-process gradient is their sum. So after the last backward of the step and before
the optimizer step, `sum_tied_grads` adds the copies on this process (two stages of one
rank, as in V placements) and all-reduces the sum over the ranks holding a copy, as
Megatron does for its embedding group and torchtitan for tied embeddings; every copy then
holds the one-process gradient and the copies stay equal after any optimizer step.

With replicas (parplan.runtime.replicas) each replica's pipeline ranks sum their own
copies (one group per tied weight per replica); the replica mean runs after it unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from parplan.plan import Plan
from parplan.runtime.replicas import RunLayout
from parplan.runtime.split import TiedWeight

__all__ = ["TiedSet", "tied_ranks", "tied_groups", "sum_tied_grads"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TiedSet:
    """One tied weight as this process sees it: the global ranks holding a copy and their group."""

    weight: TiedWeight
    ranks: tuple[int, ...]  # global ranks of this process's replica holding a copy, ascending
    group: object = None  # their process group; None when every copy is on this process


def tied_ranks(plan: Plan, weight: TiedWeight, layout: RunLayout, replica: int) -> tuple[int, ...]:
    """The global ranks of replica `replica` whose stages hold a copy of `weight`."""
    pipeline = layout.pipeline_group_ranks(replica)
    return tuple(sorted({pipeline[plan.stages[s].rank] for s in weight.stages}))


@contextlib.contextmanager
def tied_groups(plan: Plan, weights: Sequence[TiedWeight], layout: RunLayout, rank: int):
    """The `TiedSet`s of process `rank` (those it holds a copy of), destroyed on exit.

    Every process creates every group of two or more ranks, for every replica and weight in
    the same order (torch.distributed's rule for `new_group`), members or not.
    """
    replica, _ = layout.position(rank)
    created, mine = [], []
    for d in range(layout.num_replicas):
        for weight in weights:
            ranks = tied_ranks(plan, weight, layout, d)
            group = dist.new_group(list(ranks)) if len(ranks) > 1 else None
            if group is not None:
                created.append(group)
            if d == replica and rank in ranks:
                mine.append(TiedSet(weight=weight, ranks=ranks, group=group))
    try:
        yield tuple(mine)
    finally:
        for group in created:
            dist.destroy_process_group(group)


def sum_tied_grads(stages: Sequence, tied: Sequence[TiedSet]) -> None:
    """Give every copy of each tied weight the sum of all copies' gradients (module docstring).

    `stages` are this process's `PipelineStage`s; `tied` its tied sets, in the same order on
    every process (`tied_groups` keeps the weights' order), so the all_reduces match up. A
    copy without a gradient (its stage's output did not depend on it) adds zero.
    """
    for entry in tied:
        name = entry.weight.name
        copies = [st.submod.get_parameter(name) for st in stages if st.stage_index in entry.weight.stages]
        assert copies, f"process holds no copy of tied weight {name!r} on stages {entry.weight.stages}"
        total = torch.zeros_like(copies[0])
        for p in copies:
            if p.grad is not None:
                total += p.grad
        if entry.group is not None:
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=entry.group)
        for k, p in enumerate(copies):
            p.grad = total if k == 0 else total.clone()
