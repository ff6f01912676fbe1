"""Per-operator FLOP, byte and saved-for-backward rules.

One rule per normalised op name (`linear`, `scaled_dot_product_attention`, `gelu`...). Both
capture paths (torch.export's ATen graph and torch.fx's module/function graph) are
normalised to these names, so the rules exist once.

Conventions (why they are what they are):
* FLOPs are tensor-core work only (a multiply-add counts 2), the convention of MFU and of
  `torch.utils.flop_counter`; memory-bound ops have an explicit rule with 0 FLOPs and are
  costed from bytes moved. An op with no rule at all is UNKNOWN and reported, never
  silently treated as free.
* SDPA counts its real work: the two [q, kv] products over unmasked pairs only, so a
  causal square mask gives (s+1)/2s of the full count; its backward I = 2 x forward (dQ,
  dK, dV: four products). FlashAttention's recompute of QK^T is a hardware cost, added by
  the cost model, not a FLOP of the algorithm.
* A matmul operand that is a parameter contributes its gradient to W; an activation
  operand that requires grad contributes to I. Hence a linear's dgrad is I, its wgrad W.
* `_grouped_mm` (MoE experts: tokens sorted by expert, `offs` the group ends) counts every
  row of its input once: 2 x M x k x n for M tokens, exact whatever the split between
  groups, since each row belongs to one group (offs values are unknown on meta tensors).
* An in-place op (`mul_`, `masked_fill_`...) has no rule of its own: it is costed by the
  rule of its out-of-place op.
* SDPA with an explicit mask counts the pairs the mask allows: capture evaluates a mask built
  from constants (`scalars["mask_pairs"]`: causal, sliding window), else reads its structure
  (`scalars["mask_causal"]`: built from `tril`/`triu` or comparing `arange`s); see
  `parplan.trace.masks`. An eager attention's two matmuls (`scalars["attention_product"]`)
  count the same pairs; their GEMM shapes stay full, as their kernels compute every pair.
* MoE experts cost balanced load whatever the routing: `_grouped_mm` takes every routed
  (token, expert) row once; transformers' `batched_mm` form gathers one weight per row and
  runs a `bmm` over the tokens x top_k rows; both are exact on meta tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from parplan.trace.graph import AttentionShape, GemmShape, OpKind, TensorMeta

__all__ = ["ArgTensor", "OpCall", "RuleResult", "apply_rule", "VIEW_OPS", "has_rule"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ArgTensor:
    meta: TensorMeta
    storage: str  # id of the underlying storage (views share their base's)
    storage_bytes: int
    param: str | None  # parameter name when this tensor is (a view of) a parameter
    requires_grad: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class OpCall:
    name: str  # node name
    op: str
    tensors: tuple[ArgTensor, ...]
    outputs: tuple[TensorMeta, ...]
    scalars: dict = field(default_factory=dict)
    output_contiguous: bool = True
    input_contiguous: bool = True


@dataclass(kw_only=True, slots=True)
class RuleResult:
    kind: OpKind
    forward_flops: int = 0
    backward_input_flops: int = 0
    backward_weight_flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    backward_input_bytes: int = 0
    backward_weight_bytes: int = 0
    saved: list[tuple[str, int]] = field(default_factory=list)
    gemms: tuple[GemmShape, ...] = ()
    attention: AttentionShape | None = None


def _numel(meta: TensorMeta) -> int:
    return math.prod(meta.shape)


def _is_float(meta: TensorMeta) -> bool:
    return meta.dtype.startswith(("float", "bfloat", "complex"))


def _save(t: ArgTensor) -> list[tuple[str, int]]:
    # Parameters are held anyway (they are param bytes, not activations).
    return [] if t.param is not None else [(t.storage, t.storage_bytes)]


def _io_bytes(call: OpCall) -> tuple[int, int]:
    return sum(t.meta.nbytes for t in call.tensors), sum(o.nbytes for o in call.outputs)


def _grad_inputs(call: OpCall) -> list[ArgTensor]:
    return [t for t in call.tensors if t.requires_grad and _is_float(t.meta)]


def _split_grad_bytes(call: OpCall, per_input: Callable[[ArgTensor], int]) -> tuple[int, int]:
    """Backward bytes split into I (activation inputs) and W (parameter inputs)."""
    i_bytes = sum(per_input(t) for t in _grad_inputs(call) if t.param is None)
    w_bytes = sum(per_input(t) for t in _grad_inputs(call) if t.param is not None)
    return i_bytes, w_bytes


# ---- matmul class -------------------------------------------------------------------------


def _matmul_result(call: OpCall, a: ArgTensor, b: ArgTensor, gemm: GemmShape) -> RuleResult:
    flops = 2 * gemm.batch * gemm.m * gemm.n * gemm.k
    i_flops = w_flops = 0
    saved: list[tuple[str, int]] = []
    for operand, other in ((a, b), (b, a)):
        if operand.requires_grad:
            if operand.param is None:
                i_flops += flops
            else:
                w_flops += flops
            saved += _save(other)  # d(operand) needs the other operand
    read, written = _io_bytes(call)
    return RuleResult(
        kind=OpKind.MATMUL,
        forward_flops=flops,
        backward_input_flops=i_flops,
        backward_weight_flops=w_flops,
        bytes_read=read,
        bytes_written=written,
        saved=saved,
        gemms=(gemm,),
    )


def _linear(call: OpCall) -> RuleResult:
    x, w = call.tensors[0], call.tensors[1]
    k = x.meta.shape[-1]
    m = _numel(x.meta) // max(k, 1)
    result = _matmul_result(call, x, w, GemmShape(m=m, n=w.meta.shape[0], k=k))
    if len(call.tensors) > 2 and call.tensors[2].requires_grad:
        # bias gradient: a reduction of dY over tokens (memory traffic, no tensor-core work)
        result.backward_weight_bytes += call.outputs[0].nbytes + call.tensors[2].meta.nbytes
    return result


def _mm(call: OpCall) -> RuleResult:
    result = _plain_mm(call)
    product = call.scalars.get("attention_product")
    if product is not None:  # one of an eager attention's products: its allowed pairs only
        a = call.tensors[-2].meta.shape
        q_len, kv_len = call.outputs[0].shape[-2:] if product == "scores" else a[-2:]
        share = _allowed_pairs(call, q_len, kv_len, causal=bool(call.scalars.get("mask_causal"))) / (q_len * kv_len)
        result.forward_flops = round(result.forward_flops * share)
        result.backward_input_flops = round(result.backward_input_flops * share)
        result.backward_weight_flops = round(result.backward_weight_flops * share)
    return result


def _allowed_pairs(call: OpCall, q_len: int, kv_len: int, *, causal: bool) -> int:
    """(query, key) pairs an attention computes: the evaluated mask's count when capture ran
    the mask (`mask_pairs`), else the causal count (torch's top-left aligned mask: query i
    sees keys 0..i) or every pair."""
    if "mask_pairs" in call.scalars:
        return int(call.scalars["mask_pairs"])
    if causal:
        return sum(min(i + 1, kv_len) for i in range(q_len)) if q_len != kv_len else q_len * (q_len + 1) // 2
    return q_len * kv_len


def _plain_mm(call: OpCall) -> RuleResult:
    # mm / matmul / bmm / addmm / baddbmm: the last two tensors are the product's operands
    a, b = call.tensors[-2], call.tensors[-1]
    sa, sb = a.meta.shape, b.meta.shape
    if len(sa) == 1 or len(sb) == 1:
        m, k = (1, sa[0]) if len(sa) == 1 else (math.prod(sa[:-1]), sa[-1])
        n = 1 if len(sb) == 1 else sb[-1]
        return _matmul_result(call, a, b, GemmShape(m=m, n=n, k=k))
    k, n = sa[-1], sb[-1]
    if len(sb) == 2:  # [.., m, k] x [k, n]: fold leading dims into m
        return _matmul_result(call, a, b, GemmShape(m=math.prod(sa[:-1]), n=n, k=k))
    out = call.outputs[0].shape
    return _matmul_result(call, a, b, GemmShape(m=sa[-2], n=n, k=k, batch=math.prod(out[:-2])))


def _grouped_mm(call: OpCall) -> RuleResult:
    """torch._grouped_mm(a, b, offs): 2-D x 3-D ([M, k] x [G, k, n], row groups), 3-D x 3-D
    (batched), 3-D x 2-D ([G, m, k] x [k, N], column groups) or 2-D x 2-D ([m, K] x [K, n],
    groups along K: the weight-gradient form, one [m, n] product per group)."""
    a, b = call.tensors[0], call.tensors[1]
    sa, sb = a.meta.shape, b.meta.shape
    if len(sa) == 2 and len(sb) == 3:
        gemm = GemmShape(m=sa[0], n=sb[-1], k=sa[-1])
    elif len(sa) == 3 and len(sb) == 3:
        gemm = GemmShape(m=sa[1], n=sb[-1], k=sa[-1], batch=sa[0])
    elif len(sa) == 3:
        gemm = GemmShape(m=sa[1], n=sb[-1], k=sa[-1])
    else:
        gemm = GemmShape(m=sa[0], n=sb[-1], k=sa[-1])
    return _matmul_result(call, a, b, gemm)


def _einsum_letters(equation: str, call: OpCall) -> tuple[list[str], str]:
    """The operands' index letters and the output's; an ellipsis is spelt as upper-case
    letters, right-aligned as broadcasting aligns dims."""
    lhs, arrow, out = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    hidden = [len(t.meta.shape) - len(term.replace("...", "")) for t, term in zip(call.tensors, terms)]
    ellipsis = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:max(hidden, default=0)]
    terms = [term.replace("...", ellipsis[len(ellipsis) - h:]) for term, h in zip(terms, hidden)]
    if not arrow:  # implicit output: the ellipsis, then the letters seen once, sorted
        joined = "".join(terms)
        out = "..." + "".join(sorted(c for c in set(joined) if joined.count(c) == 1 and c.islower()))
    return terms, out.replace("...", ellipsis)


def _einsum(call: OpCall) -> RuleResult:
    """A two-operand einsum is one GEMM: letters in both operands and the output are its batch,
    in one operand and the output its m or n, the rest its k; other operand counts are
    costed from bytes (a one-operand einsum is a permute or reduction)."""
    equation = call.scalars.get("equation")
    if not isinstance(equation, str) or len(call.tensors) != 2:
        return _reduction(call)
    (ta, tb), out = _einsum_letters(equation, call)
    a, b = call.tensors
    size = {c: d for term, t in ((ta, a), (tb, b)) for c, d in zip(term, t.meta.shape)}

    def prod(letters: set[str]) -> int:
        return math.prod(size[c] for c in letters)

    batch = set(ta) & set(tb) & set(out)
    m, n = (set(ta) - set(tb)) & set(out), (set(tb) - set(ta)) & set(out)
    k = set(size) - batch - m - n
    return _matmul_result(call, a, b, GemmShape(m=prod(m), n=prod(n), k=prod(k), batch=prod(batch)))


def _conv(call: OpCall) -> RuleResult:
    x, w = call.tensors[0], call.tensors[1]
    out = call.outputs[0]
    per_output = math.prod(w.meta.shape[1:])  # C_in / groups x kernel window
    gemm = GemmShape(m=_numel(out) // out.shape[1], n=out.shape[1], k=per_output)
    result = _matmul_result(call, x, w, gemm)
    if len(call.tensors) > 2 and call.tensors[2].requires_grad:
        result.backward_weight_bytes += out.nbytes
    return result


def _sdpa(call: OpCall) -> RuleResult:
    q, k, v = call.tensors[:3]
    *lead, q_len, d = q.meta.shape
    kv_len, dv = k.meta.shape[-2], v.meta.shape[-1]
    heads = lead[-1] if lead else 1
    batch = math.prod(lead[:-1]) if len(lead) > 1 else 1
    has_mask = len(call.tensors) > 3
    causal = bool(call.scalars.get("mask_causal", False)) if has_mask else bool(call.scalars.get("is_causal", False))
    pairs = _allowed_pairs(call, q_len, kv_len, causal=causal)
    flops = 2 * batch * heads * pairs * (d + dv)
    grads = [t for t in (q, k, v) if t.requires_grad]
    read, written = _io_bytes(call)
    # saved: q, k, v, output and the fp32 log-sum-exp per query row
    lse = batch * heads * q_len * 4
    saved = [s for t in (q, k, v) for s in _save(t)] + [(f"{call.name}:out", written), (f"{call.name}:lse", lse)]
    shape = AttentionShape(
        batch=batch, heads=heads, kv_heads=k.meta.shape[-3] if k.meta.shape[:-2] else 1,
        q_len=q_len, kv_len=kv_len, head_dim=d, value_dim=dv, causal=causal,
    )
    return RuleResult(
        kind=OpKind.ATTENTION,
        forward_flops=flops,
        backward_input_flops=2 * flops if grads else 0,
        bytes_read=read,
        bytes_written=written,
        backward_input_bytes=(read + 2 * written) if grads else 0,
        saved=saved,
        attention=shape,
    )


# ---- memory-bound class ---------------------------------------------------------------------


def _memory(saves: str, grad_reads: int = 1) -> Callable[[OpCall], RuleResult]:
    """A memory-bound op. `saves`: which tensors autograd keeps ("inputs", "output", "none").
    Backward per differentiable input: read dY (+ `grad_reads - 1` saved tensors), write dX."""

    def rule(call: OpCall) -> RuleResult:
        read, written = _io_bytes(call)
        out = call.outputs[0].nbytes if call.outputs else 0
        i_b, w_b = _split_grad_bytes(call, lambda t: out * grad_reads + t.meta.nbytes)
        if saves == "inputs":
            saved = [s for t in call.tensors if _is_float(t.meta) for s in _save(t)]
        elif saves == "output":
            saved = [(f"{call.name}:out", written)]
        else:
            saved = []
        if not _grad_inputs(call):
            saved = []
        return RuleResult(
            kind=OpKind.MEMORY, bytes_read=read, bytes_written=written,
            backward_input_bytes=i_b, backward_weight_bytes=w_b, saved=saved,
        )

    return rule


def _passthrough(call: OpCall) -> RuleResult:
    """add/sub: dY flows to each input unchanged; only a broadcast input needs a reduction."""
    read, written = _io_bytes(call)
    out = call.outputs[0]
    i_b, w_b = _split_grad_bytes(call, lambda t: 0 if t.meta.shape == out.shape else out.nbytes + t.meta.nbytes)
    return RuleResult(kind=OpKind.MEMORY, bytes_read=read, bytes_written=written,
                      backward_input_bytes=i_b, backward_weight_bytes=w_b)


def _norm(extra_stats: int) -> Callable[[OpCall], RuleResult]:
    """layer_norm / rms_norm: saves x and per-row fp32 statistics; dX reads dY, x, writes dX;
    dWeight (and dBias) re-read dY and x in a separate reduction."""

    def rule(call: OpCall) -> RuleResult:
        x = call.tensors[0]
        read, written = _io_bytes(call)
        rows = _numel(x.meta) // max(x.meta.shape[-1], 1)
        stats = rows * 4 * extra_stats
        has_param = any(t.param is not None and t.requires_grad for t in call.tensors[1:])
        grads = bool(_grad_inputs(call))
        return RuleResult(
            kind=OpKind.MEMORY,
            bytes_read=read,
            bytes_written=written + stats,
            backward_input_bytes=3 * x.meta.nbytes if x.requires_grad else 0,
            backward_weight_bytes=2 * x.meta.nbytes if has_param else 0,
            saved=(_save(x) + [(f"{call.name}:stats", stats)]) if grads else [],
        )

    return rule


def _embedding(call: OpCall) -> RuleResult:
    weight, idx = call.tensors[0], call.tensors[1]
    out = call.outputs[0].nbytes
    return RuleResult(
        kind=OpKind.MEMORY,
        bytes_read=out + idx.meta.nbytes,
        bytes_written=out,
        # dense embedding backward: zero the full weight gradient, then scatter-add dY rows
        backward_weight_bytes=(weight.meta.nbytes + 2 * out) if weight.requires_grad else 0,
        saved=_save(idx) if weight.requires_grad else [],
    )


def _dropout(call: OpCall) -> RuleResult:
    x = call.tensors[0]
    p = float(call.scalars.get("p", 0.0))
    train = bool(call.scalars.get("train", True))
    read, written = _io_bytes(call)
    if p == 0.0 or not train:
        return RuleResult(kind=OpKind.VIEW)
    mask = _numel(x.meta)  # one byte per element
    return RuleResult(
        kind=OpKind.MEMORY, bytes_read=read, bytes_written=written + mask,
        backward_input_bytes=(2 * x.meta.nbytes + mask) if x.requires_grad else 0,
        saved=[(f"{call.name}:mask", mask)] if x.requires_grad else [],
    )


def _softmax(call: OpCall) -> RuleResult:
    """Rows longer than 1024 do not fit PyTorch's one-pass (persistent) softmax kernel: the
    input is read once for the row max/sum and again to normalise."""
    result = _memory("output", grad_reads=2)(call)
    if call.tensors and call.tensors[0].meta.shape and call.tensors[0].meta.shape[-1] > 1024:
        result.bytes_read += call.tensors[0].meta.nbytes
    return result


def _reduction(call: OpCall) -> RuleResult:
    read, written = _io_bytes(call)
    i_b, w_b = _split_grad_bytes(call, lambda t: t.meta.nbytes + written)
    return RuleResult(kind=OpKind.MEMORY, bytes_read=read, bytes_written=written,
                      backward_input_bytes=i_b, backward_weight_bytes=w_b)


def _copy_like(call: OpCall) -> RuleResult:
    """cat, pad, casts, clones: read inputs, write output; backward copies dY back."""
    read, written = _io_bytes(call)
    i_b, w_b = _split_grad_bytes(call, lambda t: 2 * t.meta.nbytes)
    return RuleResult(kind=OpKind.MEMORY, bytes_read=read, bytes_written=written,
                      backward_input_bytes=i_b, backward_weight_bytes=w_b)


def _reshape(call: OpCall) -> RuleResult:
    # reshape / contiguous copy only when their input is not contiguous
    if call.input_contiguous:
        return RuleResult(kind=OpKind.VIEW)
    return _copy_like(call)


def _expand(call: OpCall) -> RuleResult:
    # a view forward, but its backward sums dY over the broadcast dims
    out = call.outputs[0].nbytes
    i_b, w_b = _split_grad_bytes(call, lambda t: out + t.meta.nbytes)
    return RuleResult(kind=OpKind.VIEW, backward_input_bytes=i_b, backward_weight_bytes=w_b)


def _view(call: OpCall) -> RuleResult:
    return RuleResult(kind=OpKind.VIEW)


def _split(call: OpCall) -> RuleResult:
    # views forward, but SplitBackward concatenates the pieces' gradients (torch.cat): dX is
    # written whole from the pieces
    i_b, w_b = _split_grad_bytes(call, lambda t: 2 * t.meta.nbytes)
    return RuleResult(kind=OpKind.VIEW, backward_input_bytes=i_b, backward_weight_bytes=w_b)


def _factory(call: OpCall) -> RuleResult:
    # arange, zeros, full...: write the output, nothing to differentiate
    return RuleResult(kind=OpKind.MEMORY, bytes_written=sum(o.nbytes for o in call.outputs))


def _indices(call: OpCall) -> RuleResult:
    # argsort, integer arithmetic: read the inputs, write the output, nothing to differentiate
    read, written = _io_bytes(call)
    return RuleResult(kind=OpKind.MEMORY, bytes_read=read, bytes_written=written)


def _topk(call: OpCall) -> RuleResult:
    read, written = _io_bytes(call)
    x = call.tensors[0]
    grads = x.requires_grad
    idx_bytes = call.outputs[1].nbytes if len(call.outputs) > 1 else 0
    return RuleResult(
        kind=OpKind.MEMORY, bytes_read=read, bytes_written=written,
        backward_input_bytes=(x.meta.nbytes + call.outputs[0].nbytes + idx_bytes) if grads else 0,
        saved=[(f"{call.name}:indices", idx_bytes)] if grads else [],
    )


VIEW_OPS = frozenset(
    "view _unsafe_view alias t transpose permute unsqueeze squeeze select slice split split_with_sizes "
    "chunk unbind getitem detach flatten unflatten as_strided narrow movedim view_as view_as_real view_as_complex "
    "lift_fresh_copy size sym_size dim".split()
)

_UNARY_SAVE_INPUT = ("gelu silu relu sigmoid tanh exp log pow rsqrt sqrt sin cos erf abs neg_save reciprocal square "
                     "log1p expm1 softplus elu leaky_relu hardswish hardsigmoid hardtanh mish atan").split()
# zero or sign-only gradients (round, floor...) and plain negation: nothing saved
_UNARY_NO_SAVE = "neg round floor ceil trunc sign".split()

_RULES: dict[str, Callable[[OpCall], RuleResult]] = {
    "linear": _linear,
    "mm": _mm, "bmm": _mm, "matmul": _mm, "addmm": _mm, "baddbmm": _mm,
    "_grouped_mm": _grouped_mm, "einsum": _einsum,
    "conv1d": _conv, "conv2d": _conv, "conv3d": _conv, "convolution": _conv,
    "scaled_dot_product_attention": _sdpa,
    "layer_norm": _norm(2), "native_layer_norm": _norm(2), "rms_norm": _norm(1),
    "embedding": _embedding,
    "dropout": _dropout, "native_dropout": _dropout,
    "add": _passthrough, "sub": _passthrough,
    "mul": _memory("inputs", grad_reads=2), "div": _memory("inputs", grad_reads=2),
    "softmax": _softmax, "_softmax": _softmax,
    "log_softmax": _memory("output", grad_reads=2), "_log_softmax": _memory("output", grad_reads=2),
    "sum": _reduction, "mean": _reduction, "amax": _reduction, "max": _reduction,
    "cat": _copy_like, "pad": _copy_like, "constant_pad_nd": _copy_like, "_to_copy": _copy_like,
    "to": _copy_like, "clone": _copy_like, "copy": _copy_like, "type_as": _copy_like,
    "index_select": _copy_like, "gather": _copy_like, "masked_fill": _copy_like, "where": _copy_like,
    "float": _copy_like, "half": _copy_like, "bfloat16": _copy_like,
    "reshape": _reshape, "contiguous": _reshape,
    "expand": _expand, "expand_as": _expand, "repeat": _copy_like, "repeat_interleave": _copy_like,
    "arange": _factory, "zeros": _factory, "ones": _factory, "full": _factory, "empty": _factory,
    "zeros_like": _factory, "ones_like": _factory, "full_like": _factory, "empty_like": _factory,
    "scalar_tensor": _factory, "tril": _copy_like, "triu": _copy_like,
    "outer": _memory("inputs", grad_reads=2),
    "topk": _topk, "sort": _topk, "cumsum": _reduction,
    "argsort": _indices, "argmin": _indices, "floor_divide": _indices, "remainder": _indices,
    "eq": _factory, "ne": _factory, "lt": _factory, "gt": _factory, "le": _factory, "ge": _factory,
    "argmax": _factory,
    # mask building in HF models (integer / bool tensors: nothing to differentiate)
    "__and__": _factory, "bitwise_and": _factory, "logical_and": _factory, "__or__": _factory,
    "new_ones": _factory, "new_zeros": _factory, "diff": _copy_like, "index": _copy_like,
    "clamp": _memory("inputs", grad_reads=2), "clamp_min": _memory("inputs", grad_reads=2),
    "clamp_max": _memory("inputs", grad_reads=2), "fill": _factory, "zero": _factory,
    "scatter": _copy_like, "scatter_add": _copy_like, "scatter_reduce": _copy_like,
    "index_add": _copy_like, "index_copy": _copy_like, "index_put": _copy_like, "masked_scatter": _copy_like,
    # MoE routing and mask building in transformers 5.x: token counts per expert, inverted masks
    "histc": _indices, "bincount": _indices, "bitwise_not": _indices, "logical_not": _indices,
    "__invert__": _indices, "bitwise_or": _factory, "logical_or": _factory, "bitwise_xor": _factory,
    "all": _indices, "any": _indices, "isinf": _indices, "isnan": _indices, "new_empty": _factory,
    "new_full": _factory, "rand": _factory, "randn": _factory, "rand_like": _factory, "randn_like": _factory,
    # reductions (T5's relative-position buckets, SigLIP's embedding normalisation, vision pooling)
    "min": _reduction, "amin": _reduction, "prod": _reduction, "var": _reduction, "std": _reduction,
    "var_mean": _reduction, "linalg_vector_norm": _reduction, "norm": _reduction, "logsumexp": _reduction,
    "avg_pool2d": _reduction, "adaptive_avg_pool2d": _reduction, "adaptive_avg_pool1d": _reduction,
    "max_pool2d": _reduction, "max_pool2d_with_indices": _reduction,
    "maximum": _memory("inputs", grad_reads=2), "minimum": _memory("inputs", grad_reads=2),
    "rsub": _passthrough, "masked_select": _copy_like, "flip": _copy_like, "roll": _copy_like,
    # vision models' norms: elementwise with a few per-channel statistics (saved x; dX reads dY and x)
    "group_norm": _memory("inputs", grad_reads=2), "native_group_norm": _memory("inputs", grad_reads=2),
    "batch_norm": _memory("inputs", grad_reads=2), "_native_batch_norm_legit": _memory("inputs", grad_reads=2),
    "_native_batch_norm_legit_no_training": _memory("inputs", grad_reads=2),
    "upsample_bilinear2d": _copy_like, "upsample_bicubic2d": _copy_like, "upsample_nearest2d": _copy_like,
    "interpolate": _copy_like,
}
for _name in _UNARY_SAVE_INPUT:
    _RULES[_name] = _memory("inputs", grad_reads=2)
for _name in _UNARY_NO_SAVE:
    _RULES[_name] = _memory("none")
for _name in VIEW_OPS:
    _RULES[_name] = _view
for _name in ("split", "split_with_sizes", "chunk", "unbind"):
    _RULES[_name] = _split


def _rule(op: str) -> Callable[[OpCall], RuleResult] | None:
    """The op's rule; an in-place op (`mul_`, not `__and__`) without one takes its stem's."""
    rule = _RULES.get(op)
    if rule is None and op.endswith("_") and not op.startswith("__"):
        rule = _RULES.get(op[:-1])
    return rule


def has_rule(op: str) -> bool:
    return _rule(op) is not None


def apply_rule(call: OpCall) -> RuleResult:
    """The op's costs; an op without a rule is costed as a copy and marked UNKNOWN."""
    rule = _rule(call.op)
    if rule is None:
        result = _memory("inputs")(call)
        result.kind = OpKind.UNKNOWN
        return result
    return rule(call)
