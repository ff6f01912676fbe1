"""Brute force for tiny instances: every combination of per-rank orders, simulated.

For a regular objective such as the makespan some optimal schedule is semi-active (each
task starts as early as its rank order and inputs allow), which is exactly what the
simulator computes for an order; so the best simulated order over all per-rank
permutations is the optimum. Permutations that put W before its I or I before its F
on the same rank are skipped; orders that deadlock or break the memory cap are
rejected. F&B cells are not enumerated. Meant for <= ~14 tasks in all.
"""

from __future__ import annotations

import itertools

from parplan.mip.problem import Problem
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.validate import ScheduleError, validate

__all__ = ["brute_force", "MAX_BRUTE_ORDERS"]

MAX_BRUTE_ORDERS = 200_000

_RANK = {Kind.F: 0, Kind.I: 1, Kind.W: 2}


def _rank_orders(problem: Problem, rank: int) -> list[tuple[Action, ...]]:
    tasks = problem.tasks_of_rank(rank)
    assert len(tasks) <= 9, f"rank {rank} runs {len(tasks)} tasks: too many to enumerate (<= 9)"
    orders = []
    for perm in itertools.permutations(tasks):
        seen: dict[tuple[int, int], int] = {}
        ok = True
        for s, kind, j in perm:
            if seen.get((s, j), -1) != _RANK[kind] - 1:
                ok = False
                break
            seen[(s, j)] = _RANK[kind]
        if ok:
            orders.append(tuple(Action(s, k, j) for s, k, j in perm))
    return orders


def brute_force(problem: Problem, *, least_memory: bool = False) -> tuple[float, Schedule]:
    """(optimal makespan, one optimal schedule) by exhaustive enumeration; with
    `least_memory`, of the optimal ones the one with the lowest largest per-rank activation
    peak (a rank's peak depends on its order alone, so semi-active schedules cover it)."""
    per_rank = [_rank_orders(problem, r) for r in range(problem.num_ranks)]
    total = 1
    for orders in per_rank:
        total *= len(orders)
    assert total <= MAX_BRUTE_ORDERS, f"{total} order combinations: too many to enumerate"
    sk = problem.skeleton
    best: tuple[float, Schedule] | None = None
    best_peak = 0.0
    for combo in itertools.product(*per_rank):
        schedule = Schedule(name="brute", stage_to_rank=sk.stage_to_rank, microbatches_per_chain=sk.microbatches_per_chain,
                            orders=combo, chains=sk.chains, model_stage=sk.model_stage)
        try:
            sim = validate(schedule, problem.model_costs, memory_cap=problem.memory_cap)
        except ScheduleError:
            continue
        peak = max(sim.peak_activation_per_rank)
        if (best is None or sim.makespan < best[0] - 1e-9
                or (least_memory and sim.makespan <= best[0] + 1e-9 and peak < best_peak - 1e-9)):
            best, best_peak = (sim.makespan, schedule), peak
    assert best is not None, "the serial order is always among the combinations"
    return best
