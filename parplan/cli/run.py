"""`parplan plan-chain`, `export`, `show` and `run`: thin commands over the plan and runtime API.

Every command reads and checks the plan (format version, fields, model fingerprint for
`run`) before anything else; a bad plan exits 2 before a process is launched or a file
is written.
"""

from __future__ import annotations

import json
import sys

from parplan.cli.args import chart_format, positive_int
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

    p = sub.add_parser("export", help="export a plan to PyTorch's compute-only schedule CSV",
                       description="Write the plan's schedule as the CSV torch.distributed.pipelining's "
                                   "_PipelineScheduleRuntime._load_csv reads (torchtitan's "
                                   "pipeline_parallel_schedule_csv); checked with PyTorch before writing.")
    p.add_argument("plan")
    p.add_argument("--torch-csv", required=True, metavar="FILE")
    p.set_defaults(func=run_export)

    p = sub.add_parser("show", help="summarise a plan; draw its Gantt chart and Chrome trace",
                       description="Print a plan's stages and predicted metrics; optionally draw it.")
    p.add_argument("plan")
    p.add_argument("--gantt", default=None, metavar="FILE", help="chart (.png or .svg): ranks x time, transfers, memory")
    p.add_argument("--trace", default=None, metavar="FILE", help="Chrome-trace JSON (Perfetto)")
    p.set_defaults(func=run_show)

    p = sub.add_parser("run", help="execute a plan under torchrun and compare predicted with measured step time",
                       description="Launch torchrun (gloo on CPU, NCCL with CUDA), run training steps of the "
                                   "plan's schedule on the real model and print predicted vs measured step time.")
    p.add_argument("plan")
    p.add_argument("--nproc", type=positive_int, required=True, help="processes (= the plan's ranks)")
    p.add_argument("--steps", type=positive_int, default=3, help="training steps (default 3; step 0 is warm-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="run this model spec instead of the plan's (must match the plan)")
    p.add_argument("--check", action="store_true",
                   help="also run one step in one process and compare loss and every gradient")
    p.add_argument("--trace", default=None, metavar="FILE", help="measured Chrome trace (same layout as show's)")
    p.add_argument("--gantt", default=None, metavar="FILE", help="chart of the plan with the measured step under it")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before the job counts as hung")
    p.set_defaults(func=run_run)


def run_plan_chain(args) -> int:
    from parplan.runtime.chain import plan_chain

    check_writable(args.output, "-o")
    plan = plan_chain(args.model, args.schedule, batch=args.batch, seq=args.seq, num_ranks=args.ranks,
                      num_microbatches=args.microbatches, num_chunks=args.chunks, costs=args.costs)
    plan.save(args.output)
    print(_summary(plan), end="")
    return 0


def run_export(args) -> int:
    from parplan.plan import Plan
    from parplan.runtime.export import check_torch_csv, torch_csv

    check_writable(args.torch_csv, "--torch-csv")
    plan = Plan.load(args.plan)
    text = torch_csv(plan.schedule)
    s = plan.schedule
    check_torch_csv(text, num_ranks=s.num_ranks, num_stages=s.num_stages, num_microbatches=s.microbatches_per_chain)
    write_outputs({args.torch_csv: text})
    print(f"wrote {args.torch_csv}: {s.name}, {s.num_ranks} ranks, {s.num_stages} stages, "
          f"{s.microbatches_per_chain} micro-batches (PyTorch validation and deadlock dry run passed)")
    return 0


def _summary(plan) -> str:
    unit = plan.time_unit
    lines = [f"plan: {plan.schedule.name} on {plan.model.spec} (batch {plan.model.batch}, seq {plan.model.seq}, "
             f"{plan.model.num_parameters} parameters), {plan.num_ranks} ranks, {plan.num_microbatches} micro-batches"]
    for st in plan.stages:
        extra = f"  receives {', '.join(st.receives)}" if st.receives else ""
        extra += f"; passes on {', '.join(st.passes)}" if st.passes else ""
        lines.append(f"  stage {st.index} on rank {st.rank}: {', '.join(st.pieces)}{extra}")
    p = plan.predicted
    lines.append(f"predicted step time {p.step_time:.6g} {unit}, bubble ratio {p.bubble_ratio:.1%}, "
                 f"peak activation per rank {[round(x, 4) for x in p.peak_activation_per_rank]} {plan.memory_unit}")
    for level, report in plan.solver.items():
        lines.append(f"solver {level}: {json.dumps(report)}")
    return "\n".join(lines) + "\n"


def run_show(args) -> int:
    from parplan.plan import Plan
    from parplan.render.chrome_trace import plan_trace
    from parplan.render.plan_chart import render_plan_gantt

    fmt = chart_format(args.gantt)
    check_writable(args.gantt, "--gantt")
    check_writable(args.trace, "--trace")
    plan = Plan.load(args.plan)
    outputs: dict[str, str | bytes] = {}
    if args.gantt:
        outputs[args.gantt] = render_plan_gantt(plan, fmt=fmt)
    if args.trace:
        outputs[args.trace] = json.dumps(plan_trace(plan)) + "\n"
    write_outputs(outputs)
    sys.stdout.write(_summary(plan))
    return 0


def run_run(args) -> int:
    from parplan.plan import Plan
    from parplan.render.chrome_trace import measured_trace
    from parplan.render.plan_chart import render_plan_gantt
    from parplan.runtime.chain import load_plan_model
    from parplan.runtime.launch import check_runnable, compare_with_reference, launch, reference_step
    from parplan.runtime.stages import check_model

    fmt = chart_format(args.gantt)
    check_writable(args.gantt, "--gantt")
    check_writable(args.trace, "--trace")
    plan = Plan.load(args.plan)
    if args.model is not None:
        zoo = load_plan_model(args.model, batch=plan.model.batch, seq=plan.model.seq)
        check_model(zoo.model, plan)
    check_runnable(plan, args.nproc)
    (measured,) = launch([plan], nproc=args.nproc, steps=args.steps, seed=args.seed, timeout_s=args.timeout)
    outputs: dict[str, str | bytes] = {}
    if args.trace:
        outputs[args.trace] = json.dumps(measured_trace(measured.timeline, schedule_name=plan.schedule.name,
                                                        step_time=measured.step_time)) + "\n"
    if args.gantt:
        outputs[args.gantt] = render_plan_gantt(plan, fmt=fmt, measured=measured)
    lines = [f"{plan.schedule.name}: {args.nproc} processes on {measured.device}, {args.steps} steps, "
             f"step times {[round(t, 5) for t in measured.step_seconds]} s"]
    if plan.time_unit == "s":
        ratio = measured.step_time / plan.predicted.step_time if plan.predicted.step_time else float("inf")
        lines.append(f"predicted step time {plan.predicted.step_time:.6g} s, measured {measured.step_time:.6g} s "
                     f"(median of steps 1..), measured/predicted {ratio:.2f}")
    else:
        lines.append(f"predicted step time {plan.predicted.step_time:.6g} cost units (abstract costs: make the plan "
                     f"with --costs measure for seconds), measured {measured.step_time:.6g} s")
    lines.append(f"loss {measured.loss:.6f}")
    if args.check:
        diff = compare_with_reference(measured, reference_step(plan, seed=args.seed))
        lines.append(f"single-process check: |loss diff| {diff['loss_diff']:.3g}, max |grad diff| "
                     f"{diff['max_grad_diff']:.3g} ({diff['worst_parameter']}) over {diff['num_parameters']} parameters")
    write_outputs(outputs)
    print("\n".join(lines))
    return 0
