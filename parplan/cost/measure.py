"""Measured mode: time each distinct operator signature on the local GPU.

Each operator of an exported graph is replayed alone on random CUDA tensors of its traced
shapes: forward, then the input-gradient part (autograd w.r.t. activation inputs only) and
the weight-gradient part (w.r.t. parameters only), each timed with CUDA events after
warm-up, keeping the median. Results are cached in a JSON file keyed by device name and
operator signature; `op_cost(..., measured=...)` uses them in place of the analytic model.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

from parplan.cost.model import OpCost
from parplan.errors import ParplanError
from parplan.trace.graph import OpKind, TracedGraph

__all__ = ["require_cuda", "time_samples", "random_like", "measure_graph", "load_cache", "save_cache", "DEFAULT_CACHE"]

DEFAULT_CACHE = Path.home() / ".cache" / "parplan" / "measured.json"


def require_cuda() -> str:
    """The local CUDA device name, or a ParplanError saying there is none."""
    import torch

    if not torch.cuda.is_available():
        raise ParplanError(
            "--measure needs a CUDA GPU, but torch.cuda.is_available() is False on this machine; "
            "run without --measure for analytic costs, or run it on a GPU host"
        )
    return torch.cuda.get_device_name()


def time_samples(fn: Callable[[], object], *, warmup: int, repeat: int, device: str) -> list[float]:
    """Seconds of each of `repeat` timed calls of `fn` after `warmup` untimed ones: CUDA events
    on a GPU (the kernels' time, not the host's), time.perf_counter on the CPU."""
    import time

    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device == "cpu":
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return times


def _time(fn: Callable[[], object], *, warmup: int, repeat: int, device: str) -> float:
    # the replay machinery's own test runs on CPU; planning numbers need CUDA
    return statistics.median(time_samples(fn, warmup=warmup, repeat=repeat, device=device))


def random_like(meta, requires_grad: bool, device: str):
    """A random tensor on `device` with the shape, dtype and layout of the meta tensor `meta`."""
    import torch

    if meta.dtype.is_floating_point:
        t = torch.randn(meta.shape, dtype=meta.dtype, device=device)
    else:
        t = torch.zeros(meta.shape, dtype=meta.dtype, device=device)
    if meta.dim() >= 2 and not meta.is_contiguous():  # keep the traced layout (e.g. transposed q, k, v)
        t = torch.empty_strided(meta.shape, meta.stride(), dtype=meta.dtype, device=device).copy_(t)
    return t.requires_grad_(requires_grad)


def measure_graph(traced: TracedGraph, *, warmup: int = 3, repeat: int = 10,
                  known: dict[str, OpCost] | None = None, device: str = "cuda") -> dict[str, OpCost]:
    """Time every distinct signature of `traced` not already in `known` (export captures only)."""
    import torch

    if traced.capture != "torch.export" or traced.program is None:
        raise ParplanError("measured mode replays ATen operators and needs a torch.export capture; "
                           "this graph was captured with torch.fx")
    if device == "cuda":
        require_cuda()
    fx_nodes = {n.name: n for n in traced.program.graph.nodes}
    results: dict[str, OpCost] = {}
    for op in traced.nodes:
        if op.kind is OpKind.VIEW or op.signature in results or (known and op.signature in known):
            continue
        node = fx_nodes[op.name]
        flags = iter(op.input_flags)
        tensors: list[tuple[bool, torch.Tensor]] = []

        def materialise(arg):
            val = arg.meta.get("val")
            if not isinstance(val, torch.Tensor):
                return val
            is_param, grad = next(flags, (False, False))
            t = random_like(val, grad and val.dtype.is_floating_point, device)
            tensors.append((is_param, t))
            return t

        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), materialise)
        params = [t for is_param, t in tensors if is_param and t.requires_grad]
        acts = [t for is_param, t in tensors if not is_param and t.requires_grad]
        target = node.target
        run = lambda: target(*args, **kwargs)  # noqa: E731
        forward = _time(run, warmup=warmup, repeat=repeat, device=device)
        out = run()
        first = out[0] if isinstance(out, (tuple, list)) else out
        i_s = w_s = 0.0
        if isinstance(first, torch.Tensor) and first.requires_grad:
            grad = torch.randn_like(first)
            if acts:
                i_s = _time(lambda: torch.autograd.grad(first, acts, grad, retain_graph=True), warmup=warmup, repeat=repeat, device=device)
            if params:
                w_s = _time(lambda: torch.autograd.grad(first, params, grad, retain_graph=True), warmup=warmup, repeat=repeat, device=device)
        results[op.signature] = OpCost(forward_s=forward, backward_input_s=i_s, backward_weight_s=w_s,
                                       saved_bytes=op.saved_bytes, param_bytes=op.param_bytes, measured=True)
        del out, first, tensors
    return results


def load_cache(path: Path, device_name: str) -> dict[str, OpCost]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ParplanError(f"measurement cache {path} is not valid JSON ({err}); delete it to re-measure") from None
    return {
        sig: OpCost(forward_s=v["forward_s"], backward_input_s=v["backward_input_s"],
                    backward_weight_s=v["backward_weight_s"], saved_bytes=0, param_bytes=0, measured=True)
        for sig, v in data.get(device_name, {}).items()
    }


def cache_text(path: Path, device_name: str, results: dict[str, OpCost]) -> str:
    """The cache file's new content (written by the caller, last)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    entry = data.setdefault(device_name, {})
    for sig, c in results.items():
        entry[sig] = {"forward_s": c.forward_s, "backward_input_s": c.backward_input_s,
                      "backward_weight_s": c.backward_weight_s}
    return json.dumps(data, indent=1, sort_keys=True)


def save_cache(path: Path, device_name: str, results: dict[str, OpCost]) -> None:
    text = cache_text(path, device_name, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
