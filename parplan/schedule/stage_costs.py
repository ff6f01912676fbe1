"""A placement's `PipelineCosts` from its stages' own costs: the one place contention is folded.

Every path that prices a pipeline — the cost layer's operator groups
(`parplan.cost.pipeline_costs`), the planner's placed partitions (`planner/lower.py:place`)
and the chain planner's abstract or measured stages (`parplan.runtime`) — sums its stages'
compute and memory its own way, then hands the per-stage numbers here.

Transfers stay delays (the `PipelineCosts` contract); the compute they slow down is folded
in: stage s's F grows by contention × the transfer of its output to stage s+1, its I by
contention × the gradient it sends back to stage s−1 (the size of the previous boundary).
The last stage sends nothing on, so its F gets no share. Inference runs no backward: I and
W are 0 and so is their contention.

What the runtime adds is folded here too, from the stage's device (a cluster node group's
`action_overhead` and `compute_share`, docs/cost-model.md): each compute time is divided by
the rank's share of its device (N ranks sharing C < N CPU cores each get C / N of one) and
every action (F, I, W) pays the runtime's fixed overhead once. A full backward B = I + W
thus pays it twice, where a runtime calls it once: an over-estimate of one overhead per B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from parplan.schedule.costs import PipelineCosts
from parplan.schedule.phases import StagePhases
from parplan.errors import ParplanError

__all__ = ["StageCost", "placement_costs"]


@dataclass(frozen=True, kw_only=True, slots=True)
class StageCost:
    """One model stage before contention: compute per micro-batch, memory, outgoing transfer."""

    forward: float
    backward_input: float
    backward_weight: float
    activation: float
    params: float
    transfer: float = 0.0  # output to stage s+1; 0 when the next stage is on the same rank
    phases: StagePhases | None = None  # its parts on compute and communication lanes (sum: the above)
    # what running it adds (both from the stage's node group; the defaults add nothing)
    action_overhead: float = 0.0  # seconds the runtime spends per action (F, I, W) beyond its compute
    compute_share: float = 1.0  # fraction of one device's compute the rank gets (0 < share <= 1)

    def __post_init__(self) -> None:
        if not 0 < self.compute_share <= 1:
            raise ParplanError(f"compute_share = {self.compute_share} must be in (0, 1]: the fraction of one "
                               f"device's compute a rank gets")
        if self.action_overhead < 0:
            raise ParplanError(f"action_overhead = {self.action_overhead} must be >= 0 seconds")
        if self.phases is not None and self.compute_share != 1:
            raise ParplanError("compute_share below 1 with all-to-all phases (expert parallelism on shared cores) "
                               "is not modelled; give each rank a whole device")


def placement_costs(stages: Sequence[StageCost], *, transfer_contention: float = 0.0,
                    overlap_ratio: float = 1.0, comm_slowdown: float = 0.0,
                    mode: Literal["train", "inference"] = "train") -> PipelineCosts:
    if mode not in ("train", "inference"):
        raise ParplanError(f"mode {mode!r} is unknown; use train or inference")
    kappa, last = transfer_contention, len(stages) - 1
    train = mode == "train"
    extra_f = [kappa * g.transfer if s < last else 0.0 for s, g in enumerate(stages)]
    extra_i = [kappa * stages[s - 1].transfer if s > 0 and train else 0.0 for s in range(len(stages))]
    extra_f = [x + g.action_overhead for x, g in zip(extra_f, stages)]
    extra_i = [x + g.action_overhead if train else 0.0 for x, g in zip(extra_i, stages)]
    extra_w = [g.action_overhead if train else 0.0 for g in stages]
    phases = [g.phases and g.phases.padded(extra_f[s], extra_i[s], extra_w[s]) for s, g in enumerate(stages)]
    return PipelineCosts(
        forward=tuple(g.forward / g.compute_share + extra_f[s] for s, g in enumerate(stages)),
        backward_input=tuple((g.backward_input / g.compute_share + extra_i[s]) if train else 0.0
                             for s, g in enumerate(stages)),
        backward_weight=tuple(g.backward_weight / g.compute_share + extra_w[s] if train else 0.0
                              for s, g in enumerate(stages)),
        transfer=tuple(g.transfer for g in stages),
        activation=tuple(g.activation for g in stages),
        params=tuple(g.params for g in stages),
        overlap_ratio=overlap_ratio,
        phases=tuple(phases) if any(p is not None for p in phases) else None,
        comm_slowdown=comm_slowdown,
    )
