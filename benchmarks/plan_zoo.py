"""Benchmark for issue #5: parplan's plan against the expert schedules, per zoo model.

Usage: python benchmarks/plan_zoo.py [--effort normal] [--only NAME ...] [--json-dir DIR]

Prints one markdown table row per case: parplan's predicted step time, the best baseline's
(contiguous layer split balanced by cost, same memory cap, each expert schedule), the gain,
bubble, peak memory and planning time. Times are the cost model's predictions for the
named cluster; planning time is wall time on this machine. The search is bounded by work
(`--effort`), so two runs give the same plans whatever else loads the machine;
`--json-dir` writes each case's plan (timing fields removed) to compare runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from parplan.budget import effort_work
from parplan.cost import load_cluster
from parplan.plan import without_timing
from parplan.planner import Degrees, PlannerConfig, plan_traced
from parplan.planner.api import to_plan
from parplan.trace import trace
from parplan.zoo import load_model

DEEPSEEK_SMALL = ("deepseek-moe:layers=8,hidden=2048,heads=16,kv_heads=16,head_dim=128,experts=64,expert_hidden=1408,"
                  "top_k=6,shared_experts=2,first_dense_layers=1,intermediate=10944,vocab=102400")
LLAMA_7B = "llama:layers=32,hidden=4096,heads=32,kv_heads=8"
LLAMA_70B = "llama:layers=80,hidden=8192,heads=64,kv_heads=8,intermediate=28672,vocab=32000"

# name, model spec, seq, cluster, micro-batches, fixed degrees (None: search), families
CASES = [
    ("llama-7b", LLAMA_7B, 2048, "h100x8", 32, Degrees(pp=8, dp=1, tp=1), None),
    ("mixtral-16L", "mixtral:layers=16", 1024, "h100x8", 32, Degrees(pp=8, dp=1, tp=1), None),
    ("deepseek-moe-small", DEEPSEEK_SMALL, 1024, "h100x8", 32, Degrees(pp=8, dp=1, tp=1), None),
    ("two-tower", "two-tower", 1024, "h100x8", 32, Degrees(pp=8, dp=1, tp=1), None),
    ("llama-7b auto degrees", LLAMA_7B, 2048, "h100x8", 32, None, None),
    ("hetero llama-16L chain", "llama:layers=16,hidden=2048,heads=16,kv_heads=4,intermediate=5632", 1024,
     "h100x4-a100x4", 16, Degrees(pp=8, dp=1, tp=1), ("chain",)),
    ("hetero llama-16L all", "llama:layers=16,hidden=2048,heads=16,kv_heads=4,intermediate=5632", 1024,
     "h100x4-a100x4", 16, Degrees(pp=8, dp=1, tp=1), None),
    ("llama-70b on 64 GPUs", LLAMA_70B, 4096, "h100x64", 64, None, None),
]
# The 70B case is about planning time on 2 cores: it runs at quick effort.
EFFORTS = {"llama-70b on 64 GPUs": "quick"}


def run_case(name, spec, seq, cluster_name, microbatches, degrees, families, work, json_dir=None):
    started = time.perf_counter()
    zoo = load_model(spec, batch=1, seq=seq)
    traced = trace(zoo.model, zoo.example_inputs)
    options = {"families": families} if families else {}
    config = PlannerConfig(microbatches=microbatches, work=work, degrees=degrees, **options)
    cluster = load_cluster(cluster_name)
    result = plan_traced(traced, cluster, config)
    total = time.perf_counter() - started
    if json_dir is not None:
        plan = to_plan(result, zoo.model, zoo.example_inputs, cluster, config, spec)
        out = Path(json_dir) / (name.replace(" ", "_") + ".json")
        out.write_text(json.dumps(without_timing(plan.to_dict()), indent=1, sort_keys=True))
    best = result.best
    rivals = [e for e in result.baselines if e.fits]
    rival = min(rivals, key=lambda e: e.step_time_s)
    gain = 1 - best.step_time_s / rival.step_time_s
    return (f"| {name} | {cluster_name} | {best.placed.degrees} | {best.solver.get('schedule')} on "
            f"{best.placed.family.name} | {best.step_time_s:.4f} | {best.bubble_ratio:.1%} | "
            f"{max(best.peak_memory_bytes) / 2**30:.1f} | {rival.label} ({rival.placed.degrees}) | "
            f"{rival.step_time_s:.4f} | {gain:+.1%} | {result.planning_seconds:.1f} | {total:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--effort", default="normal")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--json-dir", default=None)
    args = parser.parse_args()
    if args.json_dir:
        Path(args.json_dir).mkdir(parents=True, exist_ok=True)
    print("| case | cluster | degrees | parplan schedule | parplan step (s) | bubble | peak mem (GiB) | "
          "best baseline | baseline step (s) | gain | planning (s) | trace+plan (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        if args.only and not any(o in case[0] for o in args.only):
            continue
        effort = EFFORTS.get(case[0], args.effort)
        print(run_case(*case, work=effort_work(effort), json_dir=args.json_dir), flush=True)


if __name__ == "__main__":
    main()
