"""`parplan plan-chain MODEL`: split a model's pieces contiguously over one schedule's stages (plan.json).

A thin layer over parplan.runtime.chain.plan_chain.
"""

from __future__ import annotations

from parplan.cli.args import positive_int
from parplan.cli.progress import name_written
from parplan.cli.show import plan_summary
from parplan.io import check_writable, write_outputs

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    p = sub.add_parser("plan-chain", help="make a chain plan: a model's pieces split over one schedule",
                       description="Split MODEL's pieces contiguously over SCHEDULE's stages and write plan.json.")
    p.add_argument("model", help="zoo spec such as gpt:hidden=64,heads=4,layers=4,dtype=float32, or file.py:factory")
    p.add_argument("--schedule", required=True, help="a baseline name (1f1b, zb-v, dualpipev, …) or mip")
    p.add_argument("--ranks", "-n", type=positive_int, required=True)
    p.add_argument("--microbatches", "-m", type=positive_int, required=True)
    p.add_argument("--batch", type=positive_int, required=True, help="whole step's batch (a multiple of -m)")
    p.add_argument("--seq", type=positive_int, required=True)
    p.add_argument("--chunks", "-v", type=positive_int, default=None, help="stage chunks per rank (interleaved-1f1b)")
    p.add_argument("--costs", choices=("params", "measure"), default="params",
                   help="params: abstract costs proportional to parameter counts; measure: time each stage here")
    p.add_argument("-o", "--output", required=True, help="plan file to write")
    p.set_defaults(func=run_plan_chain)


def run_plan_chain(args) -> int:
    from parplan.runtime.chain import plan_chain

    check_writable(args.output, "-o")
    plan = plan_chain(args.model, args.schedule, batch=args.batch, seq=args.seq, num_ranks=args.ranks,
                      num_microbatches=args.microbatches, num_chunks=args.chunks, costs=args.costs)
    write_outputs({args.output: plan.to_json()})
    name_written([args.output])
    print(plan_summary(plan), end="")
    return 0
