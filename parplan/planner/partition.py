"""Upper level: assign units to pipeline stages, and stages to ranks.

Placement families (how S stages sit on N ranks, and which expert schedules fit them) are
`parplan.schedule.placement`'s registry; `Family` and `FAMILIES` are re-exported here.

Two solvers:
* `balanced_contiguous` (`parplan.cost.contiguous`, re-exported) — exact min–max split of
  the units, in program order, into S contiguous stages (binary search on the bottleneck +
  greedy packing, with per-stage device speeds and a static-memory cap). At layer
  granularity with one device type's costs this is the usual hand split "balanced by
  cost": the baseline.
* `place_units` — the upper-level MIP (CP-SAT): each unit on exactly one stage, stages
  ordered along the unit DAG's edges (x_u <= x_v: the stage graph stays acyclic, while
  independent branches may share or swap stages), stages non-empty, static memory per rank
  within the cap; objective max rank load (the pipeline's throughput bound) then max stage
  load. Each unit may only move within a window of stages around its position in the
  contiguous solution, which is also the solution hint, so the MIP is never worse than it.
"""

from __future__ import annotations

from typing import Callable, Sequence

from parplan.cost.contiguous import Cost, balanced_contiguous
from parplan.schedule.placement import FAMILIES, Family

__all__ = ["Family", "FAMILIES", "balanced_contiguous", "place_units", "rank_loads"]


def rank_loads(stage_of_unit: Sequence[int], family: Family, num_ranks: int, cost: Cost) -> list[float]:
    """Per-rank work per micro-batch (DualPipe: each copy runs half the micro-batches)."""
    loads = [0.0] * num_ranks
    share = family.share
    for u, s in enumerate(stage_of_unit):
        for r in family.ranks_of_stage(s, num_ranks):
            loads[r] += share * cost(u, s)
    return loads


def place_units(
    *,
    num_units: int,
    edges: Sequence[tuple[int, int]],
    family: Family,
    num_ranks: int,
    cost: Cost,
    static: Callable[[int, int], float],
    static_cap: float | None,
    hint: Sequence[int],
    window: int = 2,
    work: float = 2.0,
    safety_seconds: float | None = None,
    seed: int = 0,
    workers: int = 2,
    anchored: Sequence[bool] | None = None,
) -> tuple[list[int], dict]:
    """The upper-level CP-SAT placement. Returns (stage of each unit, solver report).

    `work` is CP-SAT deterministic seconds (the same answer on any machine);
    `safety_seconds` a wall-clock stop. `anchored[u]`: unit u owns parameters; every stage
    must hold one, since a stage is run as the modules it owns (`stage_pieces`)."""
    from ortools.sat.python import cp_model

    from parplan.budget import clock_stopped, set_cpsat_budget

    # ---- data -------------------------------------------------------------------------
    num_stages = family.num_stages(num_ranks)
    all_costs = [cost(u, s) for u in range(num_units) for s in range(num_stages)]
    scale = 1e6 / max(sum(all_costs) / num_stages * num_stages, 1e-30)  # loads as integers ≈ 1e6
    allowed = {u: range(max(0, hint[u] - window), min(num_stages, hint[u] + window + 1)) for u in range(num_units)}

    # ---- variables ----------------------------------------------------------------------
    model = cp_model.CpModel()
    on = {(u, s): model.NewBoolVar(f"on_{u}_{s}") for u in range(num_units) for s in allowed[u]}
    stage = [model.NewIntVar(0, num_stages - 1, f"stage_{u}") for u in range(num_units)]

    # ---- constraints --------------------------------------------------------------------
    for u in range(num_units):  # each unit on exactly one stage
        model.AddExactlyOne(on[u, s] for s in allowed[u])
        model.Add(stage[u] == sum(s * on[u, s] for s in allowed[u]))
    for u, v in edges:  # acyclic stage graph: data flows to the same or a later stage
        model.Add(stage[u] <= stage[v])
    for s in range(num_stages):  # no empty stage, and none without a module of its own
        model.AddBoolOr([on[u, s] for u in range(num_units) if (u, s) in on and (anchored is None or anchored[u])])
    max_rank, max_stage = _add_loads(model, on, family=family, num_ranks=num_ranks, num_stages=num_stages,
                                     num_units=num_units, cost=cost, scale=scale, static=static,
                                     static_cap=static_cap)

    # ---- objective ----------------------------------------------------------------------
    model.Minimize(1000 * max_rank + max_stage)
    for u in range(num_units):
        model.AddHint(stage[u], hint[u])
        for s in allowed[u]:
            model.AddHint(on[u, s], int(hint[u] == s))

    # ---- solve & extract ----------------------------------------------------------------
    solver = cp_model.CpSolver()
    # Deterministic time and interleaved workers keep the answer independent of machine
    # load (same seed, same plan); the wall-clock cap only guards against a slow machine.
    set_cpsat_budget(solver.parameters, work=work, safety_seconds=safety_seconds, workers=workers, seed=seed)
    status = solver.Solve(model)
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    report = {"status": solver.StatusName(status), "seconds": solver.WallTime(),
              "work": round(min(solver.response_proto.deterministic_time, work), 6),
              "clock_stopped": clock_stopped(solver, status, safety_seconds, work),
              "objective": solver.ObjectiveValue() if found else None,
              "bound": solver.BestObjectiveBound(), "units": num_units, "stages": num_stages, "window": window}
    if not found:
        return list(hint), report
    return [solver.Value(stage[u]) for u in range(num_units)], report


def _add_loads(model, on: dict, *, family: Family, num_ranks: int, num_stages: int, num_units: int, cost: Cost,
               scale: float, static: Callable[[int, int], float], static_cap: float | None):
    """Rank loads (a DualPipe stage counts half on each of its two ranks) and stage loads as
    integers, static memory per rank within the cap; returns (max rank load, max stage load)."""
    rank_load = []
    for r in range(num_ranks):
        terms = [(u, s) for (u, s) in on if r in family.ranks_of_stage(s, num_ranks)]
        rank_load.append(sum(int(round(family.share * scale * cost(u, s))) * on[u, s] for u, s in terms))
        if static_cap is not None:
            model.Add(sum(int(static(u, s)) * on[u, s] for u, s in terms) <= int(static_cap))
    stage_load = [sum(int(round(scale * cost(u, s))) * on[u, s] for u in range(num_units) if (u, s) in on)
                  for s in range(num_stages)]
    max_rank = model.NewIntVar(0, 10**12, "max_rank_load")
    max_stage = model.NewIntVar(0, 10**12, "max_stage_load")
    model.AddMaxEquality(max_rank, rank_load)
    model.AddMaxEquality(max_stage, stage_load)
    return max_rank, max_stage
