"""Combined 1F1B (Megatron-Core's `--overlap-moe-expert-parallel-comm`): interleaved 1F1B whose
steady-state forward and backward of different micro-batches run as one overlapped cell.

The order is interleaved 1F1B's (`interleaved.loop_schedule`, v chunks per rank, loop
placement). Megatron merges each steady-state (F, B) pair into one "combined" step that
runs the two micro-batches' layers in turn on two CUDA streams, so one micro-batch's
expert-parallel all-to-all hides under the other's compute; here each such pair becomes
an OVERLAP_F_B cell, whose parts the cost layer lays out on the compute and
communication lanes (`parplan.schedule.phases`). With nothing to hide a cell costs F + B.

A cell starts when the inputs of both halves are there. With one chunk per rank every
steady-state pair can merge; with interleaving some cannot (the F's output is what,
through the other ranks, the paired B waits for), so pairs whose cell would deadlock run
apart: merge all, and while the order deadlocks split the cells the blocked ranks wait at.
"""

from __future__ import annotations

from functools import lru_cache

from parplan.baselines._common import require
from parplan.baselines.interleaved import loop_schedule
from parplan.schedule.costs import PipelineCosts
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.simulate import DeadlockError, simulate

__all__ = ["build", "combine_pairs"]


def combine_pairs(order: tuple[Action, ...]) -> list[Action]:
    """Each F directly followed by a B of another micro-batch becomes one cell."""
    out: list[Action] = []
    k = 0
    while k < len(order):
        a = order[k]
        nxt = order[k + 1] if k + 1 < len(order) else None
        if a.kind is Kind.F and nxt is not None and nxt.kind is Kind.B and \
                (nxt.stage, nxt.microbatch) != (a.stage, a.microbatch):
            out.append(Action.overlap(a, nxt))
            k += 2
        else:
            out.append(a)
            k += 1
    return out


def _split_blocked(schedule: Schedule, blocked: tuple[tuple[int, int], ...]) -> Schedule:
    orders = [list(o) for o in schedule.orders]
    cells = [(r, k) for r, k in blocked if orders[r][k].kind is Kind.OVERLAP_F_B]
    assert cells, "an order of plain 1F1B actions deadlocked"
    for r, k in sorted(cells, reverse=True):
        orders[r][k:k + 1] = list(orders[r][k].sub_actions)
    return Schedule(name=schedule.name, stage_to_rank=schedule.stage_to_rank,
                    microbatches_per_chain=schedule.microbatches_per_chain, orders=orders)


@lru_cache(maxsize=256)
def build(num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    v = 2 if num_chunks is None else num_chunks
    require(isinstance(v, int) and v >= 1,
            f"--chunks {num_chunks!r} is invalid: combined-1f1b needs v >= 1 stage chunks per rank (default 2)")
    base = loop_schedule("combined-1f1b", num_ranks, num_microbatches, v, zero_bubble=False)
    schedule = Schedule(name="combined-1f1b", stage_to_rank=base.stage_to_rank,
                        microbatches_per_chain=base.microbatches_per_chain,
                        orders=tuple(tuple(combine_pairs(o)) for o in base.orders))
    unit = PipelineCosts.uniform(schedule.num_stages)  # deadlock is structural: any positive costs
    while True:
        try:
            simulate(schedule, unit)
            return schedule
        except DeadlockError as err:
            schedule = _split_blocked(schedule, err.blocked)
