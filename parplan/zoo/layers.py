"""Building blocks shared by the zoo models (plain PyTorch, meta-device friendly)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "RotaryEmbedding", "Attention", "SwiGLU", "MoE", "expected_expert_tokens", "top_k_routing",
           "expert_swiglu"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """RoPE tables computed in forward from positions, so a meta-built model needs no data."""

    def __init__(self, head_dim: int, *, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, seq: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.head_dim // 2
        inv_freq = self.theta ** (-torch.arange(0, half, device=device, dtype=torch.float32) / half)
        angles = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv_freq)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Multi-head attention with optional GQA (fewer KV heads) and RoPE.

    `context` switches to cross-attention: queries from `x`, keys and values from `context`.
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        causal: bool = True,
        rope: RotaryEmbedding | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.kv_heads = kv_heads or heads
        self.head_dim = head_dim or hidden // heads
        self.causal = causal
        self.rope = rope
        kv_in = context_dim or hidden
        self.q = nn.Linear(hidden, heads * self.head_dim, bias=bias)
        self.k = nn.Linear(kv_in, self.kv_heads * self.head_dim, bias=bias)
        self.v = nn.Linear(kv_in, self.kv_heads * self.head_dim, bias=bias)
        self.o = nn.Linear(heads * self.head_dim, hidden, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        src = x if context is None else context
        q = self.q(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(src).view(b, src.shape[1], self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(src).view(b, src.shape[1], self.kv_heads, self.head_dim).transpose(1, 2)
        if self.rope is not None:
            cos, sin = self.rope(s, x.device, x.dtype)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, enable_gqa=self.kv_heads != self.heads
        )
        return self.o(y.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, intermediate, bias=False)
        self.up = nn.Linear(hidden, intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def expected_expert_tokens(tokens: int, *, experts: int, top_k: int, capacity_factor: float) -> int:
    """Tokens one routed expert processes: tokens × top_k / experts × capacity factor (≤ tokens)."""
    return max(1, min(tokens, math.ceil(tokens * top_k / experts * capacity_factor)))


def top_k_routing(router: nn.Module, flat: torch.Tensor, top_k: int) -> tuple[torch.Tensor, ...]:
    """(probs, weights, chosen) of tokens `flat` [t, d]: softmax over experts, then its top k.

    The one routing rule of the zoo's MoE, also used by the runtime's expert-parallel
    layer, so both route every token to the same experts with the same gates.
    """
    probs = F.softmax(router(flat), dim=-1)
    weights, chosen = torch.topk(probs, top_k, dim=-1)
    return probs, weights, chosen


def expert_swiglu(tokens: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """One routed expert's SwiGLU on its tokens [n, d] with its weights (one row of the stacks)."""
    return (F.silu(tokens @ w_gate) * (tokens @ w_up)) @ w_down


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (weights stacked as one grouped GEMM) plus shared experts.

    Routing is data-dependent, so it cannot run on meta tensors. On the meta device (or
    with `routing="expected"`) every expert processes its *expected* token count
    `expected_expert_tokens(...)`, the assumption a planner needs for balanced load; on
    real tensors with `routing="auto"` tokens are routed for real. `parplan_expected_load`
    tells the tracer to report this assumption.
    """

    def __init__(
        self,
        hidden: int,
        *,
        experts: int,
        top_k: int,
        expert_hidden: int,
        shared_experts: int = 0,
        capacity_factor: float = 1.0,
        routing: str = "auto",
        route_nodes: int = 0,
        dispatch_bytes: int = 0,
    ) -> None:
        super().__init__()
        self.experts, self.top_k, self.routing = experts, top_k, routing
        self.capacity_factor = capacity_factor
        self.router = nn.Linear(hidden, experts, bias=False)
        scale = 1.0 / math.sqrt(hidden)
        self.w_gate = nn.Parameter(torch.randn(experts, hidden, expert_hidden) * scale)
        self.w_up = nn.Parameter(torch.randn(experts, hidden, expert_hidden) * scale)
        self.w_down = nn.Parameter(torch.randn(experts, expert_hidden, hidden) / math.sqrt(expert_hidden))
        self.shared = SwiGLU(hidden, shared_experts * expert_hidden) if shared_experts else None
        # How expert parallelism would move tokens (parplan.trace.moe): route_nodes > 0 is
        # DeepSeek-V3's node-limited routing (a token's experts span at most that many nodes);
        # dispatch_bytes > 0 sends the dispatch in that many bytes per element (1: FP8).
        self.parplan_expected_load = {
            "experts": experts,
            "top_k": top_k,
            "capacity_factor": capacity_factor,
            "route_nodes": route_nodes,
            "dispatch_bytes": dispatch_bytes,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        flat = x.reshape(b * s, d)
        probs, weights, chosen = top_k_routing(self.router, flat, self.top_k)
        expected = self.routing == "expected" or (self.routing == "auto" and x.device.type == "meta")
        if expected:
            routed = self._expected(flat, probs)
        else:
            routed = self._dynamic(flat, weights, chosen)
        out = routed.view(b, s, d)
        return out if self.shared is None else out + self.shared(x)

    def _expert_mlp(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: [experts, n, d] -> [experts, n, d], one batched GEMM per projection
        return torch.bmm(F.silu(torch.bmm(tokens, self.w_gate)) * torch.bmm(tokens, self.w_up), self.w_down)

    def _expected(self, flat: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        t, d = flat.shape
        n = expected_expert_tokens(t, experts=self.experts, top_k=self.top_k, capacity_factor=self.capacity_factor)
        # Stand-in for the dispatch: each expert receives n tokens (the first n; which ones
        # does not change the cost). The combine weighs each expert's rows by its gate.
        dispatched = flat[:n].unsqueeze(0).expand(self.experts, n, d)
        gate = probs[:n].t().unsqueeze(-1)
        combined = (self._expert_mlp(dispatched) * gate).sum(0)
        return F.pad(combined, (0, 0, 0, t - n))

    def _dynamic(self, flat: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(flat)
        for e in range(self.experts):
            token_idx, slot = torch.nonzero(chosen == e, as_tuple=True)
            if token_idx.numel() == 0:
                continue
            xe = flat[token_idx]
            ye = expert_swiglu(xe, self.w_gate[e], self.w_up[e], self.w_down[e])
            out.index_add_(0, token_idx, ye * weights[token_idx, slot].unsqueeze(-1))
        return out
