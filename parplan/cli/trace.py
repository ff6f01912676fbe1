"""`parplan trace MODEL`: trace a model into an operator DAG and summarise it (parplan.trace).

Outputs are built in memory and files written last, so a failing command writes nothing.
"""

from __future__ import annotations

import json
import sys
import warnings

from parplan.cli.args import capture_warning_lines, model_args
from parplan.io import check_writable, write_outputs
from parplan.sizes import format_bytes

__all__ = ["add_parsers", "traced_model"]


def add_parsers(sub) -> None:
    p = sub.add_parser("trace", help="trace a model into an operator DAG and summarise it")
    model_args(p)
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write the DAG (nodes, edges, summary) as JSON")
    p.set_defaults(func=run_trace)


def traced_model(args):
    """The traced graph of `args.model` (its `--leaf` classes kept whole) and the
    unknown-operator warnings tracing raised; what capture emitted is noted on stderr."""
    from parplan.trace import UnknownOperatorWarning, trace
    from parplan.zoo import load_model

    zoo = load_model(args.model, batch=args.batch, seq=args.seq)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnknownOperatorWarning)
        traced = trace(zoo.model, zoo.example_inputs, leaf_modules=args.leaf)
    for line in capture_warning_lines(traced, args.debug):
        print(line, file=sys.stderr)
    return traced, [str(w.message) for w in caught if issubclass(w.category, UnknownOperatorWarning)]


def run_trace(args) -> int:
    from parplan.trace.summary import graph_json, trace_summary

    check_writable(args.output, "-o")
    traced, warns = traced_model(args)
    summary = trace_summary(traced)
    write_outputs({args.output: json.dumps(graph_json(traced))} if args.output else {})
    for w in warns:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        s = summary
        print(f"captured with {s['capture']} in {s['capture_seconds']:.2f} s")
        print(f"operators: {s['operators']} ({', '.join(f'{k} {v}' for k, v in s['operators_by_kind'].items())})")
        print(f"parameters: {s['parameters']:,} ({format_bytes(s['parameter_bytes'])})")
        print(f"FLOPs: forward {s['forward_flops']:.4g}, backward-input (I) {s['backward_input_flops']:.4g}, "
              f"backward-weight (W) {s['backward_weight_flops']:.4g}")
        print(f"saved for backward: {format_bytes(s['saved_activation_bytes'])}")
        for b in s["repeated_blocks"]:
            print(f"repeated block: {b['instances']} x {b['module_class']} (first {b['first']}, "
                  f"{b['ops_per_instance']} ops, {b['forward_flops_per_instance']:.4g} forward FLOPs each)")
        for note in s["notes"]:
            print(f"note: {note}")
    return 0
