"""ZB-V (Qi et al. 2024): two chunks per rank in a V, split backward, zero bubble at 1F1B memory.

Rank r holds stages r (down-arm, chunk 0) and 2N−1−r (up-arm, chunk 1). Order, as in
PyTorch's `ScheduleZBVZeroBubble`:
  warm-up    (2(N−r)−1)×[F0], r×[F1 F0], (N−r)×[F1 I1 W1]
  steady     [F0 I0 W0 F1 I1 W1] until every forward is issued
  cool-down  r×[I0 I1], (N−r)×[I0 W0], then the pending W1's and W0's.
For M < 2N−1 the pattern is built for 2N−1 micro-batches and the extra ones are dropped.
"""

from __future__ import annotations

from collections import defaultdict

from parplan.baselines._common import reject_chunks
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.placement import FAMILIES


def _rank_order(n: int, r: int, num_microbatches: int) -> list[Action]:
    padded = max(2 * n - 1, num_microbatches)
    chunk = (r, 2 * n - 1 - r)
    count: dict[tuple[int, Kind], int] = defaultdict(int)
    order: list[Action] = []

    def emit(c: int, kind: Kind) -> None:
        stage = chunk[c]
        order.append(Action(stage, kind, count[stage, kind]))
        count[stage, kind] += 1

    issued = lambda c, kind: count[chunk[c], kind]  # noqa: E731

    for _ in range(2 * (n - r) - 1):                       # warm-up: nF0
        emit(0, Kind.F)
    for _ in range(r):                                     # warm-up: F1 F0
        emit(1, Kind.F), emit(0, Kind.F)
    for _ in range(n - r):                                 # warm-up: F1 I1 W1
        emit(1, Kind.F), emit(1, Kind.I), emit(1, Kind.W)
    while issued(1, Kind.F) < issued(0, Kind.F) or issued(0, Kind.F) < padded:  # steady
        if issued(0, Kind.F) < padded:
            emit(0, Kind.F)
        emit(0, Kind.I), emit(0, Kind.W)
        emit(1, Kind.F), emit(1, Kind.I), emit(1, Kind.W)
    # Cool-down: I's first, W's trail behind them.
    w_done = {0: issued(0, Kind.I), 1: issued(1, Kind.I)}
    for _ in range(r):                                     # I0 I1
        emit(0, Kind.I), emit(1, Kind.I)
    for _ in range(n - r):                                 # I0 W0
        emit(0, Kind.I)
        order.append(Action(chunk[0], Kind.W, w_done[0]))
        w_done[0] += 1
    for c in (1, 0):                                       # drain W1 then W0
        while w_done[c] < issued(c, Kind.I):
            order.append(Action(chunk[c], Kind.W, w_done[c]))
            w_done[c] += 1
    return [a for a in order if a.microbatch < num_microbatches]


def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    reject_chunks("zb-v", num_chunks, allowed=2)
    return Schedule(
        name="zb-v",
        stage_to_rank=FAMILIES["v"].stage_to_rank(num_ranks),
        microbatches_per_chain=num_microbatches,
        orders=[_rank_order(num_ranks, r, num_microbatches) for r in range(num_ranks)],
    )
