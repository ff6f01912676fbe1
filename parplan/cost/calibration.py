"""Calibration of the cost model against measured operator and block times.

Each measurement record becomes a *probe*: the small PyTorch module that was timed (a
bias-free linear, a LayerNorm, the eager RMSNorm, SDPA, a copy...) or a whole GPT block
(`build_block_probes`), traced by `parplan.trace` exactly like a user model. An isolated
operator is costed as it was timed, alone from an idle GPU (`isolated_time` over its
`op_launches`); a block as a plan's stage is, the sum of its operators' `op_cost`. Comparing
probes with measurements therefore checks the tracer's FLOP/byte rules and the cost
formulas together.

`fit` chooses the profile's fitted constants by coordinate descent on squared log error;
`calibration_report` gives the per-record errors the acceptance tests check. The H100 data
(shared/calibration/h100, PyTorch 2.11, CUDA events; ops median of 20, blocks median of 10)
ships in `parplan/cost/data/h100` so the tests run on a clean clone.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from parplan.cost.hardware import GPUProfile
from parplan.cost.model import Launch, OpLaunches, isolated_time, op_cost, op_launches
from parplan.errors import ParplanError

__all__ = [
    "H100_DATA",
    "Probe",
    "RecordError",
    "load_records",
    "probe_module",
    "build_probes",
    "build_block_probes",
    "predict",
    "calibration_report",
    "summarize_errors",
    "fit",
    "FIT_BOUNDS",
    "fit_overlap",
    "fitted_constants",
    "calibration_loss",
]

H100_DATA = Path(__file__).with_name("data") / "h100"

# Record op -> which phase of the probe's cost it measures
_PHASE = {"fwd": "forward", "dgrad": "backward_input", "wgrad": "backward_weight", "bwd": "backward"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Probe:
    record: dict
    category: str  # "gemm", "attention", "pointwise", "copy", "block"
    phase: str  # forward / backward_input / backward_weight / backward
    nodes: tuple  # traced OpNodes of the probe module


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordError:
    label: str
    category: str
    tokens: int  # GEMM M (tokens), 0 for other categories
    measured_s: float
    predicted_s: float

    @property
    def rel_error(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s


def load_records(path: Path | str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ParplanError(f"calibration file {str(path)!r} does not exist")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- probe modules: what each record timed ---------------------------------------------------


class _EagerRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * w in separate kernels, as measured."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs)


def _meta(shape, dtype, grad=True) -> torch.Tensor:
    return torch.zeros(*shape, device="meta", dtype=dtype, requires_grad=grad)


def probe_module(record: dict) -> tuple[nn.Module, tuple[torch.Tensor, ...]] | None:
    """The module a record timed and its meta inputs; None for what no probe models."""
    section, op, shape = record["section"], record["op"], record["shape"]
    dtype = getattr(torch, record["dtype"])
    if section == "gemm":
        m, k, n = shape
        return nn.Linear(k, n, bias=False, device="meta", dtype=dtype), (_meta((m, k), dtype),)
    if section == "attention":
        causal = bool(record.get("causal"))
        fn = _Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        return fn, tuple(_meta(shape, dtype) for _ in range(3))
    if section == "pointwise":
        kind = op.rsplit("_", 1)[0]
        tokens, hidden = shape
        x = _meta((tokens, hidden), dtype)
        if kind == "layernorm":
            return nn.LayerNorm(hidden, device="meta", dtype=dtype), (x,)
        if kind == "rmsnorm_eager":
            return _EagerRMSNorm(hidden).to(device="meta", dtype=dtype), (x,)
        unary = {"gelu": F.gelu, "softmax": lambda t: F.softmax(t, dim=-1),
                 "dropout": lambda t: F.dropout(t, 0.1, training=True)}
        if kind in unary:
            return _Fn(unary[kind]), (x,)
        binary = {"silu_mul": lambda a, b: F.silu(a) * b, "add": lambda a, b: a + b}
        if kind in binary:
            return _Fn(binary[kind]), (x, _meta((tokens, hidden), dtype))
        return None
    if section == "copy" and op == "d2d":
        return _Fn(lambda t: t.clone()), (_meta(shape, torch.uint8, grad=False),)
    return None  # host<->device copies cross PCIe: a link, not a GPU operator


def build_probes(records: Iterable[dict]) -> list[Probe]:
    from parplan.trace import trace  # the tracer is what is being calibrated

    cache: dict[str, tuple] = {}
    probes = []
    for rec in records:
        built = probe_module(rec)
        if built is None:
            continue
        key = json.dumps([rec["section"], rec["op"].rsplit("_", 1)[0], rec["shape"], rec["dtype"], rec.get("causal")])
        if key not in cache:
            module, inputs = built
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[key] = trace(module, inputs, method="export").nodes
        phase = _PHASE.get(rec["op"].rsplit("_", 1)[-1], "forward")
        probes.append(Probe(record=rec, category=rec["section"], phase=phase, nodes=cache[key]))
    return probes


def _phase_launch(launches: OpLaunches, phase: str) -> list[Launch]:
    parts = {"forward": (launches.forward,), "backward_input": (launches.backward_input,),
             "backward_weight": (launches.backward_weight,),
             "backward": (launches.backward_input, launches.backward_weight)}[phase]
    return [p for p in parts if p is not None]


# ---- whole blocks: blocks.jsonl -------------------------------------------------------------

class _GPTBlock(nn.Module):
    """What blocks.jsonl timed (its README): pre-LayerNorm, one fused QKV linear with bias,
    causal SDPA, output projection, residual, LayerNorm, 4x exact-GELU MLP, residual; no
    dropout. The same operators as the zoo's GPT block (tests/test_cost_blocks.py checks)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.fc, self.out = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        heads = (t.view(b, s, self.heads, h // self.heads).transpose(1, 2) for t in self.qkv(self.ln_1(x)).split(h, dim=-1))
        y = F.scaled_dot_product_attention(*heads, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, s, h))
        return x + self.out(F.gelu(self.fc(self.ln_2(x))))


def _gpt_block_nodes(record: dict) -> tuple:
    from parplan.trace import trace  # the tracer is what is being calibrated

    dtype = getattr(torch, record["dtype"])
    block = _GPTBlock(record["hidden"], record["heads"]).to(device="meta", dtype=dtype)
    x = _meta((record["batch"], record["seq"], record["hidden"]), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trace(block, (x,), method="export").nodes


def build_block_probes(records: Iterable[dict]) -> list[Probe]:
    """F, I and W probes of each block shape in `records` (blocks.jsonl): F and I are timed
    directly, W is the full backward (I + W) minus the input-only one."""
    by_shape: dict[tuple, dict[str, dict]] = {}
    for rec in records:
        by_shape.setdefault((rec["hidden"], rec["heads"], rec["batch"], rec["seq"], rec["dtype"]), {})[rec["op"]] = rec
    probes = []
    for key, ops in by_shape.items():
        missing = {"gpt_block_fwd", "gpt_block_bwd_input", "gpt_block_bwd_full"} - set(ops)
        if missing:
            raise ParplanError(f"block shape (hidden, heads, batch, seq, dtype) = {key} lacks {sorted(missing)}; "
                               f"each shape needs fwd, bwd_input and bwd_full records")
        nodes = _gpt_block_nodes(ops["gpt_block_fwd"])
        weight = dict(ops["gpt_block_bwd_full"], op="gpt_block_bwd_weight",
                      median_us=ops["gpt_block_bwd_full"]["median_us"] - ops["gpt_block_bwd_input"]["median_us"])
        for rec, phase in ((ops["gpt_block_fwd"], "forward"), (ops["gpt_block_bwd_input"], "backward_input"),
                           (weight, "backward_weight")):
            probes.append(Probe(record=rec, category="block", phase=phase, nodes=nodes))
    return probes


def predict(probe: Probe, gpu: GPUProfile) -> float:
    """The cost model's time for what `probe.record` measured.

    A whole block is a stream of operators: the sum of their `op_cost`, exactly what a
    stage costs in a plan, plus one autograd start for I (W = full - input cancels it).
    An isolated record timed its operator alone from an idle GPU (`isolated_time`): a GEMM
    record launched the forward, dgrad or wgrad matmul directly (a forward dispatch); a
    `_bwd` record ran one autograd call over the probe's nodes, last node first.
    """
    if probe.category == "block":
        total = sum(getattr(op_cost(n, gpu), f"{probe.phase}_s") for n in probe.nodes)
        return total + (gpu.backward_call_s if probe.phase == "backward_input" else 0.0)
    if probe.category == "gemm":
        launches = []
        for n in probe.nodes:
            ops = op_launches(n, gpu)
            assert ops.forward is not None, "a GEMM probe always launches its forward"
            launches += [Launch(host_s=ops.forward.host_s, device_s=p.device_s) for p in _phase_launch(ops, probe.phase)]
        return isolated_time(launches)
    if probe.phase == "forward":
        return isolated_time(p for n in probe.nodes for p in _phase_launch(op_launches(n, gpu), "forward"))
    launches = [p for n in reversed(probe.nodes) for p in _phase_launch(op_launches(n, gpu), probe.phase)]
    return isolated_time(launches, start_s=gpu.backward_call_s)


def calibration_report(probes: list[Probe], gpu: GPUProfile) -> list[RecordError]:
    out = []
    for p in probes:
        r = p.record
        label = f"{r['op']} {r['shape']} {r['dtype']}" + (" causal" if r.get("causal") else "")
        out.append(RecordError(
            label=label, category=p.category, tokens=r["shape"][0] if p.category == "gemm" else 0,
            measured_s=r["median_us"] * 1e-6, predicted_s=predict(p, gpu),
        ))
    return out


def summarize_errors(errors: list[RecordError]) -> dict[str, dict[str, float]]:
    """Median and max absolute relative error per category."""
    by: dict[str, list[float]] = {}
    for e in errors:
        by.setdefault(e.category, []).append(abs(e.rel_error))
    return {k: {"median": statistics.median(v), "max": max(v), "count": len(v)} for k, v in by.items()}


# ---- fitting -----------------------------------------------------------------------------------

_BOUNDS = {
    "launch_floor_s": (0.0, 60e-6),
    "backward_floor_s": (0.0, 120e-6),
    "backward_call_s": (0.0, 200e-6),
    "gemm_floor_s": (0.0, 60e-6),
    "view_floor_s": (0.0, 20e-6),
    "attention_seq_half": (0.0, 2048.0),
    "attention_causal_tile": (0.0, 2048.0),
    "gemm": (0.2, 1.0),
    "gemm_backward": (0.2, 1.0),
    "attention_forward": (0.2, 1.0),
    "attention_backward": (0.2, 1.0),
    "attention_causal": (0.5, 1.0),
    "memory": (0.2, 1.0),
}


FIT_BOUNDS = _BOUNDS  # the fitted parameters and their default (GPU) ranges

_TOP_LEVEL = ("launch_floor_s", "backward_floor_s", "backward_call_s", "view_floor_s", "gemm_floor_s",
              "attention_seq_half", "attention_causal_tile")


def _with(gpu: GPUProfile, name: str, value: float) -> GPUProfile:
    if name in _TOP_LEVEL:
        return replace(gpu, **{name: value})
    return replace(gpu, efficiency=replace(gpu.efficiency, **{name: value}))


def _get(gpu: GPUProfile, name: str) -> float:
    return getattr(gpu, name) if name in _TOP_LEVEL else getattr(gpu.efficiency, name)


def calibration_loss(probes: list[Probe], gpu: GPUProfile) -> float:
    by: dict[str, list[float]] = {}
    for p in probes:
        measured = p.record["median_us"] * 1e-6
        by.setdefault(p.category, []).append(math.log(max(predict(p, gpu), 1e-9) / measured) ** 2)
    # each category weighs the same, so 70 GEMMs do not drown 12 SDPA records; the max term
    # keeps any one shape from being sacrificed to the average; whole blocks weigh more: they
    # are what a plan's stages cost, the isolated records mostly pin down the efficiencies
    total = 0.0
    for category, errors in by.items():
        mean_weight, max_weight = _CATEGORY_WEIGHT.get(category, (1.0, 0.1))
        total += mean_weight * statistics.fmean(errors) + max_weight * max(errors)
    return total


# (mean, max) weights per category, (1, 0.1) for the others; the GEMMs' max weighs more so
# the blocks' small GEMMs do not pull the isolated large ones off
_CATEGORY_WEIGHT = {"block": (4.0, 4.0), "gemm": (1.0, 0.5)}


def fit(probes: list[Probe], start: GPUProfile, *, sweeps: int = 8, steps: int = 24,
        bounds: dict[str, tuple[float, float]] | None = None) -> GPUProfile:
    """Coordinate descent over the bounded parameters: each sweep grid-searches every
    parameter in turn around its current value (the grid holds it, so no step is worse)
    and halves the grid's span. Bounded by work (sweeps x steps), so deterministic.

    `bounds` overrides the default ranges (`FIT_BOUNDS`, set for GPUs) of the parameters it
    names: a CPU's floors and efficiencies lie outside them."""
    gpu = start
    unknown = set(bounds or {}) - set(_BOUNDS)
    if unknown:
        raise ParplanError(f"fit bounds name unknown parameters {sorted(unknown)}; fitted: {sorted(_BOUNDS)}")
    bounds = {**_BOUNDS, **(bounds or {})}
    span = {k: hi - lo for k, (lo, hi) in bounds.items()}
    for _ in range(sweeps):
        for name, (lo, hi) in bounds.items():
            centre = _get(gpu, name)
            a, b = max(lo, centre - span[name] / 2), min(hi, centre + span[name] / 2)
            grid = sorted({a + (b - a) * i / steps for i in range(steps + 1)} | {centre})
            best = min(grid, key=lambda v: calibration_loss(probes, _with(gpu, name, v)))
            gpu = _with(gpu, name, best)
            span[name] /= 2
    return gpu


def fit_overlap(records: list[dict]) -> tuple[float, float]:
    """(transfer_contention, fb_overlap_ratio) from overlap.jsonl.

    Contention c in wall = max(gemm, copies) + c x min(gemm, copies), least squares;
    the F&B ratio is the mean measured (concurrent / sequential) time.
    """
    num = den = 0.0
    ratios = []
    for r in records:
        if r["op"] == "gemm_with_copy":
            gemm, copies = r["gemm_alone_us"], r["copy_alone_us"] * r["copies"]
            lo, hi = min(gemm, copies), max(gemm, copies)
            num += lo * (r["median_us"] - hi)
            den += lo * lo
        elif r["op"] == "gpt_block_f_and_b":
            ratios.append(r["median_us"] / r["sequential_median_us"])
    if den == 0 or not ratios:
        raise ParplanError("overlap calibration needs gemm_with_copy and gpt_block_f_and_b records")
    return min(1.0, max(0.0, num / den)), statistics.fmean(ratios)


def fitted_constants(gpu: GPUProfile) -> dict[str, float]:
    names = list(_BOUNDS)
    return {n: _get(gpu, n) for n in names}


