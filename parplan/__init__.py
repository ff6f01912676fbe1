"""parplan: operator-level parallelism planning for PyTorch.

A model and a cluster go in (`parplan.plan(model, example_inputs, cluster="h100x8")`); a
`Plan` comes out: stage placement, per-rank schedule, predicted step time and memory. The
heavier entry points (tracing, planning, the runtime) import torch and the solvers on
first use, so `import parplan` stays light.
"""

from importlib import import_module

from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.schedule import Action, Kind, Schedule

__version__ = "0.1.0"

_LAZY = {
    "plan": ("parplan.planner.api", "plan"),
    "plan_with_report": ("parplan.planner.api", "plan_with_report"),
    "PlannerConfig": ("parplan.planner.bilevel", "PlannerConfig"),
    "trace": ("parplan.trace", "trace"),
    "Plan": ("parplan.plan", "Plan"),
    "StagePlan": ("parplan.plan", "StagePlan"),
    "PLAN_FORMAT_VERSION": ("parplan.plan", "PLAN_FORMAT_VERSION"),
    "stages_for_rank": ("parplan.runtime", "stages_for_rank"),
    "plan_chain": ("parplan.runtime", "plan_chain"),
    "build_baseline": ("parplan.baselines", "build_baseline"),
    "simulate": ("parplan.schedule.simulate", "simulate"),
    "validate": ("parplan.schedule.validate", "validate"),
    "solve_schedule": ("parplan.mip", "solve_schedule"),
    "load_cluster": ("parplan.cost", "load_cluster"),
}

__all__ = ["Action", "Kind", "ParplanError", "PipelineCosts", "Schedule", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'parplan' has no attribute {name!r}")
