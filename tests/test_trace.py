"""Tracing: capture method, per-op F/I/W split, memory accounting, repeated blocks, errors."""

from __future__ import annotations

import warnings

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parplan.errors import ParplanError
from parplan.trace import OpKind, UnknownOperatorWarning, trace
from parplan.zoo import build


def _gpt(**kw):
    opts = dict(vocab=101, hidden=64, heads=4, layers=3, max_positions=64)
    opts.update(kw)
    return build("gpt", batch=2, seq=24, **opts)


def test_export_on_meta_allocates_no_weights():
    z = _gpt()
    assert all(p.is_meta for p in z.model.parameters())
    t = trace(z.model, z.example_inputs)
    assert t.capture == "torch.export"
    assert t.capture_seconds > 0
    assert nx.is_directed_acyclic_graph(t.graph) and t.graph.number_of_nodes() == len(t.nodes)


def test_linear_splits_backward_into_dgrad_and_wgrad_and_param_free_ops_have_no_w():
    t = trace(*_args(_gpt()))
    fc = next(n for n in t.nodes if n.module_path == "h.0.mlp.fc")
    tokens, d = 2 * 24, 64
    assert fc.forward_flops == 2 * tokens * d * 4 * d
    assert fc.backward_input_flops == fc.forward_flops  # dX = dY W
    assert fc.backward_weight_flops == fc.forward_flops  # dW = dY^T X
    for n in t.nodes:
        if not n.params and n.kind is not OpKind.MATMUL:
            assert n.backward_weight_flops == 0 and n.backward_weight_bytes == 0, n.name
    sdpa = next(n for n in t.nodes if n.kind is OpKind.ATTENTION)
    assert sdpa.backward_weight_flops == 0 and sdpa.backward_input_flops == 2 * sdpa.forward_flops


def _args(z):
    return z.model, z.example_inputs


def test_first_layer_on_raw_input_has_no_input_gradient():
    model = nn.Sequential(nn.Linear(12, 20), nn.GELU(), nn.Linear(20, 7)).to("meta")
    t = trace(model, (torch.zeros(5, 12, device="meta"),))
    first, second = [n for n in t.nodes if n.op == "linear"]
    assert first.backward_input_flops == 0 and first.backward_weight_flops == 2 * 5 * 12 * 20
    assert second.backward_input_flops == second.backward_weight_flops == 2 * 5 * 20 * 7


def test_causal_attention_counts_half_the_pairs_and_unequal_lengths():
    class Attn(nn.Module):
        def __init__(self, causal):
            super().__init__()
            self.causal = causal

        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)

    q = torch.zeros(2, 3, 16, 8, device="meta")
    full = trace(Attn(False), (q, q, q)).nodes[0]
    causal = trace(Attn(True), (q, q, q)).nodes[0]
    assert full.forward_flops == 4 * 2 * 3 * 16 * 16 * 8
    assert causal.forward_flops == 4 * 2 * 3 * (16 * 17 // 2) * 8
    kv = torch.zeros(2, 3, 40, 8, device="meta")
    cross = trace(Attn(False), (q, kv, kv)).nodes[0]
    assert cross.forward_flops == 4 * 2 * 3 * 16 * 40 * 8


def test_tied_embedding_is_attributed_once():
    z = _gpt()
    t = trace(*_args(z))
    owners = [n for n in t.nodes if "wte.weight" in n.params or "lm_head.weight" in n.params]
    assert len(owners) == 1
    assert t.param_bytes == sum(p.numel() * 2 for p in z.model.parameters())  # bf16, tied counted once


def test_saved_activations_count_each_storage_once():
    t = trace(*_args(_gpt(layers=1)))
    sdpa = next(n for n in t.nodes if n.kind is OpKind.ATTENTION)
    qkv = next(n for n in t.nodes if n.module_path == "h.0.attn.qkv")
    storages = [s for s, _ in sdpa.saved]
    # q, k and v are views of one qkv output: one storage of 3 x [tokens, hidden] bf16
    assert storages.count(qkv.name) == 1
    assert dict(sdpa.saved)[qkv.name] == 2 * 24 * 3 * 64 * 2
    assert t.saved_bytes({sdpa.name}) == sdpa.saved_bytes


def test_input_shared_by_q_k_v_linears_is_saved_once():
    z = build("llama", batch=2, seq=12, vocab=50, hidden=32, heads=4, kv_heads=2, layers=1, intermediate=40)
    t = trace(*_args(z))
    q, k, v = (next(n for n in t.nodes if n.module_path == f"layers.0.attn.{x}") for x in "qkv")
    assert q.saved == k.saved == v.saved and len(q.saved) == 1
    names = {q.name, k.name, v.name}
    assert t.saved_bytes(names) == q.saved_bytes == 2 * 12 * 32 * 2
    assert t.saved_bytes() < sum(n.saved_bytes for n in t.nodes)


def test_repeated_blocks_are_tagged_per_tower():
    z = build("two-tower", batch=2, seq=9, image_size=16, patch=8, vision_hidden=32, vision_heads=2,
              vision_layers=3, vocab=50, hidden=48, heads=4, layers=2)
    t = trace(*_args(z))
    by_class = {b.module_class: b for b in t.blocks}
    assert len(by_class["VisionLayer"].instances) == 3
    assert len(by_class["TextLayer"].instances) == 2
    tagged = [n for n in t.nodes if n.block_instance == "vision.layers.1"]
    assert tagged and all(t.blocks[n.block].module_class == "VisionLayer" for n in tagged)
    # identical instances cost the same
    per = {}
    for n in t.nodes:
        if n.block is not None and t.blocks[n.block].module_class == "TextLayer":
            per[n.block_instance] = per.get(n.block_instance, 0) + n.forward_flops
    assert len(set(per.values())) == 1 and by_class["TextLayer"].forward_flops_per_instance == next(iter(per.values()))


def test_blocks_with_different_shapes_are_not_merged():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
            self.b = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
            self.c = nn.Sequential(nn.Linear(8, 16), nn.ReLU())

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    t = trace(Net().to("meta"), (torch.zeros(3, 8, device="meta"),))
    seq_blocks = [b for b in t.blocks if b.module_class == "Sequential"]
    assert [b.instances for b in seq_blocks] == [("a", "b")]


def test_two_tower_dag_is_branchy():
    z = build("two-tower", batch=1, seq=8, image_size=16, patch=8, vision_hidden=32, vision_heads=2,
              vision_layers=1, vocab=50, hidden=48, heads=4, layers=3)
    t = trace(*_args(z))
    proj = next(n for n in t.nodes if n.module_path == "vision.proj")
    consumers = {t.node(v).module_path for v in t.graph.successors(proj.name)}
    # the image tokens feed the keys and values of every text layer's cross-attention
    assert {f"layers.{i}.cross_attn.{kv}" for i in range(3) for kv in "kv"} <= consumers


def test_unknown_operator_is_warned_and_costed_from_bytes():
    class Net(nn.Module):
        def forward(self, x):
            return torch.logcumsumexp(x, dim=-1) * 2

    with pytest.warns(UnknownOperatorWarning, match="logcumsumexp"):
        t = trace(Net(), (torch.zeros(4, 32, device="meta"),))
    node = next(n for n in t.nodes if n.op == "logcumsumexp")
    assert node.kind is OpKind.UNKNOWN and node.bytes_read == 4 * 32 * 4 and node.bytes_written == 4 * 32 * 4
    assert t.unknown_ops == ("logcumsumexp",)


def test_untraceable_model_names_the_construct_and_the_leaf_fix():
    class Router(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent Python control flow
                return x * 2
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = Router()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(self.router(x))

    with pytest.raises(ParplanError) as info:
        trace(Net().to("meta"), (torch.zeros(2, 8, device="meta"),))
    msg = str(info.value)
    assert "torch.export failed" in msg and "torch.fx.symbolic_trace failed" in msg
    assert "keep router whole with leaf_modules=(Router,)" in msg  # fx names the module it failed in
    assert "control flow" in msg or "data-dependent" in msg.lower() or "Could not guard" in msg


def test_fx_fallback_is_used_and_reported_when_export_fails():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 6)

        def forward(self, x):
            if torch.compiler.is_exporting():
                raise RuntimeError("this model refuses torch.export")
            return F.gelu(self.lin(x))

    x = torch.zeros(5, 8, device="meta", requires_grad=True)
    t = trace(Net().to("meta"), (x,))
    assert t.capture == "torch.fx.symbolic_trace"
    assert any("fell back" in note and "refuses torch.export" in note for note in t.notes)
    lin = next(n for n in t.nodes if n.op == "linear")
    assert (lin.forward_flops, lin.backward_input_flops, lin.backward_weight_flops) == (480, 480, 480)
    assert lin.module_path == "lin" and lin.param_count == 8 * 6 + 6


def test_untraceable_root_forward_says_a_leaf_cannot_help():
    class Net(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # in the model's own forward: no submodule to mark a leaf
                return x * 2
            return x

    with pytest.raises(ParplanError) as info:
        trace(Net(), (torch.zeros(2, 8, device="meta"),))
    msg = str(info.value)
    assert "Net.forward itself" in msg and "cannot help" in msg and "torch.cond" in msg
    assert "leaf_modules=(" not in msg


def test_untraceable_backbone_is_not_offered_as_a_leaf():
    class Backbone(nn.Module):  # like a Hugging Face decoder inside its *ForCausalLM
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 64)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else x

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.head = Backbone(), nn.Linear(64, 2)

        def forward(self, x):
            return self.head(self.model(x))

    with pytest.raises(ParplanError) as info:
        trace(Wrapper().to("meta"), (torch.zeros(2, 64, device="meta"),))
    msg = str(info.value)
    assert "holds most of the model's parameters" in msg and "torch.cond" in msg and "leaf_modules=(" not in msg


def test_untraceable_capture_prints_nothing(capfd):
    class Router(nn.Module):
        def forward(self, x):
            warnings.warn("router warns on every call")
            return x * 2 if x.sum() > 0 else x

    model = nn.Sequential(nn.Linear(8, 8), Router()).to("meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ParplanError, match="cannot capture"):
            trace(model, (torch.zeros(2, 8, device="meta"),))
    out, err = capfd.readouterr()
    assert (out, err, caught) == ("", "", [])  # no warning, torch log line or partial graph precedes the error


def test_capture_warnings_are_collected_and_deduplicated():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            warnings.warn("noisy forward")
            warnings.warn("noisy forward")
            return self.lin(x)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = trace(Noisy().to("meta"), (torch.zeros(2, 8, device="meta"),))
    assert caught == []
    assert t.capture_warning_count >= 2 and t.capture_warnings == ("UserWarning: noisy forward",)


def test_leaf_on_the_exported_graph_keeps_every_operator_of_an_instance_in_one_unit():
    from parplan.planner.units import Granularity, coarsen
    from parplan.zoo.gpt import CausalSelfAttention

    z = _gpt(layers=2)
    plain = trace(z.model, z.example_inputs)
    t = trace(z.model, z.example_inputs, leaf_modules=(CausalSelfAttention,))
    assert t.capture == "torch.export" and t.leaves == ("h.0.attn", "h.1.attn")
    assert t.forward_flops == plain.forward_flops and len(t.nodes) == len(plain.nodes)  # exact costs kept
    inside = {leaf: [n.name for n in plain.nodes if n.module_path.startswith(leaf)] for leaf in t.leaves}
    assert all(t.node(op).module_path == leaf for leaf, ops in inside.items() for op in ops)
    assert [b.instances for b in t.blocks] == [("h.0", "h.1")]
    for granularity in Granularity:
        units = coarsen(t, granularity).units
        for ops in inside.values():
            assert len({u.index for u in units for op in ops if op in u.ops}) == 1, granularity
    # without the leaf, the attention's q/k/v projection is a unit of its own
    assert any(u.key == "h.0.attn.qkv" for u in coarsen(plain, Granularity.OPERATOR).units)


def test_leaf_with_no_instance_is_an_error_naming_the_model_classes():
    from parplan.zoo.decoder import DecoderLayer

    z = _gpt(layers=1)
    with pytest.raises(ParplanError, match=r"DecoderLayer: no instance runs in GPT's forward.*Block"):
        trace(z.model, z.example_inputs, leaf_modules=(DecoderLayer,))


def test_leaf_on_the_fx_fallback_is_one_opaque_operator():
    class Opaque(nn.Module):
        def forward(self, x):
            return x.flip(-1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.opaque = nn.Linear(4, 4), Opaque()

        def forward(self, x):
            if torch.compiler.is_exporting():
                raise RuntimeError("this model refuses torch.export")
            return self.opaque(self.lin(x))

    with pytest.warns(UnknownOperatorWarning, match="Opaque"):
        t = trace(Net().to("meta"), (torch.zeros(3, 4, device="meta"),), leaf_modules=(Opaque,))
    assert t.capture == "torch.fx.symbolic_trace" and t.leaves == ("opaque",)
    assert [n.op for n in t.nodes] == ["linear", "Opaque"]
    assert any("one operator costed from its bytes only" in note for note in t.notes)


def test_fx_and_export_agree_on_a_zoo_model():
    z = build("llama", batch=2, seq=12, vocab=50, hidden=32, heads=4, kv_heads=2, layers=2, intermediate=40)
    exported = trace(*_args(z), method="export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx = trace(*_args(z), method="fx")
    assert fx.capture == "torch.fx.symbolic_trace"
    assert fx.forward_flops == exported.forward_flops
    assert fx.backward_input_flops == exported.backward_input_flops
    assert fx.backward_weight_flops == exported.backward_weight_flops
    assert fx.param_count == exported.param_count
