"""`parplan profile MODEL`: predicted (or measured) F, I, W seconds and activation bytes per module.

A thin layer over parplan.cost (the cost model and measured mode) and
parplan.trace.summary.cost_profile. Outputs are built in memory and files written last,
so a failing command writes nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from parplan.cli.args import model_args, non_negative_int, positive_int
from parplan.cli.trace import traced_model
from parplan.errors import ParplanError
from parplan.io import check_writable, write_outputs

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    p = sub.add_parser("profile", help="predicted F, I, W seconds and activation bytes per module")
    model_args(p)
    p.add_argument("--hardware", default=None,
                   help="GPU profile name or .yaml (cluster names use their first GPU); "
                        "default with --measure: the profile matching the local GPU")
    p.add_argument("--depth", type=non_negative_int, default=1, help="module depth of the per-module table (default 1)")
    p.add_argument("--measure", action="store_true", help="time each distinct operator on the local GPU")
    p.add_argument("--cache", type=Path, metavar="FILE", default=None, help="measurement cache (default ~/.cache/parplan/measured.json)")
    p.add_argument("--repeat", type=positive_int, default=10, help="timed repetitions per operator (median kept)")
    p.set_defaults(func=run_profile)


def run_profile(args) -> int:
    from parplan.cost import op_cost
    from parplan.cost.hardware import ClusterProfile, GPUProfile, available_profiles, load_gpu, load_profile_file, _resolve
    from parplan.cost.measure import DEFAULT_CACHE, cache_text, load_cache, measure_graph, require_cuda
    from parplan.trace.summary import cost_profile

    device_name = require_cuda() if args.measure else None  # fail before any work
    if args.measure and args.cache is not None:
        check_writable(args.cache, "--cache")
    if args.hardware is None:
        if device_name is None:
            raise ParplanError(f"--hardware is required without --measure; known: {', '.join(available_profiles())}")
        matches = [n for n in available_profiles()
                   if isinstance(p := load_profile_file(_resolve(n)), GPUProfile) and device_name in p.device_names]
        if not matches:
            raise ParplanError(f"no bundled profile lists the local GPU {device_name!r}; pass --hardware NAME or a .yaml")
        args.hardware = matches[0]
    profile = load_profile_file(_resolve(args.hardware))
    gpu = profile.gpu(0) if isinstance(profile, ClusterProfile) else load_gpu(args.hardware)
    started = time.perf_counter()
    traced, warns = traced_model(args)
    analytic = {n.name: op_cost(n, gpu) for n in traced.nodes}
    result = {
        "model": args.model, "hardware": gpu.name, "batch": args.batch, "seq": args.seq,
        "capture": traced.capture, "notes": list(traced.notes), "warnings": warns,
    }
    cache_payload = None
    if args.measure:
        cache = args.cache or DEFAULT_CACHE
        known = load_cache(cache, device_name)
        fresh = measure_graph(traced, repeat=args.repeat, known=known)
        measured = {**known, **fresh}
        costs = {n.name: op_cost(n, gpu, measured=measured) for n in traced.nodes}
        result["device"] = device_name
        result["measured_signatures"] = len(fresh)
        result["analytic_total"] = cost_profile(traced, analytic, depth=args.depth)["total"]
        result["comparison"] = _comparison(traced, analytic, costs)
        cache_payload = (cache, cache_text(cache, device_name, fresh))
    else:
        costs = analytic
    result.update(cost_profile(traced, costs, depth=args.depth))
    result["seconds"] = round(time.perf_counter() - started, 3)
    if cache_payload is not None:
        cache, text = cache_payload
        if args.cache is None:  # the default cache's folder is made on first use
            cache.parent.mkdir(parents=True, exist_ok=True)
        write_outputs({str(cache): text})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_profile(result)
    return 0


def _comparison(traced, analytic, measured) -> list[dict]:
    """Per distinct signature: analytic vs measured F, I, W (seconds)."""
    rows: dict[str, dict] = {}
    for n in traced.nodes:
        m = measured[n.name]
        if not m.measured or n.signature in rows:
            continue
        a = analytic[n.name]
        rows[n.signature] = {
            "op": n.op, "module": n.module_path, "inputs": [list(t.shape) for t in n.inputs],
            "count": sum(1 for x in traced.nodes if x.signature == n.signature),
            "forward_s": [a.forward_s, m.forward_s],
            "backward_input_s": [a.backward_input_s, m.backward_input_s],
            "backward_weight_s": [a.backward_weight_s, m.backward_weight_s],
        }
    return sorted(rows.values(), key=lambda r: -r["forward_s"][1] * r["count"])


def _print_profile(result: dict) -> None:
    t = result["total"]
    print(f"{result['model']} on {result['hardware']} (batch {result['batch']}, seq {result['seq']}, {result['capture']})")
    header = f"{'module':40s} {'F ms':>10s} {'I ms':>10s} {'W ms':>10s} {'act MiB':>10s}"
    print(header)
    print("-" * len(header))
    rows = list(result["modules"].items()) + [("TOTAL", t)]
    for name, r in rows:
        print(f"{name[:40]:40s} {r['forward_s'] * 1e3:10.3f} {r['backward_input_s'] * 1e3:10.3f} "
              f"{r['backward_weight_s'] * 1e3:10.3f} {r['activation_bytes'] / 2**20:10.1f}")
    if "analytic_total" in result:
        a = result["analytic_total"]
        print(f"analytic TOTAL (no measurements): F {a['forward_s'] * 1e3:.3f} ms, I {a['backward_input_s'] * 1e3:.3f} ms, "
              f"W {a['backward_weight_s'] * 1e3:.3f} ms; measured ops: {t['measured_ops']}")
    for note in result["notes"]:
        print(f"note: {note}")
    for w in result["warnings"]:
        print(f"warning: {w}")
