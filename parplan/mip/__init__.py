"""The lower-level MIP scheduler: given a stage→rank placement, order and time every task.

`solve_schedule` is the entry point (CP-SAT by default, the paper's big-M model on HiGHS
with solver='highs'); `lower_memory` keeps a schedule's makespan at a lower activation
peak (a `MemoryPass`); `list_schedule` is its list-scheduling warm start alone, which the
planner uses to judge placements; `brute.py` enumerates tiny instances as a third opinion.
"""

from parplan.mip.api import (MemoryPass, MipOptions, MipResult, SolverReport, list_schedule, lower_memory,
                             solve_schedule)
from parplan.mip.cpsat import ProgressEvent

__all__ = ["MemoryPass", "MipOptions", "MipResult", "ProgressEvent", "SolverReport", "list_schedule", "lower_memory",
           "solve_schedule"]
