"""Parallel degrees on a cluster: pipeline ranks × data-parallel replicas × tensor-parallel groups,
and the expert-parallel degree folded into the data-parallel one (`parplan.planner.experts`).

Rank layout: tensor parallel innermost (inside a node, on NVLink), then pipeline, then data
parallel: global rank = (dp · PP + pp) · TP + tp. With expert parallelism the data-parallel
replicas come before the pipeline — global rank = (pp · DP + dp) · TP + tp — so an EP
group (consecutive replicas) fills nodes: its all-to-alls, far heavier than a pipeline
send, stay on NVLink as far as they can (DeepSeek-V3's PP16 × EP64 puts one pipeline stage's
64 EP ranks on 8 whole nodes the same way). The global batch is fixed — M micro-batches
of B sequences per step — so a plan with DP replicas gives each replica M / DP of them and
step times stay comparable across degrees. The gradient sync of each pipeline rank's
parameters and ZeRO's collectives run over the slowest link their replicas span
(`parplan.planner.sharding`).
"""

from __future__ import annotations

from dataclasses import dataclass

from parplan.errors import ParplanError
from parplan.cost.hardware import ClusterProfile, GPUProfile, LinkProfile

__all__ = ["Degrees", "candidate_degrees", "slowest"]


def slowest(gpus) -> GPUProfile:
    """The device a shared piece of work waits for (least bf16 peak)."""
    return min(gpus, key=lambda g: g.peak("bfloat16"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Degrees:
    pp: int
    dp: int
    tp: int
    ep: int = 1  # MoE experts sharded over ep of the dp replicas

    def __post_init__(self) -> None:
        if self.ep < 1 or self.dp % self.ep:
            raise ParplanError(f"expert-parallel degree {self.ep} must divide the data-parallel degree {self.dp}")

    def rank(self, dp: int, pp: int, tp: int = 0) -> int:
        if self.ep > 1:
            return (pp * self.dp + dp) * self.tp + tp
        return (dp * self.pp + pp) * self.tp + tp

    def gpu(self, cluster: ClusterProfile, pp: int) -> GPUProfile:
        """The slowest device holding pipeline position `pp` across replicas and TP peers."""
        return slowest(cluster.gpu(self.rank(d, pp, t)) for d in range(self.dp) for t in range(self.tp))

    def pp_link(self, cluster: ClusterProfile, a: int, b: int) -> LinkProfile:
        return cluster.link(self.rank(0, a), self.rank(0, b))

    def tp_link(self, cluster: ClusterProfile) -> LinkProfile | None:
        return cluster.link(self.rank(0, 0, 0), self.rank(0, 0, 1)) if self.tp > 1 else None

    def __str__(self) -> str:
        return f"PP{self.pp}×DP{self.dp}×TP{self.tp}" + (f"×EP{self.ep}" if self.ep > 1 else "")


def candidate_degrees(cluster: ClusterProfile, *, microbatches: int, max_pp: int,
                      fixed: Degrees | None = None, experts: tuple[int, ...] = (),
                      ep: int | None = None) -> list[Degrees]:
    """Every PP × DP × TP split whose replicas share the micro-batches evenly; with MoE
    layers of `experts` routed experts each, every EP degree dividing both DP and them
    (only `ep` when it is fixed)."""
    out = []
    for d in _pp_dp_tp(cluster, microbatches=microbatches, max_pp=max_pp, fixed=fixed):
        eps = expert_degrees(d.dp, experts) if ep is None else [ep] if d.dp % ep == 0 else []
        out += [Degrees(pp=d.pp, dp=d.dp, tp=d.tp, ep=e) for e in eps]
    return out


def _pp_dp_tp(cluster: ClusterProfile, *, microbatches: int, max_pp: int, fixed: Degrees | None) -> list[Degrees]:
    if fixed is not None:
        if microbatches % fixed.dp:
            raise ParplanError(
                f"--microbatches {microbatches} does not split evenly over the {fixed.dp} data-parallel replicas "
                f"of {fixed}: each replica runs the same number of micro-batches; use a multiple of {fixed.dp}, "
                f"or a larger --pp/--tp so fewer GPUs are left for data parallelism")
        return [fixed]
    total = cluster.num_gpus
    per_node = min(g.gpus_per_node for g in cluster.groups)
    out = []
    for tp in (1, 2, 4, 8):
        if tp > per_node or total % tp:
            continue
        for pp in range(1, total // tp + 1):
            if (total // tp) % pp or pp > max_pp:
                continue
            dp = total // (tp * pp)
            if microbatches % dp:
                continue
            out.append(Degrees(pp=pp, dp=dp, tp=tp))
    return out


def expert_degrees(dp: int, experts: tuple[int, ...]) -> list[int]:
    """EP degrees for `dp` replicas: 1, and each divisor of dp that divides every layer's experts."""
    if not experts:
        return [1]
    return [e for e in range(1, dp + 1) if dp % e == 0 and all(n % e == 0 for n in experts)]
