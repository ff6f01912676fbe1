"""Traced forward FLOPs of Hugging Face models against closed forms read from their configs.

Models are built with transformers directly (not through `hf:` specs), so the same script
measures any parplan tree: `PYTHONPATH=<tree> python benchmarks/hf_flops.py [--seq S]`.
Each line: family, traced forward FLOPs / closed form (active experts only: top-k routed +
shared; attention over the pairs its mask allows: causal, or Gemma2's sliding window on
alternate layers), and the operators without a rule.
"""

from __future__ import annotations

import argparse
import warnings

import torch
import transformers

from parplan.trace import trace

SMALL = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=4,
             intermediate_size=512, vocab_size=1024, use_cache=False)
MODELS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, SMALL),
    "gemma2 (eager, window 128)": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                                   dict(SMALL, head_dim=32, sliding_window=128)),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(SMALL, num_local_experts=8, num_experts_per_tok=2)),
    "qwen2-moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(SMALL, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
                       shared_expert_intermediate_size=384)),
    "deepseek-v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM,
                    dict(SMALL, num_key_value_heads=8, first_k_dense_replace=1, n_routed_experts=8,
                         num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=128, n_group=2,
                         topk_group=1, q_lora_rank=128, kv_lora_rank=64, qk_rope_head_dim=16,
                         qk_nope_head_dim=32, v_head_dim=32)),
}


def closed_form(c, batch: int, seq: int) -> int:
    """Forward FLOPs (2 per multiply-add) of the GEMMs and attention a token really runs."""
    t, h, heads = batch * seq, c.hidden_size, c.num_attention_heads
    total = 2 * t * h * c.vocab_size  # LM head
    kinds = getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
    for layer in range(c.num_hidden_layers):
        window = c.sliding_window if kinds[layer] == "sliding_attention" else None
        pairs = sum(min(i + 1, window or seq) for i in range(seq))
        if hasattr(c, "kv_lora_rank"):  # multi-head latent attention
            qk, v = c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim
            total += 2 * t * (h * c.q_lora_rank + c.q_lora_rank * heads * qk + h * (c.kv_lora_rank + c.qk_rope_head_dim)
                              + c.kv_lora_rank * heads * (c.qk_nope_head_dim + v) + heads * v * h)
        else:
            qk = v = getattr(c, "head_dim", None) or h // heads
            total += 2 * t * (2 * h * heads * qk + 2 * h * c.num_key_value_heads * qk)
        total += 2 * batch * heads * pairs * (qk + v)
        experts = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or \
            getattr(c, "n_routed_experts", None)
        if experts and layer >= getattr(c, "first_k_dense_replace", 0):
            ffn = getattr(c, "moe_intermediate_size", None) or c.intermediate_size
            total += 2 * t * h * experts + 2 * t * c.num_experts_per_tok * 3 * h * ffn
            shared = getattr(c, "shared_expert_intermediate_size", 0) or ffn * getattr(c, "n_shared_experts", 0)
            total += 2 * t * 3 * h * shared + (2 * t * h if hasattr(c, "shared_expert_intermediate_size") else 0)
        else:
            total += 2 * t * 3 * h * c.intermediate_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=512)
    args = parser.parse_args()
    for name, (config_cls, model_cls, fields) in MODELS.items():
        config = config_cls(**fields, max_position_embeddings=max(args.seq, 2048))
        with torch.device("meta"):
            model = model_cls(config).to(torch.bfloat16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = trace(model, (torch.zeros(args.batch, args.seq, dtype=torch.long, device="meta"),))
        traced = sum(n.forward_flops for n in graph.nodes)
        print(f"{name:28s} traced / closed form {traced / closed_form(config, args.batch, args.seq):.3f}  "
              f"unknown ops: {', '.join(graph.unknown_ops) or 'none'}")


if __name__ == "__main__":
    main()
