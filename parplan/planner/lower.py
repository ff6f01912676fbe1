"""Lower level: a placed partition → per-stage costs → the best schedule on it.

For a partition of units into stages, build the `PipelineCosts` the schedule layer runs on
(seconds and bytes on each stage's device; boundary transfers over the link between the
two stages' ranks, with the cost model's contention folded into F and I), then time every
expert schedule that fits the placement family and, for the planner's own plan, the
lower-level MIP warm-started from the best of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from parplan.baselines import build_baseline
from parplan.cost.hardware import ClusterProfile, GPUProfile
from parplan.cost.model import transfer_time
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.plan import Techniques
from parplan.planner.costing import Coster
from parplan.planner.degrees import Degrees, slowest
from parplan.planner.experts import AllToAll, layer_a2a, stage_phases
from parplan.planner.memory import MemoryModel
from parplan.planner.tied import TiedCopies, tied_copies, tied_sync_s, with_copies
from parplan.planner.sharding import ShardCost, stage_collectives, step_sync_s
from parplan.planner.units import UnitGraph
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.placement import Family
from parplan.schedule.simulate import SimResult
from parplan.schedule.stage_costs import StageCost, placement_costs
from parplan.schedule.validate import validate

if TYPE_CHECKING:
    from parplan.mip import SolverReport

__all__ = ["Placed", "Evaluated", "place", "default_techniques", "stage_gpus", "evaluate_schedule", "forward_only_schedule",
           "baseline_schedules", "parplan_schedules"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Placed:
    """A partition on concrete devices: what every schedule on it shares."""

    units: UnitGraph = field(repr=False, compare=False)
    degrees: Degrees
    family: Family
    stage_of_unit: tuple[int, ...]
    costs: PipelineCosts  # per model stage, seconds and bytes
    static_bytes: tuple[float, ...]  # per pipeline rank: params + grads + optimizer
    dp_sync_s: float  # gradient sync after the pipeline drains
    gpu_names: tuple[str, ...]  # per pipeline rank
    techniques: Techniques
    recompute_s: tuple[float, ...]  # per model stage and micro-batch: forward rerun in I
    sharding_s: tuple[float, ...]  # per model stage and micro-batch: exposed ZeRO-2/3 collectives
    held_bytes: tuple[float, ...]  # per pipeline rank, in static_bytes: ZeRO-3 gathers, recompute working set

    def technique_cost(self, microbatches: int) -> dict:
        """What the techniques cost per step on the busiest pipeline rank: seconds of
        recomputation and of exposed ZeRO-2/3 collectives (each stage's seconds per
        micro-batch × the `microbatches` it runs, shared by the ranks holding it), and the
        bytes held once for them (in the static bytes)."""
        n = self.degrees.pp

        def busiest(per_stage: tuple[float, ...]) -> float:
            load = [0.0] * n
            for s, seconds in enumerate(per_stage):
                ranks = self.family.ranks_of_stage(s, n)
                for r in ranks:
                    load[r] += seconds * microbatches / len(ranks)
            return max(load, default=0.0)

        return {"recompute_s": busiest(self.recompute_s), "sharding_s": busiest(self.sharding_s),
                "sync_s": self.dp_sync_s, "held_bytes": max(self.held_bytes, default=0.0)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Evaluated:
    label: str  # "parplan" or the baseline schedule's name
    placed: Placed
    schedule: Schedule
    simulation: SimResult
    memory_cap: float
    solver: dict = field(default_factory=dict)  # how it was made: schedule, placement, degrees, refinement
    mip: "SolverReport | None" = None  # the lower-level MIP's report when the MIP made the schedule

    @property
    def step_time_s(self) -> float:
        return self.simulation.makespan + self.placed.dp_sync_s

    @property
    def peak_memory_bytes(self) -> tuple[float, ...]:
        sim = self.simulation
        return tuple(s + a for s, a in zip(self.placed.static_bytes, sim.peak_activation_per_rank))

    @property
    def fits(self) -> bool:
        return max(self.peak_memory_bytes) <= self.memory_cap

    @property
    def bubble_ratio(self) -> float:
        return self.simulation.bubble_ratio

    @property
    def latency_s(self) -> float:
        """When micro-batch 0 leaves the pipeline: the latency an inference request sees."""
        ends = self.simulation.ends()
        return max(t for (stage, kind, mb), t in ends.items() if mb == 0 and kind is Kind.F)

    @property
    def utilization(self) -> float:
        busy = sum(self.simulation.busy_per_rank)
        return busy / (self.simulation.num_ranks * self.step_time_s) if self.step_time_s > 0 else 0.0


def stage_gpus(cluster: ClusterProfile, degrees: Degrees, family: Family) -> list[GPUProfile]:
    """The device each model stage is costed on. DualPipe runs a model stage on two ranks:
    it is costed on the slower device of the pair."""
    gpus = [degrees.gpu(cluster, r) for r in range(degrees.pp)]
    return [slowest(gpus[r] for r in family.ranks_of_stage(s, degrees.pp))
            for s in range(family.num_stages(degrees.pp))]


def default_techniques(degrees: Degrees, coster: Coster) -> Techniques:
    """ZeRO-1 over the whole data-parallel group, with the Coster's recomputation and
    sequence parallelism: what parplan planned before it searched techniques."""
    return Techniques(zero=1, dp_shard=degrees.dp, dp_replicate=1, recompute=coster.recompute,
                      sequence_parallel=coster.sequence_parallel and degrees.tp > 1)


def place(units: UnitGraph, coster: Coster, cluster: ClusterProfile, degrees: Degrees, family: Family,
          stage_of_unit: list[int], memory: MemoryModel, techniques: Techniques | None = None) -> Placed:
    techniques = techniques or default_techniques(degrees, coster)
    assert techniques.recompute == coster.recompute and techniques.dp == degrees.dp, (techniques, degrees)
    n = degrees.pp
    num_stages = family.num_stages(n)
    rank_of = [family.rank_of_stage(s, n) for s in range(num_stages)]
    gpus = [degrees.gpu(cluster, r) for r in range(n)]
    device = stage_gpus(cluster, degrees, family)
    members: list[list[int]] = [[] for _ in range(num_stages)]
    for u, s in enumerate(stage_of_unit):
        members[s].append(u)
    cut = units.cut_bytes(list(stage_of_unit))
    stage_costs: list[StageCost] = []
    unit_costs = []
    shards: list[ShardCost] = []
    a2a = _a2a_by_rank(coster, cluster, degrees)
    stage_ops = [[op for u in members[s] for op in units.units[u].ops] for s in range(num_stages)]
    tied = tied_copies(coster.traced, stage_ops)  # tied weights: a copy on every stage reading one
    for s in range(num_stages):
        ops = stage_ops[s]
        c = with_copies(coster.ops(ops, device[s]), s, tied, tp=coster.tp)
        unit_costs.append(c)
        shard = stage_collectives(ops, coster, device[s], degrees, cluster, techniques, memory)
        shards.append(shard)
        xfer = 0.0
        if s + 1 < num_stages and rank_of[s] != rank_of[s + 1]:
            xfer = transfer_time(cut.get(s, 0), degrees.pp_link(cluster, rank_of[s], rank_of[s + 1]))
        phases = _phases(ops, coster, a2a, device[s], family.ranks_of_stage(s, n), memory.mode)
        comm_f = phases.total("forward") - c.forward_s if phases else 0.0
        comm_i = phases.total("backward_input") - c.backward_input_s if phases else 0.0
        if phases is not None and shard.total_s:
            phases = phases.padded(shard.forward_s, shard.backward_input_s)
        node = cluster.group(degrees.rank(0, rank_of[s]))  # what the runtime adds on the stage's rank
        stage_costs.append(StageCost(forward=c.forward_s + comm_f + shard.forward_s,
                                     backward_input=c.backward_input_s + comm_i + shard.backward_input_s,
                                     backward_weight=c.backward_weight_s, activation=c.activation_bytes,
                                     params=c.param_bytes, transfer=xfer, phases=phases,
                                     action_overhead=node.action_overhead_s, compute_share=node.compute_share))
    costs = placement_costs(stage_costs, transfer_contention=gpus[0].efficiency.transfer_contention,
                            comm_slowdown=cluster.a2a_compute_slowdown or 0.0, mode=memory.mode)
    static, held, dp_sync = _static_and_sync(unit_costs, shards, family, degrees, cluster, memory, techniques, tied)
    return Placed(units=units, degrees=degrees, family=family, stage_of_unit=tuple(stage_of_unit), costs=costs,
                  static_bytes=tuple(static), dp_sync_s=dp_sync, gpu_names=tuple(g.name for g in gpus),
                  techniques=techniques, recompute_s=tuple(c.recompute_s for c in unit_costs),
                  sharding_s=tuple(sh.total_s for sh in shards), held_bytes=tuple(held))


def _a2a_by_rank(coster: Coster, cluster: ClusterProfile, degrees: Degrees) -> list[dict[str, AllToAll]]:
    """Per pipeline rank, each MoE layer's all-to-alls; none without EP."""
    if degrees.ep == 1:
        return []
    return [layer_a2a(coster.traced, degrees, cluster, r) for r in range(degrees.pp)]


def _phases(ops, coster: Coster, a2a: list[dict[str, AllToAll]], gpu: GPUProfile, ranks, mode: str):
    """The stage's parts around its MoE all-to-alls (None without EP or MoE layers): each
    all-to-all costed on the slowest of the pipeline ranks holding the stage."""
    if not a2a or not coster.traced.moe_layers:
        return None
    slowest = {path: max((a2a[r][path] for r in ranks), key=lambda a: a.total) for path in a2a[0]}
    return stage_phases(ops, coster, gpu, slowest, mode)


def _static_and_sync(unit_costs, shards: list[ShardCost], family: Family, degrees: Degrees,
                     cluster: ClusterProfile, memory: MemoryModel, techniques: Techniques,
                     tied: tuple[TiedCopies, ...]) -> tuple[list[float], list[float], float]:
    """Per pipeline rank: parameters + gradients + optimizer state (ZeRO-sharded) and what
    it holds once (ZeRO-3's gathered layers, full recomputation's working set: the largest
    of its stages', as one stage runs at a time), that included; and the gradient sync
    after the pipeline drains: the tied weights' sums over the pipeline ranks holding their
    copies (parplan.planner.tied), then on the slowest rank `sharding.step_sync_s`."""
    n = degrees.pp
    static = [0.0] * n
    held = [0.0] * n
    dense = [0.0] * n
    experts = [0.0] * n
    for s, c in enumerate(unit_costs):
        for r in family.ranks_of_stage(s, n):
            static[r] += memory.static_bytes(c.param_bytes, c.param_count, techniques,
                                             expert_bytes=c.expert_param_bytes, expert_count=c.expert_param_count,
                                             ep=degrees.ep)
            held[r] = max(held[r], shards[s].buffer_bytes + c.working_bytes)
            dense[r] += (c.param_bytes - c.expert_param_bytes) * memory.grad_bytes_per_param_byte
            experts[r] += c.expert_param_bytes * memory.grad_bytes_per_param_byte
    static = [a + b for a, b in zip(static, held)]
    tied_s = tied_sync_s(tied, family, degrees, cluster, memory)
    if memory.mode != "train" or degrees.dp == 1:
        return static, held, tied_s
    return static, held, tied_s + max(step_sync_s(d, e, degrees, cluster, techniques, memory)
                                      for d, e in zip(dense, experts))


def forward_only_schedule(num_ranks: int, num_microbatches: int) -> Schedule:
    """Inference: each rank runs its stage's forwards in micro-batch order."""
    return Schedule(
        name="forward", stage_to_rank=tuple(range(num_ranks)), microbatches_per_chain=num_microbatches,
        orders=[[Action(r, Kind.F, j) for j in range(num_microbatches)] for r in range(num_ranks)],
    )


def evaluate_schedule(label: str, placed: Placed, schedule: Schedule, memory_cap: float,
                      solver: dict | None = None, mip: "SolverReport | None" = None) -> Evaluated:
    sim = validate(schedule, placed.costs)
    return Evaluated(label=label, placed=placed, schedule=schedule, simulation=sim, memory_cap=memory_cap,
                     solver=solver or {}, mip=mip)


def baseline_schedules(placed: Placed, microbatches: int, mode: str) -> list[tuple[str, Schedule]]:
    """Every expert schedule of the placement's family that accepts these sizes."""
    n = placed.degrees.pp
    if mode == "inference":
        return [("forward", forward_only_schedule(n, microbatches))] if placed.family.name == "chain" else []
    out = []
    for name in placed.family.schedules:
        try:
            out.append((name, build_baseline(name, n, microbatches)))
        except ParplanError:
            continue  # this size is outside the schedule's preconditions
    return out


def parplan_schedules(placed: Placed, microbatches: int, mode: str, memory_cap: float) -> list[tuple[str, Schedule]]:
    """What the planner times on its own placements: the expert schedules, and in training
    the MIP's memory-aware list schedule. Judged by the experts' orders alone, boundary
    moves and the upper MIP favour splits those orders suit, not the ones the lower-level
    MIP does best on; the list schedule ranks them as the MIP will (hetero llama-16L chain,
    docs/benchmarks.md: of six splits it picked the one the MIP makes 2.4 % faster)."""
    out = baseline_schedules(placed, microbatches, mode)
    if mode == "train":
        from parplan.mip import list_schedule

        listed = list_schedule(placement=placed.family.name, num_ranks=placed.degrees.pp,
                               num_microbatches=microbatches, costs=placed.costs,
                               memory_cap=memory_cap - max(placed.static_bytes))
        if listed is not None:
            out.append(("list", listed))
    return out
