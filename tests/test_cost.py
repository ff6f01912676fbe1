"""Hardware profiles, the cost function, group costs and PipelineCosts."""

from __future__ import annotations

import pytest

from parplan.schedule.costs import PipelineCosts
from parplan.cost import (
    available_profiles,
    group_costs,
    groups_by_module,
    load_cluster,
    load_gpu,
    op_cost,
    overlapped_time,
    pipeline_costs,
    split_contiguous,
    transfer_time,
)
from parplan.cost.hardware import PROFILE_DIR, load_profile_file
from parplan.errors import ParplanError
from parplan.trace import trace
from parplan.trace.graph import GemmShape
from parplan.cost.model import gemm_time
from parplan.zoo import build

GPUS = ("h100-sxm", "h200", "a100-80gb-sxm", "b200")
CLUSTERS = ("h100x8", "h100x64", "h100x4-a100x4")


def test_all_named_profiles_ship_and_every_constant_has_unit_and_source():
    assert set(GPUS + CLUSTERS) <= set(available_profiles())
    assert PROFILE_DIR.parent.name == "cost" and PROFILE_DIR.parent.parent.name == "parplan"  # package data
    for name in GPUS:
        gpu = load_gpu(name)
        assert gpu.constants, name
        for key, c in gpu.constants.items():
            assert c.unit and len(c.source) > 10, (name, key)


def test_cluster_topology_and_links():
    c64 = load_cluster("h100x64")
    assert c64.num_gpus == 64
    assert c64.link(0, 7).name == "nvlink4" and c64.link(7, 8).name == "infiniband-ndr"
    mixed = load_cluster("h100x4-a100x4")
    assert [mixed.gpu(r).name for r in (0, 3, 4, 7)] == ["h100-sxm", "h100-sxm", "a100-80gb-sxm", "a100-80gb-sxm"]
    assert mixed.link(4, 7).name == "nvlink3" and mixed.link(3, 4).name == "infiniband-ndr"
    with pytest.raises(ParplanError, match="outside cluster"):
        mixed.gpu(8)


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


GOOD = (PROFILE_DIR / "h100-sxm.yaml").read_text()


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("hbm_bandwidth: {value: 3.35e12, unit: B/s", "hbm_bandwidth: {value: 3350, unit: GB/s",
         r"hbm_bandwidth.unit is 'GB/s' but the expected unit is 'B/s'"),
        ("gemm_floor: {value: 1.07e-05, unit: s, source:", "gemm_floor: {value: -1, unit: s, source:",
         r"gemm_floor.value = -1"),
        ("  gemm: {value: 0.7796,", "  gemm: {value: 1.7,", r"efficiency.gemm.value = 1.7 must be <= 1"),
        ("launch_floor: {value: 1.327e-05, unit: s, source:", "launch_floor: {value: 1.327e-05, unit: s, sauce:",
         r"launch_floor.source is missing"),
        ("kind: gpu", "kind: gpus", r"expected kind: gpu or kind: cluster"),
    ],
)
def test_malformed_profile_names_field_and_expected_unit(tmp_path, old, new, message):
    assert old in GOOD, old
    with pytest.raises(ParplanError, match=message):
        load_profile_file(_write(tmp_path, GOOD.replace(old, new)))


def test_missing_constant_and_bare_number_are_rejected(tmp_path):
    lines = [ln for ln in GOOD.splitlines() if not ln.startswith("hbm_capacity")]
    with pytest.raises(ParplanError, match=r"hbm_capacity is missing.*unit: bytes"):
        load_profile_file(_write(tmp_path, "\n".join(lines)))
    bare = GOOD.replace(GOOD.splitlines()[[i for i, ln in enumerate(GOOD.splitlines()) if ln.startswith("hbm_capacity")][0]],
                        "hbm_capacity: 80e9")
    with pytest.raises(ParplanError, match="has no unit or source"):
        load_profile_file(_write(tmp_path, bare))


def test_transfer_time_is_latency_plus_bytes_over_effective_bandwidth():
    link = load_cluster("h100x64").inter_node
    assert transfer_time(0, link) == 0.0
    one_gb = transfer_time(1e9, link)
    assert one_gb == pytest.approx(link.latency_s + 1e9 / (link.bandwidth * link.efficiency))
    assert transfer_time(2e9, link) - one_gb == pytest.approx(1e9 / (link.bandwidth * link.efficiency))
    nvl = load_cluster("h100x8").link(0, 1)
    assert transfer_time(1e9, nvl) < one_gb


def test_overlap_is_not_free_on_an_h100():
    gpu = load_gpu("h100-sxm")
    gemm, copy = 1471.552e-6, 726.784e-6  # overlap.jsonl: 8192^3 GEMM and one 1 GiB copy, alone
    wall = overlapped_time(gemm, copy, gpu)
    assert gemm + 0.9 * copy < wall <= gemm + copy
    assert wall == pytest.approx(2174.144e-6, rel=0.03)  # the measured concurrent time
    assert gpu.efficiency.fb_overlap_ratio > 1.0


def test_small_gemms_are_far_from_peak_and_newer_gpus_are_faster():
    h100 = load_gpu("h100-sxm")
    small, big = GemmShape(m=1024, n=1024, k=1024), GemmShape(m=8192, n=8192, k=8192)
    util = lambda g: 2 * g.m * g.n * g.k / gemm_time(g, "bfloat16", h100, element_bytes=2) / h100.peak("bfloat16")  # noqa: E731
    assert util(small) < 0.2 < 0.6 < util(big)
    times = {n: gemm_time(big, "bfloat16", load_gpu(n), element_bytes=2) for n in GPUS}
    assert times["b200"] < times["h100-sxm"] < times["a100-80gb-sxm"]
    assert gemm_time(big, "float32", h100, element_bytes=4) > 10 * times["h100-sxm"]


@pytest.fixture(scope="module")
def gpt_traced():
    z = build("gpt", batch=3, seq=40, vocab=211, hidden=96, heads=6, layers=5, max_positions=64)
    return z, trace(z.model, z.example_inputs)


def test_op_costs_split_f_i_w_unequally(gpt_traced):
    _, t = gpt_traced
    gpu = load_gpu("h100-sxm")
    costs = [op_cost(n, gpu) for n in t.nodes]
    f, i, w = (sum(getattr(c, k) for c in costs) for k in ("forward_s", "backward_input_s", "backward_weight_s"))
    assert 0 < w < i and f > 0 and i != f
    views = [c for n, c in zip(t.nodes, costs) if n.kind.value == "view" and not n.backward_input_bytes]
    # a view launches no kernel: its forward is the CPU's dispatch alone, its backward nothing
    assert views and all(c.forward_s == gpu.view_floor_s and c.backward_input_s == 0 for c in views)


def test_group_costs_sum_the_ops_and_boundary_is_the_residual(gpt_traced):
    z, t = gpt_traced
    gpu = load_gpu("h100-sxm")
    link = load_cluster("h100x8").link(0, 1)
    groups = groups_by_module(t, [["wte", "wpe", "h.0", "h.1"], ["h.2"], ["h.3", "h.4", "ln_f", "lm_head"]])
    costs = group_costs(t, groups, gpu, link=link)
    assert [c.num_ops for c in costs] == [len(g) for g in groups]
    assert sum(c.forward_s for c in costs) == pytest.approx(sum(op_cost(n, gpu).forward_s for n in t.nodes))
    assert sum(c.param_bytes for c in costs) == t.param_bytes
    residual = 3 * 40 * 96 * 2  # [batch, seq, hidden] bf16
    assert costs[0].boundary_bytes == residual and costs[1].boundary_bytes == residual
    assert costs[2].boundary_bytes == 0
    assert costs[0].transfer_s == pytest.approx(transfer_time(residual, link))
    assert costs[0].activation_bytes > costs[1].activation_bytes  # two blocks + embeddings vs one block
    with pytest.raises(ParplanError, match="disjoint"):
        group_costs(t, [groups[0], groups[0][:1]], gpu)


def test_pipeline_costs_from_a_contiguous_split(gpt_traced):
    _, t = gpt_traced
    gpu = load_gpu("h100-sxm")
    link = load_cluster("h100x8").link(0, 1)
    groups = split_contiguous(t, 3, gpu)
    assert [n for g in groups for n in g] == [n.name for n in t.nodes]
    costs = group_costs(t, groups, gpu, link=link)
    pc = pipeline_costs(costs, gpu)
    assert isinstance(pc, PipelineCosts) and pc.num_stages == 3
    assert pc.overlap_ratio == 1.0  # a cell with nothing to hide runs its halves in turn: F + B (issue 17)
    assert pc.transfer[-1] == 0.0 and all(x > 0 for x in pc.transfer[:-1])
    # contention folds the transfer into the sender's forward
    assert pc.forward[0] == pytest.approx(costs[0].forward_s + gpu.efficiency.transfer_contention * costs[0].transfer_s)
    totals = [c.forward_s + c.backward_input_s + c.backward_weight_s for c in costs]
    assert max(totals) < 2.0 * min(totals)
