"""Communication as scheduled work: a task's parts on compute and communication lanes, F&B
cells hiding all-to-alls, the anchors that run them, and the costs of expert parallelism."""

import dataclasses
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parplan.baselines import build_baseline
from parplan.errors import ParplanError
from parplan.mip.problem import CellKind, build_problem
from parplan.schedule.costs import PipelineCosts
from parplan.schedule.ir import Action, Kind
from parplan.schedule.phases import COMM, COMPUTE, Segment, StagePhases, action_parts, lay_out
from parplan.schedule.simulate import simulate, task_parts
from parplan.schedule.validate import validate


def moe_phases(layers: int, attn: float, experts: float, a2a: float, *, w_share: float = 0.5) -> StagePhases:
    """`layers` MoE layers: attention, dispatch, experts, combine; the backward in reverse,
    input gradients at 2x forward minus the W share, W parts after their I part."""
    forward, back_i, back_w = [], [], []
    for _ in range(layers):
        forward += [Segment(COMPUTE, attn, "attention"), Segment(COMM, a2a, "dispatch"),
                    Segment(COMPUTE, experts, "experts"), Segment(COMM, a2a, "combine")]
    for _ in range(layers):
        for label, t in (("combine", a2a), ("experts", experts), ("dispatch", a2a), ("attention", attn)):
            if label in ("combine", "dispatch"):
                back_i.append(Segment(COMM, t, label))
            else:
                back_i.append(Segment(COMPUTE, 2 * t * (1 - w_share), label))
                back_w.append(Segment(COMPUTE, 2 * t * w_share, label, after=(-len(back_i),)))
    return StagePhases(tuple(forward), tuple(back_i), tuple(back_w))


def costs_with(phases: list[StagePhases | None], *, slowdown: float = 0.18, transfer: float = 0.05) -> PipelineCosts:
    n = len(phases)
    total = lambda p, k: p.total(k)  # noqa: E731
    return PipelineCosts(
        forward=tuple(total(p, "forward") for p in phases),
        backward_input=tuple(total(p, "backward_input") for p in phases),
        backward_weight=tuple(total(p, "backward_weight") for p in phases),
        transfer=(transfer,) * n, activation=tuple(1.0 + 0.1 * s for s in range(n)), params=(1.0,) * n,
        phases=tuple(phases), comm_slowdown=slowdown)


def unequal(n: int, a2a: float = 0.6) -> PipelineCosts:
    return costs_with([moe_phases(2, 1.0 + 0.2 * s, 1.5 - 0.1 * s, a2a) for s in range(n)])


def without_comm(costs: PipelineCosts) -> PipelineCosts:
    """The same compute, all-to-alls removed: the stage as one stretch of compute per kind."""
    strip = lambda p: StagePhases(*(tuple(Segment(COMPUTE, s.seconds, s.label, s.after) if s.lane == COMPUTE  # noqa: E731
                                          else Segment(COMPUTE, 0.0, s.label, s.after) for s in getattr(p, k))
                                    for k in ("forward", "backward_input", "backward_weight")))
    return costs_with([strip(p) for p in costs.phases], transfer=costs.transfer[0])


# ---- cells: with nothing to hide F + B, with all-to-alls less, never more --------------------

def test_a_cell_with_nothing_to_hide_costs_f_plus_b():
    c = without_comm(unequal(4))
    assert not c.communicates
    for f, b in itertools.product(range(4), repeat=2):
        cell = c.cell_time(((f, "F"), (b, "B")))
        assert cell == pytest.approx(c.forward[f] + c.backward(b), rel=1e-12)
    plain = PipelineCosts(forward=c.forward, backward_input=c.backward_input, backward_weight=c.backward_weight,
                          transfer=c.transfer, activation=c.activation, params=c.params)
    for name in ("dualpipe", "dualpipev"):
        n = 4
        sched = build_baseline(name, n, 8 if name == "dualpipe" else 8)
        costs_for = c if name == "dualpipe" else without_comm(unequal(2 * n))
        ref = plain if name == "dualpipe" else dataclasses.replace(costs_for, phases=None)
        assert simulate(sched, costs_for).makespan == pytest.approx(simulate(sched, ref).makespan, rel=1e-12)


def test_a_cell_hides_one_half_all_to_all_under_the_other_half_compute():
    c = unequal(3, a2a=0.6)
    for f, b in itertools.product(range(3), repeat=2):
        cell = c.cell_time(((f, "F"), (b, "B")))
        in_line = c.forward[f] + c.backward(b)
        phases = (c.phases[f], c.phases[b])
        compute = phases[0].total("forward") - phases[0].comm_seconds() / 2 + \
            phases[1].total("backward_input") + phases[1].total("backward_weight") - phases[1].comm_seconds() / 2
        assert compute <= cell < in_line
        # here compute exceeds communication, so all of it can hide: the cell is its
        # compute, slowed while an all-to-all runs beside it
        assert cell <= compute * (1 + c.comm_slowdown) + 1e-9


def test_a_plain_action_runs_its_parts_in_line():
    c = unequal(2)
    for s, kind in itertools.product(range(2), (Kind.F, Kind.I, Kind.W, Kind.B)):
        parts = task_parts(Action(s, kind, 0), c)
        assert parts[0].start == 0 and all(a.end == pytest.approx(b.start) for a, b in zip(parts, parts[1:]))
        assert parts[-1].end == pytest.approx(c.task_time(s, kind.value))


segments = st.lists(st.tuples(st.sampled_from([COMPUTE, COMM]), st.floats(0.0, 3.0)), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments, segments, st.floats(0.0, 0.5))
def test_lay_out_keeps_order_one_part_per_lane_and_never_loses(a, b, slowdown):
    atoms = [[(Segment(lane, t, f"p{k}"), (k - 1,) if k else ()) for k, (lane, t) in enumerate(x)] for x in (a, b)]
    placed = lay_out(atoms, comm_slowdown=slowdown)
    serial = sum(t for x in (a, b) for _, t in x)
    assert max(p.end for p in placed) <= serial + 1e-9
    by_atom = [[p for p in placed if p.atom == k] for k in (0, 1)]
    for parts in by_atom:  # each atom's parts in its own order
        assert all(p.end <= q.start + 1e-9 for p, q in zip(parts, parts[1:]))
    for lane in (COMPUTE, COMM):  # one part at a time per lane
        spans = sorted((p.start, p.end) for p in placed if p.lane == lane and p.end > p.start)
        assert all(e1 <= s2 + 1e-9 for (_, e1), (s2, _) in zip(spans, spans[1:]))


def test_w_parts_wait_for_their_layers_input_gradient():
    ph = moe_phases(2, 1.0, 1.5, 0.6)
    parts = action_parts(ph, "B")
    n_i = len(ph.backward_input)
    for k, (seg, preds) in enumerate(parts[n_i:]):
        assert len(preds) == 1 and parts[preds[0]][0].label == seg.label and parts[preds[0]][0].lane == COMPUTE


def test_phases_must_add_up_and_round_trip():
    c = unequal(2)
    assert PipelineCosts.from_dict(c.to_dict()) == c
    with pytest.raises(ParplanError, match="must add up"):
        dataclasses.replace(c, forward=(c.forward[0] + 1.0, c.forward[1]))
    with pytest.raises(ParplanError, match="waits only for earlier"):
        StagePhases((Segment(COMPUTE, 1.0, "a", after=(1,)), Segment(COMM, 1.0, "b")), ())


# ---- the anchors: DualPipe's cells and Megatron's combined 1F1B hide the all-to-all -----------

def test_dualpipe_gains_what_hiding_the_all_to_all_predicts():
    """DualPipe vs 1F1B with and without all-to-alls: the all-to-all costs 1F1B its whole
    time, DualPipe at most the parts no cell covers."""
    n, m = 4, 16
    comm, plain = unequal(n), without_comm(unequal(n))
    one = {k: simulate(build_baseline("1f1b", n, m), c).makespan for k, c in (("comm", comm), ("plain", plain))}
    dual = {k: simulate(build_baseline("dualpipe", n, m), c).makespan for k, c in (("comm", comm), ("plain", plain))}
    a2a_per_rank = m * max(p.comm_seconds() for p in comm.phases)
    assert one["comm"] - one["plain"] >= 0.9 * a2a_per_rank  # in line: exposed
    assert dual["comm"] - dual["plain"] < 0.5 * (one["comm"] - one["plain"])


@pytest.mark.parametrize("n,m", [(2, 8), (3, 6), (4, 8), (4, 16), (8, 16)])
def test_combined_1f1b_is_valid_and_hides_what_interleaved_exposes(n, m):
    sched = build_baseline("combined-1f1b", n, m)
    assert any(a.kind is Kind.OVERLAP_F_B for o in sched.orders for a in o)
    comm = unequal(2 * n)
    ours = validate(sched, comm).makespan
    theirs = validate(build_baseline("interleaved-1f1b", n, m), comm).makespan
    assert ours < theirs
    # the same actions as interleaved 1F1B, only paired
    flat = lambda s: sorted(str(a) for o in s.orders for x in o for a in x.atoms)  # noqa: E731
    assert flat(sched) == flat(build_baseline("interleaved-1f1b", n, m))


def test_the_mip_prices_cells_as_the_simulator_does():
    c = unequal(4)
    problem = build_problem(placement="dualpipe", num_ranks=4, num_microbatches=8, costs=c)
    assert problem.cells_help
    staged = problem.costs
    for f, b in [(0, 4), (3, 7), (1, 6)]:
        want = staged.cell_time(((f, "F"), (b, "B")))
        assert problem.cell_duration(f, b, CellKind.FB) == round(want * problem.time_scale)
    assert not build_problem(placement="dualpipe", num_ranks=4, num_microbatches=8,
                             costs=without_comm(unequal(4))).cells_help


# ---- the CLI's synthetic costs: --cost A2A=... --------------------------------------------------

def test_cost_spec_a2a_makes_each_stage_an_moe_layer():
    from parplan.schedule.costs import parse_cost_spec

    spec = parse_cost_spec("F=1,I=1.2,W=0.8,A2A=0.6,SLOW=0.1")
    assert spec == {"f": 1.0, "i": 1.2, "w": 0.8, "a2a": 0.6, "comm_slowdown": 0.1}
    c = PipelineCosts.uniform(3, **spec)
    assert c.communicates and c.forward == pytest.approx((1.6,) * 3) and c.backward_input == pytest.approx((1.8,) * 3)
    assert c.phases[0].comm_seconds() == pytest.approx(1.2)
    assert c.cell_time(((0, "F"), (1, "B"))) < c.forward[0] + c.backward(1)
    assert not PipelineCosts.uniform(3, f=1, i=1, w=1).communicates


def test_compare_with_all_to_alls_ranks_the_overlapping_schedules_first(capsys):
    from parplan.cli import main

    argv = ["compare", "--ranks", "4", "--microbatches", "8", "--cost", "F=1,I=1,W=1,C=0.05,A2A=0.8,SLOW=0.15",
            "--schedules", "zb-v,dualpipe,combined-1f1b,interleaved-1f1b,mip", "--effort", "quick", "--json"]
    assert main(argv) == 0
    rows = {r["schedule"]: r["makespan"] for r in __import__("json").loads(capsys.readouterr().out)}
    assert rows["dualpipe"] < rows["zb-v"] and rows["combined-1f1b"] < rows["interleaved-1f1b"]
    assert rows["mip"] <= min(rows["dualpipe"], rows["zb-v"]) + 1e-9
