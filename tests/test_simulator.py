"""Simulator properties on unequal costs: per-stage differences, F != I != W, transfers > 0."""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parplan.baselines import BASELINES, build_baseline
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.simulate import DeadlockError, costs_for_schedule, simulate
from parplan.schedule.validate import ScheduleError, validate

SIZES = {  # (N, M) each baseline accepts
    "gpipe": [(3, 2), (4, 6)], "1f1b": [(3, 5), (4, 6)], "interleaved-1f1b": [(3, 6), (4, 8)],
    "combined-1f1b": [(3, 6), (4, 8)],
    "zb-h1": [(3, 5), (4, 7)], "zb-h2": [(3, 5), (4, 6)], "zb-v": [(3, 5), (4, 6)],
    "dualpipe": [(2, 4), (4, 10)], "dualpipev": [(3, 6), (4, 9)],
}


def random_costs(draw, num_stages):
    times = st.floats(min_value=0.1, max_value=5.0, allow_nan=False)
    return PipelineCosts(
        forward=tuple(draw(times) for _ in range(num_stages)),
        backward_input=tuple(draw(times) for _ in range(num_stages)),
        backward_weight=tuple(draw(times) for _ in range(num_stages)),
        transfer=tuple(draw(st.floats(min_value=0.0, max_value=2.0)) for _ in range(num_stages)),
        activation=tuple(draw(st.floats(min_value=0.1, max_value=3.0)) for _ in range(num_stages)),
        params=tuple(draw(st.floats(min_value=0.0, max_value=3.0)) for _ in range(num_stages)),
        overlap_ratio=draw(st.floats(min_value=0.5, max_value=1.0)),
    )


@st.composite
def cases(draw):
    name = draw(st.sampled_from(BASELINES))
    n, m = draw(st.sampled_from(SIZES[name]))
    schedule = build_baseline(name, n, m)
    return schedule, random_costs(draw, schedule.num_model_stages)


def producers(schedule: Schedule, a: Action, split: set):
    """The test's own statement of the dependency rules (independent of the simulator's)."""
    s, j = a.stage, a.microbatch
    if a.kind is Kind.F:
        k = [c for c in schedule.chains if s in c][0]
        pos = k.index(s)
        return [(k[pos - 1], Kind.F, j, k[pos - 1])] if pos > 0 else []
    if a.kind is Kind.W:
        return [(s, Kind.I, j, None)]
    k = [c for c in schedule.chains if s in c][0]
    pos = k.index(s)
    deps = [(s, Kind.F, j, None)]
    if pos + 1 < len(k):
        nxt = k[pos + 1]
        deps.append((nxt, Kind.I if (nxt, j) in split else Kind.B, j, s))
    return deps


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_simulation_respects_dependencies_rank_exclusivity_and_memory(case):
    schedule, model_costs = case
    sim = simulate(schedule, model_costs)
    costs = costs_for_schedule(schedule, model_costs)
    split = {(a.stage, a.microbatch) for o in schedule.orders for x in o for a in x.atoms if a.kind is Kind.I}
    start, end = sim.starts(), sim.ends()
    rank_of = schedule.stage_to_rank

    for row in sim.timeline:
        for prev, cur in zip(row, row[1:]):
            assert cur.start >= prev.end - 1e-9  # one action at a time per rank
        for t in row:
            assert t.start >= 0
            for a in t.action.atoms:
                for s, kind, j, boundary in producers(schedule, a, split):
                    delay = 0.0
                    if boundary is not None and rank_of[s] != rank_of[a.stage]:
                        delay = costs.transfer[boundary]
                    assert t.start >= end[(s, kind, j)] + delay - 1e-9, f"{a} before its input {s}{kind.value}{j}"
            if t.action.kind is Kind.OVERLAP_F_B:
                parts = [costs.forward[a.stage] if a.kind is Kind.F else costs.backward(a.stage)
                         for a in t.action.sub_actions]
                assert t.end - t.start == pytest.approx(costs.overlap_ratio * sum(parts))

    busy = sim.busy_per_rank
    assert sim.makespan >= max(busy) - 1e-9
    assert sim.bubble_per_rank == pytest.approx([sim.makespan - b for b in busy])
    assert sim.bubble_ratio == pytest.approx(1 - sum(busy) / (schedule.num_ranks * sim.makespan))

    # Memory, recomputed by sampling the live set at every allocation instant.
    for r in range(schedule.num_ranks):
        held = []
        for s in schedule.stages_of_rank(r):
            for j in range(schedule.microbatches_per_chain):
                release = end[(s, Kind.W, j)] if (s, j) in split else end[(s, Kind.B, j)]
                held.append((start[(s, Kind.F, j)], release, costs.activation[s]))
        peak = max(sum(size for a0, a1, size in held if a0 <= t < a1) for t, _, _ in held)
        assert sim.peak_activation_per_rank[r] == pytest.approx(peak)
        assert sim.params_per_rank[r] == pytest.approx(sum(costs.params[s] for s in schedule.stages_of_rank(r)))

    # The validator agrees with the simulator's memory accounting at the cap boundary.
    cap = max(sim.peak_activation_per_rank)
    validate(schedule, model_costs, memory_cap=cap)
    with pytest.raises(ScheduleError, match="V7"):
        validate(schedule, model_costs, memory_cap=cap * 0.999)


@pytest.mark.parametrize("name", BASELINES)
def test_asap_timing_is_tight(name):
    """Every action starts at the later of its rank freeing up and its last input arriving."""
    n, m = SIZES[name][-1]
    schedule = build_baseline(name, n, m)
    costs = PipelineCosts(
        forward=tuple(1.0 + 0.3 * s for s in range(schedule.num_model_stages)),
        backward_input=tuple(1.1 + 0.1 * s for s in range(schedule.num_model_stages)),
        backward_weight=tuple(0.7 for _ in range(schedule.num_model_stages)),
        transfer=tuple(0.25 for _ in range(schedule.num_model_stages)),
        activation=(1.0,) * schedule.num_model_stages, params=(1.0,) * schedule.num_model_stages,
    )
    sim = simulate(schedule, costs)
    per_stage = costs_for_schedule(schedule, costs)
    split = {(a.stage, a.microbatch) for o in schedule.orders for x in o for a in x.atoms if a.kind is Kind.I}
    end = sim.ends()
    for row in sim.timeline:
        free = 0.0
        for t in row:
            ready = [free]
            for a in t.action.atoms:
                for s, kind, j, boundary in producers(schedule, a, split):
                    cross = boundary is not None and schedule.stage_to_rank[s] != schedule.stage_to_rank[a.stage]
                    ready.append(end[(s, kind, j)] + (per_stage.transfer[boundary] if cross else 0.0))
            assert t.start == pytest.approx(max(ready))
            free = t.end


def test_transfers_delay_only_across_ranks():
    schedule = build_baseline("1f1b", 2, 2)
    free = simulate(schedule, PipelineCosts.uniform(2))
    slow = simulate(schedule, PipelineCosts.uniform(2, c=0.5))
    # one forward hop and one backward hop per micro-batch on the critical path
    assert slow.makespan == pytest.approx(free.makespan + 2 * 0.5)
    colocated = dataclasses.replace(schedule, stage_to_rank=(0, 0), orders=(
        tuple(a for o in schedule.orders for a in o if a.kind is Kind.F)
        + tuple(a for o in reversed(schedule.orders) for a in o if a.kind is Kind.B), ()))
    assert simulate(colocated, PipelineCosts.uniform(2, c=0.5)).makespan == pytest.approx(12.0)


def test_deadlock_names_the_ranks_and_what_they_wait_for():
    orders = (
        (Action(0, Kind.F, 0), Action(0, Kind.B, 0)),
        (Action(1, Kind.B, 0), Action(1, Kind.F, 0)),
    )
    schedule = Schedule(name="bad", stage_to_rank=(0, 1), microbatches_per_chain=1, orders=orders)
    with pytest.raises(DeadlockError) as err:
        simulate(schedule, PipelineCosts.uniform(2))
    message = str(err.value)
    assert "rank 0 step 1 0B0 waits on 1B0 (rank 1 step 0)" in message
    assert "rank 1 step 0 1B0 waits on 1F0 (rank 1 step 1)" in message


def test_validator_marks_the_bad_cell():
    schedule = build_baseline("1f1b", 4, 8)
    orders = [list(o) for o in schedule.orders]
    orders[3][0], orders[3][1] = orders[3][1], orders[3][0]
    with pytest.raises(ScheduleError) as err:
        validate(dataclasses.replace(schedule, orders=orders))
    assert err.value.violations[0].code == "V4"
    assert ">>3B0<<" in str(err.value) and "<-- ERROR HERE" in str(err.value)


@pytest.mark.parametrize("mutation,code", [
    (lambda o: o[1].pop(), "V3"),                                     # a backward missing
    (lambda o: o[1].append(Action(1, Kind.F, 0)), "V3"),              # a forward twice
    (lambda o: o[2].append(Action(1, Kind.W, 0)), "V1"),              # stage on the wrong rank
    (lambda o: o[0].append(Action(0, Kind.F, 9)), "V2"),              # micro-batch out of range
    (lambda o: o[0].insert(0, Action.overlap(Action(0, Kind.F, 0), Action(0, Kind.F, 1))), "V5"),
])
def test_each_invariant_is_enforced(mutation, code):
    schedule = build_baseline("1f1b", 4, 4)
    orders = [list(o) for o in schedule.orders]
    mutation(orders)
    with pytest.raises(ScheduleError) as err:
        validate(dataclasses.replace(schedule, orders=orders))
    assert code in {v.code for v in err.value.violations}


def test_negative_or_mismatched_costs_are_refused():
    with pytest.raises(ParplanError, match=r"costs.forward\[1\] = -1.0"):
        PipelineCosts.uniform(3).__class__(forward=(1, -1, 1), backward_input=(1,) * 3, backward_weight=(1,) * 3,
                                           transfer=(0,) * 3, activation=(1,) * 3, params=(1,) * 3)
    with pytest.raises(ParplanError, match="has 2 entries but there are 3 stages"):
        PipelineCosts(forward=(1, 1, 1), backward_input=(1, 1), backward_weight=(1,) * 3,
                      transfer=(0,) * 3, activation=(1,) * 3, params=(1,) * 3)
    with pytest.raises(ParplanError, match="give one cost entry per model stage"):
        simulate(build_baseline("1f1b", 4, 4), PipelineCosts.uniform(3))


def test_a_cell_may_overlap_a_forward_with_a_backward_input():
    """(F;I) cells are as valid as DualPipe's (F;B) cells; (F;F) or (F;W) are not."""
    orders = (
        (Action(0, Kind.F, 0), Action(0, Kind.F, 1), Action(0, Kind.I, 0),
         Action(0, Kind.W, 0), Action(0, Kind.I, 1), Action(0, Kind.W, 1)),
        (Action(1, Kind.F, 0), Action.overlap(Action(1, Kind.F, 1), Action(1, Kind.I, 0)),
         Action(1, Kind.I, 1), Action(1, Kind.W, 0), Action(1, Kind.W, 1)),
    )
    schedule = Schedule(name="fi-cell", stage_to_rank=(0, 1), microbatches_per_chain=2, orders=orders)
    validate(schedule)
    bad = dataclasses.replace(schedule, orders=(orders[0], (Action(1, Kind.F, 0), Action.overlap(
        Action(1, Kind.F, 1), Action(1, Kind.W, 0)), Action(1, Kind.I, 0), Action(1, Kind.I, 1), Action(1, Kind.W, 1))))
    with pytest.raises(ScheduleError, match="V5"):
        validate(bad)
