"""`parplan plan MODEL`: plan a model on a cluster and compare with the expert schedules."""

from __future__ import annotations

import argparse
import json
import sys

from parplan.cli.args import (capture_warning_lines, chart_format, degree, effort, format_columns, integer, leaf_arg,
                              memory_size, positive_int, schedule_name, seconds)
from parplan.baselines import BASELINES
from parplan.cli.progress import ProgressDisplay, name_written
from parplan.io import check_writable, write_outputs

__all__ = ["add_parsers", "DEFAULT_MODEL", "format_plan_table", "summary_line", "technique_line"]

DEFAULT_MODEL = "llama:layers=40,hidden=5120,heads=40,kv_heads=40,intermediate=13824"  # Llama-2-13B shape


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "plan", help="plan a model on a cluster (placement + schedule) and compare with expert schedules",
        description="Trace MODEL, place its operators on the cluster's devices (upper-level MIP), schedule "
                    "every micro-batch's F/I/W (lower-level MIP) and compare with the expert schedules.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"zoo spec (gpt:layers=12, llama, mixtral, deepseek-moe, two-tower), path.py:factory, "
                        f"hf:llama or titan:llama3:debugmodel (default: {DEFAULT_MODEL})")
    p.add_argument("--cluster", default="h100x8", help="cluster profile name or YAML file (default h100x8)")
    p.add_argument("--batch", type=positive_int, default=1, help="sequences per micro-batch (default 1)")
    p.add_argument("--seq", type=positive_int, default=1024, help="sequence length (default 1024)")
    leaf_arg(p)
    p.add_argument("--microbatches", "-m", type=positive_int, default=32, help="micro-batches per step (default 32)")
    p.add_argument("--memory-limit", type=memory_size, default=None, help="bytes per device, e.g. 70GiB (default: device HBM)")
    p.add_argument("--effort", type=effort, default="normal",
                   help="search work: quick, normal (default: about a minute on 2 cores for the default job) or "
                        "thorough, or a number of CP-SAT deterministic seconds; the same model, cluster, options, "
                        "seed and workers give the same plan on any machine")
    p.add_argument("--time-limit", type=seconds, default=None,
                   help="wall-clock safety stop in seconds (default none); if it fires, the plan says which phase "
                        "it cut, and the plan may then depend on the machine's speed")
    p.add_argument("--mode", choices=("train", "inference"), default="train")
    p.add_argument("--objective", choices=("makespan", "utilization", "latency"), default="makespan",
                   help="makespan: step time (throughput); utilization: busy fraction; latency: first "
                        "micro-batch through the pipeline (inference)")
    p.add_argument("--placement", choices=("auto", "chain", "loop", "v", "dualpipe"), default="auto",
                   help="stage-to-rank family (default auto: try each)")
    p.add_argument("--pp", type=degree, default=None, help="fix the pipeline degree (default: search)")
    p.add_argument("--tp", type=degree, default=None, help="fix the tensor-parallel degree (default: search)")
    p.add_argument("--ep", type=degree, default=None,
                   help="fix the expert-parallel degree of MoE layers, out of the data-parallel replicas "
                        "(default: search; 1 without MoE layers)")
    p.add_argument("--schedule", type=schedule_name, default=None, metavar="NAME",
                   help=f"evaluate this expert schedule instead of searching ({', '.join(BASELINES)}): with --pp "
                        f"(and --tp, --ep) fixed, that configuration's step time, memory and chart on an even layer "
                        f"split; without --pp, the fastest degrees for it (docs/planner.md)")
    p.add_argument("--chunks", type=positive_int, default=None, metavar="V",
                   help="stage chunks per rank for --schedule interleaved-1f1b or combined-1f1b (default 2)")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=None,
                   help="ZeRO level over the data-parallel shard group: 0 replicates, 1 shards optimizer state, "
                        "2 also gradients, 3 also parameters (FSDP) (default: search, ZeRO-1 first)")
    p.add_argument("--no-zero1", action="store_true", help="same as --zero 0: full optimizer state on every replica")
    p.add_argument("--dp-shard", type=degree, default=None,
                   help="replicas per ZeRO/FSDP shard group (torchtitan's data_parallel_shard_degree; default: "
                        "search, the whole data-parallel group first)")
    p.add_argument("--dp-replicate", type=degree, default=None,
                   help="copies of the shard group (data_parallel_replicate_degree); --dp-shard × --dp-replicate "
                        "is the data-parallel degree")
    p.add_argument("--recompute", choices=("none", "selective", "full"), default=None,
                   help="activation recomputation per layer: none, selective (the attention core) or full "
                        "(only each layer's input kept) (default: search, none first)")
    p.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="Megatron sequence parallelism with --tp 2 or more (default: on whenever TP > 1)")
    p.add_argument("--no-mip", action="store_true", help="skip the lower-level MIP (expert orders only)")
    p.add_argument("--seed", type=integer, default=0)
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("-o", "--output", default=None, help="write plan.json here")
    p.add_argument("--gantt", default=None, help="draw the plan next to the best baseline (.png/.svg)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress on stderr (by default: a live display on a terminal, else one line per "
                        "phase); errors and the names of written files still print")
    p.set_defaults(func=run_plan)


def run_plan(args) -> int:
    from parplan.budget import effort_work
    from parplan.cost.hardware import load_cluster
    from parplan.planner.api import evaluated_summary, parse_degrees, plan_with_report
    from parplan.errors import ParplanError
    from parplan.planner.memory import MemoryModel
    from parplan.planner.techniques import TechniqueChoice, check_techniques
    from parplan.zoo import load_model

    check_writable(args.output, "-o")
    check_writable(args.gantt, "--gantt")
    fmt = chart_format(args.gantt)
    # cheap checks first: a bad option fails before the model is built and traced
    cluster = load_cluster(args.cluster)
    degrees = parse_degrees(args.pp, args.tp, cluster)
    if args.no_zero1 and args.zero not in (None, 0):
        raise ParplanError(f"--no-zero1 (ZeRO-0) contradicts --zero {args.zero}; give one of them")
    choice = TechniqueChoice(zero=0 if args.no_zero1 else args.zero, dp_shard=args.dp_shard,
                             dp_replicate=args.dp_replicate, recompute=args.recompute,
                             sequence_parallel=args.sequence_parallel)
    choice.check(mode=args.mode, tp=degrees.tp if degrees is not None else args.tp)
    if degrees is not None:
        check_techniques(choice, degrees)
    zoo = load_model(args.model, batch=args.batch, seq=args.seq)
    with ProgressDisplay(quiet=args.quiet) as display:
        plan, result = plan_with_report(
            zoo.model, zoo.example_inputs, cluster=cluster, microbatches=args.microbatches, spec=args.model,
            progress=None if args.quiet else display, memory_limit=args.memory_limit, work=effort_work(args.effort),
            time_limit=args.time_limit, mode=args.mode, objective=args.objective, degrees=degrees, ep=args.ep,
            tp=args.tp if args.pp is None else None,
            **({} if args.placement == "auto" else {"families": (args.placement,)}),
            memory=MemoryModel(mode=args.mode), techniques=choice, use_mip=not args.no_mip,
            seed=args.seed, workers=args.workers, leaf_modules=tuple(args.leaf), schedule=args.schedule,
            chunks=args.chunks,
        )
    for line in capture_warning_lines(result.units.traced, args.debug):
        print(line, file=sys.stderr)
    outputs: dict[str, str | bytes] = {}
    if args.output:
        outputs[args.output] = plan.to_json()
    if args.gantt:
        from parplan.render.gantt import GanttPanel, render_gantt

        rival = min(result.baselines, key=lambda e: (not e.fits, e.step_time_s), default=None)
        panels = [GanttPanel(simulation=e.simulation, costs=e.placed.costs, step_time=e.step_time_s,
                             label=f"{label} ({e.placed.degrees})")
                  for label, e in [(_plan_label(result), result.best), ("best baseline", rival)] if e is not None]
        title = f"parplan plan vs best baseline: {args.model} on {cluster.name}" if rival is not None else \
            f"evaluated configuration: {args.model} on {cluster.name}"
        outputs[args.gantt] = render_gantt(panels, fmt=fmt, time_unit="s", memory_unit="bytes", title=title)
    best = evaluated_summary(result.best)
    report = {
        **best,
        "planning_seconds": result.planning_seconds,
        "baselines": {e.label: evaluated_summary(e) for e in result.baselines},
        "solver": plan.solver,
        "notes": list(result.notes),
        "evaluated": None if plan.evaluated is None else plan.evaluated.to_dict(),
    }
    text = json.dumps(report, indent=1) + "\n" if args.json else format_plan_table(result, args.model, cluster.name)
    write_outputs(outputs)
    name_written(outputs)
    sys.stdout.write(text)
    return 0


def format_plan_table(result, model: str, cluster: str) -> str:
    from parplan.planner.api import evaluated_summary

    rows = [(_plan_label(result), result.best)] + [(e.label, e) for e in result.baselines]
    header = ["plan", "schedule", "placement", "degrees", "techniques", "step time (s)", "bubble",
              "peak mem/dev (GiB)", "fits"]
    body = []
    for label, e in rows:
        d = evaluated_summary(e)
        body.append([label, d["schedule"], d["placement"], d["degrees"], d["techniques"], f"{d['step_time_s']:.4f}",
                     f"{d['bubble_ratio']:.1%}", f"{max(d['peak_memory_bytes']) / 2**30:.1f}",
                     "yes" if d["fits"] else "NO"])
    best_baseline = min((e for e in result.baselines if e.fits), key=lambda e: e.step_time_s, default=None)
    done = "planned" if result.search == "searched" else "evaluated (not searched)"
    out = [f"{model} on {cluster}: {done} in {result.planning_seconds:.1f}s", *format_columns(header, body),
           technique_line(evaluated_summary(result.best))]
    if best_baseline is not None:
        out.append(summary_line(result.best.step_time_s, best_baseline.label, best_baseline.step_time_s))
    out += [f"note: {n}" for n in result.notes]
    return "\n".join(out) + "\n"


def _plan_label(result) -> str:
    """The plan's row: parplan's own, or the configuration the user fixed."""
    return "parplan" if result.search == "searched" else "evaluated"


def technique_line(summary: dict) -> str:
    """What the plan's techniques cost per step on its busiest rank, in words."""
    cost = summary["technique_cost"]
    return (f"techniques: {summary['techniques']}: recomputation {cost['recompute_s']:.4g} s, exposed ZeRO "
            f"collectives {cost['sharding_s']:.4g} s, gradient sync {cost['sync_s']:.4g} s per step; "
            f"{cost['held_bytes'] / 2**30:.2f} GiB held for gathers / recomputation")


def summary_line(step_s: float, rival: str, rival_s: float) -> str:
    """parplan's step time against the best baseline's, in words: faster, slower, or the
    same when they differ by less than 0.05 % (what `:.1%` prints as 0.0 %)."""
    head = f"parplan: {step_s:.4g} s per step"
    change = abs(1 - step_s / rival_s)
    if change < 0.0005:
        return f"{head}, the same as {rival} ({rival_s:.4g} s)"
    return f"{head}, {change:.1%} {'faster' if step_s < rival_s else 'slower'} than {rival} ({rival_s:.4g} s)"
