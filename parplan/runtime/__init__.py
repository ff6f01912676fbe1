"""Running plans on torch.distributed: export, stage splitting, torchrun execution, measurement.

The public surface for launchers. Heavy imports (torch) happen when a name is first used.
"""

from __future__ import annotations

import importlib

__all__ = [
    "plan_chain",
    "load_plan_model",
    "stages_for_rank",
    "stage_graphs",
    "torch_csv",
    "check_torch_csv",
    "lower_overlap_cells",
    "torch_schedule",
    "launch",
    "reference_step",
    "compare_with_reference",
    "Measured",
    "measure_stage_costs",
    "to_expert_parallel",
    "ExpertGroup",
    "RunLayout",
    "tied_weights",
    "tied_groups",
    "sum_tied_grads",
]

_HOME = {
    "plan_chain": "chain", "load_plan_model": "chain",
    "stages_for_rank": "stages", "stage_graphs": "stages",
    "torch_csv": "export", "check_torch_csv": "export", "lower_overlap_cells": "export", "torch_schedule": "export",
    "launch": "launch", "reference_step": "launch", "compare_with_reference": "launch", "Measured": "launch",
    "measure_stage_costs": "measure",
    "to_expert_parallel": "expert_parallel", "ExpertGroup": "expert_parallel",
    "RunLayout": "replicas",
    "tied_weights": "split", "tied_groups": "tied", "sum_tied_grads": "tied",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'parplan.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"parplan.runtime.{_HOME[name]}"), name)
