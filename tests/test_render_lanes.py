"""Tasks with parts on the compute and communication lanes, in the Gantt chart and the Chrome trace.

An MoE stage's F and I run attention, dispatch all-to-all, experts, combine all-to-all
(`PipelineCosts.phases`); inside a DualPipe F&B cell one half's all-to-all runs under the
other's compute. Stages differ in cost (stage s is 1 + s/4 times the first), so a slip
between schedule and model stage indices shows in the sums.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import pytest
from matplotlib.colors import to_rgba

from parplan.baselines import build_baseline
from parplan.render._draw import KIND_COLOURS
from parplan.render.chrome_trace import plan_parts, plan_trace
from parplan.render.gantt import GanttPanel, gantt_figure, render_gantt
from parplan.render.plan_chart import plan_figure
from parplan.runtime.chain import plan_chain
from parplan.schedule.costs import PipelineCosts
from parplan.schedule.ir import Kind
from parplan.schedule.phases import Segment, StagePhases, action_parts
from parplan.schedule.simulate import simulate

GPT = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32"
_ALL_TO_ALL_TID = 2


def _moe_phases(scale: float) -> StagePhases:
    """Two MoE layers: F = attention, dispatch, experts, combine; I the same parts reversed;
    W the two layers' weight gradients, each after its layer's input gradient."""
    fwd, bwd_i, bwd_w = [], [], []
    for _ in range(2):
        fwd += [Segment("compute", 1.0 * scale, "attn"), Segment("comm", 0.7 * scale, "dispatch"),
                Segment("compute", 1.6 * scale, "experts"), Segment("comm", 0.9 * scale, "combine")]
    for layer in range(2):
        bwd_i += [Segment("comm", 0.9 * scale, "combine"), Segment("compute", 1.8 * scale, "experts.I"),
                  Segment("comm", 0.7 * scale, "dispatch"), Segment("compute", 1.2 * scale, "attn.I")]
        bwd_w += [Segment("compute", 1.3 * scale, "experts.W", after=(-(4 * layer + 1) - 1,)),
                  Segment("compute", 0.6 * scale, "attn.W", after=(-(4 * layer + 3) - 1,))]
    return StagePhases(tuple(fwd), tuple(bwd_i), tuple(bwd_w))


def _costs(num_stages: int, *, phases: bool = True, transfer: float = 0.1) -> PipelineCosts:
    """Per model stage; without `phases`, the same totals as one stretch of compute each."""
    ph = [_moe_phases(1 + s / 4) for s in range(num_stages)]
    per = lambda kind: tuple(p.total(kind) for p in ph)  # noqa: E731
    return PipelineCosts(forward=per("forward"), backward_input=per("backward_input"),
                         backward_weight=per("backward_weight"), transfer=(transfer,) * num_stages,
                         activation=(1.0,) * num_stages, params=(1.0,) * num_stages,
                         phases=tuple(ph) if phases else None, comm_slowdown=0.15)


def _slices(trace: dict, **match) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and all(e[k] == v for k, v in match.items())]


def _comm_seconds(plan, action) -> float:
    """What the phases say `action`'s all-to-alls last, whatever the layout (comm is never slowed)."""
    return sum(seg.seconds for a in action.atoms
               for seg, _ in action_parts(plan.costs.phases[plan.schedule.model_stage[a.stage]], a.kind.value)
               if seg.lane == "comm")


@pytest.fixture(scope="module", params=[("dualpipe", 4, 8), ("1f1b", 3, 5)], ids=lambda p: p[0])
def moe_plan(request):
    name, ranks, micro = request.param  # DualPipe's 4 model stages on 4 ranks run as 8 schedule stages
    return plan_chain(GPT, name, batch=2 * micro, seq=8, num_ranks=ranks, num_microbatches=micro,
                      costs=_costs(ranks))


# ---- Chrome trace -------------------------------------------------------------------------

def test_trace_all_to_alls_per_rank_last_what_the_phases_say(moe_plan):
    trace = plan_trace(moe_plan)
    threads = {(e["pid"], e["args"]["name"]) for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert {(r, "all-to-all") for r in range(moe_plan.num_ranks)} <= threads
    for r, row in enumerate(moe_plan.timeline):
        slices = _slices(trace, pid=r, cat="all-to-all")
        assert {e["tid"] for e in slices} == {_ALL_TO_ALL_TID}
        want = sum(_comm_seconds(moe_plan, t.action) for t in row)
        got = sum(e["dur"] for e in slices) / 1e6
        assert math.isclose(got, want, rel_tol=1e-9), (r, got, want)
        # every F and I carries 2 dispatches and 2 combines (B: the I's), an F&B cell both halves'
        assert len(slices) == sum(4 * sum(a.kind.value != "W" for a in t.action.atoms) for t in row)
        assert {e["name"].split()[0] for e in slices} == {"dispatch", "combine"}


def test_trace_parts_nest_inside_their_action(moe_plan):
    trace = plan_trace(moe_plan)
    for r, row in enumerate(moe_plan.timeline):
        tasks = {str(t.action): t for t in row}
        for e in _slices(trace, pid=r, cat="compute part") + _slices(trace, pid=r, cat="all-to-all"):
            t = tasks[e["args"]["task"]]
            assert t.start * 1e6 <= e["ts"] and e["ts"] + e["dur"] <= t.end * 1e6 + 1e-6, (e, t)
            assert e["name"].split()[1] in {str(a) for a in t.action.atoms}
        # one thread, slices that nest or follow each other, never half-overlapping
        for tid in (0, _ALL_TO_ALL_TID):
            open_ends: list[float] = []
            for e in sorted(_slices(trace, pid=r, tid=tid), key=lambda e: (e["ts"], -e["dur"])):
                while open_ends and open_ends[-1] <= e["ts"] + 1e-6:
                    open_ends.pop()
                assert not open_ends or e["ts"] + e["dur"] <= open_ends[-1] + 1e-6, (tid, e)
                open_ends.append(e["ts"] + e["dur"])


def test_trace_cells_show_both_halves_compute(moe_plan):
    trace = plan_trace(moe_plan)
    cells = [t for row in moe_plan.timeline for t in row if t.action.sub_actions]
    assert bool(cells) == (moe_plan.schedule.name.startswith("dualpipe"))
    for t in cells:
        children = [e for e in _slices(trace, cat="compute part") if e["args"]["task"] == str(t.action)]
        assert {e["name"].split()[1] for e in children} == {str(a) for a in t.action.atoms}


def test_trace_without_communicating_phases_has_no_part_slices():
    plan = plan_chain(GPT, "dualpipev", batch=8, seq=8, num_ranks=2, num_microbatches=4,
                      costs=_costs(4, phases=False))
    trace = plan_trace(plan)
    assert plan_parts(plan) == []
    assert {e["tid"] for e in trace["traceEvents"] if "tid" in e} == {0, 1}
    assert {e["cat"] for e in _slices(trace)} <= {"F", "I", "W", "B", "OVERLAP_F_B", "transfer"}


# ---- Gantt chart --------------------------------------------------------------------------

def _panels(costs: PipelineCosts, names=("1f1b", "dualpipe")) -> list[GanttPanel]:
    return [GanttPanel(simulation=simulate(build_baseline(n, 4, 8), costs), costs=costs) for n in names]


def _gid(ax, gid: str):
    return [p for p in ax.patches if p.get_gid() == gid]


def test_gantt_draws_every_all_to_all_at_its_time_and_strips_in_cells(figures):
    costs = _costs(4)
    panels = _panels(costs)
    fig = gantt_figure(panels)
    figures.append(fig)
    for ax, panel in zip(fig.axes, panels):
        timeline, stage_of = panel.simulation.timeline, panel.simulation.schedule.model_stage
        bars = _gid(ax, "all-to-all")
        want = [seg.seconds for row in timeline for t in row for a in t.action.atoms
                for seg, _ in action_parts(costs.phases[stage_of[a.stage]], a.kind.value) if seg.lane == "comm"]
        assert sorted(b.get_width() for b in bars) == pytest.approx(sorted(want))
        for b in bars:  # under a task of its own rank (the lane sits 0.2 below the row's centre)
            rank = round(b.get_y() + b.get_height() / 2)
            assert any(t.start - 1e-9 <= b.get_x() and b.get_x() + b.get_width() <= t.end + 1e-9
                       for t in timeline[rank]), (rank, b.get_x())
        # 1F1B's B begins with a combine: that all-to-all starts with its task
        starts = {round(t.start, 9) for row in timeline for t in row}
        assert starts & {round(b.get_x(), 9) for b in bars}
        cells = [t for row in timeline for t in row if t.action.sub_actions]
        strips = _gid(ax, "cell-part")
        assert bool(strips) == bool(cells)
        if cells:  # whose compute runs when: the forward's and the backward's colours
            colours = {s.get_facecolor() for s in strips}
            assert to_rgba(KIND_COLOURS[Kind.F]) in colours and len(colours) == 2
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "all-to-all" in legend and any(t.startswith("send") for t in legend)


def test_gantt_with_phases_renders_and_differs_from_without():
    with_parts, without = _panels(_costs(4)), _panels(_costs(4, phases=False))
    for fmt, magic in (("png", b"\x89PNG"), ("svg", b"<svg")):
        drawn = render_gantt(with_parts, fmt=fmt)
        assert magic in drawn[:500]
        assert drawn != render_gantt(without, fmt=fmt)


def test_phases_that_do_not_communicate_change_nothing():
    """Phases with no all-to-all (compute split in parts, or no phases for a stage) draw the chart as before."""
    plain = _costs(4, phases=False)
    split = StagePhases((Segment("compute", 1.0, "a"), Segment("compute", 2.0, "b")), (Segment("compute", 2.5, "I"),),
                        (Segment("compute", 1.5, "W"),))
    costs = PipelineCosts(forward=(3.0,) * 4, backward_input=(2.5,) * 4, backward_weight=(1.5,) * 4,
                          transfer=plain.transfer, activation=plain.activation, params=plain.params,
                          phases=(split, None, split, None))
    bare = PipelineCosts(forward=(3.0,) * 4, backward_input=(2.5,) * 4, backward_weight=(1.5,) * 4,
                         transfer=plain.transfer, activation=plain.activation, params=plain.params)
    assert not costs.communicates
    assert render_gantt(_panels(costs)) == render_gantt(_panels(bare))


def test_plan_chart_has_the_all_to_all_lane(figures):
    plan = plan_chain(GPT, "dualpipev", batch=8, seq=8, num_ranks=2, num_microbatches=4, costs=_costs(4))
    fig = plan_figure(plan)
    figures.append(fig)
    gantt = fig.axes[0]
    comm = [p for p in plan_parts(plan) if p.lane == "comm"]
    assert len(_gid(gantt, "all-to-all")) == len(comm) > 0
    assert "all-to-alls and sends" in gantt.get_title(loc="left")
    assert [t.get_text() for t in gantt.get_yticklabels(minor=True)][:2] == ["all-to-all", "sends"]
