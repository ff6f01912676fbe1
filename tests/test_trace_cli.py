"""`parplan trace` / `parplan profile`, the examples, and the scale benchmark (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parplan.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL_GPT = "gpt:hidden=96,heads=6,layers=3,vocab=211,max_positions=64"


def test_trace_json_summary(capsys):
    assert main(["trace", SMALL_GPT, "--batch", "3", "--seq", "40", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["capture"] == "torch.export" and s["capture_seconds"] > 0
    assert s["forward_flops"] > 0 and s["backward_input_flops"] > s["forward_flops"] > s["backward_weight_flops"]
    assert s["repeated_blocks"][0]["instances"] == 3 and s["saved_activation_bytes"] > 0
    assert s["parameters"] == 96 * 211 + 64 * 96 + 3 * (12 * 96 * 96 + 13 * 96) + 2 * 96


def test_trace_writes_graph_file(tmp_path, capsys):
    out = tmp_path / "graph.json"
    assert main(["trace", SMALL_GPT, "--seq", "16", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "repeated block: 3 x Block" in text and "torch.export" in text
    graph = json.loads(out.read_text())
    names = {n["name"] for n in graph["nodes"]}
    assert all(e["source"] in names and e["target"] in names for e in graph["edges"])
    assert sum(n["param_count"] for n in graph["nodes"]) == graph["summary"]["parameters"]


def test_failing_trace_writes_nothing(tmp_path, capsys):
    out = tmp_path / "graph.json"
    assert main(["trace", "gpt:hidden=97,heads=6", "-o", str(out)]) == 2
    assert "not divisible" in capsys.readouterr().err and not out.exists()
    assert main(["trace", SMALL_GPT, "--seq", "65", "-o", str(out)]) == 2
    assert "max_positions=65" in capsys.readouterr().err and not out.exists()


def test_profile_json_totals_and_modules(capsys):
    assert main(["profile", SMALL_GPT, "--hardware", "h100-sxm", "--seq", "32", "--depth", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    keys = {"forward_s", "backward_input_s", "backward_weight_s", "activation_bytes"}
    assert keys <= set(r["total"]) and r["hardware"] == "h100-sxm"
    assert {"h.0", "h.1", "h.2", "wte", "lm_head"} <= set(r["modules"])
    for k in ("forward_s", "backward_input_s", "backward_weight_s"):
        assert sum(m[k] for m in r["modules"].values()) == pytest.approx(r["total"][k])
    assert r["modules"]["h.0"]["forward_s"] == pytest.approx(r["modules"]["h.2"]["forward_s"])


def test_profile_depth_one_and_cluster_hardware(capsys):
    assert main(["profile", SMALL_GPT, "--hardware", "h100x4-a100x4", "--seq", "64", "--depth", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "h" in r["modules"] and "h.0" not in r["modules"] and r["hardware"] == "h100-sxm"


def test_profile_slower_gpu_predicts_more_time(capsys):
    totals = {}
    for hw in ("a100-80gb-sxm", "b200"):
        assert main(["profile", "gpt:hidden=1024,heads=8,layers=2", "--hardware", hw, "--seq", "1024", "--json"]) == 0
        totals[hw] = json.loads(capsys.readouterr().out)["total"]["forward_s"]
    assert totals["a100-80gb-sxm"] > 2 * totals["b200"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_measure_without_gpu_exits_2(tmp_path, capsys):
    cache = tmp_path / "cache.json"
    assert main(["profile", SMALL_GPT, "--hardware", "h100-sxm", "--measure", "--cache", str(cache)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err and not cache.exists()


def test_measured_replay_machinery_on_cpu():
    """The replay that measured mode runs on a GPU, exercised on CPU: every non-view
    signature gets a cost and op_cost uses it."""
    from parplan.cost import load_gpu, op_cost
    from parplan.cost.measure import measure_graph
    from parplan.trace import trace
    from parplan.zoo import build

    z = build("llama", batch=2, seq=8, vocab=50, hidden=32, heads=4, kv_heads=2, layers=1, intermediate=40, dtype="float32")
    t = trace(z.model, z.example_inputs)
    measured = measure_graph(t, device="cpu", warmup=0, repeat=1)
    assert set(measured) == {n.signature for n in t.nodes if n.kind.value != "view"}
    lin = next(n for n in t.nodes if n.op == "linear" and n.module_path.endswith("attn.q"))
    assert measured[lin.signature].backward_input_s > 0 and measured[lin.signature].backward_weight_s > 0
    assert op_cost(lin, load_gpu("h100-sxm"), measured=measured).measured


def test_unknown_hardware_and_bad_depth_are_user_errors(capsys):
    assert main(["profile", SMALL_GPT, "--hardware", "h900"]) == 2
    assert "unknown hardware profile 'h900'" in capsys.readouterr().err
    assert main(["profile", SMALL_GPT, "--hardware", "h100-sxm", "--depth", "-1"]) == 2


TINY_GPT = "gpt:hidden=64,heads=2,layers=2,vocab=128"
ATTENTION = "parplan.zoo.gpt.CausalSelfAttention"
NOISY_MODEL = """
import warnings
from torch import nn


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.lin = nn.Linear(8, 8)

    def forward(self, idx):
        for i in range(3):
            warnings.warn(f"noisy warning {i}")
        return self.lin(self.emb(idx))


def make(batch, seq, device="meta", **options):
    return Noisy().to(device)
"""


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "parplan.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


def test_plan_with_a_leaf_never_cuts_inside_a_leaf_instance(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", TINY_GPT, "--seq", "32", "-m", "4", "--pp", "2", "--effort", "quick", "-q", "-o", str(out)]
    assert main([*argv, "--leaf", ATTENTION]) == 0
    pieces = [p for stage in json.loads(out.read_text())["stages"] for p in stage["pieces"]]
    leaves = {"h.0.attn", "h.1.attn"}
    assert not [p for p in pieces if any(p.startswith(leaf + ".") for leaf in leaves)], pieces
    covered = {leaf for leaf in leaves for p in pieces if leaf == p or leaf.startswith(p + ".")}
    assert covered == leaves
    capsys.readouterr()
    assert main(argv) == 0  # without the leaf the attention's projections are pieces of their own
    assert "h.1.attn.qkv" in {p for stage in json.loads(out.read_text())["stages"] for p in stage["pieces"]}


def test_profile_honours_leaf(capsys):
    argv = ["profile", TINY_GPT, "--hardware", "h100-sxm", "--seq", "16", "--depth", "3", "--json"]
    assert main([*argv, "--leaf", ATTENTION]) == 0
    modules = json.loads(capsys.readouterr().out)["modules"]
    assert "h.0.attn" in modules and "h.0.attn.qkv" not in modules


def test_capture_warnings_are_one_note_and_debug_lists_them(tmp_path):
    model = tmp_path / "noisy.py"
    model.write_text(NOISY_MODEL)
    plain = _cli("trace", f"{model}:make", "--seq", "4")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: torch emitted ") and "3 distinct" in lines[0], lines
    assert "first: UserWarning: noisy warning 0" in lines[0] and "--debug" in lines[0]
    debug = _cli("trace", f"{model}:make", "--seq", "4", "--debug")
    assert debug.returncode == 0 and "warnings.warn" not in debug.stderr
    assert [ln.strip() for ln in debug.stderr.splitlines()[1:]] == [f"UserWarning: noisy warning {i}" for i in range(3)]


def test_plan_prints_one_note_for_capture_warnings(tmp_path):
    model = tmp_path / "noisy.py"
    model.write_text(NOISY_MODEL)
    proc = _cli("plan", f"{model}:make", "--seq", "4", "-m", "8", "--pp", "2", "--effort", "quick", "-q")
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if "noisy warning" in ln]
    assert len(notes) == 1 and notes[0].startswith("note: torch emitted"), proc.stderr


@pytest.mark.parametrize("script", ["trace_gpt.py", "stage_costs.py"])
def test_examples_run_and_assert(script):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_trace_scale_benchmark_meets_limits():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trace_scale.py"), "--json"],
                          capture_output=True, text=True, timeout=600)
    results = json.loads(proc.stdout)
    assert proc.returncode == 0 and all(r["ok"] for r in results), results
