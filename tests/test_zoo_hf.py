"""Hugging Face models from config classes (optional extra; skipped without transformers)."""

from __future__ import annotations

import warnings

import pytest

from parplan.errors import ParplanError
from parplan.trace import OpKind, trace
from parplan.zoo import build, load_model

transformers = pytest.importorskip("transformers")

OPTS = "hidden=64,heads=4,kv_heads=2,layers=2,intermediate=96,vocab=100"


def test_hf_llama_traces_like_the_zoo_llama():
    hf = load_model(f"hf:llama,{OPTS}", batch=2, seq=16)
    assert not any(p.device.type != "meta" for p in hf.model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = trace(hf.model, hf.example_inputs)
    zoo = build("llama", batch=2, seq=16, hidden=64, heads=4, kv_heads=2, layers=2, intermediate=96, vocab=100)
    z = trace(zoo.model, zoo.example_inputs)
    assert t.param_count == z.param_count == sum(p.numel() for p in hf.model.parameters())
    matmul = lambda g: sum(n.forward_flops for n in g.nodes if n.kind is OpKind.MATMUL)  # noqa: E731
    assert matmul(t) == matmul(z)
    # HF passes an explicit causal mask tensor, which parplan cannot prove causal: full pairs
    hf_attn = sum(n.forward_flops for n in t.nodes if n.kind is OpKind.ATTENTION)
    assert hf_attn == 2 * 4 * 2 * 4 * 16 * 16 * 16
    assert [len(b.instances) for b in t.blocks if b.module_class == "LlamaDecoderLayer"] == [2]


def test_unknown_hf_model_is_a_user_error():
    with pytest.raises(ParplanError, match="not supported"):
        load_model("hf:gpt5", batch=1, seq=8)
