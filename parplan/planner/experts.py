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

All-to-all time: latency + bytes / bandwidth, bytes = tokens × top_k × hidden × dtype ×
(e − 1)/e per direction (`MoELayer.a2a_bytes`); the share going to peers on the same node
moves over NVLink at the intra-node all-to-all bandwidth, the rest over the network at
the inter-node one, both at once, so the slower share sets the time. Under TP the layer's
tokens are split over the TP ranks before dispatch (Megatron's sequence-parallel MoE), so
each rank moves 1/TP of them. The backward moves the same bytes (the combine's gradient is
dispatched, the dispatch's combined).
"""

from __future__ import annotations

from typing import Iterable

from parplan.cost.hardware import ClusterProfile, GPUProfile
from parplan.errors import ParplanError
from parplan.planner.costing import Coster
from parplan.planner.degrees import Degrees
from parplan.schedule.phases import COMM, COMPUTE, Segment, StagePhases
from parplan.trace.graph import TracedGraph
from parplan.trace.moe import MoELayer

__all__ = ["a2a_seconds", "stage_phases", "check_ep", "expert_counts"]


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


def a2a_seconds(layer: MoELayer, degrees: Degrees, cluster: ClusterProfile, pp_rank: int) -> float:
    """One dispatch (or combine) all-to-all of `layer` for one micro-batch at pipeline position `pp_rank`."""
    e = degrees.ep
    if e <= 1:
        return 0.0
    ranks = [degrees.rank(d, pp_rank) for d in range(e)]
    me = ranks[0]
    node = cluster.placement(me)[1]
    near = [r for r in ranks[1:] if cluster.placement(r)[1] == node]
    per_peer = layer.a2a_bytes(e) / (e - 1) / degrees.tp
    seconds = 0.0
    for peers, far in ((len(near), False), (e - 1 - len(near), True)):
        if not peers:
            continue
        link = cluster.inter_node if far else cluster.link(me, near[0])
        if link.a2a_bandwidth is None:
            tier = "inter_node" if far else "intra_node"
            raise ParplanError(
                f"cluster {cluster.name}: {tier} link {link.name} has no all_to_all_bandwidth, which EP {e} "
                f"needs ({'across nodes' if far else 'inside a node'}); add all_to_all_bandwidth: "
                f"{{value: B/s, unit: B/s, source: ...}} to it (DeepEP reports ~155e9 NVLink, ~45e9 RDMA per H800)")
        seconds = max(seconds, link.latency_s + peers * per_peer / link.a2a_bandwidth)
    return seconds


def stage_phases(ops: Iterable[str], coster: Coster, gpu: GPUProfile, a2a: dict[str, float],
                 mode: str = "train") -> StagePhases | None:
    """The parts of a stage running `ops` (program order) whose MoE layers cost `a2a[path]`
    seconds per all-to-all; None when it has no all-to-all (one stretch of compute)."""
    layers = {layer.path: layer for layer in coster.traced.moe_layers}
    first = {layer.routed_ops[0]: path for path, layer in layers.items() if a2a.get(path, 0) > 0}
    last = {layer.routed_ops[-1]: path for path, layer in layers.items() if a2a.get(path, 0) > 0}
    parts: list[list] = [[COMPUTE, "attention", 0.0, 0.0, 0.0]]  # lane, label, F, I, W
    for name in ops:
        if name in first:
            path = first[name]
            parts += [[COMM, f"dispatch {path}", a2a[path], a2a[path], 0.0], [COMPUTE, f"experts {path}", 0.0, 0.0, 0.0]]
        f, i, w, _, _ = coster.op(name, gpu)
        parts[-1][2] += f
        parts[-1][3] += i
        parts[-1][4] += w
        if name in last:
            path = last[name]
            parts += [[COMM, f"combine {path}", a2a[path], a2a[path], 0.0], [COMPUTE, "attention", 0.0, 0.0, 0.0]]
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
