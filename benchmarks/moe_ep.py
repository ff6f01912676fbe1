"""Benchmark for issue #17: MoE all-to-alls as scheduled work, under expert parallelism.

Usage: python benchmarks/moe_ep.py [--effort normal] [--only NAME ...] [--json FILE]

For each case (model, cluster, fixed PP × DP and EP degrees) it plans with parplan and
reports, per schedule at the same memory cap:

  step        predicted step time (pipeline + gradient sync), seconds
  a2a/rank    all-to-all seconds one rank runs per step (busiest rank)
  hidden      the share of those seconds the schedule hides: 1 − (step − step without
              all-to-alls) / a2a/rank, the same schedule re-timed with every all-to-all
              part set to zero
  peak        peak memory per device, GiB
  fits        under the cap

and, per case, the all-to-all share of the step when nothing overlaps (in-line 1F1B:
a2a/rank ÷ its step), DualPipe's gain over the best in-line schedule (1F1B, ZB-H1/H2,
ZB-V, interleaved 1F1B) next to what hiding its all-to-alls predicts, parplan's gain over
the best anchor {DualPipe, DualPipeV, ZB-V, combined 1F1B} and the planning time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from parplan.budget import effort_work
from parplan.cost import load_cluster
from parplan.planner import Degrees, PlannerConfig, plan_traced
from parplan.schedule.costs import PipelineCosts
from parplan.schedule.phases import COMM, Segment, StagePhases
from parplan.schedule.simulate import costs_for_schedule, simulate, task_parts
from parplan.trace import trace
from parplan.zoo import load_model

# DeepSeek-V3-like at 16 layers: 64 routed experts (top-6) of width 1408, 2 shared, the first
# layer dense (DeepSeek-MoE 16B's widths).
DEEPSEEK_16L = ("deepseek-moe:layers=16,hidden=2048,heads=16,kv_heads=16,head_dim=128,experts=64,top_k=6,"
                "shared_experts=2,expert_hidden=1408,intermediate=10944,first_dense_layers=1,vocab=102400")

# name, spec, seq, cluster, micro-batches (all replicas), degrees (EP in them)
CASES = [
    ("EP 8 (one node per stage)", DEEPSEEK_16L, 4096, "h100x16", 64, Degrees(pp=2, dp=8, tp=1, ep=8)),
    ("EP 16 (two nodes per stage)", DEEPSEEK_16L, 4096, "h100x32", 128, Degrees(pp=2, dp=16, tp=1, ep=16)),
    ("EP 32 (four nodes per stage)", DEEPSEEK_16L, 4096, "h100x64", 256, Degrees(pp=2, dp=32, tp=1, ep=32)),
]
ANCHORS = ("dualpipe", "dualpipev", "zb-v", "combined-1f1b")
IN_LINE = ("1f1b", "zb-h1", "zb-h2", "zb-v", "interleaved-1f1b")


def without_a2a(costs: PipelineCosts) -> PipelineCosts:
    """The same costs with every all-to-all part at zero seconds."""
    def strip(ph: StagePhases | None) -> StagePhases | None:
        if ph is None:
            return None
        zero = lambda parts: tuple(Segment(s.lane, 0.0 if s.lane == COMM else s.seconds, s.label, s.after)  # noqa: E731
                                   for s in parts)
        return StagePhases(zero(ph.forward), zero(ph.backward_input), ph.backward_weight)
    if costs.phases is None:
        return costs
    phases = tuple(strip(p) for p in costs.phases)
    total = lambda k, old: tuple(p.total(k) if p else o for p, o in zip(phases, old))  # noqa: E731
    return dataclasses.replace(costs, phases=phases, forward=total("forward", costs.forward),
                               backward_input=total("backward_input", costs.backward_input))


def a2a_per_rank(evaluated) -> float:
    sim = evaluated.simulation
    costs = costs_for_schedule(sim.schedule, evaluated.placed.costs)
    return max(sum(p.end - p.start for t in row for p in task_parts(t.action, costs) if p.lane == COMM)
               for row in sim.timeline)


def row(evaluated) -> dict:
    plain = simulate(evaluated.schedule, without_a2a(evaluated.placed.costs)).makespan + evaluated.placed.dp_sync_s
    a2a = a2a_per_rank(evaluated)
    step = evaluated.step_time_s
    return {"schedule": evaluated.schedule.name, "placement": evaluated.placed.family.name,
            "step_s": step, "step_without_a2a_s": plain, "a2a_per_rank_s": a2a,
            "hidden": 1 - (step - plain) / a2a if a2a > 0 else None,
            "peak_gib": max(evaluated.peak_memory_bytes) / 2**30, "fits": evaluated.fits}


def run_case(name, spec, seq, cluster_name, microbatches, degrees, work) -> dict:
    started = time.perf_counter()
    zoo = load_model(spec, batch=1, seq=seq)
    traced = trace(zoo.model, zoo.example_inputs)
    config = PlannerConfig(microbatches=microbatches, work=work,
                           degrees=dataclasses.replace(degrees, ep=1), ep=degrees.ep)
    result = plan_traced(traced, load_cluster(cluster_name), config)
    seconds = time.perf_counter() - started
    rows = {"parplan": row(result.best), **{e.label: row(e) for e in result.baselines}}
    fits = lambda names: [rows[n] for n in names if n in rows and rows[n]["fits"]]  # noqa: E731
    best_anchor = min(fits(ANCHORS), key=lambda r: r["step_s"])
    best_in_line = min(fits(IN_LINE), key=lambda r: r["step_s"])
    one = rows["1f1b"]
    dual = rows.get("dualpipe")
    return {
        "case": name, "model": spec, "seq": seq, "cluster": cluster_name, "microbatches": microbatches,
        "degrees": str(degrees), "planning_s": seconds, "rows": rows,
        "a2a_share_in_line": one["a2a_per_rank_s"] / one["step_s"],
        "best_anchor": best_anchor["schedule"], "best_in_line": best_in_line["schedule"],
        "parplan_gain_vs_best_anchor": best_anchor["step_s"] / rows["parplan"]["step_s"] - 1,
        "dualpipe_gain_vs_in_line": (best_in_line["step_s"] / dual["step_s"] - 1) if dual else None,
        # what hiding predicts: the in-line schedule's step less the all-to-all DualPipe hides,
        # and DualPipe's own step without all-to-alls against the in-line one without them
        "dualpipe_hidden_s": dual["a2a_per_rank_s"] * dual["hidden"] if dual else None,
        "bubble_difference_without_a2a_s": (dual["step_without_a2a_s"] - best_in_line["step_without_a2a_s"])
        if dual else None,
    }


DEEPSEEK_V3 = "deepseek-moe"  # the zoo's full shape: 61 layers, 256 experts top-8, node-limited, FP8 dispatch


def run_deepseek_v3(work: float, memory_limit: float | None) -> dict:
    """The full DeepSeek-V3 shape on 2048 H800s: parplan's own search over PP × EP × DP (TP 1,
    as DeepSeek trains), and DeepSeek's published layout (PP16 × EP64, ZeRO-1 DP, DualPipe)."""
    zoo = load_model(DEEPSEEK_V3, batch=1, seq=4096)
    traced = trace(zoo.model, zoo.example_inputs)
    cluster = load_cluster("h800x2048")
    out = {"case": "DeepSeek-V3 on h800x2048", "microbatches": 4096, "memory_limit": memory_limit}
    for label, config in (
            ("search", PlannerConfig(microbatches=4096, work=work, tp=1, memory_limit=memory_limit)),
            ("deepseek layout", PlannerConfig(microbatches=4096, work=work, degrees=Degrees(pp=16, dp=128, tp=1),
                                              ep=64, families=("dualpipe",), memory_limit=memory_limit))):
        started = time.perf_counter()
        result = plan_traced(traced, cluster, config)
        out[label] = {"planning_s": time.perf_counter() - started, "degrees": str(result.best.placed.degrees),
                      "considered": len(result.reports["degrees_considered"]),
                      "rows": {"parplan": row(result.best), **{e.label: row(e) for e in result.baselines}},
                      "degrees_of": {e.label: str(e.placed.degrees) for e in [result.best, *result.baselines]}}
    return out


def print_deepseek_v3(c: dict) -> None:
    cap = "the devices' HBM" if c["memory_limit"] is None else f"{c['memory_limit'] / 2**30:.0f} GiB"
    print(f"\n### {c['case']}, seq 4096, M={c['microbatches']}, memory cap {cap}\n")
    print("| run | schedule | degrees | step (s) | a2a/rank (s) | hidden | peak (GiB) | fits | planning (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in ("search", "deepseek layout"):
        run = c[label]
        for name, r in sorted(run["rows"].items(), key=lambda kv: kv[1]["step_s"]):
            hidden = "-" if r["hidden"] is None else f"{r['hidden']:.0%}"
            print(f"| {label} | {name} | {run['degrees_of'][name]} | {r['step_s']:.3f} | {r['a2a_per_rank_s']:.3f} | "
                  f"{hidden} | {r['peak_gib']:.1f} | {'yes' if r['fits'] else 'NO'} | {run['planning_s']:.1f} |")


def print_case(c: dict) -> None:
    print(f"\n### {c['case']}: {c['degrees']} on {c['cluster']}, seq {c['seq']}, M={c['microbatches']} "
          f"(planned in {c['planning_s']:.1f} s)\n")
    print("| schedule | placement | step (s) | without a2a (s) | a2a/rank (s) | hidden | peak (GiB) | fits |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in sorted(c["rows"].items(), key=lambda kv: kv[1]["step_s"]):
        hidden = "-" if r["hidden"] is None else f"{r['hidden']:.0%}"
        print(f"| {label} | {r['placement']} | {r['step_s']:.4f} | {r['step_without_a2a_s']:.4f} | "
              f"{r['a2a_per_rank_s']:.4f} | {hidden} | {r['peak_gib']:.1f} | {'yes' if r['fits'] else 'NO'} |")
    print(f"\nall-to-all share of the in-line 1F1B step: {c['a2a_share_in_line']:.0%}; "
          f"DualPipe vs best in-line ({c['best_in_line']}): {c['dualpipe_gain_vs_in_line']:+.1%} "
          f"(hides {c['dualpipe_hidden_s']:.4f} s of all-to-all; its bubble without all-to-alls differs by "
          f"{c['bubble_difference_without_a2a_s']:+.4f} s); parplan vs best anchor ({c['best_anchor']}): "
          f"{c['parplan_gain_vs_best_anchor']:+.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effort", default="normal")
    parser.add_argument("--only", nargs="*", default=None, help="case names (substring match)")
    parser.add_argument("--json", default=None, help="write every number here")
    parser.add_argument("--deepseek-v3", action="store_true", help="also the full DeepSeek-V3 shape on 2048 H800s")
    parser.add_argument("--deepseek-effort", default="quick")
    parser.add_argument("--deepseek-memory-gib", type=float, default=None,
                        help="memory cap for the DeepSeek-V3 runs (default: the devices' HBM)")
    args = parser.parse_args()
    work = effort_work(args.effort)
    out = []
    for case in CASES:
        if args.only is not None and not any(o in case[0] for o in args.only):
            continue
        out.append(run_case(*case, work=work))
        print_case(out[-1])
    if args.deepseek_v3:
        cap = None if args.deepseek_memory_gib is None else args.deepseek_memory_gib * 2**30
        out.append(run_deepseek_v3(effort_work(args.deepseek_effort), cap))
        print_deepseek_v3(out[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
