"""Data-parallel sharding — ZeRO 1/2/3 and FSDP's hybrid replicate × shard layout — costed
on a placed stage: the collectives each micro-batch pays, how much of them compute hides,
the gathered parameters ZeRO-3 holds, and the gradient sync after the pipeline drains.

A shard group is `dp_shard` consecutive data-parallel replicas (innermost, as torchtitan's
mesh puts dp_shard inside dp_replicate); `dp_replicate` such groups hold copies. Per
micro-batch, as FSDP runs with `reshard_after_forward` and a gradient reduce-scatter after
every backward (the memory-saving mode; torchtitan under PP instead keeps parameters
gathered across micro-batches, which this does not model):

* ZeRO-3: each layer's parameters are all-gathered before its forward and again before its
  backward, and its gradients reduce-scattered after its backward;
* ZeRO-2: each layer's gradients are reduce-scattered after its backward;
* ZeRO-0/1: nothing per micro-batch.

A stage's layers are its operators grouped by repeated-block instance (the operators
outside the blocks — embedding, head — in runs of their own). Prefetch overlaps the next
layer's collectives with this layer's compute: per F (program order) and per I (reverse)
the first gather is exposed, each layer then takes max(compute × (1 + σ), the next
layer's collectives) — σ the cluster's compute slowdown beside a collective (the SM share
communication kernels take, `all_to_all_compute_slowdown`) — and the last reduce-scatter
is exposed. The backward's collectives are charged to I: a layer's gather must precede its
input gradient, and the reduce-scatter is costed as if W ran with I (where a zero-bubble
schedule defers W, this over-counts what is hidden). ZeRO-3 also holds two gathered layers
at once (the one computing and the one prefetched). Collective times are the ring formulas
of `parplan.planner.costing` on the slowest link of the group.

After the pipeline drains: ZeRO-0 all-reduces the gradients over the dp replicas; ZeRO-1
reduce-scatters them over the shard group and all-gathers the updated parameters; ZeRO-2
all-gathers the parameters; with replicate groups the gradient shards are also
all-reduced over the dp_replicate copies (ZeRO-3: only that). Routed experts do the same
over their expert shard group (`memory.expert_shard`). Not overlapped with the pipeline
(conservative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from parplan.cost.hardware import ClusterProfile, GPUProfile, LinkProfile
from parplan.plan import Techniques
from parplan.planner.costing import Coster, ring_allgather_s, ring_allreduce_s, ring_reduce_scatter_s
from parplan.planner.degrees import Degrees
from parplan.planner.memory import MemoryModel, expert_shard

__all__ = ["ShardCost", "stage_collectives", "step_sync_s", "layers_of"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ShardCost:
    """What sharding adds to one stage: exposed seconds per F and per I, bytes held once."""

    forward_s: float = 0.0
    backward_input_s: float = 0.0
    buffer_bytes: float = 0.0  # ZeRO-3: the gathered parameters of two layers

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_input_s


def layers_of(ops: Iterable[str], coster: Coster) -> list[list[str]]:
    """`ops` (program order) in runs of one repeated-block instance (or of none)."""
    out: list[list[str]] = []
    last = object()
    for name in ops:
        block = coster.traced.node(name).block_instance
        if block != last or not out:
            out.append([])
            last = block
        out[-1].append(name)
    return out


def _group(degrees: Degrees, cluster: ClusterProfile, replicas: range) -> LinkProfile | None:
    """The slowest link from replica `replicas[0]` to the group's others (a ring's bottleneck)."""
    if len(replicas) <= 1:
        return None
    first = degrees.rank(replicas[0], 0)
    links = [cluster.link(first, degrees.rank(r, 0)) for r in replicas[1:]]
    return min(links, key=lambda link: link.bandwidth * link.efficiency)


def shard_link(degrees: Degrees, cluster: ClusterProfile, techniques: Techniques) -> LinkProfile | None:
    return _group(degrees, cluster, range(techniques.dp_shard))


def replicate_link(degrees: Degrees, cluster: ClusterProfile, techniques: Techniques) -> LinkProfile | None:
    return _group(degrees, cluster, range(0, degrees.dp, techniques.dp_shard))


def _exposed(compute: list[float], comm_before: float, comm_next: list[float], comm_after: float,
             slowdown: float) -> float:
    """Seconds beyond the compute: `comm_before` exposed, each part's compute beside the
    next part's collectives (`comm_next[k]`), `comm_after` exposed."""
    wall = comm_before + comm_after
    for c, nxt in zip(compute, comm_next):
        wall += c if nxt <= 0 else max(c * (1 + slowdown), nxt)
    return wall - sum(compute)


def stage_collectives(ops: list[str], coster: Coster, gpu: GPUProfile, degrees: Degrees, cluster: ClusterProfile,
                      techniques: Techniques, memory: MemoryModel) -> ShardCost:
    """ZeRO-2/3's per-micro-batch collectives on a stage running `ops` (module docstring)."""
    if techniques.zero < 2 or memory.mode != "train" or degrees.dp == 1:
        return ShardCost()
    link = shard_link(degrees, cluster, techniques)
    dense_shard, experts_shard = techniques.dp_shard, expert_shard(techniques, degrees.ep)
    if link is None and experts_shard <= 1:
        return ShardCost()
    f, i, gather, scatter, gathered = [], [], [], [], []
    grad = memory.grad_bytes_per_param_byte
    for layer in layers_of(ops, coster):
        lf = li = dense = expert = 0.0
        for name in layer:
            a, b, _, pb, _ = coster.op(name, gpu)
            lf, li = lf + a, li + b
            if name in coster.routed and degrees.ep > 1:
                expert += pb
            else:
                dense += pb
        f.append(lf)
        i.append(li)
        gathered.append(dense + expert)
        if link is None:
            gather.append(0.0)
            scatter.append(0.0)
            continue
        gather.append(ring_allgather_s(dense, dense_shard, link) + ring_allgather_s(expert, experts_shard, link))
        scatter.append(ring_reduce_scatter_s(dense * grad, dense_shard, link)
                       + ring_reduce_scatter_s(expert * grad, experts_shard, link))
    sigma = cluster.a2a_compute_slowdown or 0.0
    n = len(f)
    zero3 = techniques.zero == 3
    fwd = _exposed(f, gather[0], gather[1:] + [0.0], 0.0, sigma) if zero3 else 0.0
    # backward runs the layers in reverse: beside layer k, the next one's gather and the
    # reduce-scatter of the one before it
    rev_i, rev_g, rev_s = i[::-1], gather[::-1], scatter[::-1]
    beside = [(rev_g[k + 1] if zero3 and k + 1 < n else 0.0) + (rev_s[k - 1] if k > 0 else 0.0) for k in range(n)]
    bwd = _exposed(rev_i, rev_g[0] if zero3 else 0.0, beside, rev_s[-1], sigma)
    top = sorted(gathered, reverse=True)[:2]
    return ShardCost(forward_s=fwd, backward_input_s=bwd, buffer_bytes=sum(top) if zero3 else 0.0)


def step_sync_s(dense_grad: float, expert_grad: float, degrees: Degrees, cluster: ClusterProfile,
                techniques: Techniques, memory: MemoryModel) -> float:
    """The gradient sync of one pipeline rank's gradients (bytes, unsharded) after the
    pipeline drains, dense then routed experts over one link (module docstring)."""
    if memory.mode != "train" or degrees.dp == 1:
        return 0.0
    params = 1 / memory.grad_bytes_per_param_byte if memory.grad_bytes_per_param_byte else 0.0
    shard, replicate = shard_link(degrees, cluster, techniques), replicate_link(degrees, cluster, techniques)
    total = 0.0
    expert_dp = degrees.dp // degrees.ep
    for nbytes, group, size in ((dense_grad, techniques.dp_shard, degrees.dp),
                                (expert_grad, expert_shard(techniques, degrees.ep), expert_dp)):
        copies = size // group
        if techniques.zero == 0:
            total += ring_allreduce_s(nbytes, size, _group(degrees, cluster, range(size)) or shard or replicate)
            continue
        if shard is not None and group > 1:
            if techniques.zero == 1:
                total += ring_reduce_scatter_s(nbytes, group, shard)
            if techniques.zero <= 2:
                total += ring_allgather_s(nbytes * params, group, shard)
        if replicate is not None and copies > 1:
            total += ring_allreduce_s(nbytes / group, copies, replicate)
    return total
