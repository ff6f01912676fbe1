"""Charts read as a person needs them: units on the axes, a label per block, stages and sends told apart.

Assertions are on the matplotlib figure objects, not on pixels.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from parplan.compare import compare
from parplan.render._draw import format_memory, format_time
from parplan.render.gantt import GanttPanel, gantt_figure
from parplan.render.plan_chart import plan_figure
from parplan.runtime.chain import plan_chain
from parplan.schedule.costs import PipelineCosts

GPT = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32"
GIB = 2**30
# seconds and bytes of a large model: ms-scale steps and tens of GiB of activations
SECONDS = PipelineCosts(forward=(1e-3, 1.5e-3, 1e-3, 2e-3), backward_input=(1e-3, 2e-3, 1e-3, 2e-3),
                        backward_weight=(5e-4, 1e-3, 5e-4, 1e-3), transfer=(2.5e-4, 5e-4, 2.5e-4, 0.0),
                        activation=(2 * GIB, 3 * GIB, 2 * GIB, GIB), params=(GIB, GIB, GIB, GIB))


def _patches(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


def _actions(timeline):
    return sum(len(row) for row in timeline)


def test_units_spelled_out():
    assert format_time(4.632e-3, "s") == "4.632 ms"
    assert format_time(12.5, "unit") == "12.5"
    assert format_memory(8.13e10, "bytes") == "75.7 GiB"
    assert format_memory(266496.0, "bytes") == "260 KiB"
    assert format_memory(8.0, "unit") == "8 units"


def test_plan_chart_in_ms_and_gib_with_title(figures):
    plan = plan_chain(GPT, "zb-v", batch=8, seq=8, num_ranks=2, num_microbatches=4, costs=SECONDS,
                      time_unit="s", memory_unit="bytes")
    fig = plan_figure(plan)
    figures.append(fig)
    gantt, memory = fig.axes[:2]
    assert memory.get_xlabel() == "time (ms)"
    assert "GiB" in memory.get_ylabel()
    peak = format_memory(max(plan.predicted.peak_activation_per_rank), "bytes")
    assert peak.endswith("GiB") and peak in memory.get_title(loc="left")
    title = fig._suptitle.get_text()
    assert plan.schedule.name in title and format_time(plan.predicted.step_time, "s") in title
    assert plan.cluster.name in title and plan.model.spec in title
    assert len(gantt.texts) == _actions(plan.timeline)


def test_every_block_labelled_at_8_ranks_32_microbatches(figures):
    rows = compare(["zb-v", "dualpipev", "dualpipe"], num_ranks=8, num_microbatches=32,
                   cost_spec={"f": 1.0, "i": 1.2, "w": 0.8, "c": 0.1})
    fig = gantt_figure([GanttPanel(simulation=r.simulation, costs=r.costs) for r in rows], title="demo")
    figures.append(fig)
    for ax, row in zip(fig.axes, rows):
        expected = ["/".join(str(a.microbatch) for a in t.action.atoms) for r in row.simulation.timeline for t in r]
        assert sorted(t.get_text() for t in ax.texts) == sorted(expected)
        assert {t.get_va() for t in ax.texts} == {"center"}  # every label inside its block at this size
        assert row.schedule.name in ax.get_title(loc="left") and "makespan" in ax.get_title(loc="left")
    assert fig.axes[-1].get_xlabel() == "time (cost units)"


def test_send_lane_only_when_transfers_cost_time(figures):
    with_c, without_c = (compare(["1f1b"], num_ranks=4, num_microbatches=8, cost_spec={"c": c})[0]
                         for c in (0.2, 0.0))
    fig = gantt_figure([GanttPanel(simulation=r.simulation, costs=r.costs) for r in (with_c, without_c)])
    figures.append(fig)
    lane, bare = fig.axes
    # 1F1B on 4 ranks: 3 boundaries, an activation and a gradient across each, per micro-batch
    assert len(_patches(lane, "transfer")) == 3 * 2 * 8
    assert _patches(bare, "transfer") == []
    assert "send" in " ".join(t.get_text() for t in fig.legends[0].get_texts())


def test_a_ranks_two_stages_differ_in_hatch_and_shade(figures):
    (row,) = compare(["zb-v"], num_ranks=4, num_microbatches=8)
    fig = gantt_figure([row.simulation])
    figures.append(fig)
    (ax,) = fig.axes
    rank0 = [p for p in _patches(ax, "compute") if abs(p.get_y() + p.get_height() / 2) < 0.5]
    assert len(rank0) == len(row.simulation.timeline[0])
    # ZB-V: rank 0 holds stages 0 and 7; each of F, I, W comes solid and lighter-hatched
    assert {p.get_hatch() or "" for p in rank0} == {"", "///"}
    assert len({p.get_facecolor() for p in rank0}) == 2 * 3
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "second stage" in legend


def test_blocks_too_narrow_for_any_text_are_labelled_beside_them(figures):
    (row,) = compare(["zb-v"], num_ranks=2, num_microbatches=64, cost_spec={"w": 0.05})
    fig = gantt_figure([row.simulation])
    figures.append(fig)
    (ax,) = fig.axes
    assert len(ax.texts) == _actions(row.simulation.timeline)
    placed = {t.get_va() for t in ax.texts}
    assert placed == {"center", "bottom", "top"}  # inside, and above/below the narrowest blocks


def test_measured_panel_in_ms_with_its_wait_lane(figures):
    from parplan.runtime.launch import Measured, MeasuredAction

    plan = plan_chain(GPT, "1f1b", batch=8, seq=8, num_ranks=4, num_microbatches=4, costs=SECONDS,
                      time_unit="s", memory_unit="bytes")
    rows = tuple(tuple(MeasuredAction(rank=r, lane="compute", label=str(t.action), start=t.start, end=t.end)
                       for t in row) + (MeasuredAction(rank=r, lane="comm", label="recv", start=0.0, end=1e-4),)
                 for r, row in enumerate(plan.timeline))
    measured = Measured(losses=(1.0,), grads={}, step_seconds=(9e-3, 8e-3), timeline=rows, device="cpu")
    fig = plan_figure(plan, measured=measured)
    figures.append(fig)
    ax = fig.axes[2]
    assert ax.get_xlabel() == "time (ms)" and "8 ms" in ax.get_title(loc="left")
    assert len(ax.patches) == sum(len(row) for row in rows)
