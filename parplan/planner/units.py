"""Coarsening: the traced operator DAG → units, the pieces the upper level places.

A unit is a maximal run of operators (in program order) with the same key. At layer
granularity the key is the repeated-block instance an operator belongs to (`layers.3`), or
for operators outside repeated blocks their top-level module (`embed`, `lm_head`,
`vision`); at module granularity a block's children (`layers.3.attn`, `layers.3.mlp`);
at operator granularity every module that owns parameters (`layers.3.attn.q`, a norm, an
expert's GEMM) or runs an attention kernel (`layers.3.attn`) is its own unit. Other
operators — activations, residual adds, views — are glue: they join the unit before them,
which is where a runtime that splits the graph by module paths runs them too (at the
latest stage among their inputs). A leaf module instance (`TracedGraph.leaves`) is never
split: all its operators name it as their module and none of them is glue. A stage's *pieces* are the module paths of its units:
what `parplan.runtime` splits the exported graph by (longest path prefix wins). Because units are runs of the program order, the
unit graph is acyclic by construction, and a stage = a set of units closed under the
order stays acyclic too.

Repeated units share a tie key (the tuple of their operators' signatures). Costs are
memoised on more than the tie (`Coster` keys on every cost input, e.g. gradient
accumulation), so equal copies are costed once and look-alikes are not merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from parplan.trace.graph import OpKind, TracedGraph

__all__ = ["Granularity", "Unit", "UnitGraph", "coarsen", "param_owners", "stage_pieces"]


class Granularity(str, Enum):
    LAYER = "layer"  # one unit per repeated-block instance: what hand-written splits use
    MODULE = "module"  # block children (attention, MLP, norms) as separate units
    OPERATOR = "operator"  # every compute operator (GEMM, attention, norm, ...) its own unit


@dataclass(frozen=True, kw_only=True, slots=True)
class Unit:
    index: int
    key: str  # module path the unit stands for
    ops: tuple[str, ...]  # operator names, program order
    tie: tuple[str, ...]  # operator signatures: equal ties cost the same
    block_instance: str | None  # repeated-block instance this unit lies in


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitGraph:
    traced: TracedGraph
    granularity: Granularity
    units: tuple[Unit, ...]
    edges: dict[tuple[int, int], int]  # (u, v) → bytes of distinct tensors u sends to v
    producer_bytes: dict[str, int]  # operator → bytes of its output (for cut accounting)
    consumers: dict[str, tuple[int, ...]]  # operator → units that read its output

    def __len__(self) -> int:
        return len(self.units)

    @property
    def anchored(self) -> tuple[bool, ...]:
        """Per unit: it holds a module a stage can be run as (`param_owners`). A stage of
        unanchored units only would have no pieces, so no placement may make one."""
        owners = param_owners(self.traced)
        return tuple(any(self.traced.node(op).module_path in owners for op in u.ops) for u in self.units)

    def pieceless_stages(self, stage_of_unit: list[int]) -> list[int]:
        """Stages of `stage_of_unit` (0 … its largest) that hold no anchored unit."""
        held = {s for s, anchored in zip(stage_of_unit, self.anchored) if anchored}
        return [s for s in range(max(stage_of_unit) + 1) if s not in held]

    def cut_bytes(self, stage_of_unit: list[int]) -> dict[int, int]:
        """Bytes crossing each stage boundary s → s+1 when stages form a chain.

        A tensor made in stage a and read in stages up to b crosses boundaries a … b−1:
        a chain of stages passes it along (skip connections, the image in a two-tower).
        """
        unit_of = {op: u.index for u in self.units for op in u.ops}
        cut: dict[int, int] = {}
        for op, readers in self.consumers.items():
            a = stage_of_unit[unit_of[op]]
            b = max(stage_of_unit[v] for v in readers)
            for s in range(a, b):
                cut[s] = cut.get(s, 0) + self.producer_bytes[op]
        return cut


def _key(node, granularity: Granularity) -> str:
    path, instance = node.module_path, node.block_instance
    if granularity is Granularity.OPERATOR:
        return path
    if instance is not None:
        if granularity is Granularity.LAYER or path == instance:
            return instance
        child = path[len(instance) + 1:].split(".")[0]
        return f"{instance}.{child}"
    return path.split(".")[0]


def param_owners(traced: TracedGraph) -> set[str]:
    """Module paths a stage can be cut around: they read parameters or run attention."""
    return {n.module_path for n in traced.nodes if n.module_path and (n.params or n.kind is OpKind.ATTENTION)}


def stage_pieces(graph: "UnitGraph", stage_of_unit: list[int], num_stages: int) -> list[list[str]]:
    """Parameter-owning module paths per stage; a block instance wholly on one stage is named once."""
    owners = param_owners(graph.traced)
    paths: list[set[str]] = [set() for _ in range(num_stages)]
    for unit, stage in zip(graph.units, stage_of_unit):
        for op in unit.ops:
            path = graph.traced.node(op).module_path
            if path in owners:
                paths[stage].add(path)
    instances = {u.block_instance for u in graph.units if u.block_instance}
    out = []
    for s in range(num_stages):
        chosen = set(paths[s])
        for inst in instances:
            inside = {p for p in chosen if p == inst or p.startswith(inst + ".")}
            elsewhere = any(p == inst or p.startswith(inst + ".") for t in range(num_stages) if t != s for p in paths[t])
            if inside and not elsewhere:
                chosen = (chosen - inside) | {inst}
        # program order of each piece's first unit; a module and its child starting in the same
        # unit (an attention and its q projection) go by name: `chosen` is a set, and its
        # order changes with the interpreter's string hashing from run to run
        out.append(sorted(chosen, key=lambda p: (min(
            (k for k, u in enumerate(graph.units) if any(graph.traced.node(o).module_path.startswith(p) for o in u.ops)),
            default=0), p)))
    return out


def coarsen(traced: TracedGraph, granularity: Granularity = Granularity.OPERATOR) -> UnitGraph:
    owners = param_owners(traced)
    leaves = set(traced.leaves)
    runs: list[tuple[str, list[str], str | None]] = []
    layer_of_run: list[str] = []
    leading: list[str] = []  # pathless glue before any module (an arange of positions) joins the first unit
    for node in traced.nodes:
        if not node.module_path:
            (runs[-1][1] if runs else leading).append(node.name)  # pathless glue joins the unit before it
            continue
        layer = _key(node, Granularity.LAYER)
        if node.module_path in leaves:
            glue = False  # a leaf instance is kept whole: even a leading view starts its unit
        elif granularity is Granularity.OPERATOR:
            # a unit starts at a compute operator of a cut-able module, and never spans two
            # layer units, so operator units nest inside layer units
            heavy = bool(node.params) or node.kind in (OpKind.ATTENTION, OpKind.MATMUL)
            glue = not (heavy and node.module_path in owners) and bool(runs) and layer_of_run[-1] == layer
        else:
            glue = node.kind is OpKind.VIEW and bool(runs) and layer_of_run[-1] == layer
        if glue:
            runs[-1][1].append(node.name)
            continue
        key = _key(node, granularity)
        if runs and runs[-1][0] == key:
            runs[-1][1].append(node.name)
        else:
            runs.append((key, [*leading, node.name], node.block_instance))
            leading = []
            layer_of_run.append(layer)
    seen: dict[str, int] = {}
    units = []
    for index, (key, ops, instance) in enumerate(runs):
        count = seen.get(key, 0)
        seen[key] = count + 1
        units.append(Unit(
            index=index, key=key if count == 0 else f"{key}#{count + 1}", ops=tuple(ops),
            tie=tuple(traced.node(op).signature for op in ops), block_instance=instance,
        ))
    unit_of = {op: u.index for u in units for op in u.ops}
    edges: dict[tuple[int, int], int] = {}
    producer_bytes: dict[str, int] = {}
    consumers: dict[str, set[int]] = {}
    for src, dst, data in traced.graph.edges(data=True):
        u, v = unit_of[src], unit_of[dst]
        if u == v:
            continue
        assert u < v, "units are program-order runs, so edges point forward"
        nbytes = int(data.get("bytes", 0))
        producer_bytes[src] = max(producer_bytes.get(src, 0), nbytes)
        consumers.setdefault(src, set()).add(v)
    for src, readers in consumers.items():
        for v in readers:
            edge = (unit_of[src], v)
            edges[edge] = edges.get(edge, 0) + producer_bytes[src]
    return UnitGraph(
        traced=traced, granularity=granularity, units=tuple(units), edges=edges,
        producer_bytes=producer_bytes, consumers={op: tuple(sorted(vs)) for op, vs in consumers.items()},
    )
