"""MoE layers found in a traced model: which operators are routed experts, and what a token carries.

Expert parallelism shards a layer's routed experts over ranks and moves tokens to them
with an all-to-all before the experts (dispatch) and back after them (combine). Costing
that needs, per MoE layer, the operators the all-to-alls enclose and the bytes a token
moves. A module says it is an MoE layer the way the zoo's `MoE` does, with an attribute
`parplan_expected_load = {"experts": E, "top_k": k, "capacity_factor": c}`; its routed
expert weights are its parameters (or a child's) whose first dimension is E. The routed
operators are those using such a weight and every operator of the module run between the
first and the last of them outside a child that holds none (the router and the shared
experts stay outside): the span the dispatch opens and the combine closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from parplan.trace.graph import OpNode

__all__ = ["MoELayer", "find_moe_layers"]


@dataclass(frozen=True, kw_only=True, slots=True)
class MoELayer:
    path: str  # module path of the MoE layer
    experts: int
    top_k: int
    capacity_factor: float
    tokens: int  # tokens entering the layer per traced batch (one micro-batch when planning)
    hidden: int
    dtype_bytes: int
    routed_ops: tuple[str, ...]  # program order; the dispatch precedes the first, the combine follows the last
    expert_params: tuple[str, ...]  # parameter names of the routed experts
    route_nodes: int = 0  # > 0: node-limited routing (a token's experts on at most this many nodes)
    dispatch_bytes: int = 0  # > 0: bytes per element of the forward dispatch (1: FP8); else dtype_bytes


def _expert_params(module: nn.Module, path: str, experts: int) -> tuple[str, ...]:
    """Stacked expert weights ([E, in, out]; a router's [E, hidden] is not one), or the
    parameters of a child `nn.ModuleList` of E experts."""
    prefix = f"{path}." if path else ""
    lists = [name for name, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m) == experts and name]
    return tuple(f"{prefix}{name}" for name, p in module.named_parameters()
                 if (p.dim() >= 3 and p.shape[0] == experts) or any(name.startswith(f"{m}.") for m in lists))


def _inside(node_path: str, path: str) -> bool:
    return node_path == path or node_path.startswith(f"{path}.") or not path


def _routed_span(nodes: Sequence[OpNode], path: str, params: set[str]) -> tuple[str, ...]:
    members = [n for n in nodes if _inside(n.module_path, path)]
    using = [k for k, n in enumerate(members) if params & set(n.params)]
    if not using:
        return ()
    holders = {p.rsplit(".", 1)[0] for p in params}  # modules owning expert weights
    span = members[using[0]:using[-1] + 1]
    return tuple(n.name for n in span
                 if params & set(n.params) or n.module_path == path or n.module_path in holders)


def find_moe_layers(model: nn.Module, nodes: Sequence[OpNode]) -> tuple[MoELayer, ...]:
    out = []
    for path, module in model.named_modules():
        load = getattr(module, "parplan_expected_load", None)
        if not load:
            continue
        experts = int(load["experts"])
        params = _expert_params(module, path, experts)
        routed = _routed_span(nodes, path, set(params))
        first = next((n for n in nodes if _inside(n.module_path, path) and n.inputs), None)
        if not routed or first is None:
            continue
        x = first.inputs[0]
        numel = math.prod(x.shape) if x.shape else 1
        out.append(MoELayer(path=path, experts=experts, top_k=int(load["top_k"]),
                            capacity_factor=float(load.get("capacity_factor", 1.0)),
                            tokens=numel // x.shape[-1] if x.shape else 1, hidden=x.shape[-1] if x.shape else 1,
                            dtype_bytes=max(1, x.nbytes // max(1, numel)), routed_ops=routed,
                            expert_params=params, route_nodes=int(load.get("route_nodes", 0)),
                            dispatch_bytes=int(load.get("dispatch_bytes", 0))))
    return tuple(out)
