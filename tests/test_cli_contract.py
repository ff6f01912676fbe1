"""The CLI contract: bad input exits 2 with a message and no traceback, a bug exits 1 with one
line (`--debug` shows the traceback), and a failing command leaves no output file behind.

The table below runs every command on bad flags, unknown names, broken model files, broken
hardware profiles and plan files, and output paths that cannot be written; the property
tests then mutate valid flag lists, profiles and plans at random (derandomized, 25 examples
each; set PARPLAN_FUZZ_EXAMPLES to search longer).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parplan.cli import main

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "parplan" / "cost" / "profiles"
TINY = "gpt:hidden=64,heads=2,layers=2,vocab=128"
PLAN_SHAPE = ["--seq", "32", "-m", "4", "--effort", "quick"]
CHAIN_GPT = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32"

FUZZ = settings(max_examples=int(os.environ.get("PARPLAN_FUZZ_EXAMPLES", "25")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---- inputs: one valid plan, broken plans, profiles and model files ------------------------
def _broken_plans(plan: dict) -> dict[str, str]:
    def edited(change) -> str:
        data = json.loads(json.dumps(plan))
        change(data)
        return json.dumps(data)

    def drop_0f0(d):
        d["schedule"]["orders"][0].remove("0F0")

    def twice_0b0(d):
        d["schedule"]["orders"][0].append("0B0")

    return {
        "not_json": "{ this is not json",
        "binary": "\udcff\udcfe",
        "empty": "",
        "list": "[1, 2, 3]",
        "no_format": edited(lambda d: d.pop("format")),
        "old_version": edited(lambda d: d.update(version=0)),
        "no_stages": edited(lambda d: d.pop("stages")),
        "bad_batch": edited(lambda d: d["model"].update(batch="many")),
        "lost_action": edited(drop_0f0),
        "twice_action": edited(twice_0b0),
        "bad_action": edited(lambda d: d["schedule"]["orders"][1].__setitem__(0, "1Q0")),
        "bad_mode": edited(lambda d: d.update(mode="sometimes")),
        "bad_rank": edited(lambda d: d["stages"][0].update(rank=1)),
        "model_stage_null": edited(lambda d: d["schedule"].update(model_stage=[0, None])),
        "timeline_short": edited(lambda d: d["timeline"][0].pop()),
        "timeline_backwards": edited(lambda d: d["timeline"][1].__setitem__(0, ["1F0", 2.0, 1.0])),
    }


def _broken_profiles() -> dict[str, str]:
    cluster = (PROFILES / "h100x8.yaml").read_text()
    gpu = (PROFILES / "h100-sxm.yaml").read_text()
    return {
        "cluster_not_yaml.yaml": "kind: cluster\ngroups: [unclosed\n",
        "cluster_list.yaml": "- 1\n- 2\n",
        "cluster_binary.yaml": "kind: \udcff\udcfe\n",
        "cluster_kind.yaml": cluster.replace("kind: cluster", "kind: toaster"),
        "cluster_no_groups.yaml": re.sub(r"groups:.*?(?=inter_node)", "", cluster, flags=re.S),
        "cluster_zero_nodes.yaml": cluster.replace("nodes: 1", "nodes: 0"),
        "cluster_bad_gpus.yaml": cluster.replace("gpus_per_node: 8", "gpus_per_node: eight"),
        "cluster_unknown_gpu.yaml": cluster.replace("gpu: h100-sxm", "gpu: abacus"),
        "cluster_null_gpu.yaml": cluster.replace("gpu: h100-sxm", "gpu:"),
        "cluster_group_text.yaml": re.sub(r"groups:.*?(?=inter_node)", "groups: [h100-sxm]\n", cluster, flags=re.S),
        "cluster_negative_bw.yaml": cluster.replace("value: 450e9", "value: -450e9"),
        "gpu_no_peak.yaml": re.sub(r"peak_flops:.*?(?=hbm_capacity)", "", gpu, flags=re.S),
        "gpu_bad_unit.yaml": gpu.replace("unit: B/s", "unit: furlongs"),
        "gpu_string_value.yaml": gpu.replace("value: 3.35e12", "value: fast"),
        "gpu_empty.yaml": "",
    }


MODEL_FILES = {
    "syntax.py": "def make(:\n",
    "raises.py": "def make(batch, seq, device, **options):\n    raise RuntimeError('no weights here')\n",
    "import_error.py": "import parplan_no_such_module\n",
    "not_module.py": "def make(batch, seq, device, **options):\n    return 42\n",
    "no_factory.py": "x = 1\n",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    from parplan.runtime.chain import plan_chain

    root = tmp_path_factory.mktemp("inputs")
    plan = plan_chain(CHAIN_GPT, "1f1b", batch=4, seq=8, num_ranks=2, num_microbatches=4)
    paths = {"plan": str(root / "plan.json"), "file": str(root / "a-file"), "dir_png": str(root / "chart.png"),
             "dir_json": str(root / "plan-dir.json"), "missing_plan": str(root / "absent.json")}
    Path(paths["plan"]).write_text(plan.to_json())
    Path(paths["file"]).write_text("not a folder\n")
    Path(paths["dir_png"]).mkdir()
    Path(paths["dir_json"]).mkdir()
    for name, text in _broken_plans(plan.to_dict()).items():
        paths[f"plan_{name}"] = str(root / f"plan_{name}.json")
        Path(paths[f"plan_{name}"]).write_text(text, errors="surrogateescape")
    for name, text in {**_broken_profiles(), **MODEL_FILES}.items():
        paths[name.rsplit(".", 1)[0]] = str(root / name)
        (root / name).write_text(text, errors="surrogateescape")
    return paths


@pytest.fixture
def folders(tmp_path, inputs) -> dict[str, str]:
    """`out` (must stay empty) and `ro` (read-only, where the platform enforces it) per test."""
    out, ro = tmp_path / "out", tmp_path / "ro"
    out.mkdir()
    ro.mkdir()
    ro.chmod(0o555)
    yield {**inputs, "out": str(out), "ro": str(ro), "ro_enforced": not os.access(ro, os.W_OK)}
    ro.chmod(0o755)


def _fill(argv: list[str], paths: dict) -> list[str]:
    return [a.format(**paths) for a in argv]


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(code: int, err: str, folders: dict, *, expected: int = 2) -> None:
    assert code == expected, err
    assert "Traceback" not in err
    for name in ("out", "ro"):
        assert os.listdir(folders[name]) == [], f"{name} holds {os.listdir(folders[name])}"


# ---- the table: (command line, a phrase the message must hold) ------------------------------
CASES = {
    # schedule: flags
    "schedule-ranks-zero": (["schedule", "1f1b", "-n", "0", "-m", "8"], "--ranks/-n: 0 is invalid"),
    "schedule-ranks-text": (["schedule", "1f1b", "-n", "four", "-m", "8"], "'four' is not an integer"),
    "schedule-mb-negative": (["schedule", "1f1b", "-n", "4", "--microbatches=-1"], "a count must be >= 1"),
    "schedule-chunks-zero": (["schedule", "interleaved-1f1b", "-n", "4", "-m", "8", "-v", "0"], "0 is invalid"),
    "schedule-time-zero": (["schedule", "mip", "-n", "2", "-m", "4", "--time-limit", "0"], "--time-limit: 0 is invalid"),
    "schedule-time-nan": (["schedule", "mip", "-n", "2", "-m", "4", "--time-limit", "nan"], "finite and > 0"),
    "schedule-time-inf": (["schedule", "mip", "-n", "2", "-m", "4", "--time-limit", "inf"], "finite and > 0"),
    "schedule-effort-zero": (["schedule", "mip", "-n", "2", "-m", "4", "--effort", "0"], "--effort: 0 is invalid"),
    "schedule-effort-word": (["schedule", "mip", "-n", "2", "-m", "4", "--effort", "hard"], "quick, normal, thorough"),
    "schedule-workers-zero": (["schedule", "mip", "-n", "2", "-m", "4", "--workers", "0"], "--workers: 0 is invalid"),
    "schedule-seed-float": (["schedule", "1f1b", "-n", "4", "-m", "8", "--seed", "1.5"], "'1.5' is not an integer"),
    "schedule-memory-word": (["schedule", "1f1b", "-n", "4", "-m", "8", "--memory-limit", "lots"], "'lots' is invalid"),
    "schedule-memory-match": (["schedule", "1f1b", "-n", "4", "-m", "8", "--memory-limit", "match:nope"],
                              "is not a baseline"),
    "schedule-format": (["schedule", "1f1b", "-n", "4", "-m", "8", "--format", "xml"], "invalid choice: 'xml'"),
    "schedule-unknown": (["schedule", "nope", "-n", "4", "-m", "8"], "unknown schedule 'nope'"),
    "schedule-odd-dualpipe": (["schedule", "dualpipe", "-n", "3", "-m", "8"], "even number of ranks"),
    "schedule-cost-negative": (["schedule", "1f1b", "-n", "4", "-m", "8", "--cost", "F=-1"], ">= 0"),
    "schedule-cost-unknown": (["schedule", "1f1b", "-n", "4", "-m", "8", "--cost", "Q=1"], "unknown"),
    "schedule-no-ranks": (["schedule", "1f1b", "-m", "8"], "required"),
    # schedule: outputs
    "schedule-out-missing-folder": (["schedule", "1f1b", "-n", "4", "-m", "8", "-o", "{out}/no/x.txt"], "does not exist"),
    "schedule-out-is-folder": (["schedule", "1f1b", "-n", "4", "-m", "8", "-o", "{out}"], "is a folder"),
    "schedule-out-under-file": (["schedule", "1f1b", "-n", "4", "-m", "8", "-o", "{file}/x.txt"], "is a file"),
    "schedule-out-read-only": (["schedule", "1f1b", "-n", "4", "-m", "8", "-o", "{ro}/x.txt"], "not writable"),
    "schedule-dump-missing-folder": (["schedule", "mip", "-n", "2", "-m", "4", "--dump-model", "{out}/no/m.pbtxt"],
                                     "does not exist"),
    "schedule-dump-read-only": (["schedule", "mip", "-n", "2", "-m", "4", "--dump-model", "{ro}/m.pbtxt",
                                 "-o", "{out}/s.txt"], "not writable"),
    # compare
    "compare-empty": (["compare", "-n", "4", "-m", "8", "--schedules", ",", "--gantt", "{out}/c.png"], "is empty"),
    "compare-bogus": (["compare", "-n", "4", "-m", "8", "--schedules", "1f1b,bogus", "--gantt", "{out}/c.png"],
                      "unknown schedule 'bogus'"),
    "compare-gif": (["compare", "-n", "4", "-m", "8", "--gantt", "{out}/c.gif"], "must end in .png or .svg"),
    "compare-gantt-missing-folder": (["compare", "-n", "4", "-m", "8", "--gantt", "{out}/no/c.png"], "does not exist"),
    "compare-gantt-read-only": (["compare", "-n", "4", "-m", "8", "--gantt", "{ro}/c.png"], "not writable"),
    "compare-gantt-is-folder": (["compare", "-n", "4", "-m", "8", "--gantt", "{dir_png}"], "is a folder"),
    "compare-cost-malformed": (["compare", "-n", "4", "-m", "8", "--cost", "F1,I=2", "--gantt", "{out}/c.png"],
                               "malformed"),
    "compare-memory-zero": (["compare", "-n", "4", "-m", "8", "--memory-limit", "0"], "'0' is invalid"),
    # plan: flags, checked before the model is traced
    "plan-effort-zero": (["plan", TINY, *PLAN_SHAPE[:4], "--effort", "0", "-o", "{out}/p.json"], "--effort: 0 is invalid"),
    "plan-effort-word": (["plan", TINY, "--effort", "extreme", "-o", "{out}/p.json"], "'extreme' is unknown"),
    "plan-time-zero": (["plan", TINY, *PLAN_SHAPE, "--time-limit", "0", "-o", "{out}/p.json"], "--time-limit: 0"),
    "plan-time-negative": (["plan", TINY, *PLAN_SHAPE, "--time-limit=-5", "-o", "{out}/p.json"], "-5 is invalid"),
    "plan-pp-zero": (["plan", TINY, *PLAN_SHAPE, "--pp", "0", "-o", "{out}/p.json"], "parallel degree"),
    "plan-tp-text": (["plan", TINY, *PLAN_SHAPE, "--tp", "abc", "-o", "{out}/p.json"], "'abc' is not an integer"),
    "plan-tp-too-big": (["plan", TINY, *PLAN_SHAPE, "--tp", "16", "-o", "{out}/p.json"], "larger than the 8 GPUs"),
    "plan-pp-not-dividing": (["plan", TINY, *PLAN_SHAPE, "--pp", "3", "-o", "{out}/p.json"], "does not divide"),
    "plan-replicas-over-microbatches": (["plan", TINY, "--seq", "32", "-m", "2", "--effort", "quick", "--pp", "1",
                                         "-o", "{out}/p.json"], "does not split evenly over the 8 data-parallel"),
    # memory techniques (issue 20): layouts that do not fit the data-parallel group, contradictions
    "plan-dp-shard-not-dividing": (["plan", TINY, *PLAN_SHAPE, "--pp", "2", "--dp-shard", "3", "-o", "{out}/p.json"],
                                   "--dp-shard 3 does not divide the 4 data-parallel"),
    "plan-dp-shard-times-replicate": (["plan", TINY, *PLAN_SHAPE, "--pp", "1", "-m", "8", "--dp-shard", "2",
                                       "--dp-replicate", "2", "-o", "{out}/p.json"], "must multiply to it"),
    "plan-recompute-inference": (["plan", TINY, *PLAN_SHAPE, "--mode", "inference", "--recompute", "full",
                                  "-o", "{out}/p.json"], "nothing to recompute"),
    "plan-sp-without-tp": (["plan", TINY, *PLAN_SHAPE, "--sequence-parallel", "-o", "{out}/p.json"],
                           "needs --tp 2 or more"),
    "plan-sp-tp-1": (["plan", TINY, *PLAN_SHAPE, "--tp", "1", "--sequence-parallel", "-o", "{out}/p.json"],
                     "needs --tp 2 or more"),
    "plan-zero-unknown": (["plan", TINY, *PLAN_SHAPE, "--zero", "4", "-o", "{out}/p.json"], "invalid choice: 4"),
    "plan-zero-contradiction": (["plan", TINY, *PLAN_SHAPE, "--zero", "3", "--no-zero1", "-o", "{out}/p.json"],
                                "contradicts --zero 3"),
    "plan-recompute-unknown": (["plan", TINY, *PLAN_SHAPE, "--recompute", "some", "-o", "{out}/p.json"],
                               "invalid choice: 'some'"),
    "plan-dp-shard-zero": (["plan", TINY, *PLAN_SHAPE, "--dp-shard", "0", "-o", "{out}/p.json"], "parallel degree"),
    "plan-memory-bare": (["plan", TINY, *PLAN_SHAPE, "--memory-limit", "5", "-o", "{out}/p.json"], "e.g. 70GiB"),
    "plan-memory-zero": (["plan", TINY, *PLAN_SHAPE, "--memory-limit", "0GiB", "-o", "{out}/p.json"], "must be > 0"),
    "plan-memory-match": (["plan", TINY, *PLAN_SHAPE, "--memory-limit", "match:1f1b"], "bytes per device"),
    "plan-mb-zero": (["plan", TINY, "--seq", "32", "-m", "0", "-o", "{out}/p.json"], "a count must be >= 1"),
    "plan-batch-zero": (["plan", TINY, *PLAN_SHAPE, "--batch", "0", "-o", "{out}/p.json"], "--batch: 0 is invalid"),
    "plan-seq-text": (["plan", TINY, "--seq", "long", "-o", "{out}/p.json"], "'long' is not an integer"),
    "plan-workers-zero": (["plan", TINY, *PLAN_SHAPE, "--workers", "0", "-o", "{out}/p.json"], "--workers: 0"),
    "plan-mode": (["plan", TINY, *PLAN_SHAPE, "--mode", "serve"], "invalid choice: 'serve'"),
    "plan-leaf": (["plan", TINY, *PLAN_SHAPE, "--leaf", "nowhere.Block", "-o", "{out}/p.json"],
                  "not an importable class"),
    "plan-leaf-not-module": (["plan", TINY, *PLAN_SHAPE, "--leaf", "parplan.zoo.gpt.GPTConfig", "-o", "{out}/p.json"],
                             "not an nn.Module class"),
    # plan --schedule: a hand configuration evaluated (tests/test_hand_config.py)
    "plan-schedule-unknown": (["plan", TINY, *PLAN_SHAPE, "--pp", "2", "--schedule", "zb-h3", "-o", "{out}/p.json"],
                              "--schedule: 'zb-h3' is unknown; choose one of gpipe, 1f1b"),
    "plan-chunks-one-chunk-schedule": (["plan", TINY, *PLAN_SHAPE, "--pp", "2", "--schedule", "1f1b", "--chunks", "3",
                                        "-o", "{out}/p.json"], "1f1b runs 1 stage chunk(s) per rank; --chunks 3"),
    "plan-chunks-without-schedule": (["plan", TINY, *PLAN_SHAPE, "--chunks", "2", "-o", "{out}/p.json"],
                                     "--chunks 2 needs --schedule"),
    "plan-chunks-zero": (["plan", TINY, *PLAN_SHAPE, "--schedule", "interleaved-1f1b", "--chunks", "0",
                          "-o", "{out}/p.json"], "--chunks: 0 is invalid"),
    "plan-chunks-over-layers": (["plan", TINY, "--seq", "32", "-m", "8", "--pp", "2", "--schedule", "interleaved-1f1b",
                                 "--chunks", "4", "-o", "{out}/p.json"], "needs 8 model stages but the model has"),
    "plan-dualpipe-odd-pp": (["plan", TINY, "--seq", "32", "-m", "8", "--pp", "1", "--schedule", "dualpipe",
                              "-o", "{out}/p.json"], "dualpipe needs an even number of ranks"),
    "plan-dualpipe-few-microbatches": (["plan", TINY, "--seq", "32", "-m", "8", "--pp", "2", "--schedule", "dualpipe",
                                        "-o", "{out}/p.json"], "dualpipe needs an even number of micro-batches >= 2"),
    "plan-schedule-placement": (["plan", TINY, *PLAN_SHAPE, "--schedule", "zb-v", "--placement", "chain",
                                 "-o", "{out}/p.json"], "--placement chain cannot run --schedule zb-v"),
    "plan-schedule-inference": (["plan", TINY, *PLAN_SHAPE, "--mode", "inference", "--schedule", "1f1b",
                                 "-o", "{out}/p.json"], "use --mode train"),
    "plan-schedule-over-memory": (["plan", TINY, "--seq", "32", "-m", "16", "--pp", "2", "--schedule", "1f1b",
                                   "--memory-limit", "100KiB", "-o", "{out}/p.json", "--gantt", "{out}/g.png"],
                                  "does not fit the memory cap of 100 KiB per device: it needs"),
    # plan: names, files and outputs
    "plan-unknown-cluster": (["plan", TINY, *PLAN_SHAPE, "--cluster", "nope", "-o", "{out}/p.json"], "nope"),
    "plan-missing-cluster-file": (["plan", TINY, *PLAN_SHAPE, "--cluster", "{out}/c.yaml", "-o", "{out}/p.json"],
                                  "does not exist"),
    "plan-gpu-as-cluster": (["plan", TINY, *PLAN_SHAPE, "--cluster", "h100-sxm", "-o", "{out}/p.json"],
                            "is a GPU profile"),
    "plan-unknown-model": (["plan", "abacus:layers=2", *PLAN_SHAPE, "-o", "{out}/p.json"], "unknown zoo model"),
    "plan-model-option": (["plan", "gpt:layers", *PLAN_SHAPE, "-o", "{out}/p.json"], "is malformed"),
    "plan-model-file-missing": (["plan", "{out}/m.py:make", *PLAN_SHAPE, "-o", "{out}/p.json"], "does not exist"),
    "plan-model-syntax": (["plan", "{syntax}:make", *PLAN_SHAPE, "-o", "{out}/p.json"], "SyntaxError"),
    "plan-model-raises": (["plan", "{raises}:make", *PLAN_SHAPE, "-o", "{out}/p.json"], "no weights here"),
    "plan-model-import": (["plan", "{import_error}:make", *PLAN_SHAPE, "-o", "{out}/p.json"], "parplan_no_such_module"),
    "plan-model-returns-int": (["plan", "{not_module}:make", *PLAN_SHAPE, "-o", "{out}/p.json"], "returned int"),
    "plan-model-no-factory": (["plan", "{no_factory}:make", *PLAN_SHAPE, "-o", "{out}/p.json"], "no callable 'make'"),
    "plan-out-missing-folder": (["plan", TINY, *PLAN_SHAPE, "-o", "{out}/no/p.json"], "does not exist"),
    "plan-out-read-only": (["plan", TINY, *PLAN_SHAPE, "-o", "{ro}/p.json"], "not writable"),
    "plan-out-is-folder": (["plan", TINY, *PLAN_SHAPE, "-o", "{dir_json}"], "is a folder"),
    "plan-gantt-gif": (["plan", TINY, *PLAN_SHAPE, "-o", "{out}/p.json", "--gantt", "{out}/g.gif"], ".png or .svg"),
    "plan-gantt-read-only": (["plan", TINY, *PLAN_SHAPE, "-o", "{out}/p.json", "--gantt", "{ro}/g.png"],
                             "not writable"),
    # trace and profile
    "trace-unknown-model": (["trace", "abacus", "-o", "{out}/t.json"], "unknown zoo model"),
    "trace-leaf": (["trace", TINY, "--seq", "8", "--leaf", "nowhere.Block", "-o", "{out}/t.json"],
                   "not an importable class"),
    "trace-batch-zero": (["trace", TINY, "--batch", "0", "-o", "{out}/t.json"], "--batch: 0 is invalid"),
    "trace-out-missing-folder": (["trace", TINY, "-o", "{out}/no/t.json"], "does not exist"),
    "trace-out-under-file": (["trace", TINY, "-o", "{file}/t.json"], "is a file"),
    "trace-model-syntax": (["trace", "{syntax}:make", "-o", "{out}/t.json"], "SyntaxError"),
    "profile-no-hardware": (["profile", TINY], "--hardware is required"),
    "profile-unknown-hardware": (["profile", TINY, "--hardware", "abacus"], "abacus"),
    "profile-depth-negative": (["profile", TINY, "--hardware", "h100-sxm", "--depth=-1"], "must be >= 0"),
    "profile-repeat-zero": (["profile", TINY, "--hardware", "h100-sxm", "--repeat", "0"], "a count must be >= 1"),
    # plan-chain
    "chain-ranks-zero": (["plan-chain", CHAIN_GPT, "--schedule", "1f1b", "-n", "0", "-m", "4", "--batch", "4",
                          "--seq", "8", "-o", "{out}/p.json"], "0 is invalid"),
    "chain-unknown-schedule": (["plan-chain", CHAIN_GPT, "--schedule", "nope", "-n", "2", "-m", "4", "--batch", "4",
                                "--seq", "8", "-o", "{out}/p.json"], "nope"),
    "chain-out-missing-folder": (["plan-chain", CHAIN_GPT, "--schedule", "1f1b", "-n", "2", "-m", "4", "--batch", "4",
                                  "--seq", "8", "-o", "{out}/no/p.json"], "does not exist"),
    "chain-out-is-folder": (["plan-chain", CHAIN_GPT, "--schedule", "1f1b", "-n", "2", "-m", "4", "--batch", "4",
                             "--seq", "8", "-o", "{dir_json}"], "is a folder"),
    # export, show and run: plan files and outputs
    "export-missing-plan": (["export", "{missing_plan}", "--torch-csv", "{out}/s.csv"], "cannot be read"),
    "export-plan-is-folder": (["export", "{dir_json}", "--torch-csv", "{out}/s.csv"], "cannot be read"),
    "export-csv-missing-folder": (["export", "{plan}", "--torch-csv", "{out}/no/s.csv"], "does not exist"),
    "export-csv-read-only": (["export", "{plan}", "--torch-csv", "{ro}/s.csv"], "not writable"),
    "export-no-output": (["export", "{plan}"], "needs an output"),
    "export-torchtitan-not-titan": (["export", "{plan}", "--torchtitan", "{out}/tt"], "is not a torchtitan model"),
    "export-torchtitan-is-file": (["export", "{plan}", "--torchtitan", "{file}"], "is a file; give a folder"),
    "export-torchtitan-missing-folder": (["export", "{plan}", "--torchtitan", "{out}/no/tt"], "does not exist"),
    "export-torchtitan-and-csv-read-only": (["export", "{plan}", "--torch-csv", "{ro}/s.csv", "--torchtitan",
                                             "{out}/tt"], "not writable"),
    "plan-titan-no-flavor": (["plan", "titan:llama3", *PLAN_SHAPE, "-o", "{out}/p.json"], "names no flavor"),
    "show-gantt-gif": (["show", "{plan}", "--gantt", "{out}/g.gif"], ".png or .svg"),
    "show-trace-missing-folder": (["show", "{plan}", "--gantt", "{out}/g.svg", "--trace", "{out}/no/t.json"],
                                  "does not exist"),
    "show-gantt-read-only": (["show", "{plan}", "--trace", "{out}/t.json", "--gantt", "{ro}/g.png"], "not writable"),
    "show-trace-is-folder": (["show", "{plan}", "--gantt", "{out}/g.svg", "--trace", "{dir_json}"], "is a folder"),
    "run-gantt-read-only": (["run", "{plan}", "--nproc", "2", "--gantt", "{ro}/g.png"], "not writable"),
    "run-gantt-under-file": (["run", "{plan}", "--nproc", "2", "--gantt", "{file}/g.png"], "is a file"),
    "run-trace-missing-folder": (["run", "{plan}", "--nproc", "2", "--trace", "{out}/no/t.json"], "does not exist"),
    "run-nproc-zero": (["run", "{plan}", "--nproc", "0"], "--nproc: 0 is invalid"),
    "run-timeout-zero": (["run", "{plan}", "--nproc", "2", "--timeout", "0"], "--timeout: 0 is invalid"),
    "run-steps-text": (["run", "{plan}", "--nproc", "2", "--steps", "few"], "'few' is not an integer"),
    "run-lost-action": (["run", "{plan_lost_action}", "--nproc", "2", "--gantt", "{out}/g.png"], "V3"),
    # calibrate: every check before a measurement starts
    "calibrate-out-not-yaml": (["calibrate", "--device", "cpu", "--quick", "--out", "{out}/dev.json"],
                               "must end in .yaml"),
    "calibrate-out-missing-folder": (["calibrate", "--device", "cpu", "--quick", "--out", "{out}/no/dev.yaml"],
                                     "does not exist"),
    "calibrate-out-read-only": (["calibrate", "--device", "cpu", "--quick", "--out", "{ro}/dev.yaml"], "not writable"),
    "calibrate-out-is-folder": (["calibrate", "--device", "cpu", "--out", "{dir_json}/"], "must end in .yaml"),
    "calibrate-threads-zero": (["calibrate", "--device", "cpu", "--threads", "0", "--out", "{out}/d.yaml"],
                               "--threads: 0 is invalid"),
    "calibrate-device-word": (["calibrate", "--device", "tpu", "--out", "{out}/d.yaml"], "invalid choice: 'tpu'"),
    "calibrate-nproc-without-links": (["calibrate", "--device", "cpu", "--nproc", "2", "--out", "{out}/d.yaml"],
                                      "applies to --links only"),
    "calibrate-timeout-without-links": (["calibrate", "--device", "cpu", "--timeout", "60", "--out", "{out}/d.yaml"],
                                        "--timeout applies to --links only"),
    "calibrate-links-one-rank": (["calibrate", "--device", "cpu", "--links", "--nproc", "1", "--gpu", "h100-sxm",
                                  "--out", "{out}/c.yaml"], "N >= 2"),
    "calibrate-links-too-many": (["calibrate", "--device", "cpu", "--links", "--nproc", "100000", "--gpu", "h100-sxm",
                                  "--out", "{out}/c.yaml"], "more than the"),
    "calibrate-links-nccl-on-cpu": (["calibrate", "--device", "cpu", "--links", "--nproc", "2", "--backend", "nccl",
                                     "--gpu", "h100-sxm", "--out", "{out}/c.yaml"], "--backend nccl needs CUDA"),
    "calibrate-links-no-gpu": (["calibrate", "--device", "cpu", "--links", "--nproc", "2", "--out", "{out}/c.yaml"],
                               "--links needs --gpu"),
    "calibrate-links-unknown-gpu": (["calibrate", "--device", "cpu", "--links", "--nproc", "2", "--gpu", "abacus",
                                     "--out", "{out}/c.yaml"], "abacus"),
    "calibrate-links-cluster-as-gpu": (["calibrate", "--device", "cpu", "--links", "--nproc", "2", "--gpu", "h100x8",
                                        "--out", "{out}/c.yaml"], "is a cluster profile"),
    "calibrate-links-read-only": (["calibrate", "--device", "cpu", "--links", "--nproc", "2", "--gpu", "h100-sxm",
                                   "--out", "{ro}/c.yaml"], "not writable"),
    "calibrate-share-cores-without-links": (["calibrate", "--device", "cpu", "--share-cores", "--out", "{out}/d.yaml"],
                                            "--share-cores applies to --links only"),
    "calibrate-share-cores-too-many": (["calibrate", "--device", "cpu", "--links", "--nproc", "100000", "--share-cores",
                                        "--gpu", "h100-sxm", "--out", "{out}/c.yaml"], "ranks per core"),
    # the top level
    "unknown-command": (["planify"], "invalid choice: 'planify'"),
    "no-command": ([], "required"),
}

PLAN_FILE_ERRORS = {
    "not_json": "is not valid JSON", "binary": "not UTF-8", "empty": "is not valid JSON", "list": "is not a parplan plan",
    "no_format": "is not a parplan plan", "old_version": "plan format version 0", "no_stages": "lacks the field",
    "bad_batch": "is malformed", "lost_action": "V3", "twice_action": "V3", "bad_action": "1Q0",
    "bad_mode": "'sometimes' is unknown", "bad_rank": "placement", "timeline_short": "timeline row 0",
    "model_stage_null": "None is not an integer stage",
    "timeline_backwards": "timeline row 1",
}
for _name, _phrase in PLAN_FILE_ERRORS.items():
    CASES[f"show-plan-{_name}"] = (["show", f"{{plan_{_name}}}", "--gantt", "{out}/g.png", "--trace", "{out}/t.json"],
                                   _phrase)
for _name in ("not_json", "lost_action", "twice_action", "old_version"):
    CASES[f"export-plan-{_name}"] = (["export", f"{{plan_{_name}}}", "--torch-csv", "{out}/s.csv"],
                                     PLAN_FILE_ERRORS[_name])

PROFILE_ERRORS = {
    "cluster_not_yaml": "is not valid YAML", "cluster_binary": "not UTF-8", "cluster_list": "must hold a mapping", "cluster_kind": "'toaster'",
    "cluster_no_groups": "groups is missing", "cluster_zero_nodes": "must be a positive integer",
    "cluster_bad_gpus": "must be a positive integer", "cluster_unknown_gpu": "abacus",
    "cluster_null_gpu": "must name a GPU profile", "cluster_group_text": "must be a mapping",
    "cluster_negative_bw": "bandwidth", "gpu_no_peak": "peak_flops is missing", "gpu_bad_unit": "furlongs",
    "gpu_string_value": "is not a finite number", "gpu_empty": "must hold a mapping",
}
if importlib.util.find_spec("transformers") is not None:  # the hf extra (CI installs it)
    CASES["trace-hf-unknown"] = (["trace", "hf:NoSuchConfig", "-o", "{out}/t.json"], "is not supported")
    CASES["trace-hf-field"] = (["trace", "hf:llama:hiden=64", "-o", "{out}/t.json"], "LlamaConfig has no field 'hiden'")
    CASES["plan-hf-eager-experts"] = (["plan", "hf:mixtral:experts_implementation=eager", *PLAN_SHAPE,
                                       "-o", "{out}/p.json"], "data-dependent shapes")
for _name, _phrase in PROFILE_ERRORS.items():
    if _name.startswith("cluster"):
        CASES[f"plan-profile-{_name}"] = (["plan", TINY, *PLAN_SHAPE, "--cluster", f"{{{_name}}}",
                                           "-o", "{out}/p.json"], _phrase)
    else:
        CASES[f"profile-{_name}"] = (["profile", TINY, "--seq", "8", "--hardware", f"{{{_name}}}"], _phrase)


@pytest.mark.parametrize("argv,phrase", list(CASES.values()), ids=list(CASES))
def test_bad_input_exits_2_with_a_message_and_leaves_nothing(capsys, folders, argv, phrase):
    if "{ro}" in " ".join(argv) and not folders["ro_enforced"]:
        pytest.skip("this user can write to a read-only folder (root); the is-a-file and is-a-folder cases cover it")
    code, _, err = run_cli(capsys, _fill(argv, folders))
    assert_clean_failure(code, err, folders)
    assert phrase in err, err
    assert err.count("\n") <= 40, "a message, not a dump"


def test_the_table_covers_every_command():
    commands = {argv[0] for argv, _ in CASES.values() if argv}
    assert commands == {"schedule", "compare", "plan", "trace", "profile", "plan-chain", "export", "show", "run",
                        "calibrate", "planify"}
    assert len(CASES) >= 60


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_calibrate_cuda_without_a_gpu_exits_2(capsys, folders):
    code, _, err = run_cli(capsys, ["calibrate", "--device", "cuda", "--out", f"{folders['out']}/gpu.yaml"])
    assert_clean_failure(code, err, folders)
    assert "--device cuda: torch.cuda.is_available() is False" in err and "--device cpu" in err


def test_calibrate_with_a_failing_measurement_exits_2_and_writes_nothing(capsys, folders, monkeypatch):
    """SDPA raising (as an op the device lacks would): the run says what failed and which constants
    it leaves without a measurement, and writes no profile and no records."""
    from parplan.cost import calibrate

    tiny = calibrate.Sweep(gemm=((128, 64, 128),), unaligned=((128, 64, 128),), attention=((1, 1, 16, 16),),
                           pointwise=((64, 32),), copy_bytes=(4096, 1 << 16), blocks=((32, 2, 1, 8),),
                           contention_gemm=64, warmup=0, repeat=1)
    monkeypatch.setattr(calibrate, "sweep_for", lambda device, quick: tiny)

    def no_sdpa(*args, **kwargs):
        raise RuntimeError("no kernel image for scaled_dot_product_attention")

    monkeypatch.setattr(calibrate, "_attention", no_sdpa)
    code, _, err = run_cli(capsys, ["calibrate", "--device", "cpu", "--out", f"{folders['out']}/dev.yaml"])
    assert_clean_failure(code, err, folders)
    assert "attention_forward" in err and "no kernel image" in err and "none was written" in err


# ---- internal errors and --debug ---------------------------------------------------------------
def _explode(*args, **kwargs):
    raise RuntimeError("injected\nbug")


def test_an_internal_error_is_one_line_and_exit_1(capsys, folders, monkeypatch):
    monkeypatch.setattr("parplan.cli.schedule.compare", _explode)
    code, out, err = run_cli(capsys, ["schedule", "1f1b", "-n", "4", "-m", "8", "-o", f"{folders['out']}/s.txt"])
    assert_clean_failure(code, err, folders, expected=1)
    assert err == ("parplan schedule: internal error: RuntimeError: injected bug "
                   "(run with --debug for the traceback)\n")


@pytest.mark.parametrize("argv", [["--debug", "schedule", "1f1b", "-n", "4", "-m", "8"],
                                  ["schedule", "1f1b", "--debug", "-n", "4", "-m", "8"]])
def test_debug_raises_the_internal_error(monkeypatch, argv):
    monkeypatch.setattr("parplan.cli.schedule.compare", _explode)
    with pytest.raises(RuntimeError, match="injected"):
        main(argv)


def test_debug_does_not_change_a_user_error(capsys):
    code, _, err = run_cli(capsys, ["--debug", "schedule", "nope", "-n", "4", "-m", "8"])
    assert code == 2 and "unknown schedule 'nope'" in err and "Traceback" not in err


def _subprocess(code: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)


INJECT = ("import sys, parplan.cli.schedule as s; from parplan.cli import main\n"
          "s.compare = lambda *a, **k: 1 / 0\nsys.exit(main(sys.argv[1:]))\n")


def test_internal_error_in_a_process_exits_1_and_debug_prints_the_traceback():
    plain = _subprocess(INJECT, "schedule", "1f1b", "-n", "4", "-m", "8")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [
        "parplan schedule: internal error: ZeroDivisionError: division by zero (run with --debug for the traceback)"]
    debug = _subprocess(INJECT, "--debug", "schedule", "1f1b", "-n", "4", "-m", "8")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ZeroDivisionError" in debug.stderr


def test_the_console_entry_point_exits_2_on_a_bad_flag(tmp_path):
    result = _subprocess("import sys; from parplan.cli import main; sys.exit(main())",
                         "plan", TINY, "--effort", "0", "-o", str(tmp_path / "p.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---- all-or-nothing writes ---------------------------------------------------------------------
def test_write_outputs_removes_every_file_when_one_rename_fails(tmp_path, monkeypatch):
    from parplan import io
    from parplan.errors import ParplanError

    real_replace = os.replace
    calls = []

    def replace_twice(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace_twice)
    files = {str(tmp_path / name): "x" for name in ("a.txt", "b.txt", "c.txt")}
    with pytest.raises(ParplanError, match="b.txt.*Permission denied"):
        io.write_outputs(files)
    assert list(tmp_path.iterdir()) == []


def test_a_command_that_fails_after_its_work_leaves_no_output(capsys, folders, monkeypatch):
    """`show` renders both files, then the second write fails: neither file is left."""
    from parplan import io

    real_temp = io._temp_copy

    def full_disk(path, data):
        if path.endswith(".json"):
            raise OSError(28, "No space left on device")
        return real_temp(path, data)

    monkeypatch.setattr(io, "_temp_copy", full_disk)
    out = folders["out"]
    code, _, err = run_cli(capsys, ["show", folders["plan"], "--gantt", f"{out}/g.svg", "--trace", f"{out}/t.json"])
    assert_clean_failure(code, err, folders)
    assert "No space left on device" in err


def test_run_fails_on_an_unwritable_chart_before_the_job_starts(capsys, folders, monkeypatch):
    monkeypatch.setattr("parplan.runtime.launch.launch", _explode)  # reaching the launcher would exit 1
    code, _, err = run_cli(capsys, ["run", folders["plan"], "--nproc", "2", "--gantt", f"{folders['file']}/g.png"])
    assert_clean_failure(code, err, folders)


def test_schedule_writes_its_dumped_model_with_its_output(capsys, folders):
    out = folders["out"]
    code, _, err = run_cli(capsys, ["schedule", "mip", "-n", "2", "-m", "4", "--effort", "quick",
                                    "--dump-model", f"{out}/m.pbtxt", "-o", f"{out}/s.txt"])
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["m.pbtxt", "s.txt"]


# ---- properties: mutated flag lists, profiles and plans ----------------------------------------
ODD_VALUES = ["0", "-1", "1", "2", "3", "7", "x", "", "1.5", "nan", "inf", "-", "--", "1e3", "F=1", "match:zb-v",
              "4GiB", "dualpipe", "zb-v", "=", "☃", "--ranks", "-o"]
EXTRA_FLAGS = [["--chunks", "2"], ["--cost", "F=1,I=1.5,W=0.5,C=0.1"], ["--format", "json"], ["--format", "csv"],
               ["--memory-limit", "3"], ["--memory-limit", "match:1f1b"], ["--seed", "3"], ["--json"], ["--debug"]]


@st.composite
def mutated_argv(draw):
    command = draw(st.sampled_from(["schedule", "compare"]))
    head = ["schedule", draw(st.sampled_from(["1f1b", "zb-h1", "dualpipe", "interleaved-1f1b"]))] \
        if command == "schedule" else ["compare", "--schedules", "1f1b,zb-v"]
    argv = head + ["-n", "4", "-m", "8"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "drop", "insert", "extra"]))
        if kind == "replace" and len(argv) > 1:
            argv[draw(st.integers(1, len(argv) - 1))] = draw(st.sampled_from(ODD_VALUES))
        elif kind == "drop" and len(argv) > 1:
            del argv[draw(st.integers(1, len(argv) - 1))]
        elif kind == "insert":
            argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(ODD_VALUES)))
        else:
            argv += draw(st.sampled_from(EXTRA_FLAGS))
    return argv


def _outputs_for(argv: list[str], folder: str) -> list[str]:
    flag = "--gantt" if argv[0] == "compare" else "-o"
    return argv + [flag, f"{folder}/out.svg" if flag == "--gantt" else f"{folder}/out.txt"]


@FUZZ
@given(argv=mutated_argv())
def test_mutated_flags_never_crash_and_leave_nothing_on_failure(capsys, tmp_path, argv):
    folder = tempfile.mkdtemp(dir=tmp_path)
    code, _, err = run_cli(capsys, _outputs_for(argv, folder))
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code != 0:
        assert os.listdir(folder) == []


YAML_NOISE = ["0", "-1", "nan", "1e400", "null", "[]", "{}", "text", "'8'", "true", "-3.5e9", "{value: 1}"]


@st.composite
def mutated_profile(draw):
    name = draw(st.sampled_from(["h100x8.yaml", "h100-sxm.yaml", "h100x4-a100x4.yaml"]))
    lines = (PROFILES / name).read_text().splitlines()
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["number", "drop", "truncate", "key"]))
        if kind == "number":
            lines[k] = re.sub(r"(?<=: )[-+0-9.e]+", lambda _: draw(st.sampled_from(YAML_NOISE)), lines[k], count=1)
        elif kind == "drop":
            del lines[k]
        elif kind == "truncate":
            lines[k] = lines[k][: draw(st.integers(0, len(lines[k])))]
        else:
            lines[k] = re.sub(r"\b(\w+):", lambda m: m.group(1)[::-1] + ":", lines[k], count=1)
        if not lines:
            break
    return name, "\n".join(lines) + "\n"


@FUZZ
@given(profile=mutated_profile())
def test_mutated_hardware_profiles_never_crash(capsys, tmp_path, profile):
    name, text = profile
    folder = tempfile.mkdtemp(dir=tmp_path)
    path = Path(folder) / f"mutated-{name}"
    path.write_text(text)
    if name.startswith("h100x"):  # a cluster: load it, then stop at a degree no cluster here has
        argv = ["plan", TINY, *PLAN_SHAPE, "--cluster", str(path), "--tp", "4096", "-o", f"{folder}/p.json"]
    else:  # a GPU: every operator of a tiny model is costed on it
        argv = ["profile", TINY, "--seq", "8", "--hardware", str(path)]
    code, _, err = run_cli(capsys, argv)
    assert code in (0, 2), err
    assert "Traceback" not in err
    assert sorted(os.listdir(folder)) == [path.name]


JSON_NOISE = [None, 0, -1, 1, 3, 2.5, "", "x", "0F0", [], {}, [1, 2], {"a": 1}, True]


def _json_paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _json_paths(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data[:4]):
            yield from _json_paths(value, prefix + (i,))


@st.composite
def mutated_plan(draw, plan_text: str):
    data = json.loads(plan_text)
    for _ in range(draw(st.integers(1, 2))):
        paths = [p for p in _json_paths(data) if p]
        where = draw(st.sampled_from(paths))
        parent = data
        for key in where[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        elif isinstance(parent, list) and draw(st.booleans()):
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(st.sampled_from(JSON_NOISE))
    return json.dumps(data)


@FUZZ
@given(data=st.data())
def test_mutated_plan_files_never_crash_and_leave_nothing_on_failure(capsys, tmp_path, inputs, data):
    text = data.draw(mutated_plan(Path(inputs["plan"]).read_text()))
    folder = tempfile.mkdtemp(dir=tmp_path)
    path = Path(folder) / "mutated-plan.json"
    path.write_text(text)
    command = data.draw(st.sampled_from(["show", "export"]))
    if command == "show":
        argv = ["show", str(path), "--trace", f"{folder}/t.json"]
    else:
        argv = ["export", str(path), "--torch-csv", f"{folder}/s.csv"]
    code, _, err = run_cli(capsys, argv)
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code != 0:
        assert os.listdir(folder) == [path.name]


def test_byte_sizes_read_as_a_person_reads_them():
    from parplan.sizes import format_bytes

    assert [format_bytes(x) for x in (0, 12, 1536, 1000 * 2**20, 8.13e10, 3 * 2**40)] == [
        "0 B", "12 B", "1.50 KiB", "1000 MiB", "75.7 GiB", "3.00 TiB"]
