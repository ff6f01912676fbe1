"""Hugging Face models from config classes (optional extra; skipped without transformers, and
CI installs it). Forward FLOPs are checked against closed forms written from each config:
active experts only for MoE (top-k routed + shared), causal and sliding-window attention over
the pairs the mask allows, and zero operators without a rule on every family."""

from __future__ import annotations

import functools
import warnings

import pytest

from parplan.errors import ParplanError
from parplan.trace import OpKind, trace
from parplan.zoo import build, load_model

transformers = pytest.importorskip("transformers")

B, S = 2, 32
T = B * S  # tokens


@functools.cache
def _traced(spec: str, batch: int = B, seq: int = S):
    z = load_model(spec, batch=batch, seq=seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return z, trace(z.model, z.example_inputs)


def _forward_flops(graph) -> int:
    return sum(n.forward_flops for n in graph.nodes)


def _causal(q: int) -> int:
    return q * (q + 1) // 2


def _window(q: int, w: int) -> int:
    return sum(min(i + 1, w) for i in range(q))


def _attention(heads: int, qk_dim: int, v_dim: int, pairs: int, batch: int = B) -> int:
    """QK^T and PV over the allowed pairs of each [q, kv] matrix."""
    return 2 * batch * heads * pairs * (qk_dim + v_dim)


def _gqa(h: int, heads: int, kv: int, hd: int, tokens: int = T) -> int:
    """q, k, v and o projections."""
    return 2 * tokens * (2 * h * heads * hd + 2 * h * kv * hd)


# ---- MoE: active experts only ----------------------------------------------------------------

QWEN2_MOE = ("hf:qwen2-moe:hidden=64,heads=4,kv_heads=2,layers=2,vocab=96,moe_intermediate_size=32,"
             "shared_expert_intermediate_size=48,experts=8,top_k=2")
MIXTRAL = "hf:mixtral:hidden=64,heads=4,kv_heads=2,layers=2,vocab=96,intermediate=48,experts=4,top_k=2"
DEEPSEEK_V3 = ("hf:deepseek-v3:hidden=64,heads=4,kv_heads=4,layers=3,vocab=96,intermediate=96,first_k_dense_replace=1,"
               "moe_intermediate_size=32,experts=8,top_k=2,n_shared_experts=2,n_group=2,topk_group=1,"
               "q_lora_rank=32,kv_lora_rank=16,qk_rope_head_dim=8,qk_nope_head_dim=16,v_head_dim=16")


def _qwen2_moe_closed_form() -> int:
    h, heads, kv, layers, vocab, experts, top_k, ffn, shared = 64, 4, 2, 2, 96, 8, 2, 32, 48
    hd = h // heads
    per_layer = (_gqa(h, heads, kv, hd) + _attention(heads, hd, hd, _causal(S))
                 + 2 * T * h * experts  # router
                 + 2 * T * top_k * 3 * h * ffn  # routed SwiGLU experts, top_k per token
                 + 2 * T * 3 * h * shared + 2 * T * h)  # shared expert and its sigmoid gate
    return layers * per_layer + 2 * T * h * vocab


def _mixtral_closed_form() -> int:
    h, heads, kv, layers, vocab, experts, top_k, ffn = 64, 4, 2, 2, 96, 4, 2, 48
    hd = h // heads
    per_layer = _gqa(h, heads, kv, hd) + _attention(heads, hd, hd, _causal(S)) + 2 * T * h * experts \
        + 2 * T * top_k * 3 * h * ffn
    return layers * per_layer + 2 * T * h * vocab


def _deepseek_v3_closed_form() -> int:
    h, heads, layers, dense_layers, vocab, ffn, experts, top_k, moe_ffn, shared = 64, 4, 3, 1, 96, 96, 8, 2, 32, 2
    q_rank, kv_rank, rope, nope, v = 32, 16, 8, 16, 16
    mla = 2 * T * (h * q_rank + q_rank * heads * (nope + rope)  # q down and up
                   + h * (kv_rank + rope) + kv_rank * heads * (nope + v)  # compressed kv (+ rope key), kv up
                   + heads * v * h) + _attention(heads, nope + rope, v, _causal(S))
    dense = 2 * T * 3 * h * ffn
    moe = 2 * T * h * experts + 2 * T * top_k * 3 * h * moe_ffn + 2 * T * 3 * h * moe_ffn * shared
    return layers * mla + dense_layers * dense + (layers - dense_layers) * moe + 2 * T * h * vocab


@pytest.mark.parametrize("spec,closed_form", [
    (QWEN2_MOE, _qwen2_moe_closed_form),
    (MIXTRAL, _mixtral_closed_form),
    (MIXTRAL + ",experts_implementation=batched_mm", _mixtral_closed_form),
    (DEEPSEEK_V3, _deepseek_v3_closed_form),
], ids=["qwen2-moe", "mixtral", "mixtral-batched-mm", "deepseek-v3"])
def test_moe_forward_flops_match_the_active_expert_closed_form(spec, closed_form):
    _, graph = _traced(spec)
    assert _forward_flops(graph) == pytest.approx(closed_form(), rel=0.02)
    experts = [n for n in graph.nodes if n.kind is OpKind.MATMUL and n.module_path.endswith(".experts")]
    assert experts and {n.op for n in experts} <= {"_grouped_mm", "bmm"}


def test_eager_expert_loop_is_refused_with_the_kernels_that_capture():
    with pytest.raises(ParplanError, match="grouped_mm, batched_mm"):
        load_model(MIXTRAL + ",experts_implementation=eager", batch=1, seq=8)


# ---- dense and attention masks -------------------------------------------------------------

LLAMA = "hf:llama:hidden=64,heads=4,kv_heads=2,layers=2,intermediate=96,vocab=100"


def test_hf_llama_traces_like_the_zoo_llama():
    hf, t = _traced(LLAMA)
    assert not any(p.device.type != "meta" for p in hf.model.parameters())
    zoo = build("llama", batch=B, seq=S, hidden=64, heads=4, kv_heads=2, layers=2, intermediate=96, vocab=100)
    z = trace(zoo.model, zoo.example_inputs)
    assert t.param_count == z.param_count == sum(p.numel() for p in hf.model.parameters())
    # the zoo passes is_causal=True; HF passes the mask its masking utilities build: same count
    for kind in (OpKind.MATMUL, OpKind.ATTENTION):
        assert sum(n.forward_flops for n in t.nodes if n.kind is kind) == \
            sum(n.forward_flops for n in z.nodes if n.kind is kind)
    assert [len(b.instances) for b in t.blocks if b.module_class == "LlamaDecoderLayer"] == [2]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_hf_causal_attention_counts_half_the_pairs(attention):
    seq, heads, hd = 128, 4, 16
    _, t = _traced(f"{LLAMA},attn_implementation={attention}", 1, seq)
    attn = sum(n.forward_flops for n in t.nodes if n.kind is OpKind.ATTENTION or n.op == "matmul")
    assert attn == 2 * _attention(heads, hd, hd, _causal(seq), batch=1)
    assert attn < 0.51 * 2 * _attention(heads, hd, hd, seq * seq, batch=1)  # full pairs would be 2x


def test_gemma2_sliding_window_counts_the_window():
    seq, window, heads, hd = 64, 16, 4, 16
    _, t = _traced(f"hf:gemma2:hidden=64,heads={heads},kv_heads=2,head_dim={hd},layers=2,intermediate=96,vocab=100,"
                   f"sliding_window={window}", 1, seq)
    config = transformers.Gemma2Config(sliding_window=window, num_hidden_layers=2)
    pairs = [_window(seq, window) if kind == "sliding_attention" else _causal(seq) for kind in config.layer_types]
    assert len(set(pairs)) == 2  # one sliding and one full layer
    products = [n for n in t.nodes if n.op == "matmul"]  # eager attention: QK^T then PV, per layer
    assert [n.forward_flops for n in products] == [2 * 1 * heads * p * hd for p in pairs for _ in range(2)]
    assert all(n.gemms[0].m * n.gemms[0].n * n.gemms[0].k == seq * seq * hd for n in products)  # kernels: full


def test_bart_encoder_and_cross_attention_are_full_and_the_decoder_causal():
    h, heads, layers, ffn, vocab = 64, 4, 2, 96, 100
    _, t = _traced(f"hf:bart:d_model={h},encoder_layers={layers},decoder_layers={layers},encoder_attention_heads={heads},"
                   f"decoder_attention_heads={heads},encoder_ffn_dim={ffn},decoder_ffn_dim={ffn},vocab={vocab}")
    hd = h // heads
    encoder = _gqa(h, heads, heads, hd) + _attention(heads, hd, hd, S * S) + 2 * T * 2 * h * ffn
    decoder = 2 * _gqa(h, heads, heads, hd) + _attention(heads, hd, hd, _causal(S)) \
        + _attention(heads, hd, hd, S * S) + 2 * T * 2 * h * ffn
    assert _forward_flops(t) == layers * (encoder + decoder) + 2 * T * h * vocab
    assert [n.attention.causal for n in t.nodes if n.attention] == [False] * layers + [True, False] * layers


def test_clip_counts_the_patch_convolution_and_both_towers():
    h, heads, layers, ffn, vocab, proj, image, patch = 64, 4, 2, 96, 100, 32, 32, 8
    sub = f"hidden_size={h},num_attention_heads={heads},num_hidden_layers={layers},intermediate_size={ffn}"
    opts = ",".join(f"text_config.{x}" for x in sub.split(",")) + "," + ",".join(f"vision_config.{x}" for x in sub.split(","))
    _, t = _traced(f"hf:clip:{opts},text_config.vocab_size={vocab},vision_config.image_size={image},"
                   f"vision_config.patch_size={patch},projection_dim={proj}")
    hd, patches = h // heads, (image // patch) ** 2
    vision_tokens = B * (patches + 1)  # + the class token
    conv = 2 * B * patches * 3 * patch * patch * h
    text = layers * (_gqa(h, heads, heads, hd) + _attention(heads, hd, hd, _causal(S)) + 2 * T * 2 * h * ffn)
    vision = layers * (_gqa(h, heads, heads, hd, vision_tokens) + _attention(heads, hd, hd, (patches + 1) ** 2)
                       + 2 * vision_tokens * 2 * h * ffn)
    heads_and_logits = 2 * 2 * B * h * proj + 2 * B * B * proj  # two projections of the pooled rows, similarity
    assert _forward_flops(t) == conv + text + vision + heads_and_logits


# ---- every family: no operator without a rule -----------------------------------------------

SMALL = "hidden=64,heads=4,kv_heads=2,layers=2,intermediate=96,vocab=100"
FAMILIES = {
    "llama": LLAMA, "qwen2": f"hf:qwen2:{SMALL}", "mistral": f"hf:mistral:{SMALL}",
    "gemma2": f"hf:gemma2:{SMALL},head_dim=16,sliding_window=8", "gpt2": "hf:gpt2:hidden=64,heads=4,layers=2,vocab=100",
    "mixtral": MIXTRAL, "qwen2-moe": QWEN2_MOE, "deepseek-v3": DEEPSEEK_V3,
    "qwen3-moe": f"hf:qwen3-moe:{SMALL},head_dim=16,moe_intermediate_size=32,experts=4,top_k=2",
    "t5": "hf:t5:hidden=64,heads=4,head_dim=16,layers=2,d_ff=96,vocab=100",
    "bart": "hf:bart:d_model=64,encoder_layers=1,decoder_layers=1,vocab=100",
    "clip": "hf:clip:text_config.num_hidden_layers=1,vision_config.num_hidden_layers=1,vision_config.image_size=32",
    "siglip": "hf:siglip:text_config.num_hidden_layers=1,vision_config.num_hidden_layers=1,vision_config.image_size=32",
    "generic": "hf:Qwen3MoeConfig:hidden_size=64,num_hidden_layers=1,num_attention_heads=4,num_key_value_heads=2,"
               "head_dim=16,moe_intermediate_size=32,num_experts=4,num_experts_per_tok=2,vocab_size=100",
}


@pytest.mark.parametrize("spec", list(FAMILIES.values()), ids=list(FAMILIES))
def test_every_family_traces_with_no_unknown_operator(spec):
    z, t = _traced(spec)
    assert t.capture == "torch.export"
    assert t.unknown_ops == ()
    assert t.unattributed_params == ()
    assert t.param_count == sum(p.numel() for p in z.model.parameters())


# ---- the spec and its errors ------------------------------------------------------------------

def test_generic_config_class_builds_what_the_short_name_builds():
    short = load_model(MIXTRAL, batch=1, seq=8)
    generic = load_model("hf:MixtralConfig,hidden_size=64,num_attention_heads=4,num_key_value_heads=2,num_hidden_layers=2,"
                         "vocab_size=96,intermediate_size=48,num_local_experts=4,num_experts_per_tok=2", batch=1, seq=8)
    assert type(short.model) is type(generic.model) is transformers.MixtralForCausalLM
    assert short.config.to_dict() == generic.config.to_dict()


def test_encoder_decoder_and_vision_text_take_their_second_input_by_keyword():
    t5 = load_model("hf:t5:layers=1", batch=2, seq=8)
    assert type(t5.model.model) is transformers.T5ForConditionalGeneration
    assert t5.model.names == ("input_ids", "decoder_input_ids")
    clip = load_model("hf:clip", batch=2, seq=8)
    assert clip.model.names == ("input_ids", "pixel_values")
    assert clip.example_inputs[1].shape == (2, 3, 64, 64)


@pytest.mark.parametrize("spec,phrase", [
    ("hf:gpt5", "not supported"),
    ("hf:NoSuchConfig", "not supported"),
    ("hf:llama:hiden=64", "LlamaConfig has no field 'hiden'"),
    ("hf:clip:audio_config.hidden_size=8", "'audio_config' is not a sub-config of CLIPConfig"),
    ("hf:llama:attn_implementation=flash", "use one of sdpa, eager"),
    ("hf:llama:hidden=65", "rejected the options building LlamaConfig.*not a multiple of the number of attention heads"),
    ("hf:llama:hidden_act=nope", "rejected the options building LlamaForCausalLM: KeyError: 'nope'"),
])
def test_bad_hf_spec_is_a_user_error(spec, phrase):
    with pytest.raises(ParplanError, match=phrase):
        load_model(spec, batch=1, seq=8)
