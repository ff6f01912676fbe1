"""What a planning run reports while it runs: one `PlanProgress` per phase step.

The planner only observes: events carry what a phase works on and what it found, never
a clock reading, and nothing a callback does flows back into a decision. Displays (the
CLI's `parplan.cli.progress`) time the phases themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Phase", "Step", "PlanProgress"]


class Phase(str, Enum):
    """The planner's phases, in the order they run (bilevel.py's module docstring)."""

    SCREEN = "screen"
    BOUNDARY_MOVES = "boundary moves"
    UPPER_MIP = "upper MIP"
    LOWER_MIP = "lower MIP"
    MEMORY_PASS = "memory pass"
    # `parplan calibrate` shows its measurement groups and fits on the same display
    MEASURE = "measure"
    FIT = "fit"


class Step(str, Enum):
    BEGIN = "begin"  # a phase starts on `subject`
    UPDATE = "update"  # a solver's incumbent or bound moved
    END = "end"  # the phase finished; `message` says what it found


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanProgress:
    """One report. `subject` names what the phase works on ("dualpipe PP4×DP2×TP1");
    incumbent and bound are the solver's objective in its own units (the lower MIP:
    makespan in the cost model's time unit), None when not known yet."""

    phase: Phase
    step: Step
    subject: str = ""
    message: str = ""
    incumbent: float | None = None
    bound: float | None = None
    gap: float | None = None

    @classmethod
    def from_solver(cls, phase: Phase, subject: str, event) -> PlanProgress:
        """An UPDATE from a `parplan.mip.ProgressEvent` (its elapsed time is dropped)."""
        return cls(phase=phase, step=Step.UPDATE, subject=subject, incumbent=event.incumbent, bound=event.bound,
                   gap=event.gap)
