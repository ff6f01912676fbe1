"""The expert schedules parplan measures itself against, one module per family.

Each module defines a pure `build(num_ranks, num_microbatches, *, num_chunks=None)`
returning a `Schedule`, registered here by name. Builders check their preconditions and
raise `ParplanError` naming the value, the rule and the fix.
"""

from __future__ import annotations

from typing import Callable

from parplan.errors import ParplanError
from parplan.schedule.ir import Schedule

__all__ = ["BASELINES", "CHUNKED", "build_baseline", "baseline_names"]

Builder = Callable[..., Schedule]


def _registry() -> dict[str, Builder]:
    from parplan.baselines import combined, dualpipe, dualpipev, gpipe, interleaved, one_f_one_b, zb_h1, zb_h2, zb_v

    return {
        "gpipe": gpipe.build,
        "1f1b": one_f_one_b.build,
        "interleaved-1f1b": interleaved.build,
        "combined-1f1b": combined.build,
        "zb-h1": zb_h1.build,
        "zb-h2": zb_h2.build,
        "zb-v": zb_v.build,
        "dualpipe": dualpipe.build,
        "dualpipev": dualpipev.build,
    }


BASELINES: tuple[str, ...] = (
    "gpipe", "1f1b", "interleaved-1f1b", "combined-1f1b", "zb-h1", "zb-h2", "zb-v", "dualpipe", "dualpipev",
)


# the schedules taking --chunks (v stage chunks per rank on the loop placement)
CHUNKED: tuple[str, ...] = ("interleaved-1f1b", "combined-1f1b")


def baseline_names() -> tuple[str, ...]:
    return BASELINES


def build_baseline(name: str, num_ranks: int, num_microbatches: int, *, num_chunks: int | None = None) -> Schedule:
    registry = _registry()
    if name not in registry:
        raise ParplanError(
            f"unknown schedule {name!r}; choose one of {', '.join(BASELINES)}"
        )
    _check_counts(num_ranks, num_microbatches)
    return registry[name](num_ranks, num_microbatches, num_chunks=num_chunks)


def _check_counts(num_ranks: int, num_microbatches: int) -> None:
    if not isinstance(num_ranks, int) or num_ranks < 1:
        raise ParplanError(f"--ranks {num_ranks!r} is invalid: need an integer >= 1")
    if not isinstance(num_microbatches, int) or num_microbatches < 1:
        raise ParplanError(f"--microbatches {num_microbatches!r} is invalid: need an integer >= 1")
