"""Memory per device: parameters, gradients, optimizer state and in-flight activations.

Training keeps, per parameter: its bytes in the model dtype, a gradient of the same size,
and the optimizer state — by default fp32 master weights plus Adam's two moments, 12 bytes
per parameter. ZeRO shards them over the `dp_shard` replicas of a shard group
(`parplan.plan.Techniques`): level 1 the optimizer state, 2 also the gradients, 3 (FSDP)
also the parameters — per bf16 parameter with Adam 2 + 2 + 12/d, 2 + 14/d and 16/d bytes.
Routed experts (expert parallelism, degree e) are held by dp / e replicas only; their
shard group is the dp_shard / gcd(dp_shard, e) members of a shard group that hold the same
experts. Activations come from the schedule's simulation (bytes held from each F's start
to its W's end), so the memory a plan needs depends on the order the lower level picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from parplan.errors import ParplanError
from parplan.plan import Techniques

__all__ = ["MemoryModel", "expert_shard"]


def expert_shard(techniques: Techniques, ep: int) -> int:
    """How many members of a shard group hold the same routed experts."""
    return techniques.dp_shard // math.gcd(techniques.dp_shard, ep)


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryModel:
    mode: Literal["train", "inference"] = "train"
    grad_bytes_per_param_byte: float = 1.0  # gradients kept in the parameters' dtype
    optimizer_bytes_per_param: float = 12.0  # fp32 master + Adam m and v

    def __post_init__(self) -> None:
        if self.mode not in ("train", "inference"):
            raise ParplanError(f"mode {self.mode!r} is unknown; use train or inference")
        if self.grad_bytes_per_param_byte < 0 or self.optimizer_bytes_per_param < 0:
            raise ParplanError("gradient and optimizer bytes per parameter must be >= 0")

    def static_bytes(self, param_bytes: float, param_count: float, techniques: Techniques, *,
                     expert_bytes: float = 0.0, expert_count: float = 0.0, ep: int = 1) -> float:
        """Bytes a device holds for parameters it hosts, before any activation and before
        ZeRO-3's gathered layers (`parplan.planner.sharding`).

        `expert_bytes` / `expert_count` of `param_bytes` / `param_count` are routed-expert
        parameters of an expert-parallel layer, sharded over `expert_shard` replicas.
        """
        if self.mode == "inference":
            return param_bytes
        out = 0.0
        for nbytes, count, shard in ((param_bytes - expert_bytes, param_count - expert_count, techniques.dp_shard),
                                     (expert_bytes, expert_count, expert_shard(techniques, ep))):
            sharded = lambda level: shard if techniques.zero >= level else 1  # noqa: E731
            out += (nbytes / sharded(3) + nbytes * self.grad_bytes_per_param_byte / sharded(2)
                    + count * self.optimizer_bytes_per_param / sharded(1))
        return out
