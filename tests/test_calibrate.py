"""`parplan calibrate` on this CPU: the quick sweep writes a profile that loads, cites its run in
every constant, predicts its own records, and (with `--links --nproc 2` over gloo) makes a
cluster `parplan plan` plans on."""

from __future__ import annotations

import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from parplan.cli import main
from parplan.cost.calibrate import RunInfo, fit_profile
from parplan.cost.calibration import build_probes, calibration_report, load_records
from parplan.cost.hardware import LinkProfile, load_cluster, load_gpu
from parplan.cost.model import transfer_time
from parplan.runtime.calibrate_links import fit_line

REPO = Path(__file__).resolve().parents[1]
OP_SECTIONS = ("gemm", "attention", "pointwise", "copy")
THREADS_BEFORE = torch.get_num_threads()


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated") / "dev.yaml"
    code = main(["calibrate", "--device", "cpu", "--quick", "--threads", "1", "--out", str(out), "--quiet"])
    assert code == 0
    return out, out.with_suffix(".records.jsonl")


@pytest.fixture(scope="module")
def links_run(device_run):
    gpu_file, _ = device_run
    out = gpu_file.with_name("local.yaml")
    code = main(["calibrate", "--links", "--nproc", "2", "--backend", "gloo", "--gpu", str(gpu_file), "--quick",
                 "--out", str(out), "--quiet"])
    assert code == 0
    return out, out.with_suffix(".records.jsonl")


def test_the_profile_loads_and_every_constant_names_the_run(device_run):
    path, records = device_run
    gpu = load_gpu(str(path))
    assert records.is_file()
    assert {"peak_flops.float32", "peak_flops.bfloat16", "hbm_bandwidth", "launch_floor", "efficiency.gemm",
            "efficiency.transfer_contention"} <= set(gpu.constants)
    for name, constant in gpu.constants.items():
        source = constant.source
        assert "parplan calibrate --device cpu --quick --threads 1" in source, name
        assert f"torch {torch.__version__}" in source and re.search(r"\d{4}-\d\d-\d\dT", source), name
        assert gpu.device_names[0] in source, name


def test_records_are_the_ops_jsonl_format_and_cover_every_group(device_run):
    _, path = device_run
    records = load_records(path)
    assert {r["section"] for r in records} == {*OP_SECTIONS, "layer", "contention", "overlap"}
    for r in records:
        assert {"section", "op", "shape", "dtype", "median_us", "min_us"} <= set(r) and r["median_us"] >= r["min_us"] > 0
    ops = [r for r in records if r["section"] in OP_SECTIONS]
    assert len(build_probes(ops)) == len(ops)  # the calibration's probes read every op record
    assert {r["op"] for r in records if r["section"] == "layer"} == {"gpt_block_fwd", "gpt_block_bwd_input",
                                                                    "gpt_block_bwd_full"}
    assert {r["dtype"] for r in records if r["section"] == "gemm"} == {"float32", "bfloat16"}


def test_fitted_numbers_are_sane_and_come_from_the_records(device_run):
    path, records_path = device_run
    gpu = load_gpu(str(path))
    records = load_records(records_path)
    for dtype in ("float32", "bfloat16"):
        assert 1e9 <= gpu.peak_flops[dtype] <= 1e15
        # the peak is the best forward GEMM rate measured, recomputed here from the raw records
        best = max(2 * math.prod(r["shape"]) / (r["median_us"] * 1e-6) for r in records
                   if r["section"] == "gemm" and r["op"] == "linear_fwd" and r["dtype"] == dtype
                   and r.get("group") != "unaligned")
        assert gpu.peak_flops[dtype] == pytest.approx(best, rel=1e-3)
    copies = [r for r in records if r["section"] == "copy"]
    assert gpu.hbm_bandwidth == pytest.approx(max(2 * r["shape"][0] / (r["median_us"] * 1e-6) for r in copies), rel=1e-3)
    assert gpu.hbm_bandwidth > 0 and 0 < gpu.efficiency.memory <= 1 and 0 < gpu.efficiency.gemm <= 1
    assert gpu.launch_floor_s > 0 and gpu.backward_floor_s > 0


def test_the_profile_predicts_its_records(device_run):
    path, records_path = device_run
    ops = [r for r in load_records(records_path) if r["section"] in OP_SECTIONS]
    errors = [abs(e.rel_error) for e in calibration_report(build_probes(ops), load_gpu(str(path)))]
    assert statistics.median(errors) < 0.30, sorted(errors)
    gemm = [abs(e.rel_error) for e in calibration_report(build_probes(ops), load_gpu(str(path)))
            if e.category == "gemm"]
    assert statistics.median(gemm) < 0.30


def test_the_fit_reruns_from_the_records_file(device_run):
    """The raw records are enough: fitting them again gives the written constants."""
    path, records_path = device_run
    run = RunInfo.here("cpu", command="refit", records_file=records_path.name)
    data, _ = fit_profile(load_records(records_path), run, name="refit")
    gpu = load_gpu(str(path))
    assert data["peak_flops"]["bfloat16"]["value"] == pytest.approx(gpu.peak_flops["bfloat16"])
    assert data["efficiency"]["gemm"]["value"] == pytest.approx(gpu.efficiency.gemm)
    assert data["launch_floor"]["value"] == pytest.approx(gpu.launch_floor_s)
    assert data["efficiency"]["transfer_contention"]["value"] == pytest.approx(gpu.efficiency.transfer_contention)


def test_links_make_a_cluster_that_plans(links_run, device_run, tmp_path, capsys):
    path, records_path = links_run
    cluster = load_cluster(str(path))
    assert cluster.num_gpus == 2 and cluster.gpu(0).name == load_gpu(str(device_run[0])).name
    link = cluster.link(0, 1)
    assert link.bandwidth > 0 and link.latency_s >= 0 and link.a2a_bandwidth and link.a2a_bandwidth > 0
    text = path.read_text()
    assert "gloo, 2 local ranks" in text and "dev.yaml" in text  # the GPU is referenced beside the cluster
    # what the runtime adds, measured on these ranks: the overhead on the real runtime, the core share
    node = cluster.group(0)
    assert node.action_overhead_s >= 0 and 0 < node.compute_share <= 1
    assert "ZB-H1 step" in text and "processes at once" in text and "Step fixed work" in text
    records = load_records(records_path)
    assert {"send_recv", "all_reduce", "all_to_all"} <= {r["op"] for r in records}
    # the link is the least-squares line through the send/recv records: check it at the largest message
    p2p = sorted((r["shape"][0], r["median_us"] * 1e-6) for r in records if r["op"] == "send_recv")
    intercept, slope = fit_line(p2p)
    assert link.bandwidth == pytest.approx(1 / slope, rel=1e-3)
    assert transfer_time(p2p[-1][0], link) == pytest.approx(max(intercept, 0) + slope * p2p[-1][0], rel=1e-3)
    plan = tmp_path / "plan.json"
    code = main(["plan", "gpt:layers=4,hidden=128,heads=4,vocab=256", "--cluster", str(path), "--seq", "64", "-m", "4",
                 "--effort", "quick", "--quiet", "-o", str(plan)])
    out = capsys.readouterr()
    assert code == 0, out.err
    from parplan.plan import Plan

    saved = Plan.load(str(plan))
    assert saved.cluster.name == cluster.name and saved.predicted.step_time > 0
    # the plan names the machine it was costed for, so `parplan run` can tell another one
    assert {tuple(d["device_names"]) for d in saved.cluster.devices} == {cluster.gpu(0).device_names}


def test_fit_line_is_the_relative_least_squares_line():
    import numpy as np

    assert fit_line([(0, 3), (1, 5), (4, 11)]) == pytest.approx((3, 2))  # exact points: the line itself
    noisy = [(4096, 60e-6), (1 << 20, 0.9e-3), (16 << 20, 9e-3), (64 << 20, 50e-3)]
    x, y = np.array(noisy).T
    slope, intercept = np.polyfit(x, y, 1, w=1 / y)  # numpy weights the residuals: w = 1/y is relative error
    assert fit_line(noisy) == pytest.approx((intercept, slope), rel=1e-6)


@pytest.mark.slow
def test_quick_calibration_takes_under_two_minutes(tmp_path):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "parplan.cli", "calibrate", "--device", "cpu", "--quick",
                           "--out", str(tmp_path / "d.yaml"), "--quiet"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - start < 120


def test_fit_link_recovers_a_known_link_and_checks_the_ring_formula():
    """Synthetic records of a 4-rank link with 50 us latency and 1 GB/s: the fit gives them back,
    the all-to-all line counts the 3/4 of a message that leaves each rank, and an all-reduce that
    follows the ring formula exactly shows zero model error."""
    from parplan.planner.costing import ring_allreduce_s
    from parplan.runtime.calibrate_links import fit_link

    sizes = (4096, 1 << 20, 16 << 20)
    ranks = 4
    truth = LinkProfile(name="truth", bandwidth=1e9, latency_s=50e-6, efficiency=1.0)

    def rec(op, nbytes, seconds):
        return {"section": "link", "op": op, "shape": [nbytes], "dtype": "float32", "median_us": seconds * 1e6}

    records = [rec("send_recv", b, 50e-6 + b / 1e9) for b in sizes]
    records += [rec("all_to_all", b, 80e-6 + b * (ranks - 1) / ranks / 2e9) for b in sizes]
    records += [rec("all_reduce", b, ring_allreduce_s(b, ranks, truth)) for b in sizes]
    link, summary = fit_link(records, ranks=ranks, source="synthetic")
    assert link["bandwidth"]["value"] == pytest.approx(1e9, rel=1e-3)
    assert link["latency"]["value"] == pytest.approx(50e-6, rel=1e-3)
    assert link["all_to_all_bandwidth"]["value"] == pytest.approx(2e9, rel=1e-3)
    assert all(s.endswith("synthetic") for s in (c["source"] for c in link.values() if isinstance(c, dict)))
    assert summary["all_reduce"]["ring_model_error"] == pytest.approx([0, 0, 0], abs=2e-3)
    assert "all_gather" not in summary  # not measured: left out, not invented


def test_fit_link_refuses_records_without_send_recv():
    from parplan.errors import ParplanError
    from parplan.runtime.calibrate_links import fit_link

    only_a2a = [{"section": "link", "op": "all_to_all", "shape": [b], "dtype": "float32", "median_us": 10.0 + b / 1e3}
                for b in (1024, 4096)]
    with pytest.raises(ParplanError, match="send/recv could not be measured"):
        fit_link(only_a2a, ranks=2, source="x")


def test_a_one_node_cluster_may_leave_out_inter_node_and_find_its_gpu_beside_it(tmp_path, monkeypatch):
    from parplan.errors import ParplanError

    gpu_text = (REPO / "parplan" / "cost" / "profiles" / "h100-sxm.yaml").read_text()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.yaml").write_text(gpu_text.replace("name: h100-sxm", "name: mine"))
    link = ("{bandwidth: {value: 1e9, unit: B/s, source: s}, latency: {value: 1e-5, unit: s, source: s}, "
            "efficiency: {value: 1.0, unit: fraction, source: s}}")
    one = tmp_path / "sub" / "one.yaml"
    one.write_text(f"kind: cluster\nname: one\ngroups:\n  - {{gpu: mine.yaml, nodes: 1, gpus_per_node: 2, "
                   f"intra_node: {link}}}\n")
    monkeypatch.chdir(tmp_path)  # "mine.yaml" is not in the working directory: found beside one.yaml
    cluster = load_cluster(str(one))
    assert cluster.gpu(1).name == "mine" and cluster.link(0, 1) is cluster.inter_node
    two = tmp_path / "sub" / "two.yaml"
    two.write_text(one.read_text().replace("nodes: 1", "nodes: 2"))
    with pytest.raises(ParplanError, match="inter_node"):
        load_cluster(str(two))


def test_threads_are_restored_after_an_in_process_run(device_run):
    """The module fixture ran `--threads 1` in this process; torch keeps its own setting."""
    import os

    assert torch.get_num_threads() == THREADS_BEFORE or os.cpu_count() == 1
