"""Replicas of a pipeline: the process layout, its process groups, the data split, the gradient mean.

A plan with expert-parallel degree e (`plan.solver["planning"]["expert_parallel"]`, 1 when
absent) runs as e data-parallel replicas of its pipeline: P pipeline ranks × e processes,
global rank = replica · P + pipeline rank (the planner's layout, parplan.planner.degrees,
without tensor parallelism). Replica d runs the plan's schedule on its own P processes,
with pipeline p2p inside its *pipeline group*; the e processes holding pipeline rank p form
that rank's *replica group*, which is also the EP group of the MoEs on it (EP rank =
replica index, so replica d holds experts [d·E/e, (d+1)·E/e) of each MoE there).

Data: a step's global batch is e × B rows, B = `plan.model.batch` (the plan's batch is one
replica's, as the planner makes it: its M micro-batches per replica). Replica d takes rows
[d·B, (d+1)·B) of the seeded synthetic batch and cuts them into the plan's micro-batches.
The reference is one process running the whole model on all e·B rows (`seeded_run`):
its mean loss is the mean of the replicas' mean losses (equal sizes).

Gradients: each replica's schedule gives the gradient of its own mean loss (PyTorch scales
by 1/M), and the reference's gradient is their mean. So every non-expert gradient is summed
over the replica group and divided by e; an expert weight's gradient already sums every
replica's tokens routed to it (the all_to_all backward brings them), so it is only divided
by e (`average_replica_grads`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from parplan.errors import ParplanError
from parplan.plan import Plan
from parplan.runtime.chain import load_plan_model
from parplan.runtime.stages import synthetic_batch

__all__ = ["expert_parallel_degree", "RunLayout", "ProcessRole", "replica_groups", "seeded_run",
           "average_replica_grads"]


def expert_parallel_degree(plan: Plan) -> int:
    """The plan's EP degree: `solver["planning"]["expert_parallel"]`, 1 when absent."""
    value = plan.solver.get("planning", {}).get("expert_parallel", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParplanError(
            f"plan solver.planning.expert_parallel={value!r} is not an integer >= 1: it is the number of "
            f"processes each MoE's experts are split over; set it to 1 (no EP) or a divisor of the experts"
        )
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class RunLayout:
    """Where every process of a run sits: replica · P + pipeline rank (module docstring)."""

    num_pipeline_ranks: int
    num_replicas: int
    replica_batch: int  # rows per replica per step: plan.model.batch

    @classmethod
    def of(cls, plan: Plan) -> "RunLayout":
        return cls(num_pipeline_ranks=plan.num_ranks, num_replicas=expert_parallel_degree(plan),
                   replica_batch=plan.model.batch)

    @property
    def world_size(self) -> int:
        return self.num_pipeline_ranks * self.num_replicas

    @property
    def global_batch(self) -> int:
        return self.num_replicas * self.replica_batch

    def position(self, rank: int) -> tuple[int, int]:
        """(replica, pipeline rank) of global rank `rank`."""
        return divmod(rank, self.num_pipeline_ranks)

    def pipeline_group_ranks(self, replica: int) -> list[int]:
        return [replica * self.num_pipeline_ranks + p for p in range(self.num_pipeline_ranks)]

    def replica_group_ranks(self, pipeline_rank: int) -> list[int]:
        return [d * self.num_pipeline_ranks + pipeline_rank for d in range(self.num_replicas)]

    def rows(self, replica: int) -> slice:
        """Replica `replica`'s rows of the global batch."""
        return slice(replica * self.replica_batch, (replica + 1) * self.replica_batch)


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessRole:
    """What one process of a run was: its replica, pipeline rank and EP rank, and its experts."""

    rank: int
    replica: int
    pipeline_rank: int
    ep_rank: int
    ep_size: int
    experts: tuple[tuple[int, int], ...] = ()  # the distinct [first, end) expert ranges of its MoEs

    def describe(self) -> str:
        held = ", ".join(f"[{a}, {b})" for a, b in self.experts) or "none (no MoE on this pipeline rank)"
        return (f"process {self.rank}: replica {self.replica}, pipeline rank {self.pipeline_rank}, "
                f"EP rank {self.ep_rank} of {self.ep_size}, experts {held}")


@contextlib.contextmanager
def replica_groups(layout: RunLayout, rank: int):
    """(pipeline group, replica group) of process `rank`; (None, None) with one replica (the world).

    Every process creates every group, in the same order (torch.distributed's rule for
    `new_group`), and they are destroyed on exit.
    """
    if layout.num_replicas == 1:
        yield None, None
        return
    replica, pipeline_rank = layout.position(rank)
    pipelines = [dist.new_group(layout.pipeline_group_ranks(d)) for d in range(layout.num_replicas)]
    replicas = [dist.new_group(layout.replica_group_ranks(p)) for p in range(layout.num_pipeline_ranks)]
    try:
        yield pipelines[replica], replicas[pipeline_rank]
    finally:
        for group in pipelines + replicas:
            dist.destroy_process_group(group)


def seeded_run(plan: Plan, layout: RunLayout, *, seed: int):
    """The plan's model with the run's seeded weights and the global batch (inputs, target).

    Every process and the single-process reference call this, so all hold the same weights
    and the same e·B rows; a replica then keeps `layout.rows(replica)`.
    """
    torch.manual_seed(seed)
    zoo = load_plan_model(plan.model.spec, batch=layout.global_batch, seq=plan.model.seq, device="cpu")
    inputs, target = synthetic_batch(zoo.model, zoo.example_inputs, seed=seed + 1)
    return zoo.model, inputs, target


def average_replica_grads(named_params: list[tuple[str, torch.nn.Parameter]], *, group, num_replicas: int,
                          expert_names: set[str]) -> None:
    """Make every gradient the mean over replicas of the replicas' gradients (module docstring).

    Non-expert gradients are summed over `group` in one flat all_reduce; expert gradients
    are not reduced. A parameter no token reached on this process gets a zero gradient, so
    every replica reduces the same tensors.
    """
    for _, p in named_params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    shared = [p.grad for name, p in named_params if name not in expert_names]
    if shared:
        flat = torch.cat([g.reshape(-1) for g in shared])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for g, part in zip(shared, flat.split([g.numel() for g in shared])):
            g.copy_(part.view_as(g))
    for _, p in named_params:
        p.grad.div_(num_replicas)
