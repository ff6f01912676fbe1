"""`parplan run PLAN --nproc N`: execute a plan under torchrun; predicted vs measured step time.

A thin layer over parplan.runtime.launch. The plan is read and checked (format version,
fields, orders) before anything else, then `launch` checks it against the model built from
its spec on the meta device (process count, expert parallelism, stage pieces, the
split): a bad plan exits 2 before a process is launched or a file is written. An
expert-parallel plan runs as several replicas of its pipeline; the report lists what each
process was (replica, pipeline rank, EP rank, experts), and a tied weight's line where its
copies were and how far apart they ended. A rank that fails anyway is reported
as `rank R failed: Type: message` and the exit status; `--debug` also prints every failed
rank's traceback (they are saved in a file the message names).
"""

from __future__ import annotations

import json
import sys

from parplan.cli.args import chart_format, integer, load_checked_plan, positive_int, seconds
from parplan.cli.progress import name_written
from parplan.io import check_writable, write_outputs

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    p = sub.add_parser("run", help="execute a plan under torchrun and compare predicted with measured step time",
                       description="Launch torchrun (gloo on CPU, NCCL with CUDA), run training steps of the "
                                   "plan's schedule on the real model and print predicted vs measured step time.")
    p.add_argument("plan")
    p.add_argument("--nproc", type=positive_int, required=True,
                   help="processes (= the plan's ranks × its expert-parallel degree)")
    p.add_argument("--steps", type=positive_int, default=3, help="training steps (default 3; step 0 is warm-up)")
    p.add_argument("--seed", type=integer, default=0)
    p.add_argument("--model", default=None, help="run this model spec instead of the plan's (must match the plan)")
    p.add_argument("--check", action="store_true",
                   help="also run one step in one process and compare loss and every gradient")
    p.add_argument("--trace", default=None, metavar="FILE", help="measured Chrome trace (same layout as show's)")
    p.add_argument("--gantt", default=None, metavar="FILE", help="chart of the plan with the measured step under it")
    p.add_argument("--timeout", type=seconds, default=600.0, help="seconds before the job counts as hung")
    p.set_defaults(func=run_run)


def run_run(args) -> int:
    from parplan.cost.calibrate import local_device_name
    from parplan.render.chrome_trace import measured_trace
    from parplan.render.plan_chart import render_plan_gantt
    from parplan.runtime.chain import load_plan_model
    from parplan.runtime.launch import WorkerFailure, compare_with_reference, launch, reference_step
    from parplan.runtime.stages import check_model

    fmt = chart_format(args.gantt)
    check_writable(args.gantt, "--gantt")
    check_writable(args.trace, "--trace")
    plan = load_checked_plan(args.plan)
    if args.model is not None:
        zoo = load_plan_model(args.model, batch=plan.model.batch, seq=plan.model.seq)
        check_model(zoo.model, plan)
    # launch checks the plan against its model (check_runnable) before torchrun starts
    try:
        (measured,) = launch([plan], nproc=args.nproc, steps=args.steps, seed=args.seed, timeout_s=args.timeout)
    except WorkerFailure as err:
        if args.debug:
            print(err.tracebacks, file=sys.stderr)
        raise
    outputs: dict[str, str | bytes] = {}
    if args.trace:
        outputs[args.trace] = json.dumps(measured_trace(measured.timeline, schedule_name=plan.schedule.name,
                                                        step_time=measured.step_time)) + "\n"
    if args.gantt:
        outputs[args.gantt] = render_plan_gantt(plan, fmt=fmt, measured=measured)
    lines = [f"{plan.schedule.name}: {args.nproc} processes on {measured.device}, {args.steps} steps, "
             f"step times {[round(t, 5) for t in measured.step_seconds]} s"]
    lines += _replicas(plan, measured)
    lines += _tied(measured)
    if plan.time_unit == "s":
        ratio = measured.step_time / plan.predicted.step_time if plan.predicted.step_time else float("inf")
        lines.append(f"predicted step time {plan.predicted.step_time:.6g} s, measured {measured.step_time:.6g} s "
                     f"(median of steps 1..), measured/predicted {ratio:.2f}")
    else:
        lines.append(f"predicted step time {plan.predicted.step_time:.6g} cost units (abstract costs: make the plan "
                     f"with --costs measure for seconds), measured {measured.step_time:.6g} s")
    other = _other_machine(plan, measured.device, local_device_name(measured.device.split(":")[0]))
    if other:
        lines.append(other)
    if plan.overlap_note():
        lines.append(plan.overlap_note())
    lines.append(f"loss {measured.loss:.6f}")
    if args.check:
        diff = compare_with_reference(measured, reference_step(plan, seed=args.seed))
        lines.append(f"single-process check: |loss diff| {diff['loss_diff']:.3g}, max |grad diff| "
                     f"{diff['max_grad_diff']:.3g} ({diff['worst_parameter']}) over {diff['num_parameters']} parameters")
    write_outputs(outputs)
    name_written(outputs)
    print("\n".join(lines))
    return 0


def _replicas(plan, measured) -> list[str]:
    """What each process was, when the plan ran as several replicas (expert parallelism);
    a note when the plan's data-parallel degree is not what ran."""
    replicas = len(measured.processes) // plan.num_ranks
    lines = []
    if replicas > 1:
        lines.append(f"expert parallel: {replicas} replicas of the {plan.num_ranks}-rank pipeline, each on its share of "
                     f"the batch; the replicas of a pipeline rank form its EP group")
        lines += [f"  {role.describe()}" for role in measured.processes]
    planned = plan.solver.get("planning", {}).get("data_parallel")
    if isinstance(planned, int) and planned != replicas:
        lines.append(f"note: the plan's data_parallel={planned} is not what ran: parplan run runs as many replicas "
                     f"of the pipeline as the plan's expert-parallel degree ({replicas}), so the measured step's "
                     f"gradient sync spans {replicas} replica{'s' * (replicas != 1)}, not {planned}")
    return lines


def _tied(measured) -> list[str]:
    """One line per tied weight: where its copies were and whether they ended equal."""
    lines = []
    for name, copies in measured.tied_copies.items():
        drift = max(float((c.value - copies[0].value).abs().max()) for c in copies)
        where = ", ".join(f"stage {c.stage} on process {c.process}" for c in copies)
        lines.append(f"tied weight {name}: copies on {where}; gradients summed before each update; "
                     f"copies after the last step differ by at most {drift:.3g}")
    return lines


def _other_machine(plan, device: str, local_name: str) -> str | None:
    """A note when the plan was costed for devices other than the one the job ran on: an H100
    profile's prediction against a CPU run differs ~50×, a CPU profile calibrated on another
    machine by its speed ratio; either says nothing about the plan. `device` is the run's torch
    device (`cpu`, `cuda:0`), `local_name` its model (the CPU's or GPU's name, as `parplan
    calibrate` records it in a profile's `device_names`)."""
    devices = plan.cluster.devices
    planned = sorted({str(d.get("name")) for d in devices})
    names = {str(n) for d in devices for n in d.get("device_names", ())}
    if all(d.get("kind") == "cpu" for d in devices) and not names:
        return None  # costs measured on this CPU (`plan-chain --costs measure`) or abstract
    if names:
        if local_name in names:
            return None
        what = f"{', '.join(planned)} ({plan.cluster.name}: {', '.join(sorted(names))})"
    elif device.split(":")[0] == "cpu":
        what = f"{', '.join(planned)} ({plan.cluster.name})"  # a plan from before device_names: a GPU profile
    else:
        return None  # no device names in the plan, and a GPU run's device string does not name its model
    return (f"note: the plan was costed for {what} but ran on {local_name} ({device}): measured/predicted "
            f"compares two machines; for a prediction of this one calibrate it (`parplan calibrate`, then "
            f"`--links`) and plan with --cluster on that profile, or use `parplan plan-chain ... --costs measure`")
