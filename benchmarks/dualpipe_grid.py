"""Issue #3 acceptance grid: the MIP scheduler against DualPipe and the other baselines.

For PP ∈ {4, 8, 16} × M ∈ {2·PP, 4·PP} × three cost sets, with the activation cap set to
DualPipe's peak, print one markdown row per instance: the max per-rank bubble of
DualPipe, DualPipeV, ZB-V, the best baseline that fits the cap, and the MIP's, with its
status, makespan bound, gap and solve time.

Costs follow the CLI convention: `--cost` describes one rank's share of the model, so a
placement with S model stages uses `PipelineCosts.uniform(S, ...).scaled(N / S)`.

The MIP runs with `placement="auto"` by default: every placement (dualpipe, v, loop,
chain) is prepared with its own baselines as warm starts, so the best baseline under the
cap always seeds the search and the result is never worse than it. "time s" is the wall
time of the whole `solve_schedule` call (model building and re-timing included).

    python benchmarks/dualpipe_grid.py                       # full grid, 60 s per instance
    python benchmarks/dualpipe_grid.py --pp 8 --costs unit   # one slice
    python benchmarks/dualpipe_grid.py --costs c0.2fb0.8 --cells any   # (F;I) cells allowed too
"""

from __future__ import annotations

import argparse
import sys
import time

from parplan.baselines import BASELINES, build_baseline
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.mip import MipOptions, solve_schedule
from parplan.schedule.simulate import simulate

COSTS: dict[str, dict[str, float]] = {
    "unit": dict(f=1, i=1, w=1),
    "i1.2w0.8": dict(f=1, i=1.2, w=0.8),
    "c0.2fb0.8": dict(f=1, i=1, w=1, c=0.2, fb=0.8 * 3),
}
# Model stages per placement family: DualPipe and the one-chunk schedules cut the model
# into N stages, the V and loop ones into 2N.
TWO_CHUNK = {"dualpipev", "zb-v", "interleaved-1f1b"}


def costs_for(kind: str, num_ranks: int, num_stages: int) -> PipelineCosts:
    return PipelineCosts.uniform(num_stages, **COSTS[kind]).scaled(num_ranks / num_stages)


def baselines(num_ranks: int, num_microbatches: int, kind: str) -> dict[str, object]:
    out = {}
    for name in BASELINES:
        stages = 2 * num_ranks if name in TWO_CHUNK else num_ranks
        try:
            schedule = build_baseline(name, num_ranks, num_microbatches)
        except ParplanError:
            continue
        out[name] = simulate(schedule, costs_for(kind, num_ranks, stages))
    return out


def run_instance(num_ranks: int, num_microbatches: int, kind: str, *, work: float, time_limit: float,
                 placement: str, cells: str = "fb") -> dict:
    base = baselines(num_ranks, num_microbatches, kind)
    cap = max(base["dualpipe"].peak_activation_per_rank)
    fits = {n: r for n, r in base.items() if max(r.peak_activation_per_rank) <= cap + 1e-9}
    best_name = min(fits, key=lambda n: fits[n].makespan)
    started = time.perf_counter()
    result = solve_schedule(num_ranks=num_ranks, num_microbatches=num_microbatches, rank_costs=lambda s: costs_for(kind, num_ranks, s),
                            options=MipOptions(placement=placement, memory_cap=cap, work=work, time_limit=time_limit,
                                               workers=2, cells=cells))
    wall = time.perf_counter() - started
    dp = base["dualpipe"].max_bubble
    return {
        "pp": num_ranks, "m": num_microbatches, "costs": kind, "cap": cap,
        "dualpipe": dp, "dualpipev": base["dualpipev"].max_bubble, "zb-v": base["zb-v"].max_bubble,
        "best": best_name, "best_bubble": fits[best_name].max_bubble, "best_makespan": fits[best_name].makespan,
        "mip_bubble": result.simulation.max_bubble, "mip_makespan": result.objective,
        "mip_peak": max(result.simulation.peak_activation_per_rank),
        "status": result.status, "bound": result.bound, "gap": result.gap, "seconds": wall,
        "ratio": result.simulation.max_bubble / dp if dp > 0 else float("nan"),
        "warm": result.warm_start, "placement": result.placement,
        "not_worse": result.objective <= fits[best_name].makespan + 1e-9,
        "within_limit": wall <= time_limit,
    }


HEADER = ("| PP | M | costs | DualPipe | DualPipeV | ZB-V | best baseline (≤ cap) | MIP bubble | MIP/DualPipe "
          "| MIP makespan | bound | gap | status | time s | placement | warm start | ≤ best? |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    bound = "–" if r["bound"] is None else f"{r['bound']:.2f}"
    gap = "–" if r["gap"] is None else f"{100 * r['gap']:.1f}%"
    return (f"| {r['pp']} | {r['m']} | {r['costs']} | {r['dualpipe']:.2f} | {r['dualpipev']:.2f} | {r['zb-v']:.2f} "
            f"| {r['best']} {r['best_bubble']:.2f} (makespan {r['best_makespan']:.2f}) | {r['mip_bubble']:.2f} "
            f"| {r['ratio']:.3f} | {r['mip_makespan']:.2f} | {bound} | {gap} | {r['status']} "
            f"| {r['seconds']:.1f}{'' if r['within_limit'] else ' (over)'} | {r['placement']} | {r['warm']} "
            f"| {'yes' if r['not_worse'] else 'NO'} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pp", type=int, nargs="*", default=[4, 8, 16])
    parser.add_argument("--mult", type=int, nargs="*", default=[2, 4], help="M = mult × PP")
    parser.add_argument("--costs", nargs="*", default=list(COSTS), choices=list(COSTS))
    parser.add_argument("--work", type=float, default=12.0, help="CP-SAT deterministic seconds per row")
    parser.add_argument("--time-limit", type=float, default=60.0, help="wall-clock safety stop per row")
    parser.add_argument("--placement", default="auto", choices=["auto", "dualpipe", "v", "loop", "chain"])
    parser.add_argument("--cells", default="fb", choices=["fb", "any"],
                        help="F&B cells the MIP may form: fb as DualPipe (default), any also (F;I)")
    args = parser.parse_args(argv)
    print(HEADER, flush=True)
    for pp in args.pp:
        for mult in args.mult:
            for kind in args.costs:
                r = run_instance(pp, mult * pp, kind, work=args.work, time_limit=args.time_limit, placement=args.placement,
                                 cells=args.cells)
                print(row(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
