"""One cost path: the planner's stage costs, the cost layer's group costs and the chain
planner's stages all reach `PipelineCosts` through `placement_costs`, on equal operator costs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from parplan.cost import group_costs, load_cluster, op_cost, pipeline_costs, split_contiguous
from parplan.cost.contiguous import balanced_contiguous
from parplan.planner.costing import Coster
from parplan.planner.degrees import Degrees
from parplan.planner.lower import place
from parplan.planner.memory import MemoryModel
from parplan.planner.units import Granularity, coarsen
from parplan.schedule.placement import FAMILIES
from parplan.schedule.stage_costs import StageCost, placement_costs
from parplan.trace import trace
from parplan.zoo import load_model

# Llama-like with unequal layers: two dense layers, then two mixture-of-experts layers.
LLAMA_MOE = ("llama:hidden=128,heads=4,kv_heads=2,layers=4,intermediate=352,experts=4,top_k=2,expert_hidden=64,"
             "first_dense_layers=2,vocab=512")
FIELDS = ("forward", "backward_input", "backward_weight", "transfer", "activation", "params")


@pytest.fixture(scope="module")
def traced():
    zoo = load_model(LLAMA_MOE, batch=1, seq=64)
    return trace(zoo.model, zoo.example_inputs)


def _close(a, b, rel=1e-9) -> bool:
    return all(x == pytest.approx(y, rel=rel, abs=0.0) for x, y in zip(a, b, strict=True))


def test_operators_sharing_a_signature_keep_their_own_costs(traced):
    """attn_norm and mlp_norm share a signature, but mlp_norm's input (the residual stream)
    has two consumers, so its I accumulates a gradient more: it must not take attn_norm's cost."""
    # without host floors: on this small model both norms would sit at the CPU's dispatch time
    gpu = replace(load_cluster("h100x8").gpu(0), launch_floor_s=0.0, backward_floor_s=0.0)
    by_path = {n.module_path: n for n in traced.nodes if n.module_path.endswith(("attn_norm", "mlp_norm"))}
    attn, mlp = by_path["layers.0.attn_norm"], by_path["layers.0.mlp_norm"]
    assert attn.signature == mlp.signature and attn.backward_input_bytes != mlp.backward_input_bytes
    coster = Coster(traced)
    for node in traced.nodes:  # every operator, whichever shares its signature first
        c = op_cost(node, gpu)
        assert coster.op(node.name, gpu)[:3] == (c.forward_s, c.backward_input_s, c.backward_weight_s), node.name
    units = coarsen(traced, Granularity.OPERATOR)
    norm_units = [u for u in units.units if u.key in ("layers.0.attn_norm", "layers.0.mlp_norm")]
    assert len(norm_units) == 2 and norm_units[0].tie == norm_units[1].tie
    costs = [coster.unit(u, gpu).backward_input_s for u in norm_units]
    assert costs[0] != costs[1]


def test_planner_stage_costs_equal_the_group_costs(traced):
    """The planner (`place`) and the cost layer (`group_costs` + `pipeline_costs`) on the same
    four contiguous stages: identical PipelineCosts, transfers and contention included."""
    cluster = load_cluster("h100x8")
    gpu = cluster.gpu(0)
    layers = coarsen(traced, Granularity.LAYER)
    split = [min(3, 4 * u // len(layers)) for u in range(len(layers))]
    degrees = Degrees(pp=4, dp=2, tp=1)
    placed = place(layers, Coster(traced), cluster, degrees, FAMILIES["chain"], split, MemoryModel())
    groups = [[op for u, s in zip(layers.units, split) if s == k for op in u.ops] for k in range(4)]
    expected = pipeline_costs(group_costs(traced, groups, gpu, link=degrees.pp_link(cluster, 0, 1)), gpu)
    assert all(x > 0 for x in expected.transfer[:-1]) and len(set(expected.forward)) == 4
    for name in FIELDS:
        assert _close(getattr(placed.costs, name), getattr(expected, name)), name
    assert placed.costs.overlap_ratio == expected.overlap_ratio


def test_placement_costs_folds_contention_once():
    """Unequal costs, non-zero transfers: F grows by κ × its own transfer (the last stage
    sends nothing on), I by κ × the previous boundary; inference drops I and W."""
    stages = [StageCost(forward=1.0 + s, backward_input=2.0 - 0.25 * s, backward_weight=0.5 * s, activation=3.0 + s,
                        params=10.0 - s, transfer=0.1 * (s + 1)) for s in range(4)]
    costs = placement_costs(stages, transfer_contention=0.5, overlap_ratio=0.9)
    assert costs.forward == pytest.approx((1.05, 2.1, 3.15, 4.0))
    assert costs.backward_input == pytest.approx((2.0, 1.8, 1.6, 1.4))
    assert costs.backward_weight == (0.0, 0.5, 1.0, 1.5) and costs.transfer == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert costs.overlap_ratio == 0.9
    inference = placement_costs(stages, transfer_contention=0.5, mode="inference")
    assert inference.forward == costs.forward and set(inference.backward_input + inference.backward_weight) == {0.0}


def test_group_path_is_placement_costs_of_its_groups(traced):
    gpu = load_cluster("h100x8").gpu(0)
    groups = split_contiguous(traced, 3, gpu)
    cost = group_costs(traced, groups, gpu, link=load_cluster("h100x8").link(0, 1))
    stages = [StageCost(forward=g.forward_s, backward_input=g.backward_input_s, backward_weight=g.backward_weight_s,
                        activation=float(g.activation_bytes), params=float(g.param_bytes), transfer=g.transfer_s)
              for g in cost]
    eff = gpu.efficiency
    assert pipeline_costs(cost, gpu) == placement_costs(
        stages, transfer_contention=eff.transfer_contention)


def test_split_contiguous_is_the_planner_split(traced):
    gpu = load_cluster("h100x8").gpu(0)
    weights = [op_cost(n, gpu).forward_s + op_cost(n, gpu).backward_s for n in traced.nodes]
    stage_of = balanced_contiguous(len(weights), 4, lambda u, s: weights[u])
    groups = split_contiguous(traced, 4, gpu)
    assert [g for g, names in enumerate(groups) for _ in names] == stage_of
    loads = [sum(weights[u] for u, s in enumerate(stage_of) if s == k) for k in range(4)]
    assert max(loads) <= max(weights) + sum(weights) / 4  # min–max: within one operator of the mean
