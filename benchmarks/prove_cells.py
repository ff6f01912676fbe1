"""Certify grid answers offline: is any schedule faster than a given makespan?

The grid (`dualpipe_grid.py`) gives each instance 60 s; on the C=0.2, FB=0.8·(F+B) rows
that finds good schedules but does not prove them optimal. This script asks CP-SAT the
decision question directly — "is there a schedule with makespan ≤ target − one tick?" —
for one placement, with a long time limit and free-running workers (a proof needs no
determinism). INFEASIBLE proves that nothing beats the target on that placement.

    python benchmarks/prove_cells.py --pp 4 --m 8 --target 24.2                    # dualpipe
    python benchmarks/prove_cells.py --pp 4 --m 8 --target 24.2 --placement loop --time-limit 600

The target defaults to the makespan `solve_schedule` finds for the placement in 60 s.
"""

from __future__ import annotations

import argparse
import sys
import time

from ortools.sat.python import cp_model

from dualpipe_grid import baselines, costs_for
from parplan.mip import MipOptions, solve_schedule
from parplan.mip.api import _prepare
from parplan.mip.cpsat import CpSatOptions, build_model
from parplan.mip.problem import num_model_stages


def prove(num_ranks: int, num_microbatches: int, kind: str, placement: str, target: float | None,
          time_limit: float, workers: int) -> dict:
    cap = max(baselines(num_ranks, num_microbatches, kind)["dualpipe"].peak_activation_per_rank)
    costs = costs_for(kind, num_ranks, num_model_stages(placement, num_ranks))
    if target is None:
        target = solve_schedule(num_ranks=num_ranks, num_microbatches=num_microbatches, costs=costs,
                                options=MipOptions(placement=placement, memory_cap=cap, work=12)).objective
    prep = _prepare(placement=placement, num_ranks=num_ranks, num_microbatches=num_microbatches, costs=costs,
                    memory_cap=cap, param_cap=None, objective="makespan", link_contention=False)
    scale = prep.problem.time_scale
    model, v, _ = build_model(prep.problem, prep.hint, CpSatOptions())
    model.Add(v.objective <= round(target * scale) - 1)
    model.ClearObjective()
    model.ClearHints()
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = workers
    solver.parameters.ignore_subsolvers.append("fj")  # a first-solution heuristic: no help in a proof
    started = time.perf_counter()
    status = solver.StatusName(solver.Solve(model))
    return {"pp": num_ranks, "m": num_microbatches, "costs": kind, "placement": placement, "cap": cap,
            "target": target, "question": f"makespan ≤ {target - 1 / scale:g}", "answer": status,
            "seconds": time.perf_counter() - started,
            "found": solver.Value(v.objective) / scale if status in ("FEASIBLE", "OPTIMAL") else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pp", type=int, required=True)
    parser.add_argument("--m", type=int, required=True)
    parser.add_argument("--costs", default="c0.2fb0.8")
    parser.add_argument("--placement", default="dualpipe", choices=["dualpipe", "v", "loop", "chain"])
    parser.add_argument("--target", type=float, default=None, help="makespan to beat (default: a 60 s solve)")
    parser.add_argument("--time-limit", type=float, default=600.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    r = prove(args.pp, args.m, args.costs, args.placement, args.target, args.time_limit, args.workers)
    if r["answer"] == "INFEASIBLE":
        verdict = f"proven: no schedule beats {r['target']:g}"
    elif r["found"] is not None:
        verdict = f"a faster schedule exists ({r['found']:g})"
    else:
        verdict = "open (time limit)"
    print(f"| {r['pp']} | {r['m']} | {r['costs']} | {r['placement']} | cap {r['cap']:g} | {r['question']} "
          f"| {r['answer']} | {r['seconds']:.1f} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
