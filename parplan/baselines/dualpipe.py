"""DualPipe (DeepSeek-V3): bidirectional, N ranks, every stage held twice.

Two chains of the same N-stage model run in opposite directions, M/2 micro-batches each.
Schedule stage s < N is model stage s on rank s (fed on rank 0); schedule stage N+k is
model stage k run by the reverse direction on rank N−1−k (fed on rank N−1). Rank r
follows the shared step structure with n = N/2, ρ = min(r, N−1−r), m = M/2; its near
stage is the one its half of the ranks feeds. Bubble (N/2−1)(F&B+B−3W) per rank, peak
activation N+1, parameters 2× per rank.
"""

from __future__ import annotations

from parplan.baselines._common import reject_chunks, require
from parplan.baselines._dualpipe_steps import rank_order
from parplan.schedule.ir import Schedule
from parplan.schedule.placement import FAMILIES


def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    reject_chunks("dualpipe", num_chunks, allowed=2)
    n_ranks, m = num_ranks, num_microbatches
    require(
        n_ranks % 2 == 0,
        f"dualpipe needs an even number of ranks (each pairs with its mirror N−1−r); got N={n_ranks}. "
        f"Use an even --ranks, or dualpipev, which runs on any N",
    )
    require(
        m % 2 == 0 and m >= 2 * n_ranks,
        f"dualpipe needs an even number of micro-batches >= 2 × ranks (half enter at each end; "
        f"M >= 2N = {2 * n_ranks}); got M={m}. Use --microbatches {max(2 * n_ranks, m + m % 2)}",
    )
    n = n_ranks // 2
    forward = lambda r: r  # noqa: E731  schedule stage of the forward-direction chain on rank r
    reverse = lambda r: n_ranks + (n_ranks - 1 - r)  # noqa: E731  reverse chain's stage on rank r
    orders = []
    for r in range(n_ranks):
        near, far = (forward(r), reverse(r)) if r < n else (reverse(r), forward(r))
        orders.append(rank_order(n=n, rho=min(r, n_ranks - 1 - r), m=m // 2, near=near, far=far))
    placement = FAMILIES["dualpipe"]
    return Schedule(
        name="dualpipe",
        stage_to_rank=placement.stage_to_rank(n_ranks),
        microbatches_per_chain=m // 2,
        orders=orders,
        chains=placement.chains(n_ranks),
        model_stage=placement.model_stage(n_ranks),
    )
