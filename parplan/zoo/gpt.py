"""GPT-2 style decoder: pre-LayerNorm, fused QKV with bias, causal SDPA, 4x GELU MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from parplan.errors import ParplanError

__all__ = ["GPTConfig", "GPT"]


@dataclass(frozen=True, kw_only=True, slots=True)
class GPTConfig:
    vocab: int = 50257
    hidden: int = 768
    heads: int = 12
    layers: int = 12
    max_positions: int = 1024
    mlp_ratio: int = 4
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for name in ("vocab", "hidden", "heads", "layers", "max_positions", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ParplanError(f"gpt option {name}={getattr(self, name)} must be >= 1")
        if self.hidden % self.heads:
            raise ParplanError(
                f"gpt hidden={self.hidden} is not divisible by heads={self.heads}; "
                f"choose heads dividing hidden (head_dim = hidden / heads)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ParplanError(f"gpt dropout={self.dropout} must be in [0, 1)")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in self.qkv(x).split(d, dim=-1))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        out = self.proj(y.transpose(1, 2).reshape(b, s, d))
        # GPT-2's residual dropout after the projection (Megatron's block has it too); a
        # function, not a module, so models without dropout keep their structure
        return F.dropout(out, p) if p else out


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.hidden, cfg.mlp_ratio * cfg.hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.hidden, cfg.hidden, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.hidden)
        self.wpe = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        s = idx.shape[1]
        if s > self.cfg.max_positions:
            raise ParplanError(
                f"gpt sequence length {s} exceeds max_positions={self.cfg.max_positions}; "
                f"pass the option max_positions={s} (or larger)"
            )
        pos = torch.arange(s, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))
