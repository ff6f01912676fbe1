"""Hugging Face models built from config classes (optional extra `parplan[hf]`).

Nothing is downloaded: configs are constructed in code with zoo-style options, the model
is built on the meta device, and `use_cache=False`. Mixtral's router is data-dependent
(`torch.where` on the routing mask), so `hf:mixtral` fails to capture on meta tensors; the
error says so and points at the zoo's `mixtral`, which costs experts at expected load.
"""

from __future__ import annotations

from typing import Any

import torch

from parplan.errors import ParplanError
from parplan.zoo._config import ZooModel, torch_dtype

__all__ = ["build", "HF_MODELS"]

HF_MODELS = ("llama", "mixtral")

_DEFAULTS = {
    "llama": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32,
                  intermediate_size=11008, vocab_size=32000),
    "mixtral": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32,
                    intermediate_size=14336, vocab_size=32000, num_local_experts=8, num_experts_per_tok=2),
}
# zoo option names -> HF config fields, so `hf:llama,hidden=1024,layers=2` reads like the zoo
_ALIASES = {"hidden": "hidden_size", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
            "layers": "num_hidden_layers", "intermediate": "intermediate_size", "vocab": "vocab_size",
            "experts": "num_local_experts", "top_k": "num_experts_per_tok"}


def build(name: str, *, batch: int, seq: int, device: str = "meta", **options: Any):
    try:
        import transformers
    except ImportError:
        raise ParplanError(f"hf:{name} needs the optional extra: pip install 'parplan[hf]' (transformers)") from None
    if name not in HF_MODELS:
        raise ParplanError(f"hf:{name} is not supported; use one of {', '.join('hf:' + m for m in HF_MODELS)}")
    dtype = torch_dtype(str(options.pop("dtype", "bfloat16")))
    fields = dict(_DEFAULTS[name])
    for key, raw in options.items():
        field = _ALIASES.get(key, key)
        fields[field] = int(raw) if isinstance(raw, str) and raw.lstrip("-").isdigit() else raw
    cls = transformers.LlamaConfig if name == "llama" else transformers.MixtralConfig
    config = cls(**fields, use_cache=False, max_position_embeddings=max(seq, 2048))
    auto = transformers.LlamaForCausalLM if name == "llama" else transformers.MixtralForCausalLM
    with torch.device(device):
        model = auto(config).to(dtype)
    model.eval()  # no dropout; the trace is of the training-mode math, which is identical here
    inputs = (torch.zeros(batch, seq, dtype=torch.long, device=device),)
    return ZooModel(name=f"hf:{name}", model=model, example_inputs=inputs, config=config)
