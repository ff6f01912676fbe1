"""Unit costs on a device: the cost model summed over a unit's operators, once per tie.

Tensor parallelism inside a node (degree t) is modelled the Megatron way: a unit inside a
repeated block (a layer) and the vocabulary-sized head/embedding split their compute,
parameters and saved activations t ways and pay two all-reduces of the unit's output
activation per layer in forward and two in backward (ring: 2(t−1)/t × bytes / link).
That is an approximation — small GEMMs lose efficiency when split — stated in docs/planner.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from parplan.cost.hardware import GPUProfile, LinkProfile
from parplan.cost.model import op_cost, transfer_time
from parplan.planner.units import Unit, UnitGraph

__all__ = ["UnitCost", "UnitCoster"]


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitCost:
    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    activation_bytes: float
    param_bytes: float
    param_count: float

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_input_s + self.backward_weight_s


def ring_allreduce_s(nbytes: float, ranks: int, link: LinkProfile) -> float:
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (ranks - 1) * link.latency_s + 2 * (ranks - 1) / ranks * nbytes / (link.bandwidth * link.efficiency)


class UnitCoster:
    """Memoised unit costs: key (tie, GPU name, TP degree)."""

    def __init__(self, units: UnitGraph, *, tp: int = 1, tp_link: LinkProfile | None = None):
        self.units = units
        self.tp = tp
        self.tp_link = tp_link
        self._cache: dict[tuple, UnitCost] = {}
        self._layer_outputs = self._layer_last_units()

    def _layer_last_units(self) -> set[int]:
        # one all-reduce pair per layer: charge it to the layer's last unit
        last: dict[str, int] = {}
        for u in self.units.units:
            if u.block_instance is not None:
                last[u.block_instance] = u.index
        return set(last.values())

    def cost(self, unit: Unit, gpu: GPUProfile) -> UnitCost:
        key = (unit.tie, gpu.name, self.tp, unit.index in self._layer_outputs)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._compute(unit, gpu)
            self._cache[key] = hit
        return hit

    def _compute(self, unit: Unit, gpu: GPUProfile) -> UnitCost:
        traced = self.units.traced
        f = i = w = 0.0
        params = count = 0
        for name in unit.ops:
            node = traced.node(name)
            c = op_cost(node, gpu)
            f, i, w = f + c.forward_s, i + c.backward_input_s, w + c.backward_weight_s
            params += c.param_bytes
            count += node.param_count
        act = float(traced.saved_bytes(set(unit.ops)))
        t = self.tp
        if t > 1 and (unit.block_instance is not None or params > 0):
            f, i, w, act, params, count = f / t, i / t, w / t, act / t, params / t, count / t
            if unit.index in self._layer_outputs and self.tp_link is not None:
                out = traced.node(unit.ops[-1]).outputs
                nbytes = sum(o.nbytes for o in out)
                comm = 2 * ring_allreduce_s(nbytes, t, self.tp_link)
                f, i = f + comm, i + comm
        return UnitCost(forward_s=f, backward_input_s=i, backward_weight_s=w,
                        activation_bytes=act, param_bytes=float(params), param_count=float(count))


def boundary_transfer_s(nbytes: float, link: LinkProfile | None) -> float:
    return transfer_time(nbytes, link) if link is not None else 0.0
