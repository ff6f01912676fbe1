"""Expert parallelism: a stage's parts around its MoE layers' all-to-alls, and their cost.

EP of degree e shards each MoE layer's routed experts over e ranks of one pipeline
position's data-parallel group (replicas d·e … d·e + e − 1; Megatron and torchtitan fold
EP into the data-parallel group the same way: attention keeps its DP × TP, experts get
EP × expert-DP). Every rank routes its own tokens; a dispatch all-to-all sends each token
to the ranks of its top-k experts, and a combine all-to-all brings the results back. At
the expected (balanced) load a rank's experts see as many token copies as without EP, so
expert compute is unchanged, while expert parameters, gradients and their optimizer
state divide by e (the optimizer state is then sharded over the e-times smaller
expert-DP group by ZeRO-1: its per-device share does not change).

All-to-all time, as DeepEP-style kernels move tokens (the cluster profile's all-to-all
bandwidths are DeepEP's): a token goes once to each other node holding one of its top-k
experts, over the network, and is forwarded there over NVLink; to the experts on its own
node's other GPUs it goes over NVLink. With top-k experts drawn evenly from the E (a node
holding c of the e EP ranks receives a token with probability 1 − (1 − c/e)^k), per token

  network copies = Σ over the other nodes of 1 − (1 − c/e)^k   (at most `route_nodes`,
                   DeepSeek-V3's node-limited routing, when the layer sets it)
  NVLink copies  = k × (c_own − 1) / e

each `hidden × bytes` (the forward dispatch in `dispatch_bytes` per element when set, FP8
in DeepSeek-V3; the combine and the backward's two in the model dtype). Both tiers run at
once, so time = latency + the slower of network bytes / its all-to-all bandwidth and
NVLink bytes / its own. Under TP the layer's tokens are split over the TP ranks before
dispatch (Megatron's sequence-parallel MoE), so each rank moves 1/TP of them. The
backward moves the same bytes as the forward (the combine's gradient is dispatched, the
dispatch's combined).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from parplan.cost.hardware import ClusterProfile, GPUProfile
from parplan.errors import ParplanError
from parplan.planner.costing import Coster
from parplan.planner.degrees import Degrees
from parplan.schedule.phases import COMM, COMPUTE, Segment, StagePhases
from parplan.trace.graph import TracedGraph
from parplan.trace.moe import MoELayer

__all__ = ["AllToAll", "a2a_seconds", "layer_a2a", "stage_phases", "check_ep", "expert_counts"]


def expert_counts(traced: TracedGraph) -> tuple[int, ...]:
    return tuple(sorted({layer.experts for layer in traced.moe_layers}))


def check_ep(traced: TracedGraph, ep: int, dp: int | None = None) -> None:
    """Bad --ep values: no MoE layer, or a degree that does not divide the experts or the DP group."""
    if ep == 1:
        return
    if not traced.moe_layers:
        raise ParplanError(f"--ep {ep}: the model has no MoE layer (no module with parplan_expected_load), so "
                           f"there are no experts to shard; drop --ep")
    bad = [n for n in expert_counts(traced) if n % ep]
    if bad:
        raise ParplanError(f"--ep {ep} does not divide the {bad[0]} routed experts of an MoE layer: every EP rank "
                           f"holds the same number of experts; use a divisor of {bad[0]}")
    if dp is not None and dp % ep:
        raise ParplanError(f"--ep {ep} does not divide the data-parallel degree {dp}: EP ranks are data-parallel "
                           f"replicas of one pipeline position; use a divisor of {dp}, or other --pp/--tp")


@dataclass(frozen=True, slots=True)
class AllToAll:
    """One MoE layer's all-to-alls for one micro-batch, seconds each."""

    dispatch: float  # the forward's dispatch
    other: float  # the forward's combine, and each of the backward's two

    @property
    def total(self) -> float:
        return self.dispatch + 3 * self.other


def a2a_seconds(layer: MoELayer, degrees: Degrees, cluster: ClusterProfile, pp_rank: int) -> AllToAll:
    """`layer`'s all-to-alls at pipeline position `pp_rank` (module docstring)."""
    e = degrees.ep
    if e <= 1:
        return AllToAll(0.0, 0.0)
    ranks = [degrees.rank(d, pp_rank) for d in range(e)]
    me, k = ranks[0], layer.top_k
    per_node: dict[int, list[int]] = {}
    for r in ranks:
        per_node.setdefault(cluster.placement(r)[1], []).append(r)
    own = per_node.pop(cluster.placement(me)[1])
    remote = sum(1 - (1 - len(members) / e) ** k for members in per_node.values())
    if layer.route_nodes:
        remote = min(remote, layer.route_nodes)
    tokens = layer.tokens / degrees.tp
    tiers = [(remote, cluster.inter_node, "inter_node")] if per_node else []
    if len(own) > 1:
        tiers.append((k * (len(own) - 1) / e, cluster.link(me, own[1]), "intra_node"))

    def seconds(element_bytes: int) -> float:
        slowest = 0.0
        for copies, link, tier in tiers:
            _require_a2a(cluster, link, tier, e)
            slowest = max(slowest, link.latency_s + tokens * copies * layer.hidden * element_bytes / link.a2a_bandwidth)
        return slowest

    return AllToAll(seconds(layer.dispatch_bytes or layer.dtype_bytes), seconds(layer.dtype_bytes))


def layer_a2a(traced: TracedGraph, degrees: Degrees, cluster: ClusterProfile, pp_rank: int) -> dict[str, AllToAll]:
    """Each MoE layer's all-to-alls at pipeline position `pp_rank`, by layer path (costed
    once per distinct layer shape: a model's MoE layers are mostly alike)."""
    by_shape: dict[tuple, AllToAll] = {}
    out = {}
    for layer in traced.moe_layers:
        shape = (layer.tokens, layer.top_k, layer.hidden, layer.dtype_bytes, layer.dispatch_bytes, layer.route_nodes)
        if shape not in by_shape:
            by_shape[shape] = a2a_seconds(layer, degrees, cluster, pp_rank)
        out[layer.path] = by_shape[shape]
    return out


def _require_a2a(cluster: ClusterProfile, link, tier: str, ep: int) -> None:
    if link.a2a_bandwidth is None:
        where = "across nodes" if tier == "inter_node" else "inside a node"
        raise ParplanError(
            f"cluster {cluster.name}: {tier} link {link.name} has no all_to_all_bandwidth, which EP {ep} needs "
            f"({where}); add all_to_all_bandwidth: {{value: ..., unit: B/s, source: ...}} to it (DeepEP reports "
            f"~155e9 over NVLink and ~45e9 over RDMA per H800)")


def stage_phases(ops: Iterable[str], coster: Coster, gpu: GPUProfile, a2a: dict[str, AllToAll],
                 mode: str = "train") -> StagePhases | None:
    """The parts of a stage running `ops` (program order) whose MoE layers' all-to-alls
    cost `a2a[path]`; None when it has no all-to-all (one stretch of compute)."""
    layers = {layer.path: layer for layer in coster.traced.moe_layers}
    first = {layer.routed_ops[0]: path for path, layer in layers.items() if path in a2a and a2a[path].total > 0}
    last = {layer.routed_ops[-1]: path for path, layer in layers.items() if path in a2a and a2a[path].total > 0}
    parts: list[list] = [[COMPUTE, "attention", 0.0, 0.0, 0.0]]  # lane, label, F, I, W
    for name in ops:
        if name in first:
            path = first[name]
            parts += [[COMM, f"dispatch {path}", a2a[path].dispatch, a2a[path].other, 0.0],
                      [COMPUTE, f"experts {path}", 0.0, 0.0, 0.0]]
        f, i, w, _, _ = coster.op(name, gpu)
        parts[-1][2] += f
        parts[-1][3] += i
        parts[-1][4] += w
        if name in last:
            path = last[name]
            parts += [[COMM, f"combine {path}", a2a[path].other, a2a[path].other, 0.0],
                      [COMPUTE, "attention", 0.0, 0.0, 0.0]]
    if not any(p[0] == COMM for p in parts):
        return None
    train = mode == "train"
    forward = tuple(Segment(lane, f, label) for lane, label, f, _, _ in parts)
    backward_input, backward_weight = [], []
    for lane, label, _, i, w in reversed(parts):
        backward_input.append(Segment(lane, i if train else 0.0, label))
        if lane == COMPUTE and w > 0 and train:
            backward_weight.append(Segment(COMPUTE, w, label, after=(-len(backward_input),)))
    return StagePhases(forward, tuple(backward_input), tuple(backward_weight))
