"""ZB-H1 (Qi et al. 2024): 1F1B with the backward split into I and W, W's delayed.

Rank r warms up N−1−r forwards like 1F1B, runs r (F, I) pairs, then (F, I, W) with each
W lagging r backwards behind its I; the lag fills the cool-down. Bubble per rank
(N−1)(F+I−W) at 1F1B's memory (N stage-micro-batches). It is the one-chunk case of
PyTorch's `ScheduleInterleavedZeroBubble` construction (which itself needs >= 2 chunks,
so the order is checked against the closed form and PyTorch's validator instead).
"""

from __future__ import annotations

from parplan.baselines._common import reject_chunks, require
from parplan.baselines.interleaved import loop_schedule
from parplan.schedule.ir import Schedule


def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    reject_chunks("zb-h1", num_chunks)
    require(
        num_microbatches >= num_ranks,
        f"zb-h1 needs micro-batches >= ranks (M >= N); got M={num_microbatches}, N={num_ranks}. "
        f"Use --microbatches {num_ranks} or more",
    )
    return loop_schedule("zb-h1", num_ranks, num_microbatches, 1, zero_bubble=True)
