"""Upper level: assign units to pipeline stages, and stages to ranks.

Placement families (how S stages sit on N ranks, and which expert schedules fit them):

  chain     S = N, stage s on rank s                 gpipe, 1f1b, zb-h1, zb-h2
  loop      S = 2N, stage s on rank s mod N          interleaved-1f1b
  v         S = 2N, stage s on rank s or 2N−1−s      zb-v, dualpipev
  dualpipe  S = N model stages, each on ranks s and N−1−s (both directions)   dualpipe

Two solvers:
* `balanced_contiguous` — exact min–max split of the units, in program order, into S
  contiguous stages (binary search on the bottleneck + greedy packing, with per-stage
  device speeds and a static-memory cap). At layer granularity with one device type's
  costs this is the usual hand split "balanced by cost": the baseline.
* `place_units` — the upper-level MIP (CP-SAT): each unit on exactly one stage, stages
  ordered along the unit DAG's edges (x_u <= x_v: the stage graph stays acyclic, while
  independent branches may share or swap stages), stages non-empty, static memory per rank
  within the cap; objective max rank load (the pipeline's throughput bound) then max stage
  load. Each unit may only move within a window of stages around its position in the
  contiguous solution, which is also the solution hint, so the MIP is never worse than it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from parplan.errors import ParplanError

__all__ = ["Family", "FAMILIES", "balanced_contiguous", "place_units", "rank_loads"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Family:
    name: str
    stages_per_rank: int
    schedules: tuple[str, ...]

    def num_stages(self, num_ranks: int) -> int:
        return self.stages_per_rank * num_ranks

    def rank_of_stage(self, stage: int, num_ranks: int) -> int:
        n = num_ranks
        if self.name == "loop":
            return stage % n
        if self.name == "v":
            return stage if stage < n else 2 * n - 1 - stage
        return stage

    def ranks_of_stage(self, stage: int, num_ranks: int) -> tuple[int, ...]:
        """Every rank that computes this model stage (DualPipe holds each twice)."""
        if self.name == "dualpipe":
            return (stage, num_ranks - 1 - stage)
        return (self.rank_of_stage(stage, num_ranks),)


FAMILIES = {
    "chain": Family(name="chain", stages_per_rank=1, schedules=("gpipe", "1f1b", "zb-h1", "zb-h2")),
    "loop": Family(name="loop", stages_per_rank=2, schedules=("interleaved-1f1b",)),
    "v": Family(name="v", stages_per_rank=2, schedules=("zb-v", "dualpipev")),
    "dualpipe": Family(name="dualpipe", stages_per_rank=1, schedules=("dualpipe",)),
}

Cost = Callable[[int, int], float]  # (unit, stage) → seconds of that unit on that stage's device


def rank_loads(stage_of_unit: Sequence[int], family: Family, num_ranks: int, cost: Cost) -> list[float]:
    """Per-rank work per micro-batch (DualPipe: each copy runs half the micro-batches)."""
    loads = [0.0] * num_ranks
    share = 0.5 if family.name == "dualpipe" else 1.0
    for u, s in enumerate(stage_of_unit):
        for r in family.ranks_of_stage(s, num_ranks):
            loads[r] += share * cost(u, s)
    return loads


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

    from parplan.budget import clock_stopped

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
    share = 0.5 if family.name == "dualpipe" else 1.0
    rank_load = []
    for r in range(num_ranks):
        terms = [(u, s) for (u, s) in on if r in family.ranks_of_stage(s, num_ranks)]
        rank_load.append(sum(int(round(share * scale * cost(u, s))) * on[u, s] for u, s in terms))
        if static_cap is not None:
            model.Add(sum(int(static(u, s)) * on[u, s] for u, s in terms) <= int(static_cap))
    stage_load = [sum(int(round(scale * cost(u, s))) * on[u, s] for u in range(num_units) if (u, s) in on)
                  for s in range(num_stages)]
    max_rank = model.NewIntVar(0, 10**12, "max_rank_load")
    max_stage = model.NewIntVar(0, 10**12, "max_stage_load")
    model.AddMaxEquality(max_rank, rank_load)
    model.AddMaxEquality(max_stage, stage_load)

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
    solver.parameters.max_deterministic_time = work
    if safety_seconds is not None:
        solver.parameters.max_time_in_seconds = max(0.01, safety_seconds)
    solver.parameters.num_workers = workers
    solver.parameters.interleave_search = workers > 1
    solver.parameters.interleave_batch_size = workers
    solver.parameters.random_seed = seed
    status = solver.Solve(model)
    report = {"status": solver.StatusName(status), "seconds": solver.WallTime(),
              "work": solver.response_proto.deterministic_time,
              "clock_stopped": clock_stopped(solver, status, safety_seconds, work),
              "objective": solver.ObjectiveValue() if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) else None,
              "bound": solver.BestObjectiveBound(), "units": num_units, "stages": num_stages, "window": window}
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return list(hint), report
    return [solver.Value(stage[u]) for u in range(num_units)], report
