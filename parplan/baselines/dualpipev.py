"""DualPipeV (Sea AI Lab's cut-in-half DualPipe): N ranks, 2N stages in a V.

Rank r holds stage r (down-arm) and stage 2N−1−r (up-arm); every micro-batch enters on
rank 0 and its loss is on rank 0. The per-rank order is DualPipe's step structure with
n = N, ρ = r, m = M — PyTorch's `ScheduleDualPipeV` order. Bubble (N−1)(F&B+B−3W) per
rank, peak activation 2N+1 stage-chunks.
"""

from __future__ import annotations

from parplan.baselines._common import reject_chunks, require
from parplan.baselines._dualpipe_steps import rank_order
from parplan.schedule.ir import Schedule
from parplan.schedule.placement import FAMILIES


def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    reject_chunks("dualpipev", num_chunks, allowed=2)
    n, m = num_ranks, num_microbatches
    require(
        m >= 2 * n,
        f"dualpipev needs micro-batches >= 2 × ranks (M >= 2N = {2 * n}, one per stage); got M={m}. "
        f"Use --microbatches {2 * n} or more",
    )
    return Schedule(
        name="dualpipev",
        stage_to_rank=FAMILIES["v"].stage_to_rank(n),
        microbatches_per_chain=m,
        orders=[rank_order(n=n, rho=r, m=m, near=r, far=2 * n - 1 - r) for r in range(n)],
    )
