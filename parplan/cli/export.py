"""`parplan export PLAN --torch-csv FILE`: a plan's schedule as PyTorch's compute-only CSV.

A thin layer over parplan.runtime.export; the CSV is checked with PyTorch before it is written.
"""

from __future__ import annotations

import sys

from parplan.cli.args import load_checked_plan
from parplan.io import check_writable, write_outputs

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a plan to PyTorch's compute-only schedule CSV",
                       description="Write the plan's schedule as the CSV torch.distributed.pipelining's "
                                   "_PipelineScheduleRuntime._load_csv reads (torchtitan's "
                                   "pipeline_parallel_schedule_csv); checked with PyTorch before writing.")
    p.add_argument("plan")
    p.add_argument("--torch-csv", required=True, metavar="FILE")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from parplan.runtime.export import check_torch_csv, torch_csv

    check_writable(args.torch_csv, "--torch-csv")
    plan = load_checked_plan(args.plan)
    text = torch_csv(plan.schedule)
    s = plan.schedule
    check_torch_csv(text, num_ranks=s.num_ranks, num_stages=s.num_stages, num_microbatches=s.microbatches_per_chain)
    write_outputs({args.torch_csv: text})
    print(f"wrote {args.torch_csv}: {s.name}, {s.num_ranks} ranks, {s.num_stages} stages, "
          f"{s.microbatches_per_chain} micro-batches (PyTorch validation and deadlock dry run passed)",
          file=sys.stderr)
    return 0
