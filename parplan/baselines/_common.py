"""Pieces the baseline families share: precondition checks and the 1F1B interleaving."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from parplan.errors import ParplanError
from parplan.schedule.ir import Action, Kind

__all__ = ["require", "reject_chunks", "one_f_one_b_order"]


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ParplanError(message)


def reject_chunks(name: str, num_chunks: int | None, allowed: int = 1) -> None:
    require(
        num_chunks in (None, allowed),
        f"{name} runs {allowed} stage chunk(s) per rank; --chunks {num_chunks} does not apply "
        f"(drop --chunks, or use interleaved-1f1b for v chunks per rank)",
    )


def one_f_one_b_order(
    *,
    num_ops: int,
    warmup: int,
    forward_stage: Callable[[int], int],
    backward_stage: Callable[[int], int],
    weight_lag: int | None = None,
) -> list[Action]:
    """Warm-up forwards, then (F, backward) pairs, then the remaining backwards.

    `num_ops` forwards and as many backwards run on the rank; forward k goes to stage
    `forward_stage(k)`, backward b to `backward_stage(b)`; micro-batches count up per
    stage. With `weight_lag` = L the backward is split: backward b is an I, and after it
    comes the W of backward b − L (zero-bubble's delayed weight gradients, FIFO); the W's
    still pending at the end drain in order.
    """
    assert 0 <= warmup <= num_ops, f"warm-up {warmup} outside 0..{num_ops}"
    next_mb: dict[tuple[int, Kind], int] = defaultdict(int)

    def take(stage: int, kind: Kind) -> Action:
        mb = next_mb[stage, kind]
        next_mb[stage, kind] = mb + 1
        return Action(stage, kind, mb)

    split = weight_lag is not None
    order = [take(forward_stage(k), Kind.F) for k in range(warmup)]
    for b in range(num_ops):
        if warmup + b < num_ops:
            order.append(take(forward_stage(warmup + b), Kind.F))
        order.append(take(backward_stage(b), Kind.I if split else Kind.B))
        if split and b >= weight_lag:
            order.append(take(backward_stage(b - weight_lag), Kind.W))
    if split:
        for b in range(max(0, num_ops - weight_lag), num_ops):
            order.append(take(backward_stage(b), Kind.W))
    return order
