"""The one contiguous split: units in program order cut into S non-empty stages.

`balanced_contiguous` is an exact min–max split (binary search on the bottleneck + greedy
packing, with per-stage device speeds and a static-memory cap), with proportional cuts at
each stage's share of the work as a second candidate; a score picks. The planner's layer
and operator splits, the cost layer's `split_contiguous` and the chain planner's
`balanced_split` all call it.
"""

from __future__ import annotations

from typing import Callable

from parplan.errors import ParplanError

__all__ = ["Cost", "balanced_contiguous"]

Cost = Callable[[int, int], float]  # (unit, stage) → seconds of that unit on that stage's device


def _greedy(num_units: int, num_stages: int, cost: Cost, static: Callable[[int, int], float],
            cap: float | None, bottleneck: float) -> list[int] | None:
    """Pack units in order, opening a new stage when the next would exceed a limit."""
    stage_of_unit: list[int] = []
    s, load, mem = 0, 0.0, 0.0
    for u in range(num_units):
        c, m = cost(u, s), static(u, s)
        if stage_of_unit and (load + c > bottleneck or (cap is not None and mem + m > cap)):
            s, load, mem = s + 1, 0.0, 0.0
            if s >= num_stages:
                return None
            c, m = cost(u, s), static(u, s)
        if c > bottleneck or (cap is not None and m > cap):
            return None
        stage_of_unit.append(s)
        load, mem = load + c, mem + m
    # Fewer stages used than wanted: split the fullest stages (fewer units per stage only
    # lowers loads), then re-check — with unequal devices a stage's index sets its speed.
    while max(stage_of_unit) + 1 < num_stages:
        counts = [stage_of_unit.count(k) for k in range(max(stage_of_unit) + 1)]
        k = max(range(len(counts)), key=lambda i: counts[i])
        if counts[k] < 2:
            return None
        last = max(i for i, x in enumerate(stage_of_unit) if x == k)
        stage_of_unit = [x + 1 if (x > k or i == last) else x for i, x in enumerate(stage_of_unit)]
    for k in range(num_stages):
        members = [u for u, x in enumerate(stage_of_unit) if x == k]
        if sum(cost(u, k) for u in members) > bottleneck * (1 + 1e-9):
            return None
        if cap is not None and sum(static(u, k) for u in members) > cap:
            return None
    return stage_of_unit


def _proportional(num_units: int, num_stages: int, cost: Cost) -> list[int] | None:
    """Cut where the running work crosses each stage's share (shares ∝ device speed)."""
    slowdown = [sum(cost(u, s) for u in range(num_units)) for s in range(num_stages)]
    speed = [1.0 / x if x > 0 else 1.0 for x in slowdown]
    bounds, acc = [], 0.0
    for s in range(num_stages - 1):
        acc += speed[s] / sum(speed)
        bounds.append(acc)
    reference = [cost(u, 0) for u in range(num_units)]
    total = sum(reference) or 1.0
    stage_of_unit, s, running = [], 0, 0.0
    for u in range(num_units):
        mid = (running + reference[u] / 2) / total
        while s < num_stages - 1 and mid > bounds[s]:
            s += 1
        stage_of_unit.append(s)
        running += reference[u]
    if len(set(stage_of_unit)) != num_stages:
        return None
    return stage_of_unit


def balanced_contiguous(num_units: int, num_stages: int, cost: Cost, *,
                        static: Callable[[int, int], float] | None = None,
                        static_cap: float | None = None,
                        score: Callable[[list[int]], tuple] | None = None) -> list[int]:
    """Contiguous split of the units in program order, balanced by `score`.

    Two candidates: the exact min–max split (binary search on the bottleneck + greedy
    packing), which front-loads stages, and proportional cuts at each stage's share of the
    work, which even them out; `score` (default: largest stage time) picks. Placements
    with several stages per rank pass a score on rank loads.
    """
    if not (isinstance(num_stages, int) and num_stages >= 1):
        raise ParplanError(f"a contiguous split into {num_stages!r} stages is impossible: need an integer >= 1 "
                           f"(check the rank count)")
    if num_units < num_stages:
        raise ParplanError(
            f"the model has {num_units} placeable units but the pipeline wants {num_stages} stages; "
            f"use fewer ranks or operator granularity"
        )
    static = static or (lambda u, s: 0.0)

    def stage_loads(split: list[int]) -> list[float]:
        loads = [0.0] * num_stages
        for u, k in enumerate(split):
            loads[k] += cost(u, k)
        return loads

    def fits(split: list[int]) -> bool:
        if static_cap is None:
            return True
        mem = [0.0] * num_stages
        for u, k in enumerate(split):
            mem[k] += static(u, k)
        return max(mem) <= static_cap

    score = score or (lambda split: (max(stage_loads(split)),))
    lo = max(min(cost(u, s) for s in range(num_stages)) for u in range(num_units))
    hi = sum(max(cost(u, s) for s in range(num_stages)) for u in range(num_units))
    best = _greedy(num_units, num_stages, cost, static, static_cap, hi)
    if best is None:
        raise ParplanError(
            "no contiguous split fits the memory cap: the parameters and optimizer state of some "
            "stage exceed it even with the finest split; raise --memory-limit or add ranks"
        )
    for _ in range(60):
        if hi - lo <= 1e-6 * hi:
            break
        mid = (lo + hi) / 2
        found = _greedy(num_units, num_stages, cost, static, static_cap, mid)
        if found is None:
            lo = mid
        else:
            best, hi = found, mid
    candidates = [best]
    even = _proportional(num_units, num_stages, cost)
    if even is not None and fits(even):
        candidates.append(even)
    return min(candidates, key=score)
