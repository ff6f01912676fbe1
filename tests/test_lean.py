"""The memory pass's solver-free reordering (`parplan/mip/lean.py`): same makespan, less held."""

from __future__ import annotations

from collections import Counter

import pytest

from parplan.baselines import build_baseline
from parplan.schedule.costs import PipelineCosts
from parplan.mip.api import MipOptions
from parplan.mip.lean import pull_frees_forward
from parplan.schedule.ir import Action, Kind, Schedule
from parplan.schedule.simulate import simulate
from parplan.schedule.validate import validate
from test_mip import uneven


def deferred_weights(num_ranks: int, num_microbatches: int) -> Schedule:
    """1F1B with every B split into I and all W's at the end of each rank: as fast as the
    split 1F1B, but every activation stays held until the W's run."""
    base = build_baseline("1f1b", num_ranks, num_microbatches)
    orders = []
    for order in base.orders:
        i_part = [Action(a.stage, Kind.I, a.microbatch) if a.kind is Kind.B else a for a in order]
        w_part = [Action(a.stage, Kind.W, a.microbatch) for a in order if a.kind is Kind.B]
        orders.append(tuple(i_part + w_part))
    return Schedule(name="1f1b-deferred-w", stage_to_rank=base.stage_to_rank,
                    microbatches_per_chain=base.microbatches_per_chain, orders=tuple(orders))


def assert_same_work_in_order(before: Schedule, after: Schedule) -> None:
    for old, new in zip(before.orders, after.orders):
        assert Counter(map(str, old)) == Counter(map(str, new))  # a reordering: nothing added or lost
        position = {str(a): k for k, a in enumerate(new)}
        for a in new:
            if a.kind is Kind.W:
                assert position[f"{a.stage}I{a.microbatch}"] < position[str(a)]  # W after its own I


@pytest.mark.parametrize("name,costs", [
    ("zb-h2", uneven(4)),  # split backward: W's move (measured 14 -> 12)
    ("gpipe", uneven(4)),  # full backward: B's move (16 -> 14)
    ("1f1b-deferred-w", PipelineCosts.uniform(4, f=1, i=1.2, w=0.8, c=0.1)),  # 8 -> 6
])
def test_pulling_frees_forward_lowers_the_peak_at_the_same_makespan(name, costs):
    schedule = deferred_weights(4, 8) if name == "1f1b-deferred-w" else build_baseline(name, 4, 8)
    before = validate(schedule, costs)
    found = pull_frees_forward(schedule, costs, makespan=before.makespan, max_trials=100_000)
    assert found is not None
    lean, sim = found
    after = validate(lean, costs)
    assert after.makespan <= before.makespan + 1e-9
    assert sim.peak_activation_per_rank == after.peak_activation_per_rank
    assert max(after.peak_activation_per_rank) < max(before.peak_activation_per_rank) - 1e-9
    assert_same_work_in_order(schedule, lean)


def test_pulling_stops_at_a_local_optimum():
    """1F1B runs each B as soon as it can: pulling one earlier only delays it. None."""
    costs = uneven(4)
    schedule = build_baseline("1f1b", 4, 8)
    assert pull_frees_forward(schedule, costs, makespan=simulate(schedule, costs).makespan,
                              max_trials=100_000) is None


def test_pulling_keeps_cells_and_the_makespan_it_is_given():
    """DualPipe with F&B cells: compound actions stay where they are, and whatever it
    returns is no longer than the makespan asked for, also one below the schedule's own."""
    costs = PipelineCosts.uniform(4, f=1, i=1, w=1, c=0.2, fb=2.4)
    schedule = build_baseline("dualpipe", 4, 8)
    before = simulate(schedule, costs)
    found = pull_frees_forward(schedule, costs, makespan=before.makespan, max_trials=100_000)
    if found is not None:
        after = validate(found[0], costs)
        assert after.makespan <= before.makespan + 1e-9
        assert max(after.peak_activation_per_rank) < max(before.peak_activation_per_rank)
        assert_same_work_in_order(schedule, found[0])
        compound = lambda s: [[str(a) for a in o if a.kind is Kind.OVERLAP_F_B] for o in s.orders]  # noqa: E731
        assert compound(found[0]) == compound(schedule)
    shorter = pull_frees_forward(schedule, costs, makespan=before.makespan - 0.5, max_trials=100_000)
    assert shorter is None or validate(shorter[0], costs).makespan <= before.makespan - 0.5 + 1e-9


def test_pulling_is_bounded_by_its_trial_count_and_deterministic():
    """The pull's budget is a number of simulated moves, not seconds: with a budget too
    small for a local optimum it returns what it reached, and the same budget gives the
    same schedule; a larger budget holds no more."""
    costs = uneven(4)
    schedule = deferred_weights(4, 32)
    makespan = simulate(schedule, costs).makespan
    few = [pull_frees_forward(schedule, costs, makespan=makespan, max_trials=500) for _ in range(2)]
    many = pull_frees_forward(schedule, costs, makespan=makespan, max_trials=100_000)
    assert few[0] is not None and many is not None
    assert few[0][0].to_text() == few[1][0].to_text()
    assert max(many[1].peak_activation_per_rank) <= max(few[0][1].peak_activation_per_rank)
    assert many[0].to_text() != few[0][0].to_text()  # 500 moves do not reach the local optimum


def test_lower_memory_on_a_baseline_says_when_the_result_is_also_shorter():
    """The public entry (`parplan.mip.lower_memory`) on GPipe with unequal costs: less held,
    never longer; a shorter makespan is reported, not hidden behind "at makespan 48"; the
    numbers it returns are the kept schedule's simulated ones."""
    from parplan.mip import lower_memory

    costs = uneven(4)
    schedule = build_baseline("gpipe", 4, 8)
    before = simulate(schedule, costs)
    lean = lower_memory(schedule, costs=costs, placement="chain", memory_cap=None, work=1)
    after = validate(lean.schedule, costs)
    assert lean.ran and lean.lowered and lean.schedule.name == schedule.name
    assert lean.peak_before == max(before.peak_activation_per_rank)
    assert lean.peak_after == max(after.peak_activation_per_rank) < lean.peak_before
    assert lean.makespan_before == before.makespan and lean.makespan_after == after.makespan <= before.makespan
    assert ("shorter too" in lean.note) == (after.makespan < before.makespan - 1e-9)
    assert f"{after.makespan:g}" in lean.note


def test_lower_memory_returns_the_given_schedule_when_nothing_is_lower_or_no_time():
    """A second pass on a schedule whose first pass was proven least (CP-SAT OPTIMAL) finds
    nothing lower and hands the schedule back as given; once the safety stop has fired
    nothing runs."""
    from parplan.mip import lower_memory

    costs = PipelineCosts.uniform(4, f=1, i=1, w=1)
    first = lower_memory(build_baseline("1f1b", 4, 8), costs=costs, placement="chain", memory_cap=None,
                         work=1)
    assert first.lowered and first.solver_status == "OPTIMAL"  # 1F1B's unsplit B: 4 held -> 3
    again = lower_memory(first.schedule, costs=costs, placement="chain", memory_cap=None, work=1)
    assert again.ran and not again.lowered and again.schedule is first.schedule
    assert again.peak_after == again.peak_before == first.peak_after and "no lower peak" in again.note
    rushed = lower_memory(first.schedule, costs=costs, placement="chain", memory_cap=None, work=1,
                          time_limit=1e-9)
    assert not rushed.ran and rushed.schedule is first.schedule and "skipped" in rushed.note


def test_minimise_memory_runs_even_when_the_search_cannot_prove():
    """4×8 with F&B cells under DualPipe's cap: the makespan search does not prove with this
    little work, yet the pass gets its quarter of the work (it once got nothing, silently)."""
    from parplan.mip import solve_schedule

    costs = PipelineCosts.uniform(4, f=1, i=1, w=1, c=0.2, fb=2.4)
    result = solve_schedule(num_ranks=4, num_microbatches=8, costs=costs,
                            options=MipOptions(placement="dualpipe", memory_cap=5, work=1.2, minimise_memory=True))
    assert result.status == "FEASIBLE" and not result.stopped_early
    assert 0.25 * 1.2 * 0.5 < result.work <= 1.2  # the search and the pass, within the work
    assert result.notes[-1].startswith("memory pass (")
    assert max(result.simulation.peak_activation_per_rank) <= 5 + 1e-9
