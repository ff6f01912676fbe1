"""The cost model against H100 measurements (shared/calibration/h100, bundled copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parplan.cost import load_gpu, op_cost
from parplan.cost.calibration import (
    H100_DATA,
    build_block_probes,
    build_probes,
    calibration_loss,
    calibration_report,
    fit,
    fit_overlap,
    fitted_constants,
    load_records,
    summarize_errors,
)
from parplan.trace import trace
from parplan.zoo import build

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "calibration" / "h100"


@pytest.fixture(scope="module")
def probes():
    """What the profile was fitted on: the isolated operators and the whole GPT blocks."""
    return build_probes(load_records(H100_DATA / "ops.jsonl")) + build_block_probes(load_records(H100_DATA / "blocks.jsonl"))


def test_bundled_calibration_data_matches_shared_copy():
    if not SHARED.is_dir():
        pytest.skip("no ../shared/calibration/h100 beside this checkout")
    for name in ("ops.jsonl", "overlap.jsonl", "blocks.jsonl", "device.json"):
        assert (H100_DATA / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_calibration_holds(probes):
    gpu = load_gpu("h100-sxm")
    errors = calibration_report(probes, gpu)
    summary = summarize_errors(errors)
    assert summary["gemm"]["count"] >= 60 and summary["attention"]["count"] == 24
    assert summary["gemm"]["median"] <= 0.10
    assert summary["attention"]["median"] <= 0.10
    assert summary["pointwise"]["median"] <= 0.20
    big = [e for e in errors if e.category == "gemm" and e.tokens >= 512]
    worst = max(big, key=lambda e: abs(e.rel_error))
    assert abs(worst.rel_error) <= 0.25, worst


def test_profile_constants_are_the_fit_not_hand_tuned(probes):
    stored = load_gpu("h100-sxm")
    refit = fit(probes, stored)
    assert fit_overlap(load_records(H100_DATA / "overlap.jsonl")) == pytest.approx(
        (stored.efficiency.transfer_contention, stored.efficiency.fb_overlap_ratio), rel=0.01
    )
    # the stored constants sit at the fit's optimum: re-fitting cannot improve them
    assert calibration_loss(probes, stored) <= 1.02 * calibration_loss(probes, refit)
    a, b = fitted_constants(stored), fitted_constants(refit)
    for key in ("gemm", "memory", "attention_forward", "attention_backward", "gemm_floor_s"):
        assert b[key] == pytest.approx(a[key], rel=0.08), key


def test_gpt_block_forward_plus_backward_matches_the_overlap_baseline():
    """Not used in the fit: overlap.jsonl's sequential F + B of one GPT block."""
    gpu = load_gpu("h100-sxm")
    for rec in load_records(H100_DATA / "overlap.jsonl"):
        if rec["op"] != "gpt_block_f_and_b":
            continue
        batch, seq, hidden = rec["shape"]
        z = build("gpt", batch=batch, seq=seq, hidden=hidden, heads=rec["heads"], layers=2, max_positions=seq)
        t = trace(z.model, z.example_inputs)
        block = [op_cost(n, gpu) for n in t.nodes if n.block_instance == "h.1"]
        predicted = sum(c.forward_s + c.backward_s for c in block)
        assert predicted == pytest.approx(rec["sequential_median_us"] * 1e-6, rel=0.2)


def test_analytic_model_vs_operators_measured_on_an_h100():
    """benchmarks/gpu_measure.sh output (H100 SXM, torch 2.11): per-op CUDA-event timings of
    two GPT configs. Blocks were not used in any fit; the lm_head fixed gemm_unaligned."""
    import json

    from parplan.cost.measure import load_cache
    from parplan.zoo import load_model

    gpu = load_gpu("h100-sxm")
    folder = H100_DATA / "measured"
    cache = load_cache(folder / "cache.json", "NVIDIA H100 80GB HBM3")
    for name in ("gpt_a", "gpt_b"):
        run = json.loads((folder / f"{name}.json").read_text())
        z = load_model(run["model"], batch=run["batch"], seq=run["seq"])
        t = trace(z.model, z.example_inputs)
        block = [n for n in t.nodes if n.block_instance == "h.1"]
        for phase in ("forward_s", "backward_input_s", "backward_weight_s"):
            analytic = sum(getattr(op_cost(n, gpu), phase) for n in block)
            measured = sum(getattr(op_cost(n, gpu, measured=cache), phase) for n in block)
            assert analytic == pytest.approx(measured, rel=0.25), (name, phase)
            whole_a = sum(getattr(op_cost(n, gpu), phase) for n in t.nodes)
            whole_m = sum(getattr(op_cost(n, gpu, measured=cache), phase) for n in t.nodes)
            assert whole_a == pytest.approx(whole_m, rel=0.25), (name, phase)
            # the CLI's totals are the cache's timings (the views, never timed, were free then)
            timed = sum(getattr(cache[n.signature], phase) for n in t.nodes if n.signature in cache)
            assert run["total"][phase] == pytest.approx(timed, rel=1e-6)
