"""Measure stage costs on this machine: F, I, W seconds and saved-activation bytes per stage.

Each stage module (split as the runtime splits it) runs at the micro-batch shape in one
process, a few times; the median is kept. I is the gradient with respect to the stage's
float inputs only, W the rest of a full backward (B − I, at least 0). Activation is the
bytes autograd saves for the stage's backward. Transfer time is modelled, not measured:
`latency + bytes / bandwidth` of the stage's outputs, with loopback-gloo figures below.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from parplan.schedule.costs import PipelineCosts
from parplan.schedule.stage_costs import StageCost, placement_costs

__all__ = ["measure_stage_costs", "GLOO_LOOPBACK_LATENCY_S", "GLOO_LOOPBACK_BYTES_PER_S"]

# Assumed point-to-point cost of gloo over loopback TCP on one host (order of magnitude,
# not measured per run): 100 µs per message plus 2 GB/s.
GLOO_LOOPBACK_LATENCY_S = 1e-4
GLOO_LOOPBACK_BYTES_PER_S = 2e9


def _median_time(fn, repeats: int) -> float:
    for _ in range(2):  # warm-up: first calls pay for allocator growth and kernel selection
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_stage_costs(model_spec: str, groups: Sequence[Sequence[str]], *, batch: int, seq: int,
                        repeats: int = 5, seed: int = 0) -> PipelineCosts:
    """Costs of the model stages `groups` (pieces per stage) at micro-batch `batch`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runtime's workers run (OMP_NUM_THREADS=1)
    try:
        return _measure(model_spec, groups, batch=batch, seq=seq, repeats=repeats, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _measure(model_spec: str, groups, *, batch: int, seq: int, repeats: int, seed: int) -> PipelineCosts:
    from parplan.runtime.split import export_graph, split_graph
    from parplan.runtime.stages import synthetic_batch
    from parplan.zoo import load_model

    torch.manual_seed(seed)
    zoo = load_model(model_spec, batch=batch, seq=seq, device="cpu")
    inputs, _ = synthetic_batch(zoo.model, zoo.example_inputs, seed=seed + 1)
    graphs = split_graph(export_graph(zoo.model, inputs), [list(g) for g in groups])
    stages: list[StageCost] = []
    values = inputs
    for g in graphs:
        args = tuple(v.detach().requires_grad_(v.is_floating_point() and g.index > 0) for v in values)
        params = list(g.module.parameters())
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        def run():
            return g.module(*args)

        def outputs_of(result):
            return result if isinstance(result, tuple) else (result,)

        f = _median_time(run, repeats)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs = outputs_of(run())
        activation = float(sum(saved))
        diff_outs = [o for o in outs if o.requires_grad]
        float_args = [a for a in args if a.requires_grad]

        def full():
            o = [x for x in outputs_of(run()) if x.requires_grad]
            torch.autograd.grad(o, float_args + params, [torch.ones_like(x) for x in o], allow_unused=True)

        def inputs_only():
            o = [x for x in outputs_of(run()) if x.requires_grad]
            if float_args:
                torch.autograd.grad(o, float_args, [torch.ones_like(x) for x in o], allow_unused=True)

        b = max(_median_time(full, repeats) - f, 0.0)
        i = max(_median_time(inputs_only, repeats) - f, 0.0) if float_args else 0.0
        out_bytes = sum(o.numel() * o.element_size() for o in diff_outs)
        stages.append(StageCost(
            forward=f, backward_input=min(i, b), backward_weight=max(b - i, 0.0), activation=activation,
            params=float(sum(p.numel() * p.element_size() for p in params)),
            transfer=GLOO_LOOPBACK_LATENCY_S + out_bytes / GLOO_LOOPBACK_BYTES_PER_S,
        ))
        values = tuple(o.detach() for o in outs)
    return placement_costs(stages)  # no contention folded: each stage was timed alone, as before
