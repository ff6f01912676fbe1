"""GPipe: every forward, then every backward (Huang et al. 2019). Activation peak = M."""

from __future__ import annotations

from parplan.baselines._common import reject_chunks
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.placement import FAMILIES


def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    reject_chunks("gpipe", num_chunks)
    orders = [
        [Action(r, Kind.F, j) for j in range(num_microbatches)]
        + [Action(r, Kind.B, j) for j in range(num_microbatches)]
        for r in range(num_ranks)
    ]
    return Schedule(
        name="gpipe", stage_to_rank=FAMILIES["chain"].stage_to_rank(num_ranks),
        microbatches_per_chain=num_microbatches, orders=orders,
    )
