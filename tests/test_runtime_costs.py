"""What the runtime adds, charged by the one cost path: a node group's per-action overhead and
compute share (parplan/cost/hardware.py, schedule/stage_costs.py), against closed forms."""

from __future__ import annotations

import pytest

from parplan.baselines import build_baseline
from parplan.cost.hardware import load_cluster
from parplan.errors import ParplanError
from parplan.schedule.simulate import simulate
from parplan.schedule.stage_costs import StageCost, placement_costs

GPU_FILE = "h100-sxm.yaml"


def _cluster_yaml(tmp_path, extra: str = "") -> str:
    from parplan.cost.hardware import PROFILE_DIR

    (tmp_path / GPU_FILE).write_text((PROFILE_DIR / GPU_FILE).read_text())
    path = tmp_path / "pair.yaml"
    path.write_text(f"""kind: cluster
name: pair
groups:
- gpu: {GPU_FILE}
  nodes: 1
  gpus_per_node: 2
  intra_node:
    bandwidth: {{value: 4.0e9, unit: B/s, source: test}}
    latency: {{value: 5.0e-5, unit: s, source: test}}
    efficiency: {{value: 1.0, unit: fraction, source: test}}
{extra}""")
    return str(path)


def test_runtime_fields_load_with_units_and_default_to_nothing(tmp_path):
    bundled = load_cluster("h100x8").groups[0]
    assert (bundled.action_overhead_s, bundled.compute_share) == (0.0, 1.0)  # GPU profiles unchanged
    node = load_cluster(_cluster_yaml(tmp_path, "  action_overhead: {value: 3.0e-4, unit: s, source: test}\n"
                                                "  compute_share: {value: 0.5, unit: fraction, source: test}\n")).group(1)
    assert (node.action_overhead_s, node.compute_share) == (3.0e-4, 0.5)
    with pytest.raises(ParplanError, match=r"action_overhead.unit is 'ms' but the expected unit is 's'"):
        load_cluster(_cluster_yaml(tmp_path, "  action_overhead: {value: 0.3, unit: ms, source: test}\n"))
    with pytest.raises(ParplanError, match=r"compute_share.value = 2.0 must be <= 1"):
        load_cluster(_cluster_yaml(tmp_path, "  compute_share: {value: 2.0, unit: fraction, source: test}\n"))
    with pytest.raises(ParplanError, match="compute_share = 0"):
        StageCost(forward=1, backward_input=1, backward_weight=1, activation=0, params=0, compute_share=0)


def test_each_action_pays_the_overhead_once_and_compute_is_slowed_by_the_share():
    o, share, kappa = 0.25, 0.5, 0.1
    stages = [StageCost(forward=1.0, backward_input=2.0, backward_weight=1.5, activation=1, params=1, transfer=0.3,
                        action_overhead=o, compute_share=share),
              StageCost(forward=1.2, backward_input=2.6, backward_weight=0.7, activation=1, params=1,
                        action_overhead=o, compute_share=share)]
    costs = placement_costs(stages, transfer_contention=kappa)
    # F/share + overhead (+ the send's contention on stage 0's F, the gradient's on stage 1's I)
    assert costs.forward == pytest.approx((1.0 / share + o + kappa * 0.3, 1.2 / share + o))
    assert costs.backward_input == pytest.approx((2.0 / share + o, 2.6 / share + o + kappa * 0.3))
    assert costs.backward_weight == pytest.approx((1.5 / share + o, 0.7 / share + o))
    assert costs.transfer == (0.3, 0.0)  # the link's latency is the transfer's, not charged again
    inference = placement_costs(stages, mode="inference")
    assert inference.forward == pytest.approx((1.0 / share + o, 1.2 / share + o))
    assert inference.backward_input == inference.backward_weight == (0.0, 0.0)


def test_the_simulated_step_grows_by_the_closed_form():
    """1F1B on N equal stages without transfers: makespan (M + N − 1)(F + B). With the runtime's
    overhead o and share s, F → F/s + o and B = I + W → (I + W)/s + 2o."""
    n, m, f, i, w, t = 3, 5, 1.0, 1.4, 0.9, 0.0
    o, share = 0.05, 0.5

    def step(overhead: float, compute_share: float) -> float:
        stage = StageCost(forward=f, backward_input=i, backward_weight=w, activation=1, params=1, transfer=t,
                          action_overhead=overhead, compute_share=compute_share)
        return simulate(build_baseline("1f1b", n, m), placement_costs([stage] * n)).makespan

    assert step(0.0, 1.0) == pytest.approx((m + n - 1) * (f + i + w))
    charged = (m + n - 1) * ((f / share + o) + ((i + w) / share + 2 * o))
    assert step(o, share) == pytest.approx(charged)


def test_the_planner_charges_the_node_group_on_every_stage(tmp_path):
    """The bi-level planner's placement costs (planner/lower.py:place) read the same fields:
    the same split on a cluster with overhead and half a device costs exactly F/s + o more."""
    from parplan.planner import Degrees
    from parplan.planner.costing import Coster
    from parplan.planner.lower import place
    from parplan.planner.memory import MemoryModel
    from parplan.planner.units import Granularity, coarsen
    from parplan.schedule.placement import family
    from parplan.trace import trace
    from parplan.zoo import load_model

    zoo = load_model("gpt:layers=4,hidden=64,heads=2,vocab=256", batch=1, seq=32)
    traced = trace(zoo.model, zoo.example_inputs)
    units = coarsen(traced, Granularity.LAYER)
    plain = load_cluster(_cluster_yaml(tmp_path))
    slowed = load_cluster(_cluster_yaml(tmp_path, "  action_overhead: {value: 1.0e-3, unit: s, source: test}\n"
                                                  "  compute_share: {value: 0.25, unit: fraction, source: test}\n"))
    split = [0] * (len(units.units) // 2) + [1] * (len(units.units) - len(units.units) // 2)
    degrees = Degrees(pp=2, dp=1, tp=1)
    memory = MemoryModel()
    a = place(units, Coster(traced), plain, degrees, family("chain"), split, memory).costs
    b = place(units, Coster(traced), slowed, degrees, family("chain"), split, memory).costs
    kappa = plain.gpu(0).efficiency.transfer_contention
    extra_f = [kappa * a.transfer[0], 0.0]
    for s in range(2):
        assert b.forward[s] == pytest.approx((a.forward[s] - extra_f[s]) / 0.25 + extra_f[s] + 1e-3)
        assert b.backward_weight[s] == pytest.approx(a.backward_weight[s] / 0.25 + 1e-3)
