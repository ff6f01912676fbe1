"""The bi-level operator-level planner (upper: placement; lower: scheduling)."""

from parplan.planner.bilevel import PlannerConfig, PlanResult, plan_traced
from parplan.planner.degrees import Degrees
from parplan.planner.evaluate import evaluate_traced
from parplan.planner.events import Phase, PlanProgress, Step
from parplan.planner.memory import MemoryModel
from parplan.planner.units import Granularity, coarsen

__all__ = ["PlannerConfig", "PlanResult", "plan_traced", "evaluate_traced", "Degrees", "MemoryModel", "Granularity", "coarsen",
           "Phase", "PlanProgress", "Step"]
