"""Summaries of a traced (and costed) graph as plain dicts: what the CLI prints or dumps."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict
from typing import Mapping

from parplan.trace.graph import TracedGraph

__all__ = ["trace_summary", "cost_profile", "graph_json"]


def trace_summary(traced: TracedGraph) -> dict:
    kinds = Counter(n.kind.value for n in traced.nodes)
    return {
        "capture": traced.capture,
        "capture_seconds": round(traced.capture_seconds, 3),
        "operators": len(traced.nodes),
        "operators_by_kind": dict(sorted(kinds.items())),
        "parameters": traced.param_count,
        "parameter_bytes": traced.param_bytes,
        "forward_flops": traced.forward_flops,
        "backward_input_flops": traced.backward_input_flops,
        "backward_weight_flops": traced.backward_weight_flops,
        "saved_activation_bytes": traced.saved_bytes(),
        "repeated_blocks": [
            {
                "module_class": b.module_class,
                "instances": len(b.instances),
                "first": b.instances[0],
                "ops_per_instance": b.ops_per_instance,
                "forward_flops_per_instance": b.forward_flops_per_instance,
            }
            for b in traced.blocks
        ],
        "unknown_operators": list(traced.unknown_ops),
        "unattributed_parameters": list(traced.unattributed_params),
        "notes": list(traced.notes),
    }


def _prefix(path: str, depth: int) -> str:
    return ".".join(path.split(".")[:depth]) if path else ""


def cost_profile(traced: TracedGraph, costs: Mapping[str, object], *, depth: int) -> dict:
    """Totals and per-module F/I/W seconds and activation bytes down to module depth `depth`.

    `costs` maps op name -> OpCost. A module's activation bytes count each saved storage once.
    """
    def entry(names: set[str], f: float, i: float, w: float, params: int) -> dict:
        return {
            "forward_s": f,
            "backward_input_s": i,
            "backward_weight_s": w,
            "activation_bytes": traced.saved_bytes(names),
            "param_bytes": params,
        }

    groups: dict[str, list[str]] = defaultdict(list)
    for n in traced.nodes:
        groups[_prefix(n.module_path, depth)].append(n.name)
    modules = {}
    for path, names in groups.items():
        cs = [costs[n] for n in names]
        modules[path or "<root>"] = entry(
            set(names),
            sum(c.forward_s for c in cs), sum(c.backward_input_s for c in cs),
            sum(c.backward_weight_s for c in cs), sum(c.param_bytes for c in cs),
        )
    all_costs = list(costs.values())
    total = entry(
        set(costs),
        sum(c.forward_s for c in all_costs), sum(c.backward_input_s for c in all_costs),
        sum(c.backward_weight_s for c in all_costs), sum(c.param_bytes for c in all_costs),
    )
    total["measured_ops"] = sum(1 for c in all_costs if getattr(c, "measured", False))
    return {"total": total, "modules": modules}


def graph_json(traced: TracedGraph) -> dict:
    """Node-link form of the DAG with every operator's fields (JSON-serialisable)."""
    nodes = []
    for n in traced.nodes:
        d = asdict(n)
        d["kind"] = n.kind.value
        nodes.append(d)
    edges = [{"source": u, "target": v, "bytes": data["bytes"]} for u, v, data in traced.graph.edges(data=True)]
    return {"summary": trace_summary(traced), "nodes": nodes, "edges": edges}
