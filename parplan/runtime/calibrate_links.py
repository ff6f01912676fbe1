"""`parplan calibrate --links`: time collectives between local ranks and fit a link from them.

`measure_links` starts one `torchrun --standalone` job (as `parplan.runtime.launch` does for
runs) whose ranks run this module's `main`: over a sweep of message sizes, ranks 0 and 1
ping-pong a send/recv (half the round trip is one transfer), then every rank runs
all-reduce, all-gather, reduce-scatter and all-to-all. Each record is the slowest rank's
median over the repeats, in the record format of `shared/calibration/h100/ops.jsonl`
(section `link`). A collective the backend does not provide (gloo has no reduce-scatter
in some builds) is reported and left out.

`fit_link` fits `latency + bytes / bandwidth` by least squares on relative error: the send/recv sweep gives
the link's bandwidth and latency (the profile's `transfer_time` is exactly that; a negative
intercept, noise on small messages, is taken as latency 0), the
all-to-all sweep, counting the bytes one rank sends to the others, its
`all_to_all_bandwidth`; all-reduce is compared with the planner's ring formula on the
fitted link, so the report says how well that link describes a collective.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from parplan.errors import ParplanError

__all__ = ["LINK_OPS", "link_sizes", "measure_links", "fit_line", "fit_link", "main"]

_STEADY, _ATTEMPTS = 1.25, 3  # re-time a size whose median is over 1.25 x its min, up to 3 times

LINK_OPS = ("send_recv", "all_reduce", "all_gather", "reduce_scatter", "all_to_all")


def link_sizes(*, quick: bool) -> tuple[int, ...]:
    """Message sizes in bytes: small ones pin the latency, large ones the bandwidth."""
    return (4 << 10, 512 << 10, 8 << 20) if quick else (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)


# ---- the launcher ------------------------------------------------------------------------------


def measure_links(*, nproc: int, backend: str, quick: bool, timeout_s: float = 300.0) -> tuple[list[dict], list[str]]:
    """(records, one line per collective that could not be measured) from a torchrun job of `nproc` ranks."""
    from parplan.runtime.launch import _first_traceback, _torchrun

    repeat, warmup = (7, 2) if quick else (20, 5)
    with tempfile.TemporaryDirectory(prefix="parplan-links-") as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "parplan.runtime.calibrate_links", "--out", tmp, "--backend", backend,
               "--sizes", ",".join(map(str, link_sizes(quick=quick))), "--repeat", str(repeat), "--warmup", str(warmup)]
        # one thread per rank, as `parplan run` gives its ranks: the links are timed as they are used
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        done = _torchrun(cmd, env, timeout_s)
        result = Path(tmp) / "links.json"
        if done.returncode != 0 or not result.is_file():
            raise ParplanError(f"the link measurement's torchrun job failed (exit status {done.returncode}); "
                               f"nothing was written:\n{_first_traceback(done.stdout + done.stderr)}")
        data = json.loads(result.read_text())
    return data["records"], data["skipped"]


# ---- fitting -----------------------------------------------------------------------------------


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(intercept, slope) of the line through (x, y) points minimising the squared *relative*
    error: weights 1 / y^2, so a 4 KiB message pins the latency as firmly as a 64 MiB one
    pins the bandwidth (plain least squares lets the largest message decide both)."""
    if len({x for x, _ in points}) < 2:
        raise ParplanError("a latency + bytes / bandwidth fit needs at least two message sizes")
    w = [1 / (y * y) for _, y in points]
    sw = sum(w)
    mx = sum(wi * x for wi, (x, _) in zip(w, points)) / sw
    my = sum(wi * y for wi, (_, y) in zip(w, points)) / sw
    slope = (sum(wi * (x - mx) * (y - my) for wi, (x, y) in zip(w, points))
             / sum(wi * (x - mx) ** 2 for wi, (x, _) in zip(w, points)))
    return my - slope * mx, slope


def _series(records: list[dict], op: str, scale: float = 1.0) -> list[tuple[float, float]]:
    return [(r["shape"][0] * scale, r["median_us"] * 1e-6) for r in records if r["op"] == op]


def fit_link(records: list[dict], *, ranks: int, source: str) -> tuple[dict, dict]:
    """(the intra-node link as profile YAML data, a per-collective summary) from link records.

    `source` names the run; it ends every constant's source."""
    from parplan.cost.hardware import LinkProfile
    from parplan.planner.costing import ring_allreduce_s

    p2p = _series(records, "send_recv")
    if not p2p:
        raise ParplanError("send/recv could not be measured, so the link has no bandwidth or latency; nothing "
                           "was written")
    latency, per_byte = fit_line(p2p)
    if per_byte <= 0:
        raise ParplanError(f"send/recv times do not grow with message size (slope {per_byte:.3g} s/B over "
                           f"{len(p2p)} sizes): the measurement is noise; re-run without --quick on an idle machine")
    latency = max(latency, 0.0)
    fitted = f"least-squares (relative error) latency + bytes / bandwidth over {len(p2p)} send/recv sizes"

    def const(value: float, unit: str, how: str) -> dict:
        return {"value": float(f"{value:.4g}"), "unit": unit, "source": f"{how}; {source}"}

    link_data = {
        "name": "measured-local",
        "bandwidth": const(1 / per_byte, "B/s", f"measured: {fitted}"),
        "latency": const(latency, "s", f"measured: {fitted}"),
        "efficiency": const(1.0, "fraction", "the bandwidth above is the achieved rate, so no further "
                                             "efficiency applies"),
    }
    summary: dict[str, dict] = {}
    for op in LINK_OPS:
        # all-to-all: the bytes one rank sends to the others; the rest: the tensor size
        series = _series(records, op, (ranks - 1) / ranks if op == "all_to_all" else 1.0)
        if len({x for x, _ in series}) < 2:
            continue
        a, b = fit_line(series)
        summary[op] = {"latency_s": float(f"{max(a, 0.0):.4g}"),
                       "bandwidth_Bps": float(f"{1 / b:.4g}") if b > 0 else None, "sizes": len(series)}
    a2a = summary.get("all_to_all", {}).get("bandwidth_Bps")
    if a2a:
        link_data["all_to_all_bandwidth"] = const(a2a, "B/s", "measured: least-squares (relative error) latency + "
                                                              "bytes / bandwidth "
                                                              "over all_to_all_single sizes, bytes sent to the "
                                                              "other ranks")
    link = LinkProfile(name="measured-local", bandwidth=1 / per_byte, latency_s=latency, efficiency=1.0)
    allreduce = [(x, y) for x, y in _series(records, "all_reduce")]
    if allreduce:
        errors = [ring_allreduce_s(x, ranks, link) / y - 1 for x, y in allreduce]
        summary.setdefault("all_reduce", {})["ring_model_error"] = [round(e, 3) for e in errors]
    return link_data, summary


# ---- the worker (one per rank, under torchrun) ------------------------------------------------------


def _op(name: str, nbytes: int, rank: int, world: int, device):
    """A callable running collective `name` once on a message of `nbytes`."""
    import torch
    import torch.distributed as dist

    n = max(1, nbytes // 4)
    x = torch.ones(n, dtype=torch.float32, device=device)
    if name == "send_recv":
        def ping_pong():
            if rank == 0:
                dist.send(x, 1)
                dist.recv(x, 1)
            elif rank == 1:
                dist.recv(x, 0)
                dist.send(x, 0)
        return ping_pong
    if name == "all_reduce":
        return lambda: dist.all_reduce(x)
    if name == "all_gather":
        out = torch.empty(n * world, dtype=torch.float32, device=device)
        return lambda: dist.all_gather_into_tensor(out, x)
    if name == "reduce_scatter":
        big = torch.ones(n * world, dtype=torch.float32, device=device)
        return lambda: dist.reduce_scatter_tensor(x, big)
    if name == "all_to_all":
        m = max(world, n - n % world)
        inp, out = torch.ones(m, device=device), torch.empty(m, device=device)
        return lambda: dist.all_to_all_single(out, inp)
    raise AssertionError(name)


def _time_op(fn, *, warmup: int, repeat: int, device) -> list[float]:
    import torch
    import torch.distributed as dist

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        dist.barrier()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    p = argparse.ArgumentParser(prog="parplan.runtime.calibrate_links")
    p.add_argument("--out", required=True)
    p.add_argument("--backend", choices=("gloo", "nccl"), required=True)
    p.add_argument("--sizes", required=True)
    p.add_argument("--repeat", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    args = p.parse_args(argv)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if args.backend == "nccl":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    records, skipped = [], []
    for name in LINK_OPS:
        try:
            for nbytes in map(int, args.sizes.split(",")):
                fn = _op(name, nbytes, rank, world, device)
                stats = None
                for _ in range(_ATTEMPTS):  # re-timed while disturbed, as the device sweep does
                    times = _time_op(fn, warmup=args.warmup, repeat=args.repeat, device=device)
                    # the slowest rank's median and min: a collective ends when its last rank does
                    got = torch.tensor([statistics.median(times), min(times)], dtype=torch.float64)
                    dist.all_reduce(got, op=dist.ReduceOp.MAX)  # every rank sees the same, so decides the same
                    stats = got if stats is None or got[0] < stats[0] else stats
                    if got[0] <= _STEADY * got[1]:
                        break
                scale = 0.5 if name == "send_recv" else 1.0  # a ping-pong is two transfers
                records.append({"section": "link", "op": name, "shape": [nbytes], "dtype": "float32",
                                "median_us": round(float(stats[0]) * scale * 1e6, 3),
                                "min_us": round(float(stats[1]) * scale * 1e6, 3),
                                "ranks": world, "backend": args.backend})
        except (RuntimeError, NotImplementedError) as err:  # the backend lacks this collective
            skipped.append(f"{name}: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
            records = [r for r in records if r["op"] != name]
            dist.barrier()
    if rank == 0:
        (Path(args.out) / "links.json").write_text(json.dumps({"records": records, "skipped": skipped}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
