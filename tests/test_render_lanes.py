"""Tasks with parts on the compute and communication lanes, in the Chrome trace.

An MoE stage's F and I run attention, dispatch all-to-all, experts, combine all-to-all
(`PipelineCosts.phases`); inside a DualPipe F&B cell one half's all-to-all runs under the
other's compute. Stages differ in cost (stage s is 1 + s/4 times the first), so a slip
between schedule and model stage indices shows in the sums.
"""

from __future__ import annotations

import math

import pytest

from parplan.render.chrome_trace import plan_parts, plan_trace
from parplan.runtime.chain import plan_chain
from parplan.schedule.costs import PipelineCosts
from parplan.schedule.phases import Segment, StagePhases, action_parts

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
