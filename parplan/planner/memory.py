"""Memory per device: parameters, gradients, optimizer state and in-flight activations.

Training keeps, per parameter: its bytes in the model dtype, a gradient of the same size,
and the optimizer state — by default fp32 master weights plus Adam's two moments, 12 bytes
per parameter — sharded over the data-parallel replicas when ZeRO-1 is on. Activations
come from the schedule's simulation (bytes held from each F's start to its W's end), so
the memory a plan needs depends on the order the lower level picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from parplan.errors import ParplanError

__all__ = ["MemoryModel"]


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryModel:
    mode: Literal["train", "inference"] = "train"
    grad_bytes_per_param_byte: float = 1.0  # gradients kept in the parameters' dtype
    optimizer_bytes_per_param: float = 12.0  # fp32 master + Adam m and v
    zero1: bool = True  # shard optimizer state over data-parallel replicas

    def __post_init__(self) -> None:
        if self.mode not in ("train", "inference"):
            raise ParplanError(f"mode {self.mode!r} is unknown; use train or inference")
        if self.grad_bytes_per_param_byte < 0 or self.optimizer_bytes_per_param < 0:
            raise ParplanError("gradient and optimizer bytes per parameter must be >= 0")

    def static_bytes(self, param_bytes: float, param_count: float, dp: int, *,
                     expert_count: float = 0.0, ep: int = 1) -> float:
        """Bytes a device holds for parameters it hosts, before any activation.

        `expert_count` of `param_count` are routed-expert parameters of an expert-parallel
        layer: this device holds them alone among ep replicas, and ZeRO-1 shards their
        optimizer state over the dp / ep replicas that hold the same experts.
        """
        if self.mode == "inference":
            return param_bytes
        dense, experts = param_count - expert_count, expert_count
        shard = (lambda n: n) if self.zero1 else (lambda n: 1)  # noqa: E731
        optimizer = self.optimizer_bytes_per_param * (dense / shard(dp) + experts / shard(dp // ep))
        return param_bytes * (1 + self.grad_bytes_per_param_byte) + optimizer
