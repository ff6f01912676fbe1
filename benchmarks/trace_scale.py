"""Tracing at scale: a Llama-7B-shaped and a DeepSeek-V3-shaped MoE model on the meta device.

    python benchmarks/trace_scale.py [--json]

Each case runs in a fresh interpreter so its peak host memory (ru_maxrss) is its own.
Acceptance (issue #4): Llama-7B shape <= 10 s, DeepSeek-V3 shape <= 60 s, peak RSS <= 2 GB,
on 2 cores. Exits 1 when a limit is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    "llama-7b": ("llama", dict(hidden=4096, heads=32, kv_heads=8, layers=32, intermediate=11008), 10.0),
    "deepseek-v3": ("deepseek-moe", {}, 60.0),  # the zoo defaults are the V3 shape (61 layers)
}
SEQ = 2048
RSS_LIMIT = 2 * 1024**3

_CHILD = """
import json, resource, sys, time, warnings
start = time.perf_counter()
from parplan.trace import trace
from parplan.zoo import build
name, options, seq = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
z = build(name, batch=1, seq=seq, **options)
built = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("error")  # an op without a rule would be a bug here
    t = trace(z.model, z.example_inputs)
end = time.perf_counter()
print(json.dumps({
    "seconds_total": end - start, "seconds_build": built - start, "seconds_trace": end - built,
    "seconds_capture": t.capture_seconds, "operators": len(t.nodes), "parameters": t.param_count,
    "forward_tflops": t.forward_flops / 1e12, "blocks": [[b.module_class, len(b.instances)] for b in t.blocks],
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}))
"""


def run_case(name: str) -> dict:
    model, options, limit = CASES[name]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, model, json.dumps(options), str(SEQ)],
        capture_output=True, text=True, check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # seconds_total includes importing torch; the limit applies to build + trace
    result.update(case=name, limit_s=limit, ok=result["seconds_build"] + result["seconds_trace"] <= limit
                  and result["peak_rss_bytes"] <= RSS_LIMIT)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [run_case(name) for name in CASES]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['case']:12s} build+trace {r['seconds_build'] + r['seconds_trace']:6.2f} s "
                  f"(limit {r['limit_s']:.0f} s; capture {r['seconds_capture']:.2f} s) "
                  f"peak RSS {r['peak_rss_bytes'] / 2**20:7.0f} MiB  ops {r['operators']:6d}  "
                  f"params {r['parameters'] / 1e9:7.1f} B  fwd {r['forward_tflops']:8.1f} TFLOP  "
                  f"{'ok' if r['ok'] else 'OVER LIMIT'}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
