"""Fidelity on CPU/gloo (issue #18 item 4): predicted vs executed step time and per-action durations.

Usage:
  python benchmarks/fidelity.py [--quick] [--out DIR] [--profiles DIR] [--ranks 2 4] [--steps 6]
                                [--schedules 1f1b zb-v dualpipev mip] [--json FILE]

1. Calibrate this machine (unless --profiles names a folder that already holds the profiles):
   `parplan calibrate --device cpu --threads 1 [--quick]` (one thread, as each `parplan run`
   worker computes) and, per rank count N, `parplan calibrate --links --nproc N` (with
   `--share-cores` when N is above the core count): the link (gloo send/recv latency and
   bandwidth), the runtime's per-action overhead and each rank's share of the cores.
2. Plan each configuration with that profile: a zoo GPT split contiguously over the
   schedule's stages (balanced by the cost model's F + I + W), every stage costed by the one
   cost path (trace → `op_cost` → `group_costs` → `pipeline_costs`, which charges the node
   group's action overhead and compute share and the link's transfers), scheduled by the
   baseline or the MIP (V placement) and simulated (`plan_chain`).
3. Run every plan of N ranks in one torchrun job (`parplan.runtime.launch`, what `parplan run`
   does) for --steps steps and compare the plan's step time with the measured median of
   steps 1.. (step 0 warms up), and each (rank, kind) action's predicted duration with the
   median measured in the last step's timeline.

Prints a table per configuration and writes everything to --json. The profiles used are
written to --out (commit them beside the numbers: benchmarks/cpu_profiles/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# Blocks of the shape the CPU sweep times whole ([2, 256, 512], `gpt_block_*` records), so the
# fidelity of the pipeline is not confounded with the cost model's error at untimed shapes (at
# [2, 128, 256] the fit is ~20 % low); fp32, no tied weights (plan-chain plans do not charge
# the tied sum). A 2-rank step takes about 2 s.
MODEL = "gpt:vocab=1024,hidden=512,heads=8,layers=8,max_positions=256,dtype=float32,tie_embeddings=false"
SEQ = 256
MICRO_BATCH = 2
SCHEDULES = ("1f1b", "zb-v", "dualpipev", "mip")
MICROBATCHES = {2: 4, 4: 8}  # per rank count: at least 2N, as DualPipeV needs


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    ranks: int
    schedule: str
    microbatches: int

    @property
    def name(self) -> str:
        return f"{self.schedule} x{self.ranks} m{self.microbatches}"


def parplan(*args: str) -> None:
    """One `parplan` command in a fresh process (this tree's parplan: PYTHONPATH is inherited)."""
    cmd = [sys.executable, "-m", "parplan.cli", *args]
    print("$ parplan " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def calibrate(folder: Path, ranks: list[int], *, quick: bool) -> dict[int, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    device = folder / "cpu.yaml"
    parplan("calibrate", "--device", "cpu", "--threads", "1", *(["--quick"] if quick else []), "--out", str(device),
            "--quiet")
    clusters = {}
    for n in ranks:
        clusters[n] = folder / f"cpu-x{n}.yaml"
        share = ["--share-cores"] if n > (os.cpu_count() or 1) else []
        parplan("calibrate", "--links", "--nproc", str(n), *share, "--gpu", str(device),
                *(["--quick"] if quick else []), "--out", str(clusters[n]), "--quiet")
    return clusters


def profile_plan(config: Config, cluster_file: Path):
    """The configuration's chain plan, costed by the cost model on the calibrated cluster."""
    from parplan.baselines import build_baseline
    from parplan.cost.groups import group_costs, groups_by_module, pipeline_costs
    from parplan.cost.hardware import load_cluster
    from parplan.plan import ClusterSummary
    from parplan.runtime.chain import balanced_split, load_plan_model, plan_chain
    from parplan.runtime.split import default_pieces
    from parplan.schedule.placement import family
    from parplan.trace import trace

    cluster = load_cluster(cluster_file)
    gpu, node = cluster.gpu(0), cluster.group(0)
    n, m = config.ranks, config.microbatches
    zoo = load_plan_model(MODEL, batch=MICRO_BATCH, seq=SEQ)
    traced = trace(zoo.model, zoo.example_inputs)
    pieces = default_pieces(zoo.model)
    per_piece = group_costs(traced, groups_by_module(traced, [[p] for p in pieces]), gpu)
    if config.schedule == "mip":  # plan_chain's MIP places a V, as ZB-V and DualPipeV do
        rank_of = [family("v").rank_of_stage(s, n) for s in range(family("v").num_stages(n))]
    else:
        rank_of = list(build_baseline(config.schedule, n, m).stage_to_rank)
    num_stages = len(rank_of)
    split, k = [], 0
    for size in balanced_split([g.forward_s + g.backward_input_s + g.backward_weight_s for g in per_piece],
                               num_stages):
        split.append(tuple(pieces[k:k + size]))
        k += size
    stages = group_costs(traced, groups_by_module(traced, [list(g) for g in split]), gpu, link=cluster.link(0, 1))
    costs = pipeline_costs(stages, gpu, node=node, rank_of=rank_of)
    devices = tuple({"name": gpu.name, "device_names": list(gpu.device_names)} for _ in range(n))
    return plan_chain(MODEL, config.schedule, batch=MICRO_BATCH * m, seq=SEQ, num_ranks=n, num_microbatches=m,
                      split=split, costs=costs, time_unit="s", memory_unit="bytes",
                      cluster=ClusterSummary(name=cluster.name, devices=devices))


def per_action(plan, measured) -> list[dict]:
    """Per (stage, kind): the plan's duration (median over its actions; an F&B cell's split
    evenly over its parts) beside the median measured in the last step."""
    planned: dict[tuple[int, str], list[float]] = defaultdict(list)
    for row in plan.timeline:
        for a in row:
            for atom in a.action.atoms:
                planned[atom.stage, atom.kind.value].append((a.end - a.start) / len(a.action.atoms))
    seen: dict[tuple[int, str], list[float]] = defaultdict(list)
    for row in measured.timeline:
        for a in row:
            hit = re.fullmatch(r"(\d+)([FBIW])\d+", a.label) if a.lane == "compute" else None
            if hit:
                seen[int(hit.group(1)), hit.group(2)].append(a.end - a.start)
    return [{"stage": s, "rank": plan.schedule.stage_to_rank[s], "kind": k, "count": len(seen.get((s, k), ())),
             "predicted_ms": 1e3 * statistics.median(planned[s, k]),
             "measured_ms": 1e3 * statistics.median(seen[s, k]) if seen.get((s, k)) else None}
            for s, k in sorted(planned)]


def runnable() -> int:
    """Processes runnable right now, machine-wide (/proc/loadavg's fourth field), this one included."""
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])


class RunnableSampler:
    """Samples `runnable()` every 0.1 s in a thread while a job runs: the contention it saw
    (its own ranks included), which a 1-minute load average smears over earlier work."""

    def __init__(self) -> None:
        import threading

        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(runnable() - 1)  # not counting this sampling process

    def __enter__(self) -> "RunnableSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else float("nan")


def wait_quiet(limit_s: float) -> float:
    """Wait (up to `limit_s`) until no other process is runnable for 5 s in a row; the seconds waited."""
    began = time.perf_counter()
    quiet_since = None
    while time.perf_counter() - began < limit_s:
        if runnable() <= 1:
            quiet_since = quiet_since or time.perf_counter()
            if time.perf_counter() - quiet_since >= 5:
                break
        else:
            quiet_since = None
        time.sleep(0.2)
    return time.perf_counter() - began


def run(configs: list[Config], clusters: dict[int, Path], *, steps: int, wait_s: float = 0.0) -> list[dict]:
    from parplan.runtime.launch import launch

    results = []
    for n in sorted({c.ranks for c in configs}):
        group = [c for c in configs if c.ranks == n]
        plans = [profile_plan(c, clusters[n]) for c in group]
        waited = wait_quiet(wait_s)
        load = os.getloadavg()
        started = time.perf_counter()
        with RunnableSampler() as sampler:
            measured = launch(plans, nproc=n, steps=steps, timeout_s=900.0)
        print(f"{n} ranks: {len(plans)} plans run in {time.perf_counter() - started:.0f} s (after waiting {waited:.0f} s "
              f"for a quiet machine), load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}; runnable "
              f"processes during the job {sampler.mean:.2f} on average ({n} ranks + launcher included)", flush=True)
        for config, plan, m in zip(group, plans, measured):
            results.append({"config": config.name, "ranks": n, "schedule": config.schedule,
                            "microbatches": config.microbatches, "plan_schedule": plan.schedule.name,
                            "predicted_s": plan.predicted.step_time, "measured_s": m.step_time,
                            "step_seconds": list(m.step_seconds), "ratio": m.step_time / plan.predicted.step_time,
                            # the last step's actions end to end: the rest of its time is the step's fixed work
                            "measured_span_s": max(a.end for row in m.timeline for a in row),
                            "load_before": load[0], "runnable_during": sampler.mean,
                            "actions": per_action(plan, m)})
    return results


def report(results: list[dict]) -> str:
    lines = ["| plan | predicted s | measured s (median of steps 1..) | measured/predicted | error | "
             "last step: actions' span s | load before | runnable during |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['config']} | {r['predicted_s']:.4f} | {r['measured_s']:.4f} | {r['ratio']:.3f} | "
                     f"{abs(r['ratio'] - 1):.1%} | {r['measured_span_s']:.4f} of {r['step_seconds'][-1]:.4f} | "
                     f"{r['load_before']:.2f} | {r['runnable_during']:.2f} |")
    within = sum(abs(r["ratio"] - 1) <= 0.15 for r in results)
    lines.append(f"\n{within} of {len(results)} plans within 15 %.\n")
    lines.append("| plan | stage (rank) | kind | actions | predicted ms | measured ms | measured/predicted |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in results:
        for a in r["actions"]:
            got = a["measured_ms"]
            lines.append(f"| {r['config']} | {a['stage']} ({a['rank']}) | {a['kind']} | {a['count']} | {a['predicted_ms']:.2f} | "
                         + (f"{got:.2f} | {got / a['predicted_ms']:.2f} |" if got is not None else "- | - |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the reduced calibration sweeps (a check that it runs: its profile mispredicts these blocks)")
    parser.add_argument("--out", default="fidelity-out", help="folder for the calibrated profiles (default fidelity-out)")
    parser.add_argument("--profiles", default=None,
                        help="use the profiles already in this folder (cpu.yaml, cpu-xN.yaml) instead of calibrating")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    parser.add_argument("--steps", type=int, default=6, help="training steps per plan (step 0 is warm-up)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before calibrating and before each job, wait up to this long for no other runnable process")
    args = parser.parse_args(argv)
    print(f"load average at the start: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min); "
          f"{os.cpu_count()} cores", flush=True)
    if args.profiles:
        clusters = {n: Path(args.profiles) / f"cpu-x{n}.yaml" for n in args.ranks}
    else:
        wait_quiet(args.wait_quiet)
        clusters = calibrate(Path(args.out), args.ranks, quick=args.quick)
    configs = [Config(ranks=n, schedule=s, microbatches=MICROBATCHES[n]) for n in args.ranks for s in args.schedules]
    results = run(configs, clusters, steps=args.steps, wait_s=args.wait_quiet)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": MODEL, "seq": SEQ, "micro_batch": MICRO_BATCH,
                                               "profiles": {n: str(p) for n, p in clusters.items()},
                                               "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
