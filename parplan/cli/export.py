"""`parplan export PLAN --torch-csv FILE | --torchtitan DIR`: a plan for PyTorch or torchtitan.

A thin layer over parplan.runtime.export (the CSV, checked with PyTorch before it is
written) and parplan.runtime.torchtitan_export (torchtitan's job-config overrides, the CSV
and a launch README). Every output is checked before any work; all are written at the end
or none.
"""

from __future__ import annotations

import sys
from pathlib import Path

from parplan.cli.args import load_checked_plan
from parplan.errors import ParplanError
from parplan.io import check_writable, write_outputs

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a plan to PyTorch's schedule CSV or a torchtitan job",
                       description="--torch-csv: the plan's schedule as the CSV torch.distributed.pipelining's "
                                   "_PipelineScheduleRuntime._load_csv reads (torchtitan's "
                                   "pipeline_parallel_schedule_csv); checked with PyTorch before writing. "
                                   "--torchtitan DIR: torchtitan 0.3's job-config overrides (overrides.txt), "
                                   "the schedule CSV and a README with the torchrun command, for a plan of a "
                                   "titan: model (needs the torchtitan extra).")
    p.add_argument("plan")
    p.add_argument("--torch-csv", metavar="FILE")
    p.add_argument("--torchtitan", metavar="DIR", help="folder for the torchtitan job (created if missing)")
    p.set_defaults(func=run_export)


def _check_folder(path: str) -> None:
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ParplanError(f"--torchtitan {path!r} is a file; give a folder (it is created if missing)")
    if folder.is_dir():
        check_writable(folder / "README.md", "--torchtitan")
    else:
        check_writable(folder, "--torchtitan")


def _write_all(files: dict[str, str], folder: str | None) -> None:
    """All of `files` at once; `folder` (the torchtitan job's) is created first if missing and
    removed again if writing fails, so a failure leaves nothing behind."""
    created = folder is not None and not Path(folder).exists()
    if created:
        Path(folder).mkdir()
    try:
        write_outputs(files)
    except BaseException:
        if created:
            Path(folder).rmdir()
        raise


def run_export(args) -> int:
    from parplan.runtime.export import check_torch_csv, torch_csv

    if args.torch_csv is None and args.torchtitan is None:
        raise ParplanError("export needs an output: --torch-csv FILE (PyTorch's schedule CSV) and/or "
                           "--torchtitan DIR (a torchtitan job)")
    check_writable(args.torch_csv, "--torch-csv")
    if args.torchtitan is not None:
        _check_folder(args.torchtitan)
    plan = load_checked_plan(args.plan)
    s = plan.schedule
    files: dict[str, str] = {}
    if args.torch_csv is not None:
        files[args.torch_csv] = torch_csv(s)
        check_torch_csv(files[args.torch_csv], num_ranks=s.num_ranks, num_stages=s.num_stages,
                        num_microbatches=s.microbatches_per_chain)
    titan: dict[str, str] = {}
    if args.torchtitan is not None:
        from parplan.runtime.torchtitan_export import export_files

        titan = export_files(plan, args.torchtitan)
    _write_all({**files, **titan}, args.torchtitan)
    if args.torch_csv is not None:
        print(f"wrote {args.torch_csv}: {s.name}, {s.num_ranks} ranks, {s.num_stages} stages, "
              f"{s.microbatches_per_chain} micro-batches (PyTorch validation and deadlock dry run passed)",
              file=sys.stderr)
    for path in titan:
        print(f"wrote {path}", file=sys.stderr)
    return 0
