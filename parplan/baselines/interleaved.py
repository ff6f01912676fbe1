"""Interleaved 1F1B (Narayanan et al. 2021 §2.2), v stage chunks per rank, loop placement.

Stage s lives on rank s mod N. Micro-batches go through in rounds of
M // max(1, M // N); within a round each local chunk takes the round's micro-batches
before the next chunk (depth first). Warm-up on rank r is (v−1)·round + 2(N−1−r)
forwards, capped at v·M — PyTorch's `ScheduleInterleaved1F1B`, whose order this equals.
"""

from __future__ import annotations

from parplan.baselines._common import one_f_one_b_order, require
from parplan.schedule.ir import Schedule
from parplan.schedule.placement import FAMILIES


def rounds(num_ranks: int, num_microbatches: int, name: str) -> int:
    num_rounds = max(1, num_microbatches // num_ranks)
    require(
        num_microbatches % num_rounds == 0,
        f"{name} needs micro-batches divisible by the number of rounds max(1, M // N) = {num_rounds}; "
        f"got M={num_microbatches}, N={num_ranks}. Use M = a multiple of N (e.g. "
        f"{num_rounds * num_ranks}), or M < 2N",
    )
    return num_microbatches // num_rounds


def loop_schedule(name: str, num_ranks: int, num_microbatches: int, num_chunks: int, *, zero_bubble: bool) -> Schedule:
    n, v, m = num_ranks, num_chunks, num_microbatches
    # Rounds only decide which chunk runs next; with one chunk there is nothing to decide.
    per_round = rounds(n, m, name) if v > 1 else m
    factor = 1 if zero_bubble else 2
    orders = []
    for r in range(n):
        warmup = min((v - 1) * per_round + factor * (n - 1 - r), v * m)
        orders.append(one_f_one_b_order(
            num_ops=v * m,
            warmup=warmup,
            forward_stage=lambda k, r=r: ((k // per_round) % v) * n + r,
            backward_stage=lambda b, r=r: (v - 1 - (b // per_round) % v) * n + r,
            weight_lag=r if zero_bubble else None,
        ))
    return Schedule(
        name=name, stage_to_rank=FAMILIES["loop"].stage_to_rank(n, num_chunks=v),
        microbatches_per_chain=m, orders=orders,
    )


def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    v = 2 if num_chunks is None else num_chunks
    require(
        isinstance(v, int) and v >= 1,
        f"--chunks {num_chunks!r} is invalid: interleaved-1f1b needs v >= 1 stage chunks per rank (default 2)",
    )
    return loop_schedule("interleaved-1f1b", num_ranks, num_microbatches, v, zero_bubble=False)
