"""Costs of operators, units and stages on a device: the cost model summed, memoised.

Every placement is costed operator by operator — a stage costs the sum of its operators
and holds the activations its operators save (each storage once) — so a layer-level and
an operator-level placement that put the same operators on the same stage cost the same.
The caches are keyed on every input that changes a cost (`cost_key`: the signature plus
what the trace adds per node, such as gradient-accumulation bytes), so repeated blocks are
costed once and two operators that merely share a signature are not.

Tensor parallelism inside a node (degree t) is modelled the Megatron way: operators inside
a repeated block (a layer) and operators holding parameters (the vocabulary-sized head and
embedding) split their time, parameters and saved activations t ways, and each layer pays
two all-reduces of its output activation in forward and two in backward (ring:
2(t−1)/t × bytes / link), charged to the layer's last operator. An approximation — small
GEMMs lose efficiency when split — stated in docs/planner.md.

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
from parplan.planner.units import Unit
from parplan.trace.graph import TracedGraph

__all__ = ["UnitCost", "Coster", "ring_allreduce_s"]


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

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_input_s + self.backward_weight_s


def ring_allreduce_s(nbytes: float, ranks: int, link: LinkProfile) -> float:
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (ranks - 1) * link.latency_s + 2 * (ranks - 1) / ranks * nbytes / (link.bandwidth * link.efficiency)


class Coster:
    """Memoised costs of operators and units, keyed on everything their costs read."""

    def __init__(self, traced: TracedGraph, *, tp: int = 1, tp_link: LinkProfile | None = None, ep: int = 1):
        self.traced = traced
        self.tp = tp
        self.tp_link = tp_link
        self.ep = ep
        self.routed = frozenset(op for layer in traced.moe_layers for op in layer.routed_ops)
        last: dict[str, str] = {}
        for node in traced.nodes:
            if node.block_instance is not None:
                last[node.block_instance] = node.name
        self._layer_last = set(last.values())
        self._ops: dict[tuple, tuple[float, float, float, float, float]] = {}
        self._units: dict[tuple, UnitCost] = {}
        self._key_of_op: dict[str, int] = {}  # operator → id of its cost inputs (equal inputs, one id)
        self._key_ids: dict[tuple, int] = {}
        self._key_of_unit: dict[tuple[str, ...], tuple] = {}

    def _op_key(self, name: str) -> int:
        """What one operator's cost depends on, besides the GPU: the cost model's inputs
        (`cost_key`) and, for tensor parallelism, whether it splits and pays the layer's
        all-reduces (parameter count, output bytes, last in its layer). Numbered once, so
        the caches hash small keys."""
        key = self._key_of_op.get(name)
        if key is None:
            node = self.traced.node(name)
            inputs = (cost_key(node), node.param_count, node.block_instance is not None,
                      sum(o.nbytes for o in node.outputs), name in self._layer_last, name in self.routed)
            key = self._key_of_op[name] = self._key_ids.setdefault(inputs, len(self._key_ids))
        return key

    def op(self, name: str, gpu: GPUProfile) -> tuple[float, float, float, float, float]:
        """(F s, I s, W s, parameter bytes, parameter count) of one operator on one device."""
        key = (self._op_key(name), gpu.name)
        hit = self._ops.get(key)
        if hit is None:
            node = self.traced.node(name)
            c = op_cost(node, gpu)
            f, i, w, pb, pc = c.forward_s, c.backward_input_s, c.backward_weight_s, c.param_bytes, node.param_count
            t = self.tp
            if t > 1 and (node.block_instance is not None or pb > 0):
                f, i, w, pb, pc = f / t, i / t, w / t, pb / t, pc / t
                if name in self._layer_last and self.tp_link is not None:
                    comm = 2 * ring_allreduce_s(sum(o.nbytes for o in node.outputs), t, self.tp_link)
                    f, i = f + comm, i + comm
            if self.ep > 1 and name in self.routed:
                pb, pc = pb / self.ep, pc / self.ep
            hit = (f, i, w, pb, pc)
            self._ops[key] = hit
        return hit

    def ops(self, names: Iterable[str], gpu: GPUProfile) -> UnitCost:
        names = list(names)
        f = i = w = pb = pc = epb = epc = 0.0
        for name in names:
            a, b, c, d, e = self.op(name, gpu)
            f, i, w, pb, pc = f + a, i + b, w + c, pb + d, pc + e
            if self.ep > 1 and name in self.routed:
                epb, epc = epb + d, epc + e
        act = self.traced.saved_bytes(set(names)) / (self.tp if self.tp > 1 else 1)
        return UnitCost(forward_s=f, backward_input_s=i, backward_weight_s=w, activation_bytes=float(act),
                        param_bytes=pb, param_count=pc, expert_param_bytes=epb, expert_param_count=epc)

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
                     for name in names for storage, nbytes in self.traced.node(name).saved)
