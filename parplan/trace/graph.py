"""The traced operator DAG: typed per-operator records and the graph that holds them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import networkx as nx

__all__ = ["OpKind", "TensorMeta", "AttentionShape", "GemmShape", "OpNode", "RepeatedBlock", "SharedParam",
           "TracedGraph"]


class OpKind(str, enum.Enum):
    MATMUL = "matmul"  # tensor-core work: linear, mm, bmm, conv; time from FLOPs
    ATTENTION = "attention"  # fused SDPA; time from its real (causal-aware) FLOPs
    MEMORY = "memory"  # pointwise, norms, reductions, copies; time from bytes moved
    VIEW = "view"  # metadata only (view, transpose, split...): free
    UNKNOWN = "unknown"  # no rule: costed from bytes and listed in a warning


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True, kw_only=True, slots=True)
class GemmShape:
    """One GEMM of the operator: `batch` independent [m, k] x [k, n] products."""

    m: int
    n: int
    k: int
    batch: int = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class AttentionShape:
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    value_dim: int
    causal: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class OpNode:
    """One operator. FLOPs count multiply-adds as 2 (tensor-core work only; memory-bound
    ops have 0 FLOPs and are costed from bytes). Backward splits into I (input gradient)
    and W (weight gradient); an op with no parameters has W = 0."""

    name: str
    op: str  # normalised op name, e.g. "linear", "scaled_dot_product_attention"
    target: str  # the captured target, e.g. "aten.linear.default"
    kind: OpKind
    module_path: str
    module_class: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    forward_flops: int = 0
    backward_input_flops: int = 0
    backward_weight_flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    backward_input_bytes: int = 0
    backward_weight_bytes: int = 0
    param_bytes: int = 0  # attributed to the first op using each parameter
    param_count: int = 0
    params: tuple[str, ...] = ()
    saved: tuple[tuple[str, int], ...] = ()  # (storage id, bytes) saved for backward
    gemms: tuple[GemmShape, ...] = ()
    attention: AttentionShape | None = None
    requires_grad: bool = False
    # per entry of `inputs`: (is a parameter, requires grad); measured mode replays with these
    input_flags: tuple[tuple[bool, bool], ...] = ()
    signature: str = ""
    block: int | None = None  # index into TracedGraph.blocks
    block_instance: str | None = None  # module path of the instance this op belongs to

    @property
    def backward_flops(self) -> int:
        return self.backward_input_flops + self.backward_weight_flops

    @property
    def saved_bytes(self) -> int:
        return sum(b for _, b in self.saved)


@dataclass(frozen=True, kw_only=True, slots=True)
class RepeatedBlock:
    """Structurally identical module instances (same class, op shapes and parameter shapes)."""

    module_class: str
    instances: tuple[str, ...]
    signature: str
    ops_per_instance: int
    forward_flops_per_instance: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SharedParam:
    """A parameter read by several operators (tied weights: GPT's `wte` and `lm_head`).

    It is attributed to its first reader (`OpNode.params`); a pipeline stage holding another
    reader but not the first holds a copy too, whose gradient is summed with the others'."""

    name: str  # canonical (first) name
    readers: tuple[str, ...]  # operator names in program order; readers[0] holds it in `params`
    param_bytes: int
    param_count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TracedGraph:
    graph: nx.DiGraph = field(repr=False)  # node name -> {"op": OpNode}; edges carry bytes
    nodes: tuple[OpNode, ...] = field(repr=False)  # topological (program) order
    capture: str  # "torch.export" or "torch.fx.symbolic_trace"
    capture_seconds: float
    param_count: int
    param_bytes: int
    unattributed_params: tuple[str, ...]
    unknown_ops: tuple[str, ...]
    blocks: tuple[RepeatedBlock, ...]
    notes: tuple[str, ...]  # assumptions a user must know (e.g. MoE expected loads)
    storage_bytes: dict[str, int] = field(repr=False, default_factory=dict)
    leaves: tuple[str, ...] = ()  # module paths of the leaf instances kept whole, program order
    # what capture emitted (Python warnings, torch log warnings): distinct "Category: first line"s and the total
    capture_warnings: tuple[str, ...] = ()
    capture_warning_count: int = 0
    moe_layers: tuple = ()  # parplan.trace.moe.MoELayer per MoE layer, program order
    shared_params: tuple[SharedParam, ...] = ()  # parameters read by two or more operators, program order
    # the captured torch.fx.GraphModule, kept so measured mode can replay operators
    program: object = field(repr=False, compare=False, default=None)

    def node(self, name: str) -> OpNode:
        return self.graph.nodes[name]["op"]

    @property
    def forward_flops(self) -> int:
        return sum(n.forward_flops for n in self.nodes)

    @property
    def backward_input_flops(self) -> int:
        return sum(n.backward_input_flops for n in self.nodes)

    @property
    def backward_weight_flops(self) -> int:
        return sum(n.backward_weight_flops for n in self.nodes)

    def saved_bytes(self, names: "set[str] | None" = None) -> int:
        """Activation bytes saved for backward, each storage counted once."""
        seen: dict[str, int] = {}
        for n in self.nodes:
            if names is None or n.name in names:
                for storage, nbytes in n.saved:
                    seen[storage] = nbytes
        return sum(seen.values())
