"""Hugging Face models built from config classes (optional extra `parplan[hf]`).

Two spellings: a short family name (`hf:llama`, `hf:qwen2-moe`, `hf:t5`, `hf:clip`...) with
small defaults so tracing is fast, or any transformers config class (`hf:Qwen2MoeConfig`)
with the class's own defaults. Options follow `:` or `,` (`hf:mixtral:layers=2,experts=4`):
HF field names, or the zoo's short ones (`hidden`, `heads`, `layers`...); `text_config.X=v`
and `vision_config.X=v` reach a sub-config; `attn_implementation=eager|sdpa` and
`experts_implementation=grouped_mm|batched_mm` pick transformers' kernels. Nothing is downloaded: the config is built in code,
the model on the meta device, with `use_cache=False`. The model class is the config's entry
in transformers' auto mappings: causal LM, else sequence-to-sequence LM, else the base model
(CLIPModel, SiglipModel).

Example inputs per kind: a decoder gets `input_ids [batch, seq]`; an encoder-decoder gets
`input_ids` and `decoder_input_ids` (both `seq` long); a vision-text model gets `input_ids`
and `pixel_values [batch, channels, image_size, image_size]`. Models fed more than token ids
are wrapped (`KeywordInputs`) so the example inputs stay one positional tuple of tensors.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import torch
from torch import nn

from parplan.errors import ParplanError
from parplan.zoo._config import ZooModel, parse_options, torch_dtype

__all__ = ["build", "load", "HF_MODELS", "InputKind", "KeywordInputs"]


class InputKind(str, enum.Enum):
    DECODER = "decoder"
    ENCODER_DECODER = "encoder-decoder"
    VISION_TEXT = "vision-text"


_DECODER = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=4,
                intermediate_size=512, vocab_size=1024)
# short name -> (config class, small defaults)
_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", _DECODER),
    "mistral": ("MistralConfig", _DECODER),
    "qwen2": ("Qwen2Config", _DECODER),
    "gemma2": ("Gemma2Config", dict(_DECODER, head_dim=32, sliding_window=64)),
    "mixtral": ("MixtralConfig", dict(_DECODER, num_local_experts=8, num_experts_per_tok=2)),
    "qwen2-moe": ("Qwen2MoeConfig", dict(_DECODER, moe_intermediate_size=128, shared_expert_intermediate_size=256,
                                         num_experts=8, num_experts_per_tok=2)),
    "qwen3-moe": ("Qwen3MoeConfig", dict(_DECODER, head_dim=32, moe_intermediate_size=128, num_experts=8,
                                         num_experts_per_tok=2)),
    "deepseek-v3": ("DeepseekV3Config", dict(_DECODER, num_key_value_heads=8, first_k_dense_replace=1,
                                             moe_intermediate_size=128, n_routed_experts=8, num_experts_per_tok=2,
                                             n_shared_experts=1, n_group=2, topk_group=1, q_lora_rank=128,
                                             kv_lora_rank=64, qk_rope_head_dim=16, qk_nope_head_dim=32,
                                             v_head_dim=32)),
    "gpt2": ("GPT2Config", dict(n_embd=256, n_head=8, n_layer=4, vocab_size=1024)),
    "t5": ("T5Config", dict(d_model=256, d_kv=32, d_ff=512, num_layers=2, num_heads=8, vocab_size=1024)),
    "bart": ("BartConfig", dict(d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=8,
                                decoder_attention_heads=8, encoder_ffn_dim=512, decoder_ffn_dim=512,
                                vocab_size=1024)),
    "clip": ("CLIPConfig", dict(
        projection_dim=128,
        text_config=dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_hidden_layers=2,
                         vocab_size=1024),
        vision_config=dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_hidden_layers=2,
                           image_size=64, patch_size=16))),
    "siglip": ("SiglipConfig", dict(
        text_config=dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_hidden_layers=2,
                         vocab_size=1024),
        vision_config=dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_hidden_layers=2,
                           image_size=64, patch_size=16))),
}
HF_MODELS = tuple(_FAMILIES)

# zoo option names -> HF field names, so `hf:llama:hidden=1024,layers=2` reads like the zoo; a
# config's own `attribute_map` then maps the HF name to its field (GPT2's n_embd, T5's d_model)
_ALIASES = {"hidden": "hidden_size", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
            "layers": "num_hidden_layers", "intermediate": "intermediate_size", "vocab": "vocab_size",
            "top_k": "num_experts_per_tok", "head_dim": "head_dim"}
_EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")  # what `experts=` sets
_SUB_CONFIGS = ("text_config", "vision_config")
# how transformers runs attention and experts (config constructor arguments, not fields). The
# eager expert loop is left out: its per-expert token counts are data-dependent, and
# torch.export cannot capture it on meta tensors.
_IMPLEMENTATIONS = {"attn_implementation": ("sdpa", "eager"), "experts_implementation": ("grouped_mm", "batched_mm")}


class KeywordInputs(nn.Module):
    """Calls `model(**dict(zip(names, inputs)))`: HF forwards take their second input by
    keyword (`decoder_input_ids`, `pixel_values`), parplan passes example inputs positionally."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.model(**dict(zip(self.names, inputs)))


def load(rest: str, *, batch: int, seq: int, device: str = "meta") -> ZooModel:
    """`rest` is what follows `hf:` in a model spec: `NAME`, `NAME:opts` or `NAME,opts`."""
    cut = min((i for i in (rest.find(":"), rest.find(",")) if i >= 0), default=len(rest))
    return build(rest[:cut], batch=batch, seq=seq, device=device, **parse_options(rest[cut + 1:]))


def build(name: str, *, batch: int, seq: int, device: str = "meta", **options: Any) -> ZooModel:
    try:
        import transformers
    except ImportError:
        raise ParplanError(f"hf:{name} needs the optional extra: pip install 'parplan[hf]' (transformers)") from None
    config_name, defaults = _FAMILIES.get(name, (name, {}))
    config_cls = getattr(transformers, config_name, None) if config_name.endswith("Config") else None
    if not isinstance(config_cls, type):
        raise ParplanError(f"hf:{name} is not supported: use a short name ({', '.join(HF_MODELS)}) or a transformers "
                           f"config class such as hf:Qwen2MoeConfig")
    dtype = torch_dtype(str(options.pop("dtype", "bfloat16")))
    config = _config(config_cls, name, defaults, options, seq)
    kind = _input_kind(config)
    model_cls = _model_class(transformers, config, kind)
    try:
        with torch.device(device):
            model = model_cls(config).to(dtype)
    except Exception as err:  # transformers' own checks of the options (a width, an activation name)
        raise _rejected(name, model_cls.__name__, err) from err
    model.eval()  # no dropout; the trace is of the training-mode math, which is identical here
    inputs, names = _example_inputs(config, kind, batch, seq, dtype, device)
    if kind is not InputKind.DECODER:
        model = KeywordInputs(model, names)
    return ZooModel(name=f"hf:{name}", model=model, example_inputs=inputs, config=config)


# ---- config ---------------------------------------------------------------------------------


def _config(cls: type, name: str, defaults: dict[str, Any], options: dict[str, Any], seq: int) -> Any:
    """The config: class defaults, then the family's, then the user's options, each checked
    to be a field of the (sub-)config it sets, so a misspelt option is an error."""
    probe, options = cls(), dict(options)
    top: dict[str, Any] = {k: v for k, v in defaults.items() if k not in _SUB_CONFIGS}
    subs: dict[str, dict[str, Any]] = {k: dict(v) for k, v in defaults.items() if k in _SUB_CONFIGS}
    for key, allowed in _IMPLEMENTATIONS.items():
        if key in options:
            if options[key] not in allowed:
                raise ParplanError(f"hf:{name} option {key}={options[key]}: use one of {', '.join(allowed)}"
                                   + (" (the eager expert loop has data-dependent shapes torch.export cannot capture "
                                      "on meta tensors)" if options[key] == "eager" else ""))
            top[key] = options.pop(key)
    for key, raw in options.items():
        sub, dot, field = key.rpartition(".")
        target = getattr(probe, sub, None) if dot else probe
        if dot and (sub not in _SUB_CONFIGS or target is None):
            raise ParplanError(f"hf:{name} option {key}={raw}: {sub!r} is not a sub-config of {cls.__name__}; "
                               f"use one of {', '.join(s for s in _SUB_CONFIGS if getattr(probe, s, None))}")
        fields = _field_names(target, field)
        if not fields:
            raise ParplanError(f"hf:{name} option {key}={raw}: {type(target).__name__} has no field {field!r}; "
                               f"give one of its fields (e.g. {', '.join(_some_fields(target))})")
        for f in fields:
            (subs.setdefault(sub, {}) if dot else top)[f] = _value(raw)
    for sub, values in subs.items():
        sub_cls = type(getattr(probe, sub))
        top[sub] = sub_cls(**_with_room(sub_cls(), values, seq)).to_dict()
    if hasattr(probe, "use_cache"):
        top["use_cache"] = False
    try:
        return cls(**_with_room(probe, top, seq))
    except Exception as err:  # the config class's validators (hidden size a multiple of the heads...)
        raise _rejected(name, cls.__name__, err) from err


def _rejected(name: str, what: str, err: Exception) -> ParplanError:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = " ".join(lines[-2:] if len(lines) > 1 else lines)[:300]
    return ParplanError(f"hf:{name}: transformers rejected the options building {what}: "
                        f"{type(err).__name__}: {detail or 'no message'}; fix the options")


def _field_names(config: Any, key: str) -> list[str]:
    """The config fields an option sets: `experts` names every expert-count field the config has."""
    keys = _EXPERT_FIELDS if key == "experts" else (_ALIASES.get(key, key),)
    resolved = [type(config).attribute_map.get(k, k) for k in keys]
    return [f for f in resolved if hasattr(config, f) or f in _READ_IF_SET]


# attributes some models read with getattr(config, name, fallback) although their config
# class has no such field (Qwen3-MoE's head_dim)
_READ_IF_SET = frozenset({"head_dim"})


def _some_fields(config: Any) -> list[str]:
    """The config class's own fields first (not PreTrainedConfig's generic ones)."""
    own = [n for c in type(config).__mro__[:-1] if c.__module__.startswith("transformers.models.")
           for n in getattr(c, "__annotations__", {})]
    names = own or ([f.name for f in dataclasses.fields(config)] if dataclasses.is_dataclass(config) else [])
    return [n for n in dict.fromkeys(names) if not n.startswith("_")][:8]


def _with_room(probe: Any, values: dict[str, Any], seq: int) -> dict[str, Any]:
    """Position tables at least `seq` long (HF checks the length only when it runs)."""
    field = type(probe).attribute_map.get("max_position_embeddings", "max_position_embeddings")
    if hasattr(probe, field) and field not in values:
        values = dict(values, **{field: max(seq, getattr(probe, field) or 0)})
    return values


def _value(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


# ---- model and inputs -----------------------------------------------------------------------


def _input_kind(config: Any) -> InputKind:
    if getattr(config, "is_encoder_decoder", False):
        return InputKind.ENCODER_DECODER
    if getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None:
        return InputKind.VISION_TEXT
    return InputKind.DECODER


def _model_class(transformers: Any, config: Any, kind: InputKind) -> type:
    autos = {
        InputKind.DECODER: ("AutoModelForCausalLM", "AutoModel"),
        InputKind.ENCODER_DECODER: ("AutoModelForSeq2SeqLM", "AutoModel"),
        InputKind.VISION_TEXT: ("AutoModel",),
    }[kind]
    for auto in autos:
        mapping = getattr(transformers, auto)._model_mapping
        if type(config) in mapping:
            return mapping[type(config)]
    raise ParplanError(f"{type(config).__name__} has no model class in transformers' {' or '.join(autos)} mappings; "
                       f"build the model yourself and pass it as path/to/file.py:factory")


def _example_inputs(config: Any, kind: InputKind, batch: int, seq: int, dtype: torch.dtype,
                    device: str) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...]]:
    ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
    if kind is InputKind.ENCODER_DECODER:
        return (ids, torch.zeros(batch, seq, dtype=torch.long, device=device)), ("input_ids", "decoder_input_ids")
    if kind is InputKind.VISION_TEXT:
        vision = config.vision_config
        side = vision.image_size
        pixels = torch.zeros(batch, getattr(vision, "num_channels", 3), side, side, dtype=dtype, device=device)
        return (ids, pixels), ("input_ids", "pixel_values")
    return (ids,), ("input_ids",)
