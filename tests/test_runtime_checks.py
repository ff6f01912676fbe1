"""`parplan run` on a bad plan exits 2 before any process starts; a rank that fails anyway is named.

Each broken plan is a valid chain plan edited the way a hand edit or another tool would
break it (an order that lost an action, a piece renamed, moved or dropped, the wrong rank
count). The launcher is replaced by one that
fails the test, so "exit 2" also proves no torchrun job was started. The last test injects
a fault into rank 1 of a real 2-rank torchrun job.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from parplan.cli import main
from parplan.runtime import launch as launch_module

TINY = "gpt:hidden=64,heads=2,layers=2,vocab=128,tie_embeddings=false"
CHAIN = ["--schedule", "1f1b", "-n", "2", "-m", "2", "--batch", "2", "--seq", "32"]


@pytest.fixture(scope="module")
def plan_data(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("plan") / "p.json"
    assert main(["plan-chain", TINY, *CHAIN, "-o", str(path)]) == 0
    data = json.loads(path.read_text())
    assert [s["pieces"] for s in data["stages"]] == [["wte", "wpe"], ["h.0", "h.1", "ln_f", "lm_head"]]
    return data


@pytest.fixture
def no_torchrun(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("torchrun was started for a plan the parent process should have refused")

    monkeypatch.setattr(launch_module, "_torchrun", refuse)


def _drop_0f0(d):
    d["schedule"]["orders"][0].remove("0F0")
    d["timeline"][0] = [step for step in d["timeline"][0] if step[0] != "0F0"]


def _move_lm_head(d):
    d["stages"][1]["pieces"].remove("lm_head")
    d["stages"][0]["pieces"].append("lm_head")


BROKEN = {
    # name: (edit of the plan's JSON, extra run flags, phrase of the rule in the message)
    "lost-action": (_drop_0f0, [], "V3"),
    "unknown-module": (lambda d: d["stages"][1]["pieces"].__setitem__(0, "h.7"), [],
                       "piece 'h.7' is not a module of GPT"),
    "piece-on-two-stages": (lambda d: d["stages"][0]["pieces"].append("h.0"), [],
                            "piece 'h.0' is listed on stages 0 and 1: each piece runs on one stage"),
    "weight-owned-twice": (lambda d: d["stages"][0]["pieces"].append("h"), [],
                           "belongs to exactly one stage"),
    "weight-owned-by-none": (lambda d: d["stages"][1]["pieces"].remove("h.1"), [],
                             "lies in no stage's pieces: the pieces must cover the model; add 'h.1'"),
    "piece-before-its-input": (_move_lm_head, [], "must follow the model's data flow"),
    "rank-count": (lambda d: None, ["--nproc", "3"], "--nproc 3 but the plan has 2 ranks"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_bad_plan_exits_2_before_any_process_starts(case, plan_data, tmp_path, capsys, no_torchrun):
    edit, flags, phrase = BROKEN[case]
    data = json.loads(json.dumps(plan_data))
    edit(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    code = main(["run", str(path), *(flags or ["--nproc", "2"]), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("parplan run: error: ") and phrase in err, err
    assert "Traceback" not in err


FAULTY_MODEL = textwrap.dedent('''
    """GPT whose output goes through an op that raises on rank 1 (torchrun's RANK) while a step runs."""
    import os

    import torch

    from parplan.zoo import build

    try:
        torch.ops.parplan_test.fault
    except (AttributeError, RuntimeError):
        @torch.library.custom_op("parplan_test::fault", mutates_args=())
        def _fault(x: torch.Tensor) -> torch.Tensor:
            if os.environ.get("RANK") == "1":
                raise RuntimeError("injected fault on rank 1")
            return x.clone()

        @_fault.register_fake
        def _(x):
            return torch.empty_like(x)

        _fault.register_autograd(lambda ctx, grad: grad)


    def make(batch, seq, device, **options):
        model = build("gpt", batch=batch, seq=seq, device=device, hidden=64, heads=2, layers=2, vocab=128,
                      tie_embeddings=False).model
        forward = model.forward
        model.forward = lambda idx: torch.ops.parplan_test.fault(forward(idx))
        return model
''')


@pytest.mark.parametrize("debug", [False, True])
def test_a_failing_rank_is_named_with_its_exception(debug, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the model spec is a relative path, as workers see the same folder
    (tmp_path / "faulty.py").write_text(FAULTY_MODEL)
    assert main(["plan-chain", "faulty.py:make", *CHAIN, "-o", "plan.json"]) == 0
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the error log lands here
    capsys.readouterr()
    code = main(["run", "plan.json", "--nproc", "2", "--steps", "1", *(["--debug"] if debug else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    # --debug prints every failed rank's traceback, then (as without it) the error message last
    tracebacks, _, message = err.partition("parplan run: error: ")
    first, *rest = message.splitlines()
    assert first == "rank 1 failed: RuntimeError: injected fault on rank 1", err
    assert any(line.startswith("the torchrun job exited with status 1") for line in rest), err
    (log,) = tmp_path.glob("parplan-run-*-errors.log")
    assert str(log) in err and "injected fault on rank 1" in log.read_text()
    assert ("Traceback (most recent call last)" in tracebacks) == debug
    assert "Traceback" not in message


def test_the_earliest_failure_is_reported_and_an_unreadable_record_skipped(tmp_path):
    errors = tmp_path / "errors"
    errors.mkdir()
    for rank, when, kind in ((0, 2.0, "ConnectionError"), (1, 1.0, "ValueError"), (3, 1.0, "KeyError")):
        (errors / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "type": kind, "message": f"boom {rank}", "outer": None, "time": when,
             "traceback": f"Traceback (most recent call last):\n{kind}: boom {rank}\n"}))
    (errors / "rank2.json").write_text('{"rank": 2, "ty')  # killed while writing
    err = launch_module._failure(errors, 1, "torchrun output", workdir=str(tmp_path))
    assert str(err).startswith("rank 1 failed: ValueError: boom 1\nthe torchrun job exited with status 1 "
                               "(ranks [0, 3] failed after rank 1)")
    assert [line for line in err.tracebacks.splitlines() if line.startswith("----")] == [
        "---- rank 0: ConnectionError ----", "---- rank 1: ValueError ----", "---- rank 3: KeyError ----"]
    assert "torchrun output" in (tmp_path / err.log).read_text()
    bare = launch_module._failure(tmp_path / "none", 1, "Traceback (most recent call last):\nOSError: x", workdir=None)
    assert "no rank reported an exception" in str(bare) and "OSError: x" in str(bare)


def test_run_says_when_the_prediction_is_for_another_machine():
    from types import SimpleNamespace

    from parplan.cli.run import _other_machine

    def plan(name, devices):
        return SimpleNamespace(cluster=SimpleNamespace(name=name, devices=devices))

    # a plan file from before device_names: only a CPU run is known to be another machine
    h100 = plan("h100x8", [{"name": "h100-sxm", "pipeline_rank": r} for r in range(2)])
    note = _other_machine(h100, "cpu", "AMD EPYC")
    assert note and "h100-sxm (h100x8)" in note and "ran on AMD EPYC (cpu)" in note and "parplan calibrate" in note
    assert _other_machine(h100, "cuda:0", "NVIDIA H100 80GB HBM3") is None
    local = plan("local-cpu", [{"name": f"cpu:{r}", "kind": "cpu"} for r in range(2)])
    assert _other_machine(local, "cpu", "AMD EPYC") is None
    # with the profile's device names: a GPU profile run on a CPU, on another GPU, and a CPU
    # profile calibrated on another CPU are all named; the machine it was calibrated on is not
    named = plan("h100x8", [{"name": "h100-sxm", "device_names": ["NVIDIA H100 80GB HBM3"]}] * 2)
    assert "NVIDIA H100 80GB HBM3" in _other_machine(named, "cpu", "AMD EPYC")
    assert "ran on NVIDIA A100-SXM4-80GB (cuda:0)" in _other_machine(named, "cuda:0", "NVIDIA A100-SXM4-80GB")
    assert _other_machine(named, "cuda:1", "NVIDIA H100 80GB HBM3") is None
    xeon = plan("calibrated-xeon-x2", [{"name": "calibrated-xeon", "device_names": ["Intel Xeon"]}] * 2)
    assert "Intel Xeon" in _other_machine(xeon, "cpu", "AMD EPYC")
    assert _other_machine(xeon, "cpu", "Intel Xeon") is None
