"""`parplan calibrate`: measure the local device and fit a hardware profile from it.

A sweep (`Sweep`: quick for CI, full otherwise) times, on the CPU or one CUDA GPU:
GEMMs (forward, dgrad, wgrad; every dtype the device runs), SDPA (causal and not,
forward and backward), norms and pointwise ops (forward and backward), device copies,
whole zoo GPT blocks (F, I, I + W), and a GEMM and a block beside a copy or another
block (contention). Each measurement is one record in the format of
`shared/calibration/h100/ops.jsonl`, timed by the probe module `calibration.probe_module`
builds from that record, so the timed module and the fitted prediction are the same one.

The profile's constants then come from the records, never from a default:
* `peak_flops.<dtype>`: the highest GEMM rate measured in that dtype; `hbm_bandwidth`: the
  highest copy rate (bytes read + written); efficiencies are fractions of these.
* floors, attention shape terms and efficiencies: `calibration.fit` on the records.
* `gemm_unaligned`: measured time of an aligned GEMM over its twin one column narrower.
* `transfer_contention`, `fb_overlap_ratio`: `calibration.fit_overlap` on the contention records.
* `hbm_capacity`: the device's memory (CUDA: total_memory; CPU: physical RAM).
A measurement that fails is reported and its record left out; a constant with no record
left to come from is not written, and since the loader needs every one, the run then
stops with an error naming what could not be measured (nothing is written).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from parplan.errors import ParplanError

__all__ = ["Sweep", "sweep_for", "RunInfo", "Calibration", "measure_device", "fit_profile", "gemm_dtypes", "op_dtypes",
           "check_device", "local_device_name", "block_errors", "default_name", "BlockFactory"]

Progress = Callable[[str, "str | None"], None]  # (group, None) when a group starts; (group, summary) when done
# (hidden, heads, dtype) -> a GPT block taking [batch, seq, hidden]: injected, since the zoo sits
# beside `cost`, not below it (docs/architecture.md)
BlockFactory = Callable[[int, int, str], "nn.Module"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Sweep:
    """What one run measures. Shapes: GEMM [M, K, N]; SDPA [batch, heads, seq, head_dim];
    pointwise [tokens, hidden]; blocks (hidden, heads, batch, seq)."""

    gemm: tuple[tuple[int, int, int], ...]
    unaligned: tuple[tuple[int, int, int], ...]  # each also timed with N - 1 (a row off 16-byte alignment)
    attention: tuple[tuple[int, int, int, int], ...]
    pointwise: tuple[tuple[int, int], ...]
    copy_bytes: tuple[int, ...]
    blocks: tuple[tuple[int, int, int, int], ...]
    contention_gemm: int  # N of the N^3 GEMM timed beside copies of copy_bytes[-1]
    warmup: int
    repeat: int

    def __post_init__(self) -> None:
        if not (self.gemm and self.unaligned and self.attention and self.pointwise and self.copy_bytes and self.blocks):
            raise ParplanError("a calibration sweep needs GEMM, unaligned GEMM, attention, pointwise, copy and "
                               "block shapes")
        if self.warmup < 0 or self.repeat < 1:
            raise ParplanError(f"sweep warmup={self.warmup}, repeat={self.repeat}: warmup >= 0 and repeat >= 1")


_POINTWISE_OPS = ("layernorm", "rmsnorm_eager", "gelu", "silu_mul", "softmax", "add", "dropout")

# Sizes keep one timed call at ~0.1-20 ms on a 2-core CPU and ~20 us-2 ms on an H100; M and N are
# multiples of 128 so the tile padding of the cost model does not enter the peak. The quick CPU
# sweep keeps tensors under ~1 MiB: larger ones are fresh mmap allocations whose page faults
# (slow in a VM) would dominate the few repeats it takes; the full sweep includes them.
_SWEEPS = {
    ("cpu", True): Sweep(
        gemm=((128, 256, 256), (256, 256, 512), (256, 512, 512), (384, 768, 256), (128, 1024, 512)),
        unaligned=((256, 512, 512),),
        attention=((1, 4, 128, 64), (1, 2, 256, 64), (2, 2, 128, 64)),
        pointwise=((512, 256), (1024, 128)),
        copy_bytes=(256 << 10, 1 << 20, 4 << 20),
        blocks=((128, 4, 1, 128),),
        contention_gemm=384, warmup=2, repeat=7),
    ("cpu", False): Sweep(
        gemm=((128, 128, 128), (128, 256, 256), (256, 256, 512), (256, 512, 512), (512, 512, 512),
              (512, 1024, 512), (1024, 512, 1024), (1024, 1024, 1024), (384, 768, 256), (2048, 256, 256)),
        unaligned=((256, 512, 512), (512, 1024, 512)),
        attention=((1, 4, 128, 64), (1, 4, 256, 64), (1, 8, 512, 64), (2, 4, 256, 32), (1, 2, 1024, 128)),
        pointwise=((512, 256), (1024, 512), (2048, 1024), (4096, 1024)),
        copy_bytes=(1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20),
        blocks=((128, 4, 1, 128), (256, 4, 1, 256), (512, 8, 2, 256)),
        contention_gemm=768, warmup=3, repeat=10),
    ("cuda", True): Sweep(
        gemm=((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (2048, 4096, 1024)),
        unaligned=((2048, 2048, 2048),),
        attention=((2, 16, 1024, 64), (2, 16, 2048, 128)),
        pointwise=((4096, 1024), (4096, 4096)),
        copy_bytes=(1 << 20, 64 << 20, 512 << 20),
        blocks=((1024, 16, 1, 1024),),
        contention_gemm=4096, warmup=3, repeat=10),
    ("cuda", False): Sweep(
        gemm=tuple((m, k, n) for m in (512, 1024, 4096, 8192) for k in (1024, 4096, 8192) for n in (1024, 4096, 8192)),
        unaligned=((4096, 4096, 4096), (8192, 4096, 8192)),
        attention=tuple((b, h, s, d) for b, h, s, d in ((4, 32, 512, 128), (4, 32, 1024, 128), (4, 32, 2048, 128),
                                                         (1, 32, 4096, 128), (8, 16, 1024, 64), (2, 16, 4096, 64))),
        pointwise=((4096, 1024), (4096, 4096), (8192, 8192), (16384, 4096)),
        copy_bytes=(1 << 20, 16 << 20, 256 << 20, 1 << 30),
        blocks=((1024, 16, 1, 2048), (2048, 16, 4, 2048), (4096, 32, 1, 2048), (8192, 64, 1, 2048)),
        contention_gemm=8192, warmup=5, repeat=20),
}


def sweep_for(device: str, *, quick: bool) -> Sweep:
    return _SWEEPS[(device, quick)]


def gemm_dtypes(device: str) -> tuple[str, ...]:
    """The dtypes GEMMs are timed in, each giving its `peak_flops` entry: the tensor-core dtypes
    and fp32 on CUDA; fp32 and bf16 on a CPU (zoo models default to bf16, so plans need its rate)."""
    return ("bfloat16", "float16", "float32") if device == "cuda" else ("float32", "bfloat16")


def op_dtypes(device: str) -> tuple[str, ...]:
    """The dtype everything else is timed in: what models run in there. A CPU runs bf16 SDPA and
    pointwise kernels at about its fp32 speed (it converts), which the byte- and peak-based cost
    model cannot describe together with fp32, so the CPU fit is of fp32, what `parplan run` uses."""
    return ("bfloat16",) if device == "cuda" else ("float32",)


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ParplanError("--device cuda: torch.cuda.is_available() is False on this machine (no CUDA GPU or no "
                           "CUDA build of torch); calibrate the CPU with --device cpu, or run on a GPU host")
    if device not in ("cpu", "cuda"):
        raise ParplanError(f"--device {device!r} is unknown; give cpu or cuda")


def local_device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return model or platform.processor() or platform.machine() or "cpu"


def _device_memory(device: str) -> tuple[float, str]:
    if device == "cuda":
        return float(torch.cuda.get_device_properties(0).total_memory), "torch.cuda.get_device_properties().total_memory"
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return float(pages), "physical RAM (os.sysconf SC_PHYS_PAGES x SC_PAGE_SIZE): a CPU's activations live there"


@dataclass(frozen=True, kw_only=True, slots=True)
class RunInfo:
    """What names the run in every constant's source."""

    device: str  # cpu or cuda
    device_name: str
    torch_version: str
    threads: int
    date: str  # UTC, ISO 8601
    command: str
    records_file: str  # the file name the raw records are written to

    @classmethod
    def here(cls, device: str, *, command: str, records_file: str) -> RunInfo:
        return cls(device=device, device_name=local_device_name(device), torch_version=torch.__version__,
                   threads=torch.get_num_threads(), command=command, records_file=records_file,
                   date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def text(self) -> str:
        threads = f", {self.threads} thread{'s' * (self.threads != 1)}" if self.device == "cpu" else ""
        clock = "time.perf_counter" if self.device == "cpu" else "CUDA events"
        return (f"{self.device_name} ({self.device}{threads}), torch {self.torch_version}, {clock} median, "
                f"{self.date}, `{self.command}`")


@dataclass(frozen=True, kw_only=True, slots=True)
class Calibration:
    records: tuple[dict, ...]
    skipped: tuple[str, ...]  # one line per measurement that failed: what, and why


# ---- measuring ---------------------------------------------------------------------------------


def _materialised(record: dict, device: str):
    """The probe module of `record` and random inputs, on `device` (see calibration.probe_module)."""
    from parplan.cost.calibration import probe_module
    from parplan.cost.measure import random_like

    module, metas = probe_module(record)
    module = module.to_empty(device=device)
    with torch.no_grad():  # to_empty leaves garbage, and denormals or NaNs would slow a CPU
        for p in module.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    return module, tuple(random_like(m, m.requires_grad, device) for m in metas)


def _grad_fn(out, targets):
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, targets, grad, retain_graph=True)


_STEADY = 1.25  # a median within this factor of the min: no repeat was disturbed much
_ATTEMPTS = 3


def _timed(fn, sweep: Sweep, device: str) -> tuple[float, float, int]:
    """(median µs, min µs, attempts): the median of the sweep's repeats, re-timed up to
    `_ATTEMPTS` times while it is over `_STEADY` x the min (on a shared CPU a descheduled repeat
    costs a whole time slice), keeping the attempt with the lowest median."""
    from parplan.cost.measure import time_samples

    best = None
    for attempt in range(1, _ATTEMPTS + 1):
        times = time_samples(fn, warmup=sweep.warmup, repeat=sweep.repeat, device=device)
        got = (statistics.median(times) * 1e6, min(times) * 1e6, attempt)
        best = got if best is None or got[0] < best[0] else best
        if got[0] <= _STEADY * got[1]:
            break
    return best[0], best[1], attempt


def _record(base: dict, fn, sweep: Sweep, device: str, **extra) -> dict:
    median_us, min_us, attempts = _timed(fn, sweep, device)
    return {**base, "median_us": round(median_us, 3), "min_us": round(min_us, 3), "attempts": attempts, **extra}


def _probe_records(section: str, ops: tuple[str, ...], shape: list[int], dtype: str, device: str, sweep: Sweep,
                   **keys) -> list[dict]:
    """One record per op of `ops` (`<kind>_fwd`, `_dgrad`, `_wgrad`, `_bwd`) on one probe module."""
    base = {"section": section, "op": ops[0], "shape": shape, "dtype": dtype, **keys}
    module, inputs = _materialised(base, device)
    acts = [t for t in inputs if t.requires_grad]
    params = [p for p in module.parameters() if p.requires_grad]
    out = module(*inputs)
    records = []
    for op in ops:
        phase = op.rsplit("_", 1)[-1] if "_" in op else "fwd"  # a copy ("d2d") is forward only
        targets = {"fwd": None, "dgrad": acts, "wgrad": params, "bwd": acts + params}[phase]
        fn = (lambda: module(*inputs)) if targets is None else _grad_fn(out, targets)
        records.append(_record({**base, "op": op}, fn, sweep, device))
    return records


def _gemm(sweep: Sweep, dtype: str, device: str) -> tuple[list[dict], str]:
    records = []
    for m, k, n in sweep.gemm:
        recs = _probe_records("gemm", ("linear_fwd", "linear_dgrad", "linear_wgrad"), [m, k, n], dtype, device, sweep)
        records += [{**r, "flops": 2 * m * k * n} for r in recs]
    best = max(r["flops"] / (r["median_us"] * 1e-6) for r in records if r["op"] == "linear_fwd")
    return records, f"{len(records)} records, best {best / 1e9:.1f} GFLOP/s"


def _unaligned(sweep: Sweep, dtype: str, device: str) -> tuple[list[dict], str]:
    records = []
    for m, k, n in sweep.unaligned:
        for width in (n, n - 1):
            rec = _probe_records("gemm", ("linear_fwd",), [m, k, width], dtype, device, sweep)[0]
            records.append({**rec, "flops": 2 * m * k * width, "group": "unaligned"})
    return records, f"{len(records)} records, aligned/unaligned time {_unaligned_ratio(records):.2f}"


def _attention(sweep: Sweep, dtype: str, device: str) -> tuple[list[dict], str]:
    records = []
    for shape in sweep.attention:
        b, h, s, d = shape
        for causal in (False, True):
            flops = 4 * b * h * s * s * d // (2 if causal else 1)
            for rec in _probe_records("attention", ("sdpa_fwd", "sdpa_bwd"), list(shape), dtype, device, sweep,
                                      causal=causal):
                records.append({**rec, "flops": flops if rec["op"] == "sdpa_fwd" else int(2.5 * flops)})
    return records, f"{len(records)} records"


def _pointwise(sweep: Sweep, dtype: str, device: str) -> tuple[list[dict], str]:
    records = []
    for tokens, hidden in sweep.pointwise:
        for kind in _POINTWISE_OPS:
            records += [{**r, "tensor_bytes": tokens * hidden * torch.empty((), dtype=getattr(torch, dtype)).element_size()}
                        for r in _probe_records("pointwise", (f"{kind}_fwd", f"{kind}_bwd"), [tokens, hidden], dtype,
                                                device, sweep)]
    return records, f"{len(records)} records"


def _copies(sweep: Sweep, device: str) -> tuple[list[dict], str]:
    records = []
    for nbytes in sweep.copy_bytes:
        rec = _probe_records("copy", ("d2d",), [nbytes], "uint8", device, sweep)[0]
        records.append({**rec, "bytes": nbytes, "gbps": round(2 * nbytes / rec["median_us"] * 1e-3, 3)})
    return records, f"{len(records)} records, best {max(r['gbps'] for r in records):.1f} GB/s read + write"


def _block(factory: BlockFactory, hidden: int, heads: int, dtype: str, device: str) -> nn.Module:
    with torch.device(device):  # parameters made where they are used (a meta block allocates nothing)
        return factory(hidden, heads, dtype).to(dtype=getattr(torch, dtype))


def _blocks(sweep: Sweep, dtype: str, device: str, factory: BlockFactory) -> tuple[list[dict], str]:
    records = []
    for hidden, heads, batch, seq in sweep.blocks:
        block = _block(factory, hidden, heads, dtype, device)
        x = torch.randn(batch, seq, hidden, dtype=getattr(torch, dtype), device=device, requires_grad=True)
        out = block(x)
        base = {"section": "layer", "shape": [batch, seq, hidden], "dtype": dtype, "hidden": hidden, "heads": heads,
                "batch": batch, "seq": seq}
        for op, fn in (("gpt_block_fwd", lambda: block(x)), ("gpt_block_bwd_input", _grad_fn(out, [x])),
                       ("gpt_block_bwd_full", _grad_fn(out, [x, *block.parameters()]))):
            records.append(_record({**base, "op": op}, fn, sweep, device))
    return records, f"{len(records)} records"


def _concurrently(main, side, device: str):
    """`main` and `side` at once: two streams on a GPU; on a CPU, `side` in a thread (torch
    releases the GIL in its kernels), as gloo's communication thread runs beside compute."""
    if device == "cpu":
        def both():
            worker = threading.Thread(target=side)
            worker.start()
            main()
            worker.join()
        return both
    stream = torch.cuda.Stream()

    def both():
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            side()
        main()
        torch.cuda.current_stream().wait_stream(stream)
    return both


def _contention(sweep: Sweep, dtype: str, device: str, factory: BlockFactory) -> tuple[list[dict], str]:
    n = sweep.contention_gemm
    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    src = torch.empty(sweep.copy_bytes[-1], dtype=torch.uint8, device=device)
    gemm = lambda: a @ a  # noqa: E731
    gemm_us = _timed(gemm, sweep, device)[0]
    copy_us = _timed(lambda: src.clone(), sweep, device)[0]
    records = []
    for copies in (1, 2):
        side = lambda copies=copies: [src.clone() for _ in range(copies)]  # noqa: E731
        records.append(_record({"section": "contention", "op": "gemm_with_copy", "shape": [n, n, n], "dtype": dtype},
                               _concurrently(gemm, side, device), sweep, device, gemm_alone_us=round(gemm_us, 3),
                               copy_alone_us=round(copy_us, 3), copies=copies,
                               serial_us=round(gemm_us + copies * copy_us, 3)))
    hidden, heads, batch, seq = sweep.blocks[0]
    fwd_block, bwd_block = (_block(factory, hidden, heads, dtype, device) for _ in range(2))
    xa, xb = (torch.randn(batch, seq, hidden, dtype=getattr(torch, dtype), device=device, requires_grad=True)
              for _ in range(2))
    out_b = bwd_block(xb)
    forward, backward = (lambda: fwd_block(xa)), _grad_fn(out_b, [xb, *bwd_block.parameters()])
    sequential_us = _timed(lambda: (forward(), backward()), sweep, device)[0]
    records.append(_record({"section": "overlap", "op": "gpt_block_f_and_b", "shape": [batch, seq, hidden],
                            "dtype": dtype, "hidden": hidden, "heads": heads},
                           _concurrently(forward, backward, device), sweep, device,
                           sequential_median_us=round(sequential_us, 3)))
    records[-1]["ratio"] = round(records[-1]["median_us"] / sequential_us, 4)
    return records, f"{len(records)} records, F beside B / F then B {records[-1]['ratio']:.2f}"


def _unaligned_ratio(records: list[dict]) -> float:
    """Median over GEMM pairs of aligned / unaligned time: the unaligned GEMM's relative rate."""
    by_shape = {(r["dtype"], *r["shape"]): r["median_us"] for r in records}
    ratios = [by_shape[(d, m, k, n)] / by_shape[(d, m, k, n - 1)]
              for (d, m, k, n) in by_shape if (d, m, k, n - 1) in by_shape]
    if not ratios:
        raise ParplanError("no aligned/unaligned GEMM pair was measured")
    return statistics.median(ratios)


def measure_device(device: str, sweep: Sweep, *, block: BlockFactory, progress: Progress | None = None) -> Calibration:
    """Every group of `sweep` on `device`; a group that raises is skipped and said so.
    `block` builds the GPT block the layer and overlap records time (the CLI passes the zoo's)."""
    report = progress or (lambda group, message: None)
    groups: list[tuple[str, Callable[[], tuple[list[dict], str]]]] = []
    for dtype in gemm_dtypes(device):
        groups.append((f"gemm {dtype}", lambda dtype=dtype: _gemm(sweep, dtype, device)))
    main = op_dtypes(device)[0]
    groups.append((f"gemm unaligned {main}", lambda: _unaligned(sweep, main, device)))
    for dtype in op_dtypes(device):
        groups.append((f"attention {dtype}", lambda dtype=dtype: _attention(sweep, dtype, device)))
        groups.append((f"norms and pointwise {dtype}", lambda dtype=dtype: _pointwise(sweep, dtype, device)))
    groups.append(("copies", lambda: _copies(sweep, device)))
    for dtype in op_dtypes(device):
        groups.append((f"gpt blocks {dtype}", lambda dtype=dtype: _blocks(sweep, dtype, device, block)))
    groups.append((f"contention {main}", lambda: _contention(sweep, main, device, block)))
    records: list[dict] = []
    skipped: list[str] = []
    for name, run in groups:
        report(name, None)
        try:
            got, summary = run()
        except (RuntimeError, NotImplementedError, ParplanError) as err:  # OOM, an op the device lacks
            reason = " ".join(str(err).split())[:200]
            skipped.append(f"{name}: {type(err).__name__}: {reason}")
            report(name, f"not measured ({type(err).__name__}: {reason})")
            continue
        records += got
        report(name, summary)
        if device == "cuda":
            torch.cuda.empty_cache()
    return Calibration(records=tuple(records), skipped=tuple(skipped))


# ---- fitting -----------------------------------------------------------------------------------


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


# A CPU runs eager ops with floors of tens to hundreds of microseconds, SDPA and pointwise
# kernels far below its GEMM and copy peaks: the GPU ranges of calibration.fit would clip them.
_CPU_BOUNDS = {
    "launch_floor_s": (1e-7, 500e-6),
    "backward_floor_s": (1e-7, 1e-3),
    "backward_call_s": (1e-7, 2e-3),
    "view_floor_s": (1e-7, 200e-6),
    "gemm_floor_s": (1e-7, 500e-6),
    "attention_seq_half": (1.0, 4096.0),
    "attention_causal_tile": (1.0, 4096.0),
    "gemm": (0.05, 1.0),
    "gemm_backward": (0.05, 1.0),
    "attention_forward": (0.005, 1.0),
    "attention_backward": (0.005, 1.0),
    "attention_causal": (0.2, 1.0),
    "memory": (0.01, 1.0),
}


def _bounds(device: str) -> dict[str, tuple[float, float]]:
    from parplan.cost.calibration import FIT_BOUNDS

    if device == "cpu":
        return {**FIT_BOUNDS, **_CPU_BOUNDS}
    # the profile loader wants floors and attention terms > 0: keep the GPU ranges off zero
    return {k: (lo or (1e-7 if k.endswith("_s") else 1.0), hi) for k, (lo, hi) in FIT_BOUNDS.items()}


def _fit_start(device: str, device_name: str, name: str, peaks: dict[str, float], bandwidth: float, memory: float,
               unaligned: float, contention: float, ratio: float):
    """A profile at the middle of every fitted bound, so the fit's first sweep spans each range."""
    from parplan.cost.hardware import Efficiency, GPUProfile

    mid = {k: (lo + hi) / 2 for k, (lo, hi) in _bounds(device).items()}
    return GPUProfile(
        name=name, device_names=(device_name,), peak_flops=peaks, hbm_bytes=memory, hbm_bandwidth=bandwidth,
        launch_floor_s=mid["launch_floor_s"], backward_floor_s=mid["backward_floor_s"],
        backward_call_s=mid["backward_call_s"], view_floor_s=mid["view_floor_s"],
        gemm_floor_s=mid["gemm_floor_s"], attention_seq_half=mid["attention_seq_half"],
        attention_causal_tile=mid["attention_causal_tile"],
        efficiency=Efficiency(gemm=mid["gemm"], gemm_backward=mid["gemm_backward"], gemm_unaligned=unaligned, attention_forward=mid["attention_forward"],
                              attention_backward=mid["attention_backward"], attention_causal=mid["attention_causal"],
                              memory=mid["memory"], transfer_contention=contention, fb_overlap_ratio=ratio))


# which constants each record section informs: a constant whose sections all failed is left out
_NEEDS = {
    "gemm": ("peak_flops", "gemm", "gemm_backward", "gemm_floor"),
    "attention": ("attention_forward", "attention_backward", "attention_causal", "attention_seq_half",
                  "attention_causal_tile"),
    "pointwise": ("launch_floor", "backward_floor", "backward_call", "view_floor", "memory"),
    "copy": ("hbm_bandwidth",),
    "unaligned": ("gemm_unaligned",),
    "contention": ("transfer_contention", "fb_overlap_ratio"),
}


# the profile's constants `calibration.fit` sets: (YAML key, GPUProfile attribute, unit), and
# the efficiencies (same key and attribute)
_FITTED = (("launch_floor", "launch_floor_s", "s"), ("backward_floor", "backward_floor_s", "s"),
           ("backward_call", "backward_call_s", "s"), ("view_floor", "view_floor_s", "s"),
           ("gemm_floor", "gemm_floor_s", "s"), ("attention_seq_half", "attention_seq_half", "tokens"),
           ("attention_causal_tile", "attention_causal_tile", "tokens"))
_FITTED_EFFICIENCY = ("gemm", "gemm_backward", "attention_forward", "attention_backward", "attention_causal", "memory")


def fit_profile(records: list[dict], run: RunInfo, *, name: str, skipped: tuple[str, ...] = (),
                block: BlockFactory | None = None) -> tuple[dict, dict]:
    """(the GPU profile as YAML data, the fit's error summary) from the records of one run;
    with `block`, the summary also has the profile's error on the whole-block records.

    Raises a ParplanError naming the constants no record could give (and why: `skipped`)."""
    from parplan.cost.calibration import build_probes, calibration_report, fit, fit_overlap, summarize_errors

    gemm_fwd = [r for r in records if r["section"] == "gemm" and r["op"] == "linear_fwd"]
    aligned = [r for r in gemm_fwd if r.get("group") != "unaligned"]  # the peaks come from these
    unaligned_recs = [r for r in gemm_fwd if r.get("group") == "unaligned"]
    have = {
        "gemm": {"bfloat16", "float32"} <= {r["dtype"] for r in aligned},
        "attention": any(r["section"] == "attention" for r in records),
        "pointwise": any(r["section"] == "pointwise" for r in records),
        "copy": any(r["section"] == "copy" for r in records),
        "unaligned": bool(unaligned_recs),
        "contention": any(r["op"] == "gemm_with_copy" for r in records)
        and any(r["op"] == "gpt_block_f_and_b" for r in records),
    }
    missing = [c for section, ok in have.items() if not ok for c in _NEEDS[section]]
    if missing:
        why = "; ".join(skipped) if skipped else "no records of that kind"
        raise ParplanError(f"the measurements for {', '.join(missing)} failed or were not taken ({why}); a GPU "
                           f"profile needs every constant, so none was written: fix the failing measurement "
                           f"(see the progress lines; --debug shows tracebacks) or calibrate on another device")
    peaks = {}
    for r in aligned:
        peaks[r["dtype"]] = max(peaks.get(r["dtype"], 0.0), r["flops"] / (r["median_us"] * 1e-6))
    bandwidth = max(2 * r["bytes"] / (r["median_us"] * 1e-6) for r in records if r["section"] == "copy")
    memory, memory_source = _device_memory(run.device)
    unaligned = min(1.0, _unaligned_ratio(unaligned_recs))
    contention, ratio = fit_overlap([r for r in records if r["section"] in ("contention", "overlap")])
    op_records = [r for r in records if r["section"] in ("gemm", "attention", "pointwise", "copy")]
    # whole blocks in the fit too, as for the bundled H100 profile: they are what a stage costs
    # (dispatch and kernels overlapping), and they separate the backward call from its floor
    probes = build_probes(op_records) + _block_probes([r for r in records if r["section"] == "layer"])
    start = _fit_start(run.device, run.device_name, name, {k: _sig(v) for k, v in peaks.items()}, _sig(bandwidth), memory,
                       _sig(unaligned), _sig(contention), _sig(ratio))
    gpu = fit(probes, start, bounds=_bounds(run.device))
    summary = {k: {m: round(v, 4) for m, v in s.items()} for k, s in summarize_errors(calibration_report(probes, gpu)).items()}
    if block is not None:
        summary["blocks"] = block_errors([r for r in records if r["section"] == "layer"], gpu, block)

    def const(value: float, unit: str, source: str) -> dict:
        return {"value": _sig(value), "unit": unit, "source": f"{source}; {run.text}"}

    fitted = f"fitted by parplan.cost.calibration.fit on {run.records_file}"
    eff = gpu.efficiency
    data = {
        "kind": "gpu",
        "name": name,
        "device_names": [run.device_name],
        "peak_flops": {dtype: const(v, "FLOP/s", f"highest {dtype} GEMM rate measured ({run.records_file})")
                       for dtype, v in sorted(peaks.items())},
        "hbm_capacity": const(memory, "bytes", memory_source),
        "hbm_bandwidth": const(bandwidth, "B/s", f"highest copy rate measured, bytes read + written "
                                                 f"({run.records_file})"),
        **{key: const(getattr(gpu, attr), unit, fitted) for key, attr, unit in _FITTED},
        "efficiency": {
            **{key: const(getattr(eff, key), "fraction", fitted) for key in _FITTED_EFFICIENCY},
            "gemm_unaligned": const(unaligned, "fraction", f"measured: time of aligned GEMMs over their twins one "
                                                           f"column narrower, median ({run.records_file})"),
            "transfer_contention": const(contention, "fraction", f"fitted by parplan.cost.calibration.fit_overlap on "
                                                                 f"the contention records of {run.records_file}"),
            "fb_overlap_ratio": const(ratio, "ratio", f"fitted by parplan.cost.calibration.fit_overlap on the "
                                                      f"overlap records of {run.records_file}"),
        },
    }
    return data, summary


def _block_probes(records: list[dict]) -> list:
    """F, I and W probes of the block shapes measured in full (fwd, bwd_input, bwd_full)."""
    from parplan.cost.calibration import build_block_probes

    by_shape: dict[tuple, list[dict]] = {}
    for r in records:
        if r["op"] in ("gpt_block_fwd", "gpt_block_bwd_input", "gpt_block_bwd_full"):
            by_shape.setdefault((r["hidden"], r["heads"], r["batch"], r["seq"], r["dtype"]), []).append(r)
    return build_block_probes([r for recs in by_shape.values() if len(recs) == 3 for r in recs])


def block_errors(records: list[dict], gpu, factory: BlockFactory) -> dict[str, float]:
    """Relative error of the profile's F, I and I + W of whole GPT blocks (not part of the op fit:
    how the per-op model adds up on a real block), as median and max |error| over the records."""
    import warnings

    from parplan.cost.model import op_cost
    from parplan.trace import trace

    errors = []
    traced: dict[tuple, tuple] = {}
    for r in records:
        key = (r["hidden"], r["heads"], r["batch"], r["seq"], r["dtype"])
        if key not in traced:
            block = _block(factory, r["hidden"], r["heads"], r["dtype"], "meta")
            x = torch.zeros(r["batch"], r["seq"], r["hidden"], dtype=getattr(torch, r["dtype"]), device="meta",
                            requires_grad=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                nodes = trace(block, (x,), method="export").nodes
            costs = [op_cost(n, gpu) for n in nodes]
            traced[key] = (sum(c.forward_s for c in costs), sum(c.backward_input_s for c in costs),
                           sum(c.backward_s for c in costs))
        f, i, full = traced[key]
        predicted = {"gpt_block_fwd": f, "gpt_block_bwd_input": i, "gpt_block_bwd_full": full}[r["op"]]
        errors.append(abs(predicted / (r["median_us"] * 1e-6) - 1))
    if not errors:
        return {}
    return {"median": round(statistics.median(errors), 4), "max": round(max(errors), 4), "count": len(errors)}


def default_name(device_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    return f"calibrated-{slug or 'device'}"
