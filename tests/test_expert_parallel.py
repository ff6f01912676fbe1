"""Expert parallelism in the planner: MoE layers in the trace, all-to-all costs, EP degrees,
expert memory, and the errors for EP that cannot apply."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from parplan.cost import load_cluster
from parplan.errors import ParplanError
from parplan.planner import Degrees, PlannerConfig, plan_traced
from parplan.planner.costing import Coster
from parplan.planner.degrees import candidate_degrees
from parplan.planner.experts import a2a_seconds, check_ep
from parplan.trace import trace
from parplan.zoo import load_model

MOE = ("deepseek-moe:layers=3,hidden=256,heads=4,kv_heads=4,head_dim=64,experts=16,top_k=4,shared_experts=1,"
       "expert_hidden=128,intermediate=512,first_dense_layers=1,vocab=512")
DENSE = "llama:layers=2,hidden=128,heads=4,kv_heads=2,intermediate=256,vocab=512"


@pytest.fixture(scope="module")
def moe():
    zoo = load_model(MOE, batch=1, seq=256)
    return zoo, trace(zoo.model, zoo.example_inputs)


def test_the_trace_finds_each_moe_layer_and_its_routed_experts(moe):
    zoo, traced = moe
    layers = traced.moe_layers
    assert [layer.path for layer in layers] == ["layers.1.mlp", "layers.2.mlp"]
    first = layers[0]
    assert (first.experts, first.top_k, first.tokens, first.hidden, first.dtype_bytes) == (16, 4, 256, 256, 2)
    assert first.expert_params == ("layers.1.mlp.w_gate", "layers.1.mlp.w_up", "layers.1.mlp.w_down")
    ops = [traced.node(n) for n in first.routed_ops]
    assert [o.op for o in ops if o.op == "bmm"] == ["bmm"] * 3
    assert not any(o.module_path.endswith(("router", "shared.gate", "shared.up", "shared.down")) for o in ops)


def _group(cluster, degrees, pp_rank=0):
    return [cluster.placement(degrees.rank(d, pp_rank))[1] for d in range(degrees.ep)]


def test_all_to_all_time_follows_the_links_the_group_spans(moe):
    _, traced = moe
    layer = traced.moe_layers[0]
    c16 = load_cluster("h100x16")
    nvlink, ib = c16.groups[0].intra_node, c16.inter_node
    inside = Degrees(pp=2, dp=8, tp=1, ep=8)
    assert len(set(_group(c16, inside))) == 1  # EP replicas fill a node
    t = a2a_seconds(layer, inside, c16, 0)
    assert (layer.dispatch_bytes, layer.route_nodes) == (1, 4)  # the zoo's DeepSeek: FP8 dispatch, 4 nodes
    want = lambda b: nvlink.latency_s + layer.tokens * layer.top_k * 7 / 8 * layer.hidden * b / nvlink.a2a_bandwidth  # noqa: E731
    assert t.dispatch == pytest.approx(want(1)) and t.other == pytest.approx(want(2))
    across = Degrees(pp=1, dp=16, tp=1, ep=16)
    t16 = a2a_seconds(layer, across, c16, 0)
    remote = 1 - (1 - 8 / 16) ** layer.top_k  # copies per token to the other node
    net = ib.latency_s + layer.tokens * remote * layer.hidden * 2 / ib.a2a_bandwidth
    near = nvlink.latency_s + layer.tokens * layer.top_k * 7 / 16 * layer.hidden * 2 / nvlink.a2a_bandwidth
    assert t16.other == pytest.approx(max(net, near))
    wide = dataclasses.replace(layer, top_k=8, route_nodes=0)
    limited = dataclasses.replace(wide, route_nodes=1)
    c64 = load_cluster("h100x64")
    big = Degrees(pp=1, dp=64, tp=1, ep=64)  # 8 nodes: a token reaches ~5 others unless limited
    assert a2a_seconds(limited, big, c64, 0).other < a2a_seconds(wide, big, c64, 0).other
    assert a2a_seconds(layer, Degrees(pp=2, dp=8, tp=1), c16, 0).total == 0


def test_expert_parameters_divide_by_ep_and_their_optimizer_shards_over_expert_dp(moe):
    _, traced = moe
    gpu = load_cluster("h100x16").gpu(0)
    names = [n.name for n in traced.nodes]
    one, four = Coster(traced).ops(names, gpu), Coster(traced, ep=4).ops(names, gpu)
    expert_bytes = sum(p.numel() * 2 for n, p in moe[0].model.named_parameters() if n.endswith(("w_gate", "w_up", "w_down")))
    assert one.param_bytes - four.param_bytes == pytest.approx(expert_bytes * 3 / 4)
    assert four.expert_param_bytes == pytest.approx(expert_bytes / 4)
    assert (one.forward_s, one.backward_input_s) == (four.forward_s, four.backward_input_s)


def test_ep_degrees_divide_dp_and_the_experts(moe):
    _, traced = moe
    degrees = candidate_degrees(load_cluster("h100x16"), microbatches=16, max_pp=4, experts=(16,))
    assert {d.ep for d in degrees if d.dp == 8} == {1, 2, 4, 8}
    assert all(d.dp % d.ep == 0 and 16 % d.ep == 0 for d in degrees)
    fixed = candidate_degrees(load_cluster("h100x16"), microbatches=16, max_pp=4, experts=(16,), ep=4)
    assert fixed and {d.ep for d in fixed} == {4}
    with pytest.raises(ParplanError, match="does not divide the 16 routed experts"):
        check_ep(traced, 3)
    with pytest.raises(ParplanError, match="does not divide the data-parallel degree 2"):
        check_ep(traced, 4, dp=2)


def test_a_plan_with_ep_hides_all_to_alls_and_beats_in_line_schedules(moe):
    _, traced = moe
    config = PlannerConfig(microbatches=64, work=0.5, degrees=Degrees(pp=2, dp=8, tp=1), ep=8,
                           families=("chain", "dualpipe"))
    result = plan_traced(traced, load_cluster("h100x16"), config)
    best = result.best
    assert best.placed.degrees.ep == 8 and best.placed.costs.communicates
    by_name = {e.label: e for e in result.baselines}
    assert by_name["dualpipe"].step_time_s < by_name["1f1b"].step_time_s
    assert best.step_time_s <= min(e.step_time_s for e in result.baselines if e.fits) + 1e-12
    # replicas of one stage share their experts: less static memory than without EP
    no_ep = plan_traced(traced, load_cluster("h100x16"), dataclasses.replace(config, ep=1))
    assert max(best.placed.static_bytes) < max(no_ep.best.placed.static_bytes)


def _cli(*argv, tmp_path):
    return subprocess.run([sys.executable, "-m", "parplan.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("argv,message", [
    ([MOE, "--ep", "3"], "does not divide the 16 routed experts"),
    ([DENSE, "--ep", "2"], "has no MoE layer"),
    ([MOE, "--pp", "4", "--ep", "8"], "does not divide the data-parallel degree 4"),
])
def test_bad_ep_exits_2_naming_value_rule_and_fix(tmp_path, argv, message):
    out = tmp_path / "p.json"
    proc = _cli("plan", *argv, "--cluster", "h100x16", "--seq", "128", "-m", "16", "--effort", "quick",
                "--quiet", "-o", str(out), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_link_without_all_to_all_bandwidth_is_refused_for_ep(tmp_path, moe):
    _, traced = moe
    text = _profile("h100x16").read_text()
    stripped = "\n".join(line for line in text.splitlines() if "all_to_all_compute" not in line)
    stripped = re.sub(r", all_to_all_bandwidth: \{[^}]*\}", "", stripped)
    path = tmp_path / "noa2a.yaml"
    path.write_text(stripped)
    cluster = load_cluster(str(path))
    with pytest.raises(ParplanError, match="has no all_to_all_bandwidth"):
        a2a_seconds(traced.moe_layers[0], Degrees(pp=2, dp=8, tp=1, ep=8), cluster, 0)
    proc = _cli("plan", MOE, "--cluster", str(path), "--seq", "128", "-m", "16", "--pp", "2", "--ep", "8",
                "--effort", "quick", "--quiet", tmp_path=tmp_path)
    assert proc.returncode == 2 and "all_to_all_bandwidth" in proc.stderr


def _profile(name):
    from parplan.cost.hardware import PROFILE_DIR

    return PROFILE_DIR / f"{name}.yaml"


def test_plan_json_records_the_ep_degree_and_show_says_cells_run_in_line(tmp_path):
    out = tmp_path / "p.json"
    proc = _cli("plan", MOE, "--cluster", "h100x16", "--seq", "128", "-m", "64", "--pp", "2", "--ep", "4",
                "--placement", "dualpipe", "--effort", "quick", "--quiet", "-o", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(out.read_text())
    assert plan["solver"]["planning"]["expert_parallel"] == 4
    assert "EP4" in plan["solver"]["upper"]["degrees"]
    assert plan["costs"]["phases"] is not None
    assert any("OVERLAP_F_B" in a for order in plan["schedule"]["orders"] for a in order)
    shown = _cli("show", str(out), tmp_path=tmp_path)
    assert shown.returncode == 0 and "executes each cell's halves one after the other" in shown.stdout
