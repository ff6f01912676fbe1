"""The cost function: F, I, W seconds and memory of one operator on one GPU, and the time
of a tensor transfer over a link.

Formulas (docs/cost-model.md has the derivation and the fit):
* Every kernel pays a floor: `gemm_floor` for GEMMs, `launch_floor` for other kernels and
  `backward_floor` for a memory-bound op's autograd backward (allocating and accumulating
  gradients), all fitted on eager-mode measurements.
* GEMM (one per `GemmShape`): t = floor + max(flops' / (peak x e_gemm), bytes / (bw x e_mem)),
  flops' counting the M and N edges padded to 128-wide tiles; rows that are not 16-byte
  aligned (a vocab of 50257) fall off the fast kernels: e_gemm x e_unaligned. The constant floor is what
  makes small GEMMs far from peak (1024^3 reaches ~9 % of peak on an H100).
* SDPA: t = floor + flops / (peak x e_attn x min(1, d/128) x L/(L + L_half) [x e_causal / (1 + T_causal/L)]); the backward executes 2.5 x the
  forward FLOPs (FlashAttention recomputes QK^T), i.e. 1.25 x the algorithmic I FLOPs.
* memory-bound ops: t = floor + bytes / (bw x e_mem); a pure view costs 0.
* transfer: latency + bytes / (bandwidth x efficiency); when it runs beside compute, a
  fraction `transfer_contention` of the shorter of the two is not hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from parplan.cost.hardware import GPUProfile, LinkProfile
from parplan.trace.graph import GemmShape, OpKind, OpNode

__all__ = ["OpCost", "op_cost", "cost_key", "transfer_time", "overlapped_time", "gemm_time", "TILE"]

TILE = 128  # tensor-core tile edge: a GEMM's M and N are padded to it


@dataclass(frozen=True, kw_only=True, slots=True)
class OpCost:
    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    saved_bytes: int  # activation memory held from forward to backward
    param_bytes: int
    measured: bool = False

    @property
    def backward_s(self) -> float:
        return self.backward_input_s + self.backward_weight_s


def _pad(x: int) -> int:
    return TILE * math.ceil(x / TILE) if x > 0 else 0


def gemm_time(gemm: GemmShape, dtype: str, gpu: GPUProfile, *, element_bytes: int, floor: float | None = None) -> float:
    """One GEMM's time: launch floor plus the larger of its compute and memory times."""
    flops = 2 * gemm.batch * _pad(gemm.m) * _pad(gemm.n) * gemm.k
    traffic = gemm.batch * element_bytes * (gemm.m * gemm.k + gemm.k * gemm.n + gemm.m * gemm.n)
    eff = gpu.efficiency.gemm
    align = max(1, 16 // element_bytes)  # tensor-core GEMMs want 16-byte-aligned rows
    if gemm.k % align or gemm.n % align:
        eff *= gpu.efficiency.gemm_unaligned
    compute = flops / (gpu.peak(dtype) * eff)
    memory = traffic / (gpu.hbm_bandwidth * gpu.efficiency.memory)
    return (gpu.gemm_floor_s if floor is None else floor) + max(compute, memory)


def _memory_time(nbytes: int, gpu: GPUProfile, floor: float) -> float:
    if nbytes <= 0:
        return 0.0
    return floor + nbytes / (gpu.hbm_bandwidth * gpu.efficiency.memory)


def _dtype_and_size(node: OpNode) -> tuple[str, int]:
    for t in node.inputs:
        if t.dtype.startswith(("float", "bfloat")):
            return t.dtype, t.nbytes // max(math.prod(t.shape), 1)
    return "bfloat16", 2


def _matmul_cost(node: OpNode, gpu: GPUProfile) -> tuple[float, float, float]:
    dtype, size = _dtype_and_size(node)
    one = sum(gemm_time(g, dtype, gpu, element_bytes=size) for g in node.gemms)
    # I and W repeat the forward's GEMM shapes (transposed); their FLOP counts say how many
    # of them the backward runs (0, 1 or 2 operands needing a gradient).
    per_f = node.forward_flops or 1
    i = one * node.backward_input_flops / per_f if node.backward_input_flops else 0.0
    w = one * node.backward_weight_flops / per_f if node.backward_weight_flops else 0.0
    if node.backward_weight_bytes:
        w += node.backward_weight_bytes / (gpu.hbm_bandwidth * gpu.efficiency.memory)
    return one, i, w


def _attention_cost(node: OpNode, gpu: GPUProfile) -> tuple[float, float]:
    dtype, _ = _dtype_and_size(node)
    eff = gpu.efficiency
    shape = node.attention
    assert shape is not None, "an ATTENTION node always carries its shape"
    # FlashAttention tiles the head dim 128 wide, so a 64-wide head fills half a tile; short
    # key sequences leave the pipeline ramp exposed (seq / (seq + seq_half)).
    shape_eff = min(1.0, shape.head_dim / 128) * shape.kv_len / (shape.kv_len + gpu.attention_seq_half)
    if shape.causal:
        # the tiles straddling the diagonal do full work for half the pairs: a band of
        # `attention_causal_tile` keys per query row is wasted
        shape_eff *= eff.attention_causal / (1 + gpu.attention_causal_tile / shape.kv_len)
    peak = gpu.peak(dtype) * shape_eff
    f = gpu.launch_floor_s + node.forward_flops / (peak * eff.attention_forward)
    # FlashAttention's backward recomputes QK^T: 5 products where the algorithm needs 4
    i = 0.0
    if node.backward_input_flops:
        i = gpu.launch_floor_s + 1.25 * node.backward_input_flops / (peak * eff.attention_backward)
    return f, i


def cost_key(node: OpNode) -> tuple:
    """Every field of `node` that `op_cost` reads: operators with equal keys cost the same on
    one GPU. The signature alone is not enough — it leaves out what the trace adds per node,
    such as the gradient-accumulation bytes of a tensor read by several consumers and the
    parameter bytes attributed to a shared weight's first user."""
    return (node.signature, node.kind, node.inputs, node.forward_flops, node.backward_input_flops,
            node.backward_weight_flops, node.bytes_read, node.bytes_written, node.backward_input_bytes,
            node.backward_weight_bytes, node.saved_bytes, node.param_bytes, node.gemms, node.attention,
            node.requires_grad)


def op_cost(node: OpNode, gpu: GPUProfile, *, measured: Mapping[str, "OpCost"] | None = None) -> OpCost:
    """Predicted F, I, W seconds and memory of `node` on `gpu`.

    `measured` maps an operator signature to costs timed on this GPU (measured mode); a
    hit replaces the analytic prediction.
    """
    if measured is not None and node.signature in measured:
        hit = measured[node.signature]
        return OpCost(
            forward_s=hit.forward_s, backward_input_s=hit.backward_input_s,
            backward_weight_s=hit.backward_weight_s, saved_bytes=node.saved_bytes,
            param_bytes=node.param_bytes, measured=True,
        )
    if node.kind is OpKind.MATMUL:
        f, i, w = _matmul_cost(node, gpu)
    elif node.kind is OpKind.ATTENTION:
        f, i = _attention_cost(node, gpu)
        w = 0.0
    else:  # MEMORY, UNKNOWN and VIEW (a view's forward moves no bytes)
        f = _memory_time(node.bytes_read + node.bytes_written, gpu, gpu.launch_floor_s)
        i = _memory_time(node.backward_input_bytes, gpu, gpu.backward_floor_s)
        if node.kind is not OpKind.VIEW and node.requires_grad and i == 0.0:
            # an autograd node that moves no bytes (add passes dY through) still costs its bookkeeping
            i = gpu.backward_floor_s
        # a norm's dWeight runs under the same autograd node as its dX: one floor for both
        w = _memory_time(node.backward_weight_bytes, gpu, 0.0 if i else gpu.backward_floor_s)
    return OpCost(forward_s=f, backward_input_s=i, backward_weight_s=w,
                  saved_bytes=node.saved_bytes, param_bytes=node.param_bytes)


def transfer_time(nbytes: int | float, link: LinkProfile) -> float:
    """Seconds to send `nbytes` over `link`: latency + bytes / effective bandwidth."""
    if nbytes <= 0:
        return 0.0
    return link.latency_s + nbytes / (link.bandwidth * link.efficiency)


def overlapped_time(compute_s: float, transfer_s: float, gpu: GPUProfile) -> float:
    """Wall time of a transfer launched beside compute on the same GPU.

    Free overlap would give max(compute, transfer); the H100 measurement (a 1 GiB copy
    beside an 8192^3 GEMM finished only ~1 % sooner than serially) says most of the
    shorter one is not hidden: wall = max + contention x min.
    """
    c = gpu.efficiency.transfer_contention
    return max(compute_s, transfer_s) + c * min(compute_s, transfer_s)
