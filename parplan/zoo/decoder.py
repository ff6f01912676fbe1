"""Llama-family decoders: dense (Llama: RMSNorm, RoPE, GQA, SwiGLU) and MoE (Mixtral, DeepSeek-MoE).

One config covers all three; the zoo registers them with different defaults. DeepSeek-V3's
multi-head latent attention is *not* modelled: `deepseek-moe` uses GQA attention with the
same head count and head dim, which changes the attention projections' cost (documented
in docs/tracing.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from parplan.errors import ParplanError
from parplan.zoo.layers import MoE, RMSNorm, RotaryEmbedding, SwiGLU, Attention

__all__ = ["DecoderConfig", "Decoder"]


@dataclass(frozen=True, kw_only=True, slots=True)
class DecoderConfig:
    vocab: int = 32000
    hidden: int = 4096
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 0  # 0: hidden // heads
    layers: int = 32
    intermediate: int = 11008
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # MoE (experts = 0: dense)
    experts: int = 0
    top_k: int = 2
    expert_hidden: int = 0
    shared_experts: int = 0
    first_dense_layers: int = 0
    capacity_factor: float = 1.0
    routing: str = "auto"
    route_nodes: int = 0  # > 0: node-limited routing, a token's experts on at most this many nodes
    dispatch_bytes: int = 0  # > 0: the EP dispatch's bytes per element (1: FP8, as DeepSeek-V3)
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for name in ("vocab", "hidden", "heads", "kv_heads", "layers", "intermediate"):
            if getattr(self, name) < 1:
                raise ParplanError(f"option {name}={getattr(self, name)} must be >= 1")
        if self.heads % self.kv_heads:
            raise ParplanError(
                f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}; "
                f"grouped-query attention needs kv_heads dividing heads"
            )
        if self.head_dim == 0 and self.hidden % self.heads:
            raise ParplanError(f"hidden={self.hidden} is not divisible by heads={self.heads}; set head_dim")
        if self.experts:
            if not 1 <= self.top_k <= self.experts:
                raise ParplanError(f"top_k={self.top_k} must be in [1, experts={self.experts}]")
            if self.expert_hidden < 1:
                raise ParplanError(f"expert_hidden={self.expert_hidden} must be >= 1 when experts > 0")
            if self.route_nodes < 0 or self.dispatch_bytes < 0:
                raise ParplanError(f"route_nodes={self.route_nodes}, dispatch_bytes={self.dispatch_bytes} must be "
                                   f">= 0 (0: unlimited / the model dtype)")
            if self.capacity_factor <= 0:
                raise ParplanError(f"capacity_factor={self.capacity_factor} must be > 0 (1.0 = perfectly balanced)")
        if self.routing not in ("auto", "expected", "dynamic"):
            raise ParplanError(f"routing={self.routing!r} must be auto, expected or dynamic")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def is_moe_layer(self, index: int) -> bool:
        return self.experts > 0 and index >= self.first_dense_layers


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, index: int, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = Attention(
            cfg.hidden, cfg.heads, kv_heads=cfg.kv_heads, head_dim=cfg.dim_per_head, rope=rope
        )
        self.mlp_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        if cfg.is_moe_layer(index):
            self.mlp = MoE(
                cfg.hidden,
                experts=cfg.experts,
                top_k=cfg.top_k,
                expert_hidden=cfg.expert_hidden,
                shared_experts=cfg.shared_experts,
                capacity_factor=cfg.capacity_factor,
                routing=cfg.routing,
                route_nodes=cfg.route_nodes,
                dispatch_bytes=cfg.dispatch_bytes,
            )
        else:
            self.mlp = SwiGLU(cfg.hidden, cfg.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        rope = RotaryEmbedding(cfg.dim_per_head, theta=cfg.rope_theta)
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, rope) for i in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))
