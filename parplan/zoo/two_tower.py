"""A two-tower multimodal model: a ViT-style vision encoder and a text decoder whose layers
cross-attend to the image tokens. Its DAG is branchy: the vision tower's output feeds every
text layer's cross-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from parplan.errors import ParplanError
from parplan.zoo.layers import Attention

__all__ = ["TwoTowerConfig", "TwoTower"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TwoTowerConfig:
    image_size: int = 224
    patch: int = 16
    channels: int = 3
    vision_hidden: int = 768
    vision_heads: int = 12
    vision_layers: int = 12
    vocab: int = 32000
    hidden: int = 1024
    heads: int = 16
    layers: int = 12
    mlp_ratio: int = 4
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ParplanError(
                f"two-tower image_size={self.image_size} is not a multiple of patch={self.patch}"
            )
        if self.vision_hidden % self.vision_heads or self.hidden % self.heads:
            raise ParplanError("two-tower hidden sizes must be divisible by their head counts")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch) ** 2


class _MLP(nn.Module):
    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, ratio * dim)
        self.proj = nn.Linear(ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class VisionLayer(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.vision_hidden)
        self.attn = Attention(cfg.vision_hidden, cfg.vision_heads, bias=True, causal=False)
        self.norm2 = nn.LayerNorm(cfg.vision_hidden)
        self.mlp = _MLP(cfg.vision_hidden, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TextLayer(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden)
        self.self_attn = Attention(cfg.hidden, cfg.heads, bias=True, causal=True)
        self.norm2 = nn.LayerNorm(cfg.hidden)
        self.cross_attn = Attention(cfg.hidden, cfg.heads, bias=True, causal=False)
        self.norm3 = nn.LayerNorm(cfg.hidden)
        self.mlp = _MLP(cfg.hidden, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context=image)
        return x + self.mlp(self.norm3(x))


class VisionTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.vision_hidden, cfg.patch, stride=cfg.patch)
        self.pos = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.vision_hidden))
        self.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg.vision_layers))
        self.norm = nn.LayerNorm(cfg.vision_hidden)
        self.proj = nn.Linear(cfg.vision_hidden, cfg.hidden)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.proj(self.norm(x))


class TwoTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTower(cfg)
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(TextLayer(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)

    def forward(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        image = self.vision(images)
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x, image)
        return self.lm_head(self.norm(x))
