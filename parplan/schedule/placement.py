"""Placement families: how a pipeline's stages sit on N ranks, and which expert schedules fit.

  family    model stages  schedule stage s on rank                 expert schedules
  chain     N             s                                        1f1b, zb-h1, zb-h2, gpipe
  loop      2N            s mod N                                  interleaved-1f1b, combined-1f1b
  v         2N            s for s < N, else 2N−1−s                 dualpipev, zb-v
  dualpipe  N (held twice) as v over 2N schedule stages; stage s   dualpipe
                          and N+s compute model stage s (one chain
                          per direction, half the micro-batches each)

This registry is the one place these facts live: the planner's upper level (stage counts,
rank loads), the lower-level MIP (its problem skeleton, warm starts) and the baselines
(their stage→rank maps) all read it. It imports nothing from planner or mip.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from parplan.errors import ParplanError

__all__ = ["PlacementName", "Family", "FAMILIES", "PLACEMENTS", "family", "family_of_schedule"]

PlacementName = Literal["dualpipe", "v", "loop", "chain"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Family:
    name: PlacementName
    stages_per_rank: int  # schedule stages per rank (a loop with v chunks has v)
    model_copies: int = 1  # DualPipe holds the model twice, one copy per direction
    schedules: tuple[str, ...]  # expert schedules (baselines) that run on this placement

    # ---- stage counts -----------------------------------------------------------------
    def num_schedule_stages(self, num_ranks: int, *, num_chunks: int | None = None) -> int:
        """Stages a schedule of this family runs; `num_chunks` overrides stages per rank (loop only)."""
        per_rank = self.stages_per_rank if num_chunks is None else num_chunks
        if per_rank != self.stages_per_rank and self.name != "loop":
            raise ParplanError(
                f"placement {self.name!r} runs {self.stages_per_rank} stage(s) per rank; {num_chunks} chunks "
                f"per rank need placement 'loop' (interleaved-1f1b)"
            )
        return per_rank * num_ranks

    def num_stages(self, num_ranks: int) -> int:
        """Model stages: what the costs describe (DualPipe's 2N schedule stages run N of them)."""
        return self.num_schedule_stages(num_ranks) // self.model_copies

    @property
    def share(self) -> float:
        """Fraction of the micro-batches each copy of a model stage runs."""
        return 1.0 / self.model_copies

    # ---- maps -------------------------------------------------------------------------
    def stage_to_rank(self, num_ranks: int, *, num_chunks: int | None = None) -> tuple[int, ...]:
        """Rank of every schedule stage."""
        n, num = num_ranks, self.num_schedule_stages(num_ranks, num_chunks=num_chunks)
        if self.name in ("loop", "chain"):
            return tuple(s % n for s in range(num))
        return tuple(s if s < n else 2 * n - 1 - s for s in range(num))  # v, dualpipe: down, then back up

    def model_stage(self, num_ranks: int) -> tuple[int, ...]:
        """Model stage every schedule stage computes."""
        num = self.num_stages(num_ranks)
        return tuple(s % num for s in range(self.num_schedule_stages(num_ranks)))

    def chains(self, num_ranks: int) -> tuple[tuple[int, ...], ...]:
        """The stage sequences micro-batches flow through: one per model copy."""
        num = self.num_stages(num_ranks)
        return tuple(tuple(range(c * num, (c + 1) * num)) for c in range(self.model_copies))

    def ranks_of_stage(self, stage: int, num_ranks: int) -> tuple[int, ...]:
        """Every rank that computes model stage `stage`, one entry per copy (DualPipe: s, N−1−s)."""
        return _ranks_of_model_stages(self.name, self.model_copies, self.stages_per_rank, num_ranks)[stage]

    def rank_of_stage(self, stage: int, num_ranks: int) -> int:
        """The rank of model stage `stage`'s first copy (the one fed from rank 0)."""
        return self.ranks_of_stage(stage, num_ranks)[0]

    # ---- preconditions ----------------------------------------------------------------
    def accepts(self, num_ranks: int, num_microbatches: int) -> bool:
        """DualPipe feeds half the micro-batches at each end and pairs rank r with N−1−r."""
        return self.model_copies == 1 or (num_ranks % 2 == 0 and num_microbatches % 2 == 0)

    def check(self, num_ranks: int, num_microbatches: int) -> None:
        if not self.accepts(num_ranks, num_microbatches):
            raise ParplanError(
                f"placement {self.name!r} needs an even number of ranks and of micro-batches (half the "
                f"micro-batches enter at each end, rank r pairs with N−1−r); got N={num_ranks}, "
                f"M={num_microbatches}. Use even values, or --placement v"
            )


@cache
def _ranks_of_model_stages(name: str, model_copies: int, stages_per_rank: int,
                           num_ranks: int) -> tuple[tuple[int, ...], ...]:
    """Per model stage, the ranks of its copies (asked per unit and stage: built once; keyed
    on plain fields, which hash faster than the dataclass)."""
    fam = Family(name=name, model_copies=model_copies, stages_per_rank=stages_per_rank, schedules=())
    ranks, model = fam.stage_to_rank(num_ranks), fam.model_stage(num_ranks)
    return tuple(tuple(ranks[s] for s, m in enumerate(model) if m == k) for k in range(fam.num_stages(num_ranks)))


# Order of `schedules`: the MIP tries its warm starts in this order and keeps the first of
# equals (equal objective and peak memory), so the lower-memory schedule comes first.
FAMILIES: dict[str, Family] = {
    "chain": Family(name="chain", stages_per_rank=1, schedules=("1f1b", "zb-h1", "zb-h2", "gpipe")),
    "loop": Family(name="loop", stages_per_rank=2, schedules=("interleaved-1f1b", "combined-1f1b")),
    "v": Family(name="v", stages_per_rank=2, schedules=("dualpipev", "zb-v")),
    "dualpipe": Family(name="dualpipe", stages_per_rank=2, model_copies=2, schedules=("dualpipe",)),
}

# The order placement='auto' prepares them in (the MIP's `solve_schedule`).
PLACEMENTS: tuple[str, ...] = ("dualpipe", "v", "loop", "chain")


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ParplanError(f"placement {name!r} is unknown; choose one of {', '.join(PLACEMENTS)}")
    return FAMILIES[name]


def family_of_schedule(name: str) -> Family:
    """The placement family an expert schedule runs on (the family whose `schedules` name it)."""
    for fam in FAMILIES.values():
        if name in fam.schedules:
            return fam
    known = ", ".join(s for fam in FAMILIES.values() for s in fam.schedules)
    raise ParplanError(f"schedule {name!r} runs on no placement family; choose one of {known}")
