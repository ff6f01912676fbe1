"""Held-out check of the block-fitted cost model (issue 18): fit on ops.jsonl and three of
the four GPT block shapes of blocks.jsonl, predict the fourth's F, I and W.

Each fit starts from the middle of every fitted constant's bounds (nothing learnt from the
blocks), with the same `fit` the bundled profile came from. About a minute per shape.

    python benchmarks/block_heldout.py [--hidden 1024 2048 ...]
"""

from __future__ import annotations

import argparse

from parplan.cost import load_gpu
from parplan.cost import calibration as cal


def neutral_start(gpu):
    for name, (lo, hi) in cal._BOUNDS.items():
        gpu = cal._with(gpu, name, (lo + hi) / 2)
    return gpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="*", default=None, help="block widths to hold out (default: all)")
    args = parser.parse_args()
    ops = cal.build_probes(cal.load_records(cal.H100_DATA / "ops.jsonl"))
    blocks = cal.build_block_probes(cal.load_records(cal.H100_DATA / "blocks.jsonl"))
    widths = args.hidden or sorted({p.record["hidden"] for p in blocks})
    start = neutral_start(load_gpu("h100-sxm"))
    print("| held-out record | measured (µs) | predicted (µs) | error |")
    print("|---|---|---|---|")
    for hidden in widths:
        train = [p for p in blocks if p.record["hidden"] != hidden]
        gpu = cal.fit(ops + train, start)
        for e in cal.calibration_report([p for p in blocks if p.record["hidden"] == hidden], gpu):
            print(f"| {e.label} | {e.measured_s * 1e6:.0f} | {e.predicted_s * 1e6:.0f} | {e.rel_error:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
