"""The lower-level scheduling problem every solver here reads: placement, tasks, integer times.

Given a stage→rank placement (DualPipe's bidirectional map, the V map, the loop map or
the plain chain of one stage per rank)
and per-model-stage costs, the problem is to order and time every (stage, micro-batch,
F/I/W) task on its rank. This module builds that problem once, as data; the CP-SAT
model (`cpsat.py`), the Pyomo big-M model (`bigm.py`) and the brute-force enumerator
(`brute.py`) all read the same `Problem`, and `extract.py` turns any of their timetables
back into a `Schedule`.

Time is integral in CP-SAT, so durations are multiplied by `time_scale`, the smallest
factor that makes every duration whole (1.2 → ×5 → 6). When no factor up to 1000 does,
durations are rounded at ×1000 and the problem says so in `notes`; the schedule is then
re-timed by the simulator with the exact costs, so the reported makespan is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.schedule.ir import Kind, Schedule
from parplan.schedule.placement import FAMILIES, PLACEMENTS, family
from parplan.schedule.placement import PlacementName as Placement

__all__ = ["CellKind", "Placement", "PLACEMENTS", "Task", "Problem", "placement_skeleton", "build_problem", "num_model_stages"]


class CellKind(str, Enum):
    """What an F&B cell overlaps with a forward (DualPipe's overlapped chunk pair)."""

    FI = "fi"  # the input-gradient half alone; that micro-batch's W runs apart, later
    FB = "fb"  # a full backward, I then W, as DualPipe's cells run

# (stage, kind, micro-batch) of one plain task; kind is F, I or W (a B is an I and a W run together).
Task = tuple[int, Kind, int]

_SCALES = (1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 200, 250, 500, 1000)


def num_model_stages(placement: str, num_ranks: int) -> int:
    """DualPipe holds the N-stage model twice, chain runs it once (stage s on rank s); V and
    loop cut the model into 2N stages (the registry, `parplan.schedule.placement`)."""
    return family(placement).num_stages(num_ranks)


def placement_skeleton(placement: str, num_ranks: int, num_microbatches: int) -> Schedule:
    """An empty `Schedule` carrying only the placement: stage→rank map, chains, model stages."""
    n, m = num_ranks, num_microbatches
    if placement not in PLACEMENTS:
        raise ParplanError(f"placement {placement!r} is unknown; choose one of {', '.join(PLACEMENTS)} or auto")
    if n < 1 or m < 1:
        raise ParplanError(f"ranks = {n}, micro-batches = {m}: both must be >= 1")
    family = FAMILIES[placement]
    family.check(n, m)
    return Schedule(
        name="mip",
        stage_to_rank=family.stage_to_rank(n),
        microbatches_per_chain=m // family.model_copies,
        orders=tuple(() for _ in range(n)),
        chains=family.chains(n),
        model_stage=family.model_stage(n),
    )


_RESOLUTION = 2000  # integer ticks given to the longest duration when times must be rounded


def _time_scale(values: list[float]) -> tuple[float, bool]:
    """Smallest factor up to 1000 making every value whole, else one giving the longest
    duration `_RESOLUTION` ticks (seconds-valued costs such as 0.013 s need ×1e5, not ×1000)."""
    for k in _SCALES:
        if all(abs(v * k - round(v * k)) <= 1e-9 * max(1.0, abs(v * k)) for v in values):
            return k, True
    longest = max((abs(v) for v in values), default=0.0)
    return (_RESOLUTION / longest if longest > 0 else float(_SCALES[-1])), False


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """One instance: a placement, exact costs per schedule stage, and their integer images."""

    placement: str
    skeleton: Schedule  # placement only; orders empty
    costs: PipelineCosts  # per schedule stage (model-stage costs restaged)
    model_costs: PipelineCosts  # per model stage, as given: what the simulator takes
    memory_cap: float | None
    time_scale: float
    exact_times: bool  # False when durations had to be rounded to 1/time_scale
    notes: tuple[str, ...] = ()
    # Integer durations (× time_scale) per schedule stage.
    dur: dict[Kind, tuple[int, ...]] = field(default_factory=dict)
    delay: tuple[int, ...] = ()  # transfer time of stage s's output / returning gradient, × scale
    task_list: tuple[Task, ...] = ()  # every task, built once (tasks() is called per rank, per bound)

    # ---- structure ------------------------------------------------------------------
    @property
    def num_ranks(self) -> int:
        return self.skeleton.num_ranks

    @property
    def num_stages(self) -> int:
        return self.skeleton.num_stages

    @property
    def microbatches(self) -> range:
        return range(self.skeleton.microbatches_per_chain)

    def rank(self, stage: int) -> int:
        return self.skeleton.stage_to_rank[stage]

    def mirror_chains(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """DualPipe's two chains, stage k of one the mirror image of stage k of the other
        (rank r ↔ N−1−r, same model-stage costs, transfers and activations, one cap for all
        ranks), so every schedule's mirror image has the same makespan. None elsewhere."""
        sk = self.skeleton
        if self.placement != "dualpipe" or len(sk.chains) != 2:
            return None
        first, second = sk.chains
        assert [sk.model_stage[s] for s in first] == [sk.model_stage[s] for s in second]
        return first, second

    def tasks(self) -> list[Task]:
        return list(self.task_list)

    def tasks_of_rank(self, rank: int) -> list[Task]:
        return [t for t in self.task_list if self.skeleton.stage_to_rank[t[0]] == rank]

    def link_delay(self, producer_stage: int, consumer_stage: int, transfer_stage: int) -> int:
        return self.delay[transfer_stage] if self.rank(producer_stage) != self.rank(consumer_stage) else 0

    def predecessors(self, task: Task) -> list[tuple[Task, int]]:
        """(producer, delay) pairs: the simulator's dependency rules, in integer time."""
        s, kind, j = task
        if kind is Kind.F:
            prev = self.skeleton.prev_stage(s)
            return [] if prev is None else [((prev, Kind.F, j), self.link_delay(prev, s, prev))]
        if kind is Kind.I:
            deps = [((s, Kind.F, j), 0)]
            nxt = self.skeleton.next_stage(s)
            if nxt is not None:
                deps.append(((nxt, Kind.I, j), self.link_delay(nxt, s, s)))
            return deps
        return [((s, Kind.I, j), 0)]

    def duration(self, task: Task) -> int:
        return self.dur[task[1]][task[0]]

    def cell_duration(self, forward_stage: int, backward_stage: int, kind: CellKind) -> int:
        """An F&B cell with an I (FI) or a full B (FB): `PipelineCosts.cell_time`, the
        simulator's own figure (all-to-alls of one half hidden under the other's compute)."""
        return _to_int(_cell_seconds(self.costs, forward_stage, backward_stage, kind), self.time_scale)

    @property
    def cells_help(self) -> bool:
        """Cells can only pay off when they are shorter than their parts run back to back:
        an overlap gain below 1, or all-to-alls to hide."""
        return self.costs.overlap_ratio < 1.0 or self.costs.communicates

    def activation(self, stage: int) -> float:
        return self.costs.activation[stage]

    # ---- dependency graph (heads and tails: cpsat._longest_paths) ------------------------
    def successors(self) -> dict[Task, list[tuple[Task, int]]]:
        """(consumer, delay) pairs of every task: `predecessors` turned around."""
        succ: dict[Task, list[tuple[Task, int]]] = {t: [] for t in self.task_list}
        for t in self.task_list:
            for p, d in self.predecessors(t):
                succ[p].append((t, d))
        return succ

    def topological_tasks(self) -> list[Task]:
        order: list[Task] = []
        for chain in self.skeleton.chains:
            for j in self.microbatches:
                order += [(s, Kind.F, j) for s in chain]
                order += [(s, Kind.I, j) for s in reversed(chain)]
                order += [(s, Kind.W, j) for s in chain]
        return order

    def rank_load(self, rank: int) -> int:
        return sum(self.duration(t) for t in self.tasks_of_rank(rank))

    def smallest_feasible_cap(self) -> float:
        return smallest_feasible_cap(self.skeleton, self.costs)


def chain_activation(skeleton: Schedule, costs: PipelineCosts, chain: tuple[int, ...]) -> list[float]:
    """Activation one micro-batch of `chain` holds on each rank once all its F's have run
    (a V or loop rank holds both of its stages; a DualPipe rank one per chain)."""
    need = [0.0] * skeleton.num_ranks
    for s in chain:
        need[skeleton.stage_to_rank[s]] += costs.activation[s]
    return need


def smallest_feasible_cap(skeleton: Schedule, costs: PipelineCosts) -> float:
    """Running one micro-batch at a time is always possible; it needs, per rank, what one
    micro-batch of a chain holds there (`chain_activation`)."""
    return max(max(chain_activation(skeleton, costs, chain)) for chain in skeleton.chains)


def _cell_seconds(costs: PipelineCosts, forward_stage: int, backward_stage: int, kind: CellKind) -> float:
    back = "B" if kind is CellKind.FB else "I"
    return costs.cell_time(((forward_stage, "F"), (backward_stage, back)))


def _to_int(value: float, scale: int) -> int:
    return int(round(value * scale))


def build_problem(
    *,
    placement: str,
    num_ranks: int,
    num_microbatches: int,
    costs: PipelineCosts,
    memory_cap: float | None = None,
) -> Problem:
    skeleton = placement_skeleton(placement, num_ranks, num_microbatches)
    expected = num_model_stages(placement, num_ranks)
    if costs.num_stages != expected:
        raise ParplanError(
            f"placement {placement!r} on {num_ranks} ranks runs {expected} model stages but the costs "
            f"describe {costs.num_stages}; give one cost entry per model stage (dualpipe/chain: N, v/loop: 2N)"
        )
    staged = costs.restaged(skeleton.model_stage)
    if memory_cap is not None:
        need = smallest_feasible_cap(skeleton, staged)
        if not (isinstance(memory_cap, (int, float)) and memory_cap >= need - 1e-12):
            raise ParplanError(
                f"memory cap {memory_cap!r} is too small for placement {placement!r}: one micro-batch "
                f"alone holds {need:g} activation units on some rank (its stages of one chain on that "
                f"rank, from F to W). The smallest feasible cap is {need:g}; raise --memory-limit to at least that"
            )
    values = [*staged.forward, *staged.backward_input, *staged.backward_weight, *staged.transfer]
    scale, exact = _time_scale(values)
    if exact and (staged.overlap_ratio < 1.0 or staged.communicates):
        # cells must be whole too; when the tasks are not, rounding at the longest task's
        # resolution serves cells as well (a cell is at most its two tasks)
        for a in range(staged.num_stages):
            for b in range(staged.num_stages):
                values += [_cell_seconds(staged, a, b, kind) for kind in CellKind]
        scale, exact = _time_scale(values)
    notes = () if exact else (
        f"durations are not multiples of 1/1000; the solver rounds them to 1/{_RESOLUTION} of the "
        f"longest one and the reported makespan is the exact re-timed one",
    )
    return Problem(
        placement=placement,
        skeleton=skeleton,
        costs=staged,
        model_costs=costs,
        memory_cap=memory_cap,
        time_scale=scale,
        exact_times=exact,
        notes=notes,
        dur={
            Kind.F: tuple(_to_int(v, scale) for v in staged.forward),
            Kind.I: tuple(_to_int(v, scale) for v in staged.backward_input),
            Kind.W: tuple(_to_int(v, scale) for v in staged.backward_weight),
        },
        delay=tuple(_to_int(v, scale) for v in staged.transfer),
        task_list=tuple((s, k, j) for s in range(skeleton.num_stages) for j in range(skeleton.microbatches_per_chain)
                        for k in (Kind.F, Kind.I, Kind.W)),
    )


def check_param_cap(problem: Problem, param_cap: float | None) -> None:
    """Parameters are static: a placement either fits every rank or the cap is wrong."""
    if param_cap is None:
        return
    per_rank = [sum(problem.costs.params[s] for s in problem.skeleton.stages_of_rank(r)) for r in range(problem.num_ranks)]
    worst = max(range(problem.num_ranks), key=lambda r: per_rank[r])
    if per_rank[worst] > param_cap + 1e-9:
        raise ParplanError(
            f"parameter cap {param_cap:g} is too small for placement {problem.placement!r}: rank {worst} holds "
            f"{per_rank[worst]:g} parameter units ({', '.join(map(str, problem.skeleton.stages_of_rank(worst)))} "
            f"stages). Raise the cap to at least {per_rank[worst]:g} or choose another placement"
        )


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def is_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
