"""`parplan show`: summary, Gantt chart (transfer lane, memory panel) and Chrome trace."""

from __future__ import annotations

import json

from parplan.render.chrome_trace import plan_trace, plan_transfers
from parplan.cli import main
from parplan.schedule.costs import PipelineCosts
from parplan.render.plan_chart import memory_over_time
from parplan.runtime.chain import plan_chain

GPT = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32"
COSTS = PipelineCosts(forward=(1.0, 1.5, 1.0, 2.0), backward_input=(1.0, 2.0, 1.0, 2.0),
                      backward_weight=(0.5, 1.0, 0.5, 1.0), transfer=(0.25, 0.5, 0.25, 0.0),
                      activation=(2.0, 3.0, 2.0, 1.0), params=(1.0, 1.0, 1.0, 1.0))


def test_trace_has_a_process_per_rank_and_compute_and_comm_threads():
    plan = plan_chain(GPT, "zb-v", batch=8, seq=8, num_ranks=2, num_microbatches=4, costs=COSTS)
    trace = plan_trace(plan)
    events = trace["traceEvents"]
    threads = {(e["pid"], e["args"]["name"]) for e in events if e.get("name") == "thread_name"}
    assert threads == {(r, t) for r in (0, 1) for t in ("compute", "communication")}
    compute = [e for e in events if e["ph"] == "X" and e["tid"] == 0]
    assert len(compute) == sum(len(o) for o in plan.schedule.orders)
    comm = [e for e in events if e["ph"] == "X" and e["tid"] == 1]
    # ZB-V on 2 ranks: stage boundaries 0->1 and 2->3 cross ranks, each way, per micro-batch
    assert len(comm) == len(plan_transfers(plan)) == 2 * 2 * 4
    assert max(e["ts"] + e["dur"] for e in compute) == plan.predicted.step_time * 1e6


def test_memory_curve_returns_to_zero_and_peaks_as_simulated():
    plan = plan_chain(GPT, "dualpipev", batch=8, seq=8, num_ranks=2, num_microbatches=4, costs=COSTS)
    for rank, curve in enumerate(memory_over_time(plan)):
        assert curve[-1][1] == 0.0
        assert max(level for _, level in curve) == plan.predicted.peak_activation_per_rank[rank]


def test_cli_show_writes_chart_and_trace(tmp_path, capsys):
    path = tmp_path / "plan.json"
    plan_chain(GPT, "dualpipev", batch=8, seq=8, num_ranks=2, num_microbatches=4, costs=COSTS).save(path)
    png, svg, trace = tmp_path / "g.png", tmp_path / "g.svg", tmp_path / "t.json"
    assert main(["show", str(path), "--gantt", str(png), "--trace", str(trace)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(trace.read_text())["traceEvents"]
    assert "stage 3 on rank 0" in capsys.readouterr().out
    assert main(["show", str(path), "--gantt", str(svg)]) == 0
    assert b"<svg" in svg.read_bytes()[:500]
    assert main(["show", str(path), "--gantt", str(tmp_path / "g.gif")]) == 2
