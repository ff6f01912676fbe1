"""The cost function: F, I, W seconds and memory of one operator on one GPU, and the time
of a tensor transfer over a link.

Formulas (docs/cost-model.md has the derivation and the fit):
* Each phase (F, I, W) of an operator is a `Launch`: CPU time to dispatch it (`launch_floor`
  for a forward operator, `view_floor` for a view, `backward_floor` per autograd launch) and
  GPU time of its kernels. Back to back in a stage it costs max(host, device) (`op_cost`);
  timed alone from an idle GPU it costs host + device (`isolated_time`, what ops.jsonl holds).
* GEMM kernel (one per `GemmShape`): gemm_floor + max(flops' / (peak x e_gemm), bytes / (bw x e_mem)),
  flops' counting the M and N edges padded to 128-wide tiles; the backward's dgrad/wgrad
  GEMMs use e_gemm_backward; rows that are not 16-byte aligned (a vocab of 50257) fall off
  the fast kernels: e x e_unaligned.
* SDPA kernel: flops / (peak x e_attn x min(1, d/128) x L/(L + L_half) [x e_causal / (1 + T_causal/L)]);
  the backward executes 2.5 x the forward FLOPs (FlashAttention recomputes QK^T), i.e.
  1.25 x the algorithmic I FLOPs.
* memory-bound kernel: bytes / (bw x e_mem); a view has none (unless its backward moves bytes).
* transfer: latency + bytes / (bandwidth x efficiency); when it runs beside compute, a
  fraction `transfer_contention` of the shorter of the two is not hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from parplan.cost.hardware import GPUProfile, LinkProfile
from parplan.trace.graph import GemmShape, OpKind, OpNode

__all__ = [
    "OpCost", "Launch", "OpLaunches", "op_launches", "isolated_time", "op_cost", "cost_key", "transfer_time",
    "overlapped_time", "gemm_time", "TILE",
]

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


def gemm_time(gemm: GemmShape, dtype: str, gpu: GPUProfile, *, element_bytes: int, floor: float | None = None,
              backward: bool = False) -> float:
    """One GEMM kernel's GPU time: its fixed part plus the larger of its compute and memory times."""
    flops = 2 * gemm.batch * _pad(gemm.m) * _pad(gemm.n) * gemm.k
    traffic = gemm.batch * element_bytes * (gemm.m * gemm.k + gemm.k * gemm.n + gemm.m * gemm.n)
    eff = gpu.efficiency.gemm_backward if backward else gpu.efficiency.gemm
    align = max(1, 16 // element_bytes)  # tensor-core GEMMs want 16-byte-aligned rows
    if gemm.k % align or gemm.n % align:
        eff *= gpu.efficiency.gemm_unaligned
    compute = flops / (gpu.peak(dtype) * eff)
    memory = traffic / (gpu.hbm_bandwidth * gpu.efficiency.memory)
    return (gpu.gemm_floor_s if floor is None else floor) + max(compute, memory)


def _memory_time(nbytes: int, gpu: GPUProfile) -> float:
    return max(nbytes, 0) / (gpu.hbm_bandwidth * gpu.efficiency.memory)


def _dtype_and_size(node: OpNode) -> tuple[str, int]:
    for t in node.inputs:
        if t.dtype.startswith(("float", "bfloat")):
            return t.dtype, t.nbytes // max(math.prod(t.shape), 1)
    return "bfloat16", 2


def _matmul_device(node: OpNode, gpu: GPUProfile) -> tuple[float, float, float]:
    dtype, size = _dtype_and_size(node)
    one = sum(gemm_time(g, dtype, gpu, element_bytes=size) for g in node.gemms)
    # I and W repeat the forward's GEMM shapes (transposed, so on other kernels: their own
    # efficiency); their FLOP counts say how many of them the backward runs (0, 1 or 2
    # operands needing a gradient).
    back = sum(gemm_time(g, dtype, gpu, element_bytes=size, backward=True) for g in node.gemms)
    per_f = node.forward_flops or 1
    i = back * node.backward_input_flops / per_f if node.backward_input_flops else 0.0
    w = back * node.backward_weight_flops / per_f if node.backward_weight_flops else 0.0
    if node.backward_weight_flops or node.backward_weight_bytes:
        w += _memory_time(node.backward_weight_bytes, gpu)  # a bias gradient's reduction
    return one, i, w


def _attention_device(node: OpNode, gpu: GPUProfile) -> tuple[float, float]:
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
    f = node.forward_flops / (peak * eff.attention_forward)
    # FlashAttention's backward recomputes QK^T: 5 products where the algorithm needs 4
    i = 1.25 * node.backward_input_flops / (peak * eff.attention_backward)
    return f, i


@dataclass(frozen=True, kw_only=True, slots=True)
class Launch:
    """One phase of an operator as the two resources of eager PyTorch see it: `host_s` of CPU
    time to dispatch it (Python and the dispatcher in forward, an autograd node in backward)
    and `device_s` of GPU time for its kernels."""

    host_s: float
    device_s: float

    def __post_init__(self) -> None:
        assert self.host_s >= 0 and self.device_s >= 0, (self.host_s, self.device_s)

    @property
    def in_stream_s(self) -> float:
        # back to back, the CPU dispatches the next operator while the GPU runs this one:
        # whichever of the two is slower sets the pace
        return max(self.host_s, self.device_s)


@dataclass(frozen=True, kw_only=True, slots=True)
class OpLaunches:
    """An operator's F, I and W launches; None where the phase dispatches nothing (a view's
    forward, a frozen input's backward, an operator without weights' W)."""

    forward: Launch | None
    backward_input: Launch | None
    backward_weight: Launch | None


def op_launches(node: OpNode, gpu: GPUProfile) -> OpLaunches:
    """Host and device seconds of each phase of `node`: the one cost rule under `op_cost`
    (an operator in a stream) and the calibration's isolated probes (`isolated_time`)."""
    fwd_host, bwd_host = gpu.launch_floor_s, gpu.backward_floor_s
    if node.kind is OpKind.MATMUL:
        f, i, w = _matmul_device(node, gpu)
        has_i, has_w = bool(node.backward_input_flops), bool(node.backward_weight_flops or node.backward_weight_bytes)
        has_f = True
    elif node.kind is OpKind.ATTENTION:
        f, i = _attention_device(node, gpu)
        w, has_f, has_i, has_w = 0.0, True, bool(node.backward_input_flops), False
    else:  # MEMORY, UNKNOWN and VIEW: streaming kernels, or none (a view's forward)
        f = _memory_time(node.bytes_read + node.bytes_written, gpu)
        i = _memory_time(node.backward_input_bytes, gpu)
        w = _memory_time(node.backward_weight_bytes, gpu)
        has_f = node.bytes_read + node.bytes_written > 0
        if node.kind is OpKind.VIEW:
            # no kernel, but still a Python call through the dispatcher
            fwd_host, has_f = gpu.view_floor_s, gpu.view_floor_s > 0
        # an autograd node that moves no bytes (add passes dY through) still costs its dispatch;
        # a view's backward is a view of the gradient unless it moves bytes (expand sums,
        # split concatenates)
        has_i = node.backward_input_bytes > 0 or (node.requires_grad and node.kind is not OpKind.VIEW)
        has_w = node.backward_weight_bytes > 0  # a norm's dWeight: a separate reduction kernel
    return OpLaunches(
        forward=Launch(host_s=fwd_host, device_s=f) if has_f else None,
        backward_input=Launch(host_s=bwd_host, device_s=i) if has_i else None,
        # each parameter's gradient is its own kernel (a weight's wgrad GEMM, a bias's reduction)
        backward_weight=Launch(host_s=bwd_host * max(1, len(node.params)), device_s=w) if has_w else None,
    )


def isolated_time(launches: Iterable[Launch], *, start_s: float = 0.0) -> float:
    """Wall time of `launches` timed on their own from an idle GPU (how ops.jsonl was
    measured): the CPU spends `start_s` (an autograd call's start) and then each host
    time in turn; each kernel starts when it is dispatched and the GPU is free. One launch
    alone costs host + device: nothing hides its dispatch."""
    host = start_s
    device = 0.0
    for launch in launches:
        host += launch.host_s
        device = max(device, host) + launch.device_s
    return device


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
    launches = op_launches(node, gpu)
    f, i, w = (0.0 if p is None else p.in_stream_s
               for p in (launches.forward, launches.backward_input, launches.backward_weight))
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
