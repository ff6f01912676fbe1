"""Memory techniques (issue 20): recomputation, sequence parallelism, ZeRO 1/2/3 and FSDP's
hybrid layout, checked against closed forms on the zoo's GPT traced by parplan.trace.

Activation bytes per layer follow Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", table 2; bf16): 34·sbh + 5·as²b without
anything, sbh(10 + 24/t + 5as/(ht)) with TP t, 34·sbh/t with SP and selective
recomputation, 2·sbh with full recomputation. The zoo's GPT block (with dropout, as the
paper's: after the attention core, the attention projection and the MLP) differs from it in
two ways, each a term of the closed forms below:
* fused attention (SDPA / FlashAttention) saves its output (2·sbh) and the fp32
  log-sum-exp (4·abs bytes) instead of the 5·as²b score, softmax and dropout tensors;
* the paper leaves out the LayerNorms' fp32 mean and rstd: 2 norms × 8 bytes × sb.
So the zoo block (dropout > 0) holds 36·sbh + 4·abs + 16·sb; with TP and selective
recomputation sbh(10 + 24/t) + 16·sb, and with SP as well (34·sbh + 16·sb)/t — the
paper's forms plus the statistics.
"""

from __future__ import annotations

import pytest

from parplan.cost.hardware import LinkProfile, load_cluster
from parplan.cost.model import op_cost
from parplan.plan import Techniques
from parplan.planner.costing import Coster, ring_allgather_s, ring_allreduce_s, ring_reduce_scatter_s
from parplan.planner.degrees import Degrees
from parplan.planner.memory import MemoryModel
from parplan.planner.sharding import layers_of, stage_collectives, step_sync_s
from parplan.trace import trace
from parplan.trace.graph import OpKind
from parplan.zoo import load_model

CLUSTER = load_cluster("h100x8")
GPU = CLUSTER.gpu(0)

# (s, b, h, a, t): unequal shapes, heads and TP degrees
SHAPES = [(96, 3, 192, 6, 2), (160, 2, 320, 8, 4)]


def _gpt(s: int, b: int, h: int, a: int, dropout: float = 0.1):
    zoo = load_model(f"gpt:layers=2,hidden={h},heads={a},vocab=512,dropout={dropout},max_positions={s}",
                     batch=b, seq=s)
    return trace(zoo.model, zoo.example_inputs)


@pytest.fixture(scope="module", params=SHAPES, ids=lambda p: "s{}b{}h{}a{}t{}".format(*p))
def gpt(request):
    s, b, h, a, t = request.param
    traced = _gpt(s, b, h, a)
    layer = [n.name for n in traced.nodes if n.block_instance == "h.1"]
    return traced, layer, (s, b, h, a, t)


def _act(traced, layer, *, tp=1, recompute="none", sp=True) -> float:
    return Coster(traced, tp=tp, recompute=recompute, sequence_parallel=sp).ops(layer, GPU).activation_bytes


def test_activation_bytes_per_layer_match_the_closed_forms(gpt):
    traced, layer, (s, b, h, a, t) = gpt
    sbh, stats, lse = s * b * h, 16 * s * b, 4 * a * b * s
    # nothing: 36sbh + lse + norm statistics, the same with SP on one GPU
    assert _act(traced, layer) == 36 * sbh + lse + stats
    # TP without SP: the norms, their inputs and outputs, the two dropout masks stay whole
    assert _act(traced, layer, tp=t, sp=False) == pytest.approx(10 * sbh + stats + (26 * sbh + lse) / t)
    # the paper's sbh(10 + 24/t), selective recomputation with TP
    assert _act(traced, layer, tp=t, sp=False, recompute="selective") == pytest.approx(10 * sbh + stats + 24 * sbh / t)
    # SP: everything split t ways; with selective recomputation the paper's 34sbh/t
    assert _act(traced, layer, tp=t) == pytest.approx((36 * sbh + lse + stats) / t)
    assert _act(traced, layer, tp=t, recompute="selective") == pytest.approx((34 * sbh + stats) / t)
    # full: the layer's input only (2sbh), sequence-split under SP
    assert _act(traced, layer, recompute="full") == 2 * sbh
    assert _act(traced, layer, tp=t, sp=False, recompute="full") == 2 * sbh
    assert _act(traced, layer, tp=t, recompute="full") == pytest.approx(2 * sbh / t)


def test_without_dropout_the_mask_goes():
    s, b, h, a, t = SHAPES[1]
    traced = _gpt(s, b, h, a, dropout=0.0)
    layer = [n.name for n in traced.nodes if n.block_instance == "h.0"]
    sbh, stats = s * b * h, 16 * s * b
    assert _act(traced, layer, tp=t, recompute="selective") == pytest.approx((32 * sbh + stats) / t)
    assert _act(traced, layer, tp=t, sp=False, recompute="selective") == pytest.approx(8 * sbh + stats + 24 * sbh / t)


def test_full_recompute_holds_one_layer_working_set_once(gpt):
    traced, _, (s, b, h, a, t) = gpt
    both = [n.name for n in traced.nodes if n.block_instance in ("h.0", "h.1")]
    full = Coster(traced, tp=t, recompute="full").ops(both, GPU)
    plain = Coster(traced, tp=t).ops([n for n in both if traced.node(n).block_instance == "h.0"], GPU)
    assert full.activation_bytes == pytest.approx(2 * 2 * s * b * h / t)  # two checkpoints
    assert full.working_bytes == pytest.approx(plain.activation_bytes)  # one layer's, not two


def test_recompute_time_is_one_forward_full_and_the_attention_core_selective(gpt):
    traced, layer, (s, b, h, a, t) = gpt
    link = CLUSTER.link(0, 1)
    none = Coster(traced, tp=t, tp_link=link).ops(layer, GPU)
    full = Coster(traced, tp=t, tp_link=link, recompute="full").ops(layer, GPU)
    selective = Coster(traced, tp=t, tp_link=link, recompute="selective").ops(layer, GPU)
    # full: I grows by the layer's forward, its TP collectives included
    assert full.backward_input_s - none.backward_input_s == pytest.approx(none.forward_s)
    assert full.recompute_s == pytest.approx(none.forward_s)
    assert (full.forward_s, full.backward_weight_s) == (none.forward_s, none.backward_weight_s)
    # selective: the fused attention's forward alone, split t ways (the cost model's own number)
    (core,) = [n for n in layer if traced.node(n).kind is OpKind.ATTENTION]
    attention_f = op_cost(traced.node(core), GPU).forward_s / t
    assert selective.backward_input_s - none.backward_input_s == pytest.approx(attention_f)
    assert 0 < attention_f < 0.5 * none.forward_s


def test_sequence_parallel_costs_the_same_collectives_as_tp_all_reduces():
    link = CLUSTER.link(0, 1)
    n, t = 3 * 2**20, 4
    rs = (t - 1) * link.latency_s + (t - 1) / t * n / (link.bandwidth * link.efficiency)
    assert ring_reduce_scatter_s(n, t, link) == pytest.approx(rs)
    assert ring_allgather_s(n, t, link) == pytest.approx(rs)
    assert ring_allreduce_s(n, t, link) == pytest.approx(2 * rs)  # reduce-scatter + all-gather
    assert ring_reduce_scatter_s(n, 1, link) == 0.0


# ---- ZeRO --------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [8, 6])
def test_zero_static_bytes_per_parameter_match_the_closed_forms(d):
    n = 1_234_567  # bf16 parameters, Adam (12 bytes of fp32 state each)
    memory = MemoryModel()
    per_param = {level: memory.static_bytes(2 * n, n, Techniques(zero=level, dp_shard=d)) / n for level in range(4)}
    assert per_param[0] == pytest.approx(2 + 2 + 12)
    assert per_param[1] == pytest.approx(2 + 2 + 12 / d)
    assert per_param[2] == pytest.approx(2 + (2 + 12) / d)
    assert per_param[3] == pytest.approx((2 + 2 + 12) / d)
    # hybrid: only the shard group divides
    assert memory.static_bytes(2 * n, n, Techniques(zero=3, dp_shard=2, dp_replicate=d)) / n == pytest.approx(8)
    assert MemoryModel(mode="inference").static_bytes(2 * n, n, Techniques(zero=3, dp_shard=d)) == 2 * n


def test_zero_expert_state_shards_over_the_replicas_holding_the_same_experts():
    n, e = 1_000_000, 1_000_000  # dense and (already EP-divided) expert parameters on the device
    memory = MemoryModel()
    # 16 replicas, EP 4: 4 replicas hold each expert, a shard group of 16 has 4 of them; of 8: 2
    whole = memory.static_bytes(2 * (n + e), n + e, Techniques(zero=3, dp_shard=16), expert_bytes=2 * e,
                                expert_count=e, ep=4)
    half = memory.static_bytes(2 * (n + e), n + e, Techniques(zero=3, dp_shard=8, dp_replicate=2), expert_bytes=2 * e,
                               expert_count=e, ep=4)
    assert whole == pytest.approx(16 * n / 16 + 16 * e / 4)
    assert half == pytest.approx(16 * n / 8 + 16 * e / 2)


@pytest.fixture(scope="module")
def stage():
    traced = _gpt(128, 2, 256, 4)
    return traced, [n.name for n in traced.nodes]  # embedding run, two layers, head run: unequal parts


def _slow_link(bandwidth: float) -> LinkProfile:
    base = CLUSTER.link(0, 1)
    return LinkProfile(name="test", bandwidth=bandwidth, latency_s=base.latency_s, efficiency=1.0)


def test_zero3_gathers_and_scatters_per_layer_with_prefetch(stage, monkeypatch):
    """F: the first gather exposed, each part then max(compute × (1 + σ), next gather); I
    in reverse with the next gather and the previous reduce-scatter beside it, the last
    reduce-scatter exposed. Checked by hand on the parts' own numbers."""
    traced, names = stage
    degrees = Degrees(pp=1, dp=8, tp=1)
    link = _slow_link(2e9)
    monkeypatch.setattr(type(CLUSTER), "link", lambda self, a, b: link)
    coster = Coster(traced)
    memory = MemoryModel()
    parts = layers_of(names, coster)
    assert len(parts) == 4  # embedding and positions, h.0, h.1, norm and head
    f = [sum(coster.op(n, GPU)[0] for n in p) for p in parts]
    i = [sum(coster.op(n, GPU)[1] for n in p) for p in parts]
    params = [sum(coster.op(n, GPU)[3] for n in p) for p in parts]
    g = [ring_allgather_s(p, 8, link) for p in params]
    r = [ring_reduce_scatter_s(p, 8, link) for p in params]
    sigma = CLUSTER.a2a_compute_slowdown
    seg = lambda c, comm: c if comm == 0 else max(c * (1 + sigma), comm)  # noqa: E731
    fwd = g[0] + sum(seg(f[k], g[k + 1]) for k in range(3)) + f[3] - sum(f)
    bwd = g[3] + seg(i[3], g[2]) + seg(i[2], g[1] + r[3]) + seg(i[1], g[0] + r[2]) + seg(i[0], r[1]) + r[0] - sum(i)
    got = stage_collectives(names, coster, GPU, degrees, CLUSTER, Techniques(zero=3, dp_shard=8), memory)
    assert got.forward_s == pytest.approx(fwd)
    assert got.backward_input_s == pytest.approx(bwd)
    assert got.buffer_bytes == pytest.approx(sum(sorted(params)[-2:]))
    # ZeRO-2: reduce-scatters only, in the backward
    z2 = stage_collectives(names, coster, GPU, degrees, CLUSTER, Techniques(zero=2, dp_shard=8), memory)
    assert z2.forward_s == 0.0 and z2.buffer_bytes == 0.0
    assert z2.backward_input_s == pytest.approx(
        i[3] + seg(i[2], r[3]) + seg(i[1], r[2]) + seg(i[0], r[1]) + r[0] - sum(i))
    assert stage_collectives(names, coster, GPU, degrees, CLUSTER, Techniques(zero=1, dp_shard=8),
                             memory).total_s == 0.0
    # hybrid 4 × 2: the gathers span 4 replicas
    hybrid = stage_collectives(names, coster, GPU, degrees, CLUSTER, Techniques(zero=3, dp_shard=4, dp_replicate=2),
                               memory)
    assert hybrid.forward_s < got.forward_s


def test_step_sync_per_zero_level():
    degrees = Degrees(pp=2, dp=4, tp=1)
    memory = MemoryModel()
    link = CLUSTER.link(degrees.rank(0, 0), degrees.rank(1, 0))
    g = 3e9
    sync = lambda **kw: step_sync_s(g, 0.0, degrees, CLUSTER, Techniques(**kw), memory)  # noqa: E731
    assert sync(zero=0, dp_shard=4) == pytest.approx(ring_allreduce_s(g, 4, link))
    assert sync(zero=1, dp_shard=4) == pytest.approx(ring_allreduce_s(g, 4, link))  # RS + AG of the same volume
    assert sync(zero=2, dp_shard=4) == pytest.approx(ring_allgather_s(g, 4, link))  # RS ran per micro-batch
    assert sync(zero=3, dp_shard=4) == 0.0
    assert sync(zero=3, dp_shard=2, dp_replicate=2) == pytest.approx(ring_allreduce_s(g / 2, 2, link))


# ---- in the search -------------------------------------------------------------------------
SMALL = "gpt:layers=8,hidden=1024,heads=8,vocab=1024,max_positions=64,dropout=0.1"  # state-bound


@pytest.fixture(scope="module")
def small():
    zoo = load_model(SMALL, batch=1, seq=64)
    return zoo, trace(zoo.model, zoo.example_inputs)


def _plan(small_traced, cap_gib: float | None = None, **choice):
    from parplan.budget import effort_work
    from parplan.planner.bilevel import PlannerConfig, plan_traced
    from parplan.planner.techniques import TechniqueChoice

    config = PlannerConfig(microbatches=8, work=effort_work("quick"), degrees=Degrees(pp=2, dp=4, tp=1),
                           memory_limit=None if cap_gib is None else cap_gib * 2**30, use_mip=False, families=("chain",),
                           techniques=TechniqueChoice(**choice))
    return plan_traced(small_traced, CLUSTER, config)


def test_search_turns_to_sharding_or_recomputation_only_when_the_plain_plan_does_not_fit(small):
    from parplan.errors import ParplanError

    _, traced = small
    plain = _plan(traced)
    assert plain.best.placed.techniques == Techniques(zero=1, dp_shard=4)  # fits: nothing else tried
    # below the ZeRO-1 state of an even split, which any split's fuller rank holds at least
    cap = 0.9 * sum(plain.best.placed.static_bytes) / 2 / 2**30
    with pytest.raises(ParplanError, match="no plan fits the memory cap"):
        _plan(traced, cap, zero=1, recompute="none")
    lean = _plan(traced, cap)
    t = lean.best.placed.techniques
    assert lean.best.fits and (t.zero >= 2 or t.recompute != "none")
    assert lean.best.step_time_s >= plain.best.step_time_s  # memory is bought with time
    # each fixed technique is what the plan then uses
    fixed = _plan(traced, None, zero=3, recompute="full")
    placed = fixed.best.placed
    assert placed.techniques == Techniques(zero=3, dp_shard=4, recompute="full")
    assert max(placed.static_bytes) < max(plain.best.placed.static_bytes)
    cost = placed.technique_cost(fixed.best.schedule.total_microbatches)
    assert cost["recompute_s"] > 0 and cost["sharding_s"] > 0 and cost["held_bytes"] > 0


def test_cli_records_and_reports_the_techniques(tmp_path, capsys):
    from parplan.cli import main
    from parplan.plan import Plan

    out = tmp_path / "p.json"
    argv = ["plan", "gpt:hidden=64,heads=2,layers=2,vocab=128", "--seq", "32", "-m", "4", "--effort", "quick",
            "--pp", "2", "--zero", "3", "--dp-shard", "2", "--dp-replicate", "2", "--recompute", "full",
            "--no-mip", "--quiet", "-o", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "ZeRO-3 (shard 2 × replicate 2), recompute full" in table
    assert "techniques: ZeRO-3 (shard 2 × replicate 2), recompute full: recomputation" in table
    plan = Plan.load(out)
    assert plan.techniques == Techniques(zero=3, dp_shard=2, dp_replicate=2, recompute="full")
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.solver["planning"]["techniques"]["recompute_s"] > 0
    assert main(["show", str(out)]) == 0
    assert "techniques: ZeRO-3 (shard 2 × replicate 2), recompute full: recomputation" in capsys.readouterr().out


LLAMA_70B = "llama:layers=80,hidden=8192,heads=64,kv_heads=8,intermediate=28672,vocab=32000"


@pytest.mark.slow
def test_70b_fits_with_fsdp_where_zero1_does_not():
    """torchtitan's llama3_70b layout (FSDP × TP 8) on 16 H100s, 4096-token sequences: ZeRO-1
    cannot hold 70B parameters' state on PP1 × DP2 × TP8; ZeRO-3 (with recomputation or not)
    fits (docs/benchmarks.md, Issue 20)."""
    from parplan.budget import effort_work
    from parplan.errors import ParplanError
    from parplan.planner.bilevel import PlannerConfig, plan_traced
    from parplan.planner.techniques import TechniqueChoice

    zoo = load_model(LLAMA_70B, batch=1, seq=4096)
    traced = trace(zoo.model, zoo.example_inputs)
    cluster = load_cluster("h100x16")

    def plan(**choice):
        config = PlannerConfig(microbatches=16, work=effort_work("quick"), degrees=Degrees(pp=1, dp=2, tp=8),
                               techniques=TechniqueChoice(**choice))
        return plan_traced(traced, cluster, config).best

    with pytest.raises(ParplanError, match="no plan fits"):
        plan(zero=1, recompute="none")
    found = plan()
    assert found.fits and found.placed.techniques.zero == 3
    full = plan(zero=3, recompute="full")
    assert full.fits and max(full.peak_memory_bytes) < max(found.peak_memory_bytes)


def test_layouts_and_the_order_techniques_are_tried_in(small):
    from parplan.planner.techniques import MAX_TRIES, TechniqueChoice, technique_choices

    assert TechniqueChoice().layouts(8, 4) == [(8, 1), (4, 2)]  # whole group, then one shard group per node
    assert TechniqueChoice(dp_shard=2).layouts(8, 4) == [(2, 4)]
    assert TechniqueChoice(dp_replicate=2).layouts(8, None) == [(4, 2)]
    assert TechniqueChoice(dp_shard=2, dp_replicate=2).layouts(8, None) == []
    _, traced = small
    degrees = Degrees(pp=2, dp=4, tp=1)
    costers: dict = {}

    def coster_for(d, recompute, sp):
        return costers.setdefault((d, recompute, sp), Coster(traced, recompute=recompute, sequence_parallel=sp))

    def choices(cap, **fixed):
        first, rest = technique_choices(TechniqueChoice(**fixed), degrees, coster_for=coster_for, cluster=CLUSTER,
                                        memory=MemoryModel(), microbatches=8, cap=cap)
        return first, rest()

    first, rest = choices(80 * 2**30)  # room: the plain choice alone first; the rest only if it fails
    assert first == [Techniques(zero=1, dp_shard=4)]
    assert 0 < len(rest) <= MAX_TRIES - 1 and Techniques(zero=1, dp_shard=4) not in rest
    first, rest = choices(1.0)  # nothing can fit: no plain pass, the leanest alone
    assert first == [] and len(rest) == 1 and rest[0].zero == 3
    first, rest = choices(80 * 2**30, zero=2, recompute="selective")  # all fixed: one choice
    assert first == [Techniques(zero=2, dp_shard=4, recompute="selective")] and rest == []
