"""Tied weights in the cost model: a copy in every reading stage's memory, one gradient sum per step.

The independent answer is the untied model of the same shape: it holds a real second
vocabulary matrix in `lm_head`, so a placement of the tied model must hold exactly as many
static bytes per rank as the untied one (the runtime keeps a copy on each reading stage);
its step pays, on top, one ring all-reduce of that matrix's gradient over the pipeline
ranks holding copies (closed form below), and nothing when both copies share a rank.
"""

from __future__ import annotations

import pytest

from parplan.cost import load_cluster
from parplan.planner.costing import Coster
from parplan.planner.degrees import Degrees
from parplan.planner.lower import place
from parplan.planner.memory import MemoryModel
from parplan.planner.units import Granularity, coarsen
from parplan.schedule.placement import FAMILIES
from parplan.trace import trace
from parplan.zoo import load_model

# unequal layers would not matter here; unequal sizes do: vocab ≠ hidden, 3 layers on 2 or 4 stages
SHAPE = "gpt:hidden=96,heads=4,layers=6,vocab=1000,max_positions=64"
VOCAB, HIDDEN = 1000, 96


def _traced(tied: bool):
    zoo = load_model(f"{SHAPE},tie_embeddings={str(tied).lower()}", batch=2, seq=64)
    return trace(zoo.model, zoo.example_inputs)


@pytest.fixture(scope="module")
def traces():
    return {tied: _traced(tied) for tied in (True, False)}


def test_the_trace_records_who_reads_a_tied_weight(traces):
    tied = traces[True]
    (shared,) = tied.shared_params
    assert shared.name == "wte.weight" and shared.param_count == VOCAB * HIDDEN
    assert shared.param_bytes == VOCAB * HIDDEN * 2  # bf16
    paths = [tied.node(op).module_path for op in shared.readers]
    assert paths == ["wte", "lm_head"]  # program order: the first reader holds it in the trace
    assert tied.node(shared.readers[0]).param_bytes >= shared.param_bytes
    assert traces[False].shared_params == ()


def _placed(traced, family: str, num_stages: int, degrees: Degrees):
    cluster = load_cluster("h100x8")
    layers = coarsen(traced, Granularity.LAYER)
    split = [min(num_stages - 1, num_stages * u // len(layers)) for u in range(len(layers))]
    coster = Coster(traced, tp=degrees.tp, tp_link=degrees.tp_link(cluster))
    return place(layers, coster, cluster, degrees, FAMILIES[family], split, MemoryModel()), cluster


def _ring_s(nbytes: float, ranks: int, link) -> float:
    """Ring all-reduce: 2(k−1) latencies and 2(k−1)/k of the bytes each way."""
    return 2 * (ranks - 1) * link.latency_s + 2 * (ranks - 1) / ranks * nbytes / (link.bandwidth * link.efficiency)


@pytest.mark.parametrize("tp", [1, 2])
def test_two_ranks_hold_a_copy_each_and_pay_one_gradient_sum(traces, tp):
    degrees = Degrees(pp=2, dp=2, tp=tp)
    tied, cluster = _placed(traces[True], "chain", 2, degrees)
    untied, _ = _placed(traces[False], "chain", 2, degrees)
    assert tied.static_bytes == pytest.approx(untied.static_bytes, rel=1e-12)
    assert tied.costs.params == pytest.approx(untied.costs.params, rel=1e-12)
    grad_bytes = VOCAB * HIDDEN * 2 / tp
    extra = _ring_s(grad_bytes, 2, degrees.pp_link(cluster, 0, 1))
    assert extra > 0
    assert tied.dp_sync_s - untied.dp_sync_s == pytest.approx(extra, rel=1e-9)


def test_copies_on_one_rank_pay_no_sum(traces):
    """A V on 2 ranks puts stage 0 (wte) and stage 3 (lm_head) on rank 0: both copies in its memory, summed locally."""
    degrees = Degrees(pp=2, dp=1, tp=1)
    tied, _ = _placed(traces[True], "v", 4, degrees)
    untied, _ = _placed(traces[False], "v", 4, degrees)
    assert tied.static_bytes == pytest.approx(untied.static_bytes, rel=1e-12)
    assert [FAMILIES["v"].rank_of_stage(s, 2) for s in (0, 3)] == [0, 0]
    assert tied.dp_sync_s == untied.dp_sync_s == 0.0


def test_inference_holds_copies_but_sums_nothing(traces):
    cluster = load_cluster("h100x8")
    degrees = Degrees(pp=2, dp=1, tp=1)
    placed = {}
    for tied, traced in traces.items():
        layers = coarsen(traced, Granularity.LAYER)
        split = [min(1, 2 * u // len(layers)) for u in range(len(layers))]
        placed[tied] = place(layers, Coster(traced), cluster, degrees, FAMILIES["chain"], split,
                             MemoryModel(mode="inference"))
    assert placed[True].static_bytes == pytest.approx(placed[False].static_bytes, rel=1e-12)  # the head's copy
    assert placed[True].dp_sync_s == 0.0
