"""Per-op rules: grouped and einsum expert GEMMs, in-place ops, causal masks built in the graph."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parplan.trace import OpKind, trace

META = "meta"


def _trace(model: nn.Module, *inputs: torch.Tensor, method: str = "auto"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trace(model.to(META), inputs, method=method)


# ---- grouped and einsum expert GEMMs ---------------------------------------------------------


class GroupedMM(nn.Module):
    def __init__(self, groups: int, k: int, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(groups, k, n, dtype=torch.bfloat16))

    def forward(self, x, offs):
        return torch._grouped_mm(x, self.w, offs=offs)


def test_grouped_mm_counts_every_token_once_and_splits_backward_into_i_and_w():
    tokens, groups, k, n = 37, 5, 24, 40
    lift = nn.Linear(k, k, dtype=torch.bfloat16)  # the grouped input then needs a gradient
    model = nn.Module()
    model.lift, model.experts = lift, GroupedMM(groups, k, n)
    model.forward = lambda x, offs: model.experts(model.lift(x), offs)
    x = torch.zeros(tokens, k, device=META, dtype=torch.bfloat16)
    offs = torch.zeros(groups, device=META, dtype=torch.int32)
    t = _trace(model, x, offs)
    gmm = next(node for node in t.nodes if node.op == "_grouped_mm")
    assert t.unknown_ops == ()
    assert gmm.kind is OpKind.MATMUL and gmm.target == "aten._grouped_mm.default"
    assert gmm.forward_flops == 2 * tokens * k * n
    assert gmm.backward_input_flops == gmm.forward_flops  # d(x)
    assert gmm.backward_weight_flops == gmm.forward_flops  # d(w)
    assert gmm.bytes_read == (tokens * k + groups * k * n) * 2 + groups * 4
    assert gmm.bytes_written == tokens * n * 2


class GroupedMoE(nn.Module):
    """Top-k routing, tokens sorted by expert, SwiGLU experts run as three grouped GEMMs."""

    def __init__(self, hidden: int, ffn: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k, self.experts = top_k, experts
        self.router = nn.Linear(hidden, experts, bias=False)
        self.gate = nn.Parameter(torch.zeros(experts, hidden, ffn, dtype=torch.bfloat16))
        self.up = nn.Parameter(torch.zeros(experts, hidden, ffn, dtype=torch.bfloat16))
        self.down = nn.Parameter(torch.zeros(experts, ffn, hidden, dtype=torch.bfloat16))

    def forward(self, x):
        tokens, hidden = x.shape
        weights, chosen = torch.topk(self.router(x).softmax(-1), self.top_k, dim=-1)
        flat = chosen.reshape(-1)
        order = torch.argsort(flat)
        counts = torch.zeros(self.experts, device=x.device).scatter_add_(0, flat, torch.ones_like(flat, dtype=x.dtype))
        offs = torch.cumsum(counts, 0).to(torch.int32)
        rows = x.to(torch.bfloat16)[order // self.top_k]
        h = F.silu(torch._grouped_mm(rows, self.gate, offs=offs)) * torch._grouped_mm(rows, self.up, offs=offs)
        out = torch._grouped_mm(h, self.down, offs=offs).float() * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, order // self.top_k, out)


def test_grouped_moe_forward_matches_the_active_expert_closed_form():
    tokens, hidden, ffn, experts, top_k = 48, 64, 96, 8, 2
    t = _trace(GroupedMoE(hidden, ffn, experts, top_k), torch.zeros(tokens, hidden, device=META))
    assert t.unknown_ops == ()
    experts_flops = tokens * top_k * 3 * 2 * hidden * ffn
    router_flops = 2 * tokens * hidden * experts
    assert sum(n.forward_flops for n in t.nodes if n.op == "_grouped_mm") == experts_flops
    assert t.forward_flops == pytest.approx(experts_flops + router_flops, rel=0.01)


class BatchedExperts(nn.Module):
    def __init__(self, experts: int, k: int, n: int, form: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(experts, k, n))
        self.form = form

    def forward(self, x):
        if self.form == "bmm":
            return torch.bmm(x, self.w)
        if self.form == "einsum":
            return torch.einsum("eck,ekn->ecn", x, self.w)
        return torch.einsum("e...k,ekn->e...n", x, self.w)


@pytest.mark.parametrize("method", ["export", "fx"])
@pytest.mark.parametrize("form", ["bmm", "einsum", "ellipsis"])
def test_batched_expert_forms_cost_as_one_batched_gemm(form, method):
    experts, capacity, k, n = 3, 11, 16, 20
    t = _trace(BatchedExperts(experts, k, n, form), torch.zeros(experts, capacity, k, device=META), method=method)
    (node,) = t.nodes
    assert node.kind is OpKind.MATMUL
    assert node.forward_flops == node.backward_weight_flops == 2 * experts * capacity * k * n
    assert node.backward_input_flops == 0  # the input is a graph input: no gradient


def test_einsum_as_a_linear_and_with_implicit_output():
    class Proj(nn.Module):
        def __init__(self, implicit: bool) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(7, 12))
            self.implicit = implicit

        def forward(self, x):
            return torch.einsum("btk,nk", x, self.w) if self.implicit else torch.einsum("...k,nk->...n", x, self.w)

    x = torch.zeros(2, 5, 12, device=META)
    explicit = _trace(Proj(False), x).nodes[0]
    implicit = _trace(Proj(True), x).nodes[0]  # output "bnt": nothing is contracted but k
    assert explicit.forward_flops == implicit.forward_flops == 2 * 2 * 5 * 12 * 7


# ---- in-place ops ------------------------------------------------------------------------------


def _inplace_pair(op: str):
    """Two modules applying `op` in place and out of place to a tensor that needs a gradient."""

    def apply(h, idx, inplace: bool):
        name = op + "_" if inplace else op
        if op in ("div", "mul", "add"):
            return getattr(h, name)(h.detach() + 1)
        if op == "copy":
            return h.copy_(h * 2) if inplace else torch.ops.aten.copy(h, h * 2)
        if op == "scatter":
            return getattr(h, name)(1, idx, 0.5)
        if op == "index_add":
            return getattr(h, name)(0, idx[:, 0], h[:4])
        if op == "masked_fill":
            return getattr(h, name)(h > 0, 0.0)
        return getattr(h, name)(-1.0, 1.0)  # clamp

    class Pair(nn.Module):
        def __init__(self, inplace: bool) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.inplace = inplace

        def forward(self, x, idx):
            return apply(self.lin(x) * 1.0, idx, self.inplace)

    return Pair(True), Pair(False)


_COST_FIELDS = ("kind", "forward_flops", "backward_input_flops", "bytes_read", "bytes_written", "backward_input_bytes")


@pytest.mark.parametrize("op", ["div", "mul", "add", "copy", "scatter", "index_add", "masked_fill", "clamp"])
def test_inplace_op_is_known_and_costs_as_its_out_of_place_twin(op):
    x = torch.zeros(6, 8, device=META)
    idx = torch.zeros(4, 8, dtype=torch.long, device=META)
    inplace, outplace = (_trace(m, x, idx) for m in _inplace_pair(op))
    assert inplace.unknown_ops == () and outplace.unknown_ops == ()
    a = [n for n in inplace.nodes if n.op == op + "_"][-1]
    b = [n for n in outplace.nodes if n.op == op][-1]
    assert a.kind is OpKind.MEMORY and a.bytes_written > 0
    assert [getattr(a, f) for f in _COST_FIELDS] == [getattr(b, f) for f in _COST_FIELDS]


# ---- causal masks built in the graph -----------------------------------------------------------


class MaskedAttn(nn.Module):
    """SDPA with a mask built in forward (`form`) or passed in (`mask` input)."""

    def __init__(self, form: str, s: int, t: int) -> None:
        super().__init__()
        self.form, self.s, self.t = form, s, t  # plain ints: fx cannot build from traced sizes

    def forward(self, q, k, v, pad=None):
        s, t = self.s, self.t
        mask, causal = None, False
        if self.form == "is_causal":
            causal = True
        elif self.form == "tril":
            mask = torch.ones(s, t, dtype=torch.bool, device=q.device).tril()
        elif self.form == "triu_additive":  # HF's older float mask: -inf above the diagonal
            mask = torch.full((s, t), float("-inf"), device=q.device).triu(1)
        elif self.form == "arange":  # HF 5.x: q_idx >= kv_idx, expanded, as an additive float mask
            allowed = torch.arange(s, device=q.device)[:, None] >= torch.arange(t, device=q.device)[None, :]
            allowed = allowed[None, None].expand(2, 1, s, t)
            mask = torch.where(allowed, 0.0, float("-inf")).to(q.dtype)
        elif self.form == "arange_and_padding":
            allowed = torch.arange(t, device=q.device)[None, :] <= torch.arange(s, device=q.device)[:, None]
            mask = allowed[None, None] & pad[:, None, None, :]
        elif self.form == "ones":
            mask = torch.ones(s, t, dtype=torch.bool, device=q.device)
        elif self.form == "padding":
            mask = pad[:, None, None, :].expand(2, 1, s, t)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def _sdpa_flops(form: str, method: str = "auto") -> int:
    q = torch.zeros(2, 3, 16, 8, device=META)
    pad = torch.zeros(2, 16, dtype=torch.bool, device=META)
    t = _trace(MaskedAttn(form, 16, 16), q, q, q, pad, method=method)
    (node,) = [n for n in t.nodes if n.kind is OpKind.ATTENTION]
    assert node.backward_input_flops == 0 or node.backward_input_flops == 2 * node.forward_flops
    return node.forward_flops


FULL = 4 * 2 * 3 * 16 * 16 * 8
CAUSAL = 4 * 2 * 3 * (16 * 17 // 2) * 8


@pytest.mark.parametrize("method", ["export", "fx"])
@pytest.mark.parametrize("form", ["tril", "triu_additive", "arange", "arange_and_padding"])
def test_a_mask_built_causal_costs_as_is_causal(form, method):
    assert _sdpa_flops("is_causal", method) == CAUSAL
    assert _sdpa_flops(form, method) == CAUSAL


@pytest.mark.parametrize("form", ["ones", "padding"])
def test_a_mask_not_built_causal_keeps_the_full_count(form):
    assert _sdpa_flops(form) == FULL
    assert FULL == pytest.approx(2 * CAUSAL, rel=1 / 16)  # (s + 1) / 2s of the pairs


def test_a_mask_passed_in_as_an_input_is_not_assumed_causal():
    class Given(nn.Module):
        def forward(self, q, mask):
            return F.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    q = torch.zeros(2, 3, 16, 8, device=META)
    mask = torch.zeros(16, 16, device=META)
    (node,) = _trace(Given(), q, mask).nodes
    assert node.forward_flops == FULL and not node.attention.causal


# ---- masks evaluated from constants; eager attention -----------------------------------------


class WindowAttn(nn.Module):
    """SDPA under a sliding-window causal mask built from aranges (HF's sliding_window_overlay)."""

    def __init__(self, s: int, window: int) -> None:
        super().__init__()
        self.s, self.window = s, window

    def forward(self, q):
        q_idx = torch.arange(self.s, device=q.device)[:, None]
        kv_idx = torch.arange(self.s, device=q.device)[None, :]
        allowed = (kv_idx <= q_idx) & (kv_idx > q_idx - self.window)
        return F.scaled_dot_product_attention(q, q, q, attn_mask=allowed[None, None].expand(2, 1, self.s, self.s))


def _window_pairs(s: int, w: int) -> int:
    return sum(min(i + 1, w) for i in range(s))


def test_a_sliding_window_mask_built_from_constants_counts_the_window():
    q = torch.zeros(2, 3, 16, 8, device=META)
    (node,) = [n for n in _trace(WindowAttn(16, 5), q).nodes if n.kind is OpKind.ATTENTION]
    assert _window_pairs(16, 5) == 1 + 2 + 3 + 4 + 5 * 12
    assert node.forward_flops == 4 * 2 * 3 * _window_pairs(16, 5) * 8
    assert node.attention.causal


def test_a_mask_too_large_to_evaluate_falls_back_to_its_structure(monkeypatch):
    from parplan.trace import masks

    monkeypatch.setattr(masks, "MAX_EVALUATED", 16 * 16 - 1)
    q = torch.zeros(2, 3, 16, 8, device=META)
    (node,) = [n for n in _trace(WindowAttn(16, 5), q).nodes if n.kind is OpKind.ATTENTION]
    assert node.forward_flops == CAUSAL  # built from aranges: causal, the window unseen


class EagerAttn(nn.Module):
    """Attention as HF's eager path writes it: QK^T, scale, softcap, + mask, softmax, PV."""

    def __init__(self, s: int, causal: bool) -> None:
        super().__init__()
        self.s, self.causal = s, causal

    def forward(self, q, v, pad):
        scores = torch.tanh(torch.matmul(q, q.transpose(-1, -2)) * 0.125 / 30.0) * 30.0
        if self.causal:
            mask = torch.full((self.s, self.s), float("-inf"), device=q.device).triu(1)
        else:
            mask = torch.where(pad, 0.0, float("-inf"))[:, None, None, :]
        weights = torch.softmax((scores + mask).float(), dim=-1).to(q.dtype)
        return torch.matmul(weights, v)


@pytest.mark.parametrize("causal", [True, False])
def test_eager_attention_products_count_the_allowed_pairs_with_full_kernels(causal):
    s, d, dv = 16, 8, 12  # unequal head dims: QK^T and PV differ
    q = torch.zeros(2, 3, s, d, device=META, requires_grad=True)
    v = torch.zeros(2, 3, s, dv, device=META)
    pad = torch.zeros(2, s, dtype=torch.bool, device=META)  # a padding mask is data: full pairs
    scores, values = [n for n in _trace(EagerAttn(s, causal), q, v, pad).nodes if n.op == "matmul"]
    pairs = s * (s + 1) // 2 if causal else s * s
    assert scores.forward_flops == 2 * 2 * 3 * pairs * d
    assert values.forward_flops == 2 * 2 * 3 * pairs * dv
    assert scores.backward_input_flops == 2 * scores.forward_flops  # dQ and dK, same share
    assert scores.gemms[0].m * scores.gemms[0].n == s * s  # the kernel computes every pair


def test_a_matmul_not_feeding_a_softmax_keeps_its_full_count():
    class Plain(nn.Module):
        def forward(self, a, b, mask):
            return torch.matmul(a, b) + mask

    a = torch.zeros(2, 16, 8, device=META)
    (node, _) = _trace(Plain(), a, a.transpose(-1, -2), torch.zeros(16, 16, device=META)).nodes
    assert node.forward_flops == 2 * 2 * 16 * 16 * 8


def test_routing_and_normalisation_ops_have_rules():
    class Ops(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.GroupNorm(2, 4)

        def forward(self, x, ids):
            counts = torch.histc(ids.float(), bins=4, min=0, max=3)
            keep = ~(ids > 1)
            unit = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            return self.norm(unit[..., None]).squeeze(-1), counts, keep, torch.amin(x, dim=-1), x.new_empty(3)

    x = torch.zeros(6, 4, device=META)
    t = _trace(Ops(), x, torch.zeros(6, 4, dtype=torch.long, device=META))
    assert t.unknown_ops == ()
    (norm,) = [n for n in t.nodes if n.op == "linalg_vector_norm"]
    assert (norm.bytes_read, norm.bytes_written) == (6 * 4 * 4, 6 * 4)
