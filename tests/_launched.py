"""Shared by the torchrun equivalence tests: one job per process count, plans edited as the planner writes them."""

from __future__ import annotations

import dataclasses

from parplan.runtime.launch import launch


def launch_each_count(plans: dict[int, dict], *, steps: int, timeout_s: float = 240) -> dict:
    """{name: (plan, Measured)} for `plans` = {process count: {name: plan}}, each count launched once
    (one torchrun job runs all its plans in a row, so start-up is paid once per count)."""
    out = {}
    for nproc, named in plans.items():
        measured = launch(list(named.values()), nproc=nproc, steps=steps, timeout_s=timeout_s)
        out.update({name: (plan, m) for (name, plan), m in zip(named.items(), measured)})
    return out


def with_ep(plan, degree: int):
    """`plan` with the EP degree where the planner puts it (`solver["planning"]["expert_parallel"]`)."""
    planning = {**plan.solver.get("planning", {}), "expert_parallel": degree}
    return dataclasses.replace(plan, solver={**plan.solver, "planning": planning})
