"""`parplan plan --schedule NAME`: a hand configuration evaluated, not searched (parplan.planner.evaluate).

Checked against independent answers on a real traced model (GPT, 8 layers, unequal F/I/W
and transfers on h100x8): the step time is what the simulator gives the named baseline on
the same per-stage costs (`parplan compare`'s path), the split is the cost-balanced layer
split (brute force over every contiguous split), the searched plan at the same degrees is
no slower and times the same baseline identically, and the plan file round-trips.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest

from parplan.cli import main
from parplan.compare import parse_memory_limit, simulate_baseline
from parplan.cost.hardware import load_cluster
from parplan.errors import ParplanError
from parplan.plan import Plan
from parplan.planner.api import to_plan
from parplan.planner.bilevel import PlannerConfig, plan_traced
from parplan.planner.evaluate import evaluate_traced
from parplan.planner.costing import Coster
from parplan.planner.degrees import Degrees, candidate_degrees
from parplan.planner.units import Granularity, coarsen
from parplan.schedule.placement import family_of_schedule
from parplan.sizes import memory_flag
from parplan.trace import trace
from parplan.zoo import load_model

GPT = "gpt:layers=8,tie_embeddings=false"  # a tied head would be a stage without parameters
SEQ = 512
M = 16
QUICK = 0.5  # CP-SAT deterministic seconds for the searched comparison


@pytest.fixture(scope="module")
def gpt():
    zoo = load_model(GPT, batch=1, seq=SEQ)
    return zoo, trace(zoo.model, zoo.example_inputs), load_cluster("h100x8")


def _evaluate(traced, cluster, schedule, pp, *, chunks=None, tp=1, **options):
    degrees = Degrees(pp=pp, dp=cluster.num_gpus // (pp * tp), tp=tp)
    config = PlannerConfig(microbatches=M, degrees=degrees, schedule=schedule, chunks=chunks, **options)
    return evaluate_traced(traced, cluster, config), config


def _costs_of(placed):
    """`simulate_baseline`'s costs argument: the placement's per-stage costs, for its stage count."""
    def costs(num_stages):
        assert num_stages == placed.costs.num_stages
        return placed.costs
    return costs


def _loads(split: list[int], costs: list[float], family, num_ranks: int) -> tuple[float, float]:
    """(busiest stage, busiest rank) of a split of the units costing `costs`."""
    stage = [0.0] * family.num_stages(num_ranks)
    rank = [0.0] * num_ranks
    for u, s in enumerate(split):
        stage[s] += costs[u]
        for r in family.ranks_of_stage(s, num_ranks):
            rank[r] += family.share * costs[u]
    return max(stage), max(rank)


def _brute_force(costs: list[float], family, num_ranks: int) -> tuple[float, float]:
    """The least busiest stage and the least busiest rank over every contiguous split of
    `costs` into the family's model stages (each one or more whole layers)."""
    stages = family.num_stages(num_ranks)
    splits = []
    for cuts in itertools.combinations(range(1, len(costs)), stages - 1):
        splits.append([sum(u >= c for c in cuts) for u in range(len(costs))])
    loads = [_loads(split, costs, family, num_ranks) for split in splits]
    return min(stage for stage, _ in loads), min(rank for _, rank in loads)


@pytest.mark.parametrize("schedule,pp,chunks", [("zb-h1", 4, None), ("1f1b", 2, None), ("interleaved-1f1b", 2, 3),
                                                ("zb-v", 2, None), ("dualpipe", 4, None)])
def test_the_evaluated_step_time_is_the_simulators_on_the_cost_balanced_layer_split(gpt, schedule, pp, chunks):
    _, traced, cluster = gpt
    result, config = _evaluate(traced, cluster, schedule, pp, chunks=chunks)
    best, placed = result.best, result.best.placed
    assert result.search == "evaluated" and best.schedule.name == schedule and result.baselines == ()
    family = family_of_schedule(schedule)
    assert placed.family.name == family.name and str(placed.degrees) == f"PP{pp}×DP{8 // pp}×TP1"
    per_rank = chunks or family.stages_per_rank
    assert best.schedule.num_stages == pp * per_rank
    # the simulator on the same per-stage costs, as `parplan compare` runs it, plus the gradient sync
    _, sim = simulate_baseline(schedule, pp, M // placed.degrees.dp, _costs_of(placed), num_chunks=chunks)
    assert placed.dp_sync_s > 0
    assert best.step_time_s == pytest.approx(sim.makespan + placed.dp_sync_s, rel=1e-12)
    assert best.peak_memory_bytes == pytest.approx(
        [s + a for s, a in zip(placed.static_bytes, sim.peak_activation_per_rank)], rel=1e-12)
    # whole layers, contiguous, and no contiguous split has a less busy busiest rank
    layers = coarsen(traced, Granularity.LAYER)
    split = list(placed.stage_of_unit)
    assert len(split) == len(layers.units) and split == sorted(split) and set(split) == set(range(max(split) + 1))
    coster, gpu = Coster(traced), cluster.gpu(0)
    unit_cost = [coster.unit(u, gpu).total_s for u in layers.units]
    assert len(set(round(c, 12) for c in unit_cost)) > 2  # embeddings, blocks and the head cost differently
    stage, rank = _loads(split, unit_cost, placed.family, pp)
    best_stage, best_rank = _brute_force(unit_cost, placed.family, pp)
    assert stage == pytest.approx(best_stage, rel=1e-6)  # the min–max split (to its binary search's tolerance)
    if placed.family.name == "chain":  # one stage per rank: the busiest rank is the busiest stage
        assert rank == pytest.approx(best_rank, rel=1e-6)


def test_the_searched_plan_at_the_same_degrees_is_no_slower_and_times_that_baseline_the_same(gpt):
    _, traced, cluster = gpt
    evaluated, _ = _evaluate(traced, cluster, "zb-h1", 4)
    degrees = evaluated.best.placed.degrees
    searched = plan_traced(traced, cluster, PlannerConfig(microbatches=M, degrees=degrees, work=QUICK))
    assert searched.search == "searched"
    assert searched.best.step_time_s <= evaluated.best.step_time_s * (1 + 1e-12)
    row = {e.label: e for e in searched.baselines}["zb-h1"]
    assert str(row.placed.degrees) == str(degrees)
    assert row.placed.stage_of_unit == evaluated.best.placed.stage_of_unit
    assert row.step_time_s == pytest.approx(evaluated.best.step_time_s, rel=1e-12)


def test_a_fixed_schedule_without_pp_keeps_the_fastest_degrees_for_it(gpt):
    _, traced, cluster = gpt
    result = evaluate_traced(traced, cluster, PlannerConfig(microbatches=M, schedule="1f1b"))
    layers = len(coarsen(traced, Granularity.LAYER).units)
    times = {}
    for d in candidate_degrees(cluster, microbatches=M, max_pp=layers):
        try:
            one = evaluate_traced(traced, cluster, PlannerConfig(microbatches=M, degrees=d, schedule="1f1b")).best
        except ParplanError:  # 1f1b needs M >= N per replica; or the split does not fit
            continue
        times[str(d)] = one.step_time_s
    assert len(times) >= 3
    assert result.best.step_time_s == pytest.approx(min(times.values()), rel=1e-12)
    assert str(result.best.placed.degrees) == min(times, key=times.get)


def test_the_plan_file_records_the_configuration_round_trips_and_show_prints_it(gpt, tmp_path, capsys):
    zoo, traced, cluster = gpt
    result, config = _evaluate(traced, cluster, "interleaved-1f1b", 2, chunks=3)
    plan = to_plan(result, zoo.model, zoo.example_inputs, cluster, config, GPT)
    e = plan.evaluated
    assert (e.schedule, e.chunks, e.placement, e.pp, e.dp, e.tp, e.ep, e.microbatches) == \
        ("interleaved-1f1b", 3, "loop", 2, 4, 1, 1, M)
    assert e.step_time == result.best.step_time_s and e.memory_cap == result.memory_cap
    assert e.options["techniques"]["zero"] is None and e.options["mode"] == "train"  # left to the default
    assert plan.predicted.step_time == pytest.approx(result.best.simulation.makespan)
    assert list(plan.solver["comparison"]) == ["interleaved-1f1b"]
    path = tmp_path / "plan.json"
    plan.save(path)
    assert Plan.load(path) == plan
    assert json.loads(path.read_text())["evaluated"]["chunks"] == 3
    assert main(["show", str(path)]) == 0
    assert "evaluated configuration (not searched): interleaved-1f1b, 3 chunks per rank" in capsys.readouterr().out


def test_a_searched_plan_has_no_evaluated_record_and_older_files_still_load(tmp_path):
    from parplan.runtime.chain import plan_chain

    plan = plan_chain("gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32",
                      "1f1b", batch=4, seq=8, num_ranks=2, num_microbatches=4)
    data = plan.to_dict()
    assert data["evaluated"] is None
    del data["evaluated"]  # a file written before the field existed
    assert Plan.from_dict(data) == plan


def test_the_cli_evaluates_writes_the_plan_and_chart_and_labels_the_row(tmp_path, capsys):
    out, chart = tmp_path / "p.json", tmp_path / "g.png"
    argv = ["plan", GPT, "--seq", str(SEQ), "-m", str(M), "--pp", "4", "--schedule", "dualpipe", "-q",
            "-o", str(out), "--gantt", str(chart)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "evaluated (not searched)" in text
    assert re.search(r"\nevaluated +dualpipe +dualpipe +PP4×DP2×TP1 ", text)
    plan = Plan.load(out)
    assert plan.evaluated.schedule == "dualpipe" and plan.schedule.name == "dualpipe"
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert main(argv[:-4] + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schedule"] == "dualpipe" and report["baselines"] == {}
    assert report["evaluated"]["step_time"] == pytest.approx(plan.evaluated.step_time, rel=1e-12)


def test_over_the_cap_it_names_the_memory_needed_and_that_much_is_enough(gpt):
    _, traced, cluster = gpt
    roomy, _ = _evaluate(traced, cluster, "gpipe", 2)
    peak = max(roomy.best.peak_memory_bytes)
    with pytest.raises(ParplanError, match="does not fit the memory cap") as err:
        _evaluate(traced, cluster, "gpipe", 2, memory_limit=peak * 0.999)
    flag = memory_flag(peak)
    assert f"--memory-limit {flag} or more" in str(err.value)
    enough, _ = _evaluate(traced, cluster, "gpipe", 2, memory_limit=parse_memory_limit(flag)[1])
    assert enough.best.step_time_s == roomy.best.step_time_s


def test_moe_with_ep_fixed_times_the_all_to_alls_the_simulator_times():
    moe = ("deepseek-moe:layers=3,hidden=256,heads=4,kv_heads=4,head_dim=64,experts=16,top_k=4,shared_experts=1,"
           "expert_hidden=128,intermediate=512,first_dense_layers=1,vocab=512")
    zoo = load_model(moe, batch=1, seq=256)
    traced, cluster = trace(zoo.model, zoo.example_inputs), load_cluster("h100x8")
    config = PlannerConfig(microbatches=16, degrees=Degrees(pp=2, dp=4, tp=1), ep=4, schedule="dualpipev")
    best = evaluate_traced(traced, cluster, config).best
    assert best.placed.degrees.ep == 4 and best.placed.costs.communicates
    _, sim = simulate_baseline("dualpipev", 2, 4, _costs_of(best.placed))
    assert best.step_time_s == pytest.approx(sim.makespan + best.placed.dp_sync_s, rel=1e-12)


@pytest.mark.parametrize("options,phrase", [
    ({"chunks": 2}, "--chunks 2 needs --schedule"),
    ({"schedule": "zb-h3"}, "choose one of gpipe, 1f1b"),
    ({"schedule": "zb-h1", "chunks": 2}, "zb-h1 runs 1 stage chunk(s) per rank; --chunks 2 does not apply"),
    ({"schedule": "dualpipev", "chunks": 3}, "dualpipev runs 2 stage chunk(s) per rank"),
    ({"schedule": "1f1b", "mode": "inference"}, "inference runs each stage's forwards in order"),
    ({"schedule": "zb-v", "families": ("chain",)}, "--placement chain cannot run --schedule zb-v"),
])
def test_bad_choices_are_refused_before_any_work(options, phrase):
    with pytest.raises(ParplanError) as err:
        PlannerConfig(**options)
    assert phrase in str(err.value)


@pytest.mark.parametrize("schedule,pp,chunks,phrase", [
    ("dualpipe", 1, None, "dualpipe needs an even number of ranks"),
    ("interleaved-1f1b", 4, 4, "needs 16 model stages but the model has 12 layers"),
])
def test_configurations_the_schedule_or_the_model_cannot_run_are_refused(gpt, schedule, pp, chunks, phrase):
    _, traced, cluster = gpt
    with pytest.raises(ParplanError) as err:
        _evaluate(traced, cluster, schedule, pp, chunks=chunks)
    assert phrase in str(err.value) and f"--schedule {schedule} at PP{pp}" in str(err.value)


def test_the_search_and_the_evaluation_each_refuse_the_other_s_config(gpt):
    _, traced, cluster = gpt
    with pytest.raises(ParplanError, match="evaluate_traced"):
        plan_traced(traced, cluster, PlannerConfig(microbatches=M, schedule="1f1b"))
    with pytest.raises(ParplanError, match="give the config a schedule="):
        evaluate_traced(traced, cluster, PlannerConfig(microbatches=M))


def test_with_degrees_searched_and_none_fitting_the_error_names_the_smallest_peak(gpt):
    _, traced, cluster = gpt
    config = PlannerConfig(microbatches=M, schedule="gpipe", memory_limit=2**20)
    peaks = {}
    for d in candidate_degrees(cluster, microbatches=M, max_pp=len(coarsen(traced, Granularity.LAYER).units)):
        try:
            e = evaluate_traced(traced, cluster, PlannerConfig(microbatches=M, degrees=d, schedule="gpipe")).best
        except ParplanError:
            continue
        peaks[str(d)] = max(e.peak_memory_bytes)
    smallest = min(peaks, key=peaks.get)
    with pytest.raises(ParplanError) as err:
        evaluate_traced(traced, cluster, config)
    assert f"at {smallest} does not fit" in str(err.value) and "the smallest peak of any degree candidate" in str(err.value)
    assert f"--memory-limit {memory_flag(peaks[smallest])} or more" in str(err.value)


def test_the_techniques_flow_through_unchanged_and_are_recorded(gpt):
    from parplan.planner.evaluate import other_choices
    from parplan.planner.techniques import TechniqueChoice

    _, traced, cluster = gpt
    sharded, _ = _evaluate(traced, cluster, "1f1b", 2)
    whole, config = _evaluate(traced, cluster, "1f1b", 2, techniques=TechniqueChoice(zero=0))
    a, b = sharded.best.placed, whole.best.placed
    assert a.stage_of_unit == b.stage_of_unit
    # ZeRO-1 off: each replica keeps all 12 optimizer bytes per parameter instead of 12 / dp
    layers, coster, gpu = coarsen(traced, Granularity.LAYER), Coster(traced), cluster.gpu(0)
    count = [0.0, 0.0]
    for u, s in enumerate(a.stage_of_unit):
        count[s] += coster.unit(layers.units[u], gpu).param_count
    dp = a.degrees.dp
    assert b.static_bytes == pytest.approx([s + 12 * n * (1 - 1 / dp) for s, n in zip(a.static_bytes, count)],
                                           rel=1e-12)
    assert whole.best.step_time_s == sharded.best.step_time_s  # memory only
    assert other_choices(config)["techniques"]["zero"] == 0
