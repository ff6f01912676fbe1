"""Costs of operators, units and stages on a device: the cost model summed, memoised.

Every placement is costed operator by operator — a stage costs the sum of its operators
and holds the activations its operators save (each storage once) — so a layer-level and
an operator-level placement that put the same operators on the same stage cost the same.
The caches are keyed on every input that changes a cost (`cost_key`: the signature plus
what the trace adds per node, such as gradient-accumulation bytes), so repeated blocks are
costed once and two operators that merely share a signature are not.

Tensor parallelism inside a node (degree t) is modelled the Megatron way, with sequence
parallelism by default (below): operators inside a repeated block (a layer) and operators
holding parameters (the vocabulary-sized head and
embedding) split their time, parameters and saved activations t ways, and each layer pays
two all-reduces of its output activation in forward and two in backward (ring:
2(t−1)/t × bytes / link), charged to the layer's last operator. An approximation — small
GEMMs lose efficiency when split — stated in docs/planner.md.

Sequence parallelism (Megatron, with TP): the norms, dropouts and residual adds between a
layer's row- and column-parallel GEMMs split over the sequence, so every operator of a
layer splits t ways in time and saved activations, and the two all-reduces become a
reduce-scatter and an all-gather each, of the same total volume (the same time on a
ring). Without it (`sequence_parallel=False`) only the operators TP shards by hidden
dimension split — the GEMMs holding parameters and what runs between a column-parallel
GEMM and the row-parallel one after it (found on the traced DAG, `_tp_sharded`) — and the
rest of a layer runs, and saves its tensors, whole on every TP rank
(Korthikanti et al. 2022: 10·sbh + 24·sbh/t per GPT layer, not 34·sbh/t).

Activation recomputation (`recompute`): "selective" recomputes each layer's attention core
(the fused attention operator, or an unfused score matmul → softmax → dropout → matmul
chain): its own saved tensors are dropped, its inputs kept, and its forward runs again
before the backward (I grows by its F). "full" keeps only each layer's input (the tensors
that enter the layer from outside) and reruns the whole layer's forward before its
backward (I grows by the layer's F, its TP collectives included); while it runs, one
layer's ordinary saved tensors are held again (`UnitCost.working_bytes`, once per stage).
Operators outside the repeated layers (embedding, head) are not recomputed.

Expert parallelism (degree e, `parplan.planner.experts`) leaves a routed expert's time as
it is (balanced load: a rank's experts see as many tokens as without EP) and divides its
parameters by e; `UnitCost.expert_param_count` says how many of a unit's parameters are
such, for the optimizer's sharding. The all-to-alls are parts of the stage, not of an op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from parplan.cost.hardware import GPUProfile, LinkProfile
from parplan.cost.model import cost_key, op_cost
from parplan.errors import ParplanError
from parplan.plan import RECOMPUTE_MODES
from parplan.planner.units import Unit
from parplan.trace.graph import OpKind, TracedGraph

__all__ = ["UnitCost", "Coster", "ring_allreduce_s", "ring_reduce_scatter_s", "ring_allgather_s", "producer"]


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitCost:
    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    activation_bytes: float
    param_bytes: float
    param_count: float  # held on this device
    expert_param_bytes: float = 0.0  # the routed-expert share of param_bytes (EP-sharded)
    expert_param_count: float = 0.0
    recompute_s: float = 0.0  # the part of backward_input_s that reruns forward (activation recomputation)
    working_bytes: float = 0.0  # held once while a layer is recomputed (full recomputation), not per micro-batch

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_input_s + self.backward_weight_s


def ring_reduce_scatter_s(nbytes: float, ranks: int, link: LinkProfile) -> float:
    """Ring reduce-scatter of `nbytes` (the whole tensor) over `ranks`: ranks − 1 steps,
    each moving 1/ranks of it. The all-gather of the result is the same time."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return (ranks - 1) * link.latency_s + (ranks - 1) / ranks * nbytes / (link.bandwidth * link.efficiency)


def ring_allgather_s(nbytes: float, ranks: int, link: LinkProfile) -> float:
    """Ring all-gather into `nbytes` (the whole tensor) over `ranks`."""
    return ring_reduce_scatter_s(nbytes, ranks, link)


def ring_allreduce_s(nbytes: float, ranks: int, link: LinkProfile) -> float:
    """Ring all-reduce = reduce-scatter + all-gather (also ZeRO's pair of the same volume)."""
    return ring_reduce_scatter_s(nbytes, ranks, link) + ring_allgather_s(nbytes, ranks, link)


def producer(storage: str) -> str:
    """The operator whose output a saved storage is (`linear`, `linear.1`, `sdpa:lse`)."""
    return storage.split(":")[0].split(".")[0]


class Coster:
    """Memoised costs of operators and units, keyed on everything their costs read. One
    Coster per (degrees, recomputation, sequence parallelism): its caches hold one setting."""

    def __init__(self, traced: TracedGraph, *, tp: int = 1, tp_link: LinkProfile | None = None, ep: int = 1,
                 recompute: str = "none", sequence_parallel: bool = True):
        if recompute not in RECOMPUTE_MODES:
            raise ParplanError(f"recompute {recompute!r} is unknown; use {', '.join(RECOMPUTE_MODES)}")
        self.traced = traced
        self.tp = tp
        self.tp_link = tp_link
        self.ep = ep
        self.recompute = recompute
        self.sequence_parallel = sequence_parallel
        self.routed = frozenset(op for layer in traced.moe_layers for op in layer.routed_ops)
        last: dict[str, str] = {}
        for node in traced.nodes:
            if node.block_instance is not None:
                last[node.block_instance] = node.name
        self._layer_last = set(last.values())
        self.core = attention_core(traced)
        self._sharded = self._tp_sharded() if tp > 1 and not sequence_parallel else None
        self._ops: dict[tuple, tuple[float, float, float, float, float]] = {}
        self._units: dict[tuple, UnitCost] = {}
        self._key_of_op: dict[str, int] = {}  # operator → id of its cost inputs (equal inputs, one id)
        self._key_ids: dict[tuple, int] = {}
        self._key_of_unit: dict[tuple[str, ...], tuple] = {}

    def _tp_sharded(self) -> frozenset[str]:
        """Without sequence parallelism: the operators of a layer TP splits — its GEMMs with
        parameters, and whatever reads a column-parallel GEMM's output up to the
        row-parallel GEMM (Megatron's pattern: a GEMM reading an unsharded tensor is
        column-parallel, one reading a sharded tensor row-parallel, its output whole)."""
        sharded_out: set[str] = set()
        split: set[str] = set()
        graph = self.traced.graph
        previous = None
        for node in self.traced.nodes:
            if node.block_instance is None:
                previous = None
                continue
            sources = list(graph.predecessors(node.name))
            # the DAG has no edge from an element of a multi-output operator (split, chunk):
            # such a reader follows the operator just before it in program order
            reads_sharded = any(p in sharded_out for p in sources) if sources else previous in sharded_out
            previous = node.name
            if node.param_count > 0 and node.kind is OpKind.MATMUL:
                split.add(node.name)
                if not reads_sharded:
                    sharded_out.add(node.name)  # column-parallel: its output is split
            elif reads_sharded:
                split.add(node.name)
                sharded_out.add(node.name)
        return frozenset(split)

    def _splits(self, node) -> bool:
        """Does TP split this operator's time and parameters?"""
        if self.tp == 1:
            return False
        if node.block_instance is None:
            return node.param_bytes > 0  # the vocabulary-sized head and embedding
        return self._sharded is None or node.name in self._sharded

    def _recomputed(self, node) -> bool:
        if self.recompute == "full":
            return node.block_instance is not None
        return self.recompute == "selective" and node.name in self.core

    def _op_key(self, name: str) -> int:
        """What one operator's cost depends on, besides the GPU: the cost model's inputs
        (`cost_key`) and, for tensor parallelism, whether it splits and pays the layer's
        all-reduces (parameter count, output bytes, last in its layer), and whether it is
        recomputed. Numbered once, so the caches hash small keys."""
        key = self._key_of_op.get(name)
        if key is None:
            node = self.traced.node(name)
            inputs = (cost_key(node), node.param_count, node.block_instance is not None,
                      sum(o.nbytes for o in node.outputs), name in self._layer_last, name in self.routed,
                      self._splits(node), self._recomputed(node))
            key = self._key_of_op[name] = self._key_ids.setdefault(inputs, len(self._key_ids))
        return key

    def op(self, name: str, gpu: GPUProfile) -> tuple[float, float, float, float, float]:
        """(F s, I s, W s, parameter bytes, parameter count) of one operator on one device;
        I includes the rerun of its forward when it is recomputed."""
        key = (self._op_key(name), gpu.name)
        hit = self._ops.get(key)
        if hit is None:
            node = self.traced.node(name)
            c = op_cost(node, gpu)
            f, i, w, pb, pc = c.forward_s, c.backward_input_s, c.backward_weight_s, c.param_bytes, node.param_count
            t = self.tp
            if self._splits(node):
                f, i, w, pb, pc = f / t, i / t, w / t, pb / t, pc / t
            if t > 1 and name in self._layer_last and self.tp_link is not None:
                # two all-reduces (with SP: reduce-scatter + all-gather pairs) per direction
                comm = 2 * ring_allreduce_s(sum(o.nbytes for o in node.outputs), t, self.tp_link)
                f, i = f + comm, i + comm
            if self._recomputed(node):
                i += f
            if self.ep > 1 and name in self.routed:
                pb, pc = pb / self.ep, pc / self.ep
            hit = (f, i, w, pb, pc)
            self._ops[key] = hit
        return hit

    def ops(self, names: Iterable[str], gpu: GPUProfile) -> UnitCost:
        names = list(names)
        f = i = w = pb = pc = epb = epc = redo = 0.0
        for name in names:
            a, b, c, d, e = self.op(name, gpu)
            f, i, w, pb, pc = f + a, i + b, w + c, pb + d, pc + e
            if self._recomputed(self.traced.node(name)):
                redo += a
            if self.ep > 1 and name in self.routed:
                epb, epc = epb + d, epc + e
        act, working = self.activation_bytes(names)
        return UnitCost(forward_s=f, backward_input_s=i, backward_weight_s=w, activation_bytes=act,
                        param_bytes=pb, param_count=pc, expert_param_bytes=epb, expert_param_count=epc,
                        recompute_s=redo, working_bytes=working)

    def activation_bytes(self, names: Iterable[str]) -> tuple[float, float]:
        """(bytes held per micro-batch from F to backward, bytes held once while a layer is
        recomputed) for these operators, each storage once (module docstring)."""
        names = list(names)
        saved = self._saved(names, self.recompute)
        working = 0.0
        if self.recompute == "full":
            layers: dict[str, list[str]] = {}
            for name in names:
                block = self.traced.node(name).block_instance
                if block is not None:
                    layers.setdefault(block, []).append(name)
            working = max((sum(self._saved(ops, "none").values()) for ops in layers.values()), default=0.0)
        return float(sum(saved.values())), float(working)

    def _saved(self, names: list[str], recompute: str) -> dict[str, float]:
        """storage → bytes on one TP rank, saved for backward by `names` under `recompute`."""
        inside = set(names)
        out: dict[str, float] = {}
        for name in names:
            node = self.traced.node(name)
            if recompute == "full" and node.block_instance is not None:
                entries = self._layer_inputs(node)
            elif recompute == "selective" and name in self.core:
                entries = [(s, b) for s, b in node.saved if producer(s) not in self.core]
            else:
                entries = list(node.saved)
            for storage, nbytes in entries:
                out[storage] = nbytes / self._activation_split(node, storage, inside)
        return out

    def _layer_inputs(self, node) -> list[tuple[str, int]]:
        """The saved tensors of a layer's operator that full recomputation still keeps: those
        produced outside its layer (the layer's input, the checkpoint)."""
        block = node.block_instance
        out = []
        for storage, nbytes in node.saved:
            source = producer(storage)
            if source not in self.traced.graph or self.traced.node(source).block_instance != block:
                out.append((storage, nbytes))
        return out

    def _activation_split(self, node, storage: str, inside: set[str]) -> int:
        """How many ways TP splits a saved tensor: t for what sharded operators produce (with
        SP every operator of a layer; outside the layers, as the operator's time splits)."""
        t = self.tp
        if t == 1:
            return 1
        if self._sharded is None or node.block_instance is None:
            return t
        source = producer(storage)
        return t if source in self._sharded else 1

    def unit(self, unit: Unit, gpu: GPUProfile) -> UnitCost:
        inputs = self._key_of_unit.get(unit.ops)
        if inputs is None:
            inputs = (tuple(self._op_key(op) for op in unit.ops), self._saved_pattern(unit.ops))
            self._key_of_unit[unit.ops] = inputs
        key = (inputs, gpu.name)
        hit = self._units.get(key)
        if hit is None:
            hit = self.ops(unit.ops, gpu)
            self._units[key] = hit
        return hit

    def _saved_pattern(self, names: tuple[str, ...]) -> tuple:
        """The unit's saved activations with storages numbered by first use: equal patterns
        hold equal bytes (a storage saved by two operators counts once)."""
        ids: dict[str, int] = {}
        return tuple((ids.setdefault(storage, len(ids)), nbytes)
                     for storage, nbytes in self._saved(list(names), self.recompute).items())


def attention_core(traced: TracedGraph) -> frozenset[str]:
    """The operators selective recomputation reruns (Megatron's core attention, torchtitan's
    op-level SAC on attention): fused attention operators, and an unfused chain of each
    softmax inside a layer — the parameter-free matmul producing its scores, dropouts after
    it and the parameter-free matmul applying it to the values."""
    graph = traced.graph
    core: set[str] = set()
    for node in traced.nodes:
        if node.kind is OpKind.ATTENTION:
            core.add(node.name)
        elif "softmax" in node.op and node.block_instance is not None:
            core.add(node.name)
            for p in graph.predecessors(node.name):
                if traced.node(p).kind is OpKind.MATMUL and traced.node(p).param_count == 0:
                    core.add(p)
            frontier = list(graph.successors(node.name))
            while frontier:
                nxt = traced.node(frontier.pop())
                if "dropout" in nxt.op:
                    core.add(nxt.name)
                    frontier += list(graph.successors(nxt.name))
                elif nxt.kind is OpKind.MATMUL and nxt.param_count == 0:
                    core.add(nxt.name)
    return frozenset(core)
