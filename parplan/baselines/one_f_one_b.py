"""1F1B (PipeDream-Flush / Megatron): N−1−r warm-up forwards, then one F one B.

Bubble per rank (N−1)(F+B); peak activation N stage-micro-batches on rank 0.
PyTorch 2.13's `Schedule1F1B` visual order warms up N−r forwards (one too many on the
last rank); this is the textbook order, checked against the closed form instead.
"""

from __future__ import annotations

from parplan.baselines._common import one_f_one_b_order, reject_chunks, require
from parplan.schedule.ir import Schedule
from parplan.schedule.placement import FAMILIES


def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    reject_chunks("1f1b", num_chunks)
    require(
        num_microbatches >= num_ranks,
        f"1f1b needs micro-batches >= ranks (M >= N) to fill the pipeline; got M={num_microbatches}, "
        f"N={num_ranks}. Use --microbatches {num_ranks} or more, or gpipe for M < N",
    )
    orders = [
        one_f_one_b_order(
            num_ops=num_microbatches,
            warmup=min(num_ranks - 1 - r, num_microbatches),
            forward_stage=lambda k, r=r: r,
            backward_stage=lambda b, r=r: r,
        )
        for r in range(num_ranks)
    ]
    return Schedule(
        name="1f1b", stage_to_rank=FAMILIES["chain"].stage_to_rank(num_ranks),
        microbatches_per_chain=num_microbatches, orders=orders,
    )
