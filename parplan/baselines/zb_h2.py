"""ZB-H2 (Qi et al. 2024): more warm-up forwards and W's as filler; memory up to 2N−1.

The order is what zero-bubble's own heuristic (sail-sg `zb.py`: prioritise I, fill waits
with W, cap in-flight micro-batches at 2p−1) produces at unit costs: each rank, whenever
free, runs a ready I first, else a ready F while fewer than 2N−1 micro-batches are in
flight on it, else its oldest pending W, else waits. Every rank may hold 2N−1
stage-micro-batches (ZB-H2's memory). At unit costs each rank idles only N−1 in all —
the least any one-chain schedule can, since the last rank's first forward cannot start
before N−1. The unit-time list scheduling only fixes the order; the simulator then times
it with real costs.
"""

from __future__ import annotations

from collections import deque

from parplan.baselines._common import reject_chunks, require
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.placement import FAMILIES


def _orders(n: int, m: int) -> list[list[Action]]:
    cap = [2 * n - 1] * n
    f_done = [[None] * m for _ in range(n)]  # time each F ends
    i_done = [[None] * m for _ in range(n)]
    next_f, next_i = [0] * n, [0] * n
    pending_w: list[deque[int]] = [deque() for _ in range(n)]
    orders: list[list[Action]] = [[] for _ in range(n)]
    t = 0
    done = lambda when: when is not None and when <= t  # noqa: E731
    while any(len(o) < 3 * m for o in orders):
        for r in range(n):  # every rank picks its unit-time action for [t, t+1)
            j, k = next_i[r], next_f[r]
            i_ready = j < k and done(f_done[r][j]) and (r == n - 1 or done(i_done[r + 1][j]))
            f_ready = k < m and (r == 0 or done(f_done[r - 1][k]))
            in_flight = k - j + len(pending_w[r])  # forwards whose W has not run
            if i_ready:
                orders[r].append(Action(r, Kind.I, j))
                i_done[r][j], next_i[r] = t + 1, j + 1
                pending_w[r].append(j)
            elif f_ready and in_flight < cap[r]:
                orders[r].append(Action(r, Kind.F, k))
                f_done[r][k], next_f[r] = t + 1, k + 1
            elif pending_w[r]:
                orders[r].append(Action(r, Kind.W, pending_w[r].popleft()))
        t += 1
    return orders


def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    reject_chunks("zb-h2", num_chunks)
    require(
        num_microbatches >= num_ranks,
        f"zb-h2 needs micro-batches >= ranks (M >= N); got M={num_microbatches}, N={num_ranks}. "
        f"Use --microbatches {num_ranks} or more",
    )
    return Schedule(
        name="zb-h2", stage_to_rank=FAMILIES["chain"].stage_to_rank(num_ranks), microbatches_per_chain=num_microbatches,
        orders=_orders(num_ranks, num_microbatches),
    )
