"""Hardware profiles and the cost model: operator F/I/W time and memory on a GPU, transfer
time over a link, calibration against measurements, and measured mode."""

from __future__ import annotations

from parplan.cost.groups import GroupCost, group_costs, groups_by_module, pipeline_costs, split_contiguous
from parplan.cost.hardware import (
    ClusterProfile,
    Efficiency,
    GPUProfile,
    LinkProfile,
    available_profiles,
    load_cluster,
    load_gpu,
)
from parplan.cost.model import OpCost, op_cost, overlapped_time, transfer_time

__all__ = [
    "OpCost",
    "op_cost",
    "transfer_time",
    "overlapped_time",
    "GPUProfile",
    "ClusterProfile",
    "LinkProfile",
    "Efficiency",
    "available_profiles",
    "load_gpu",
    "load_cluster",
    "GroupCost",
    "group_costs",
    "split_contiguous",
    "groups_by_module",
    "pipeline_costs",
]
