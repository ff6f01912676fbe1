"""Plan file: exact round trip, version/format/model checks, and the CLI's exit 2 before launching."""

from __future__ import annotations

import json

import pytest

from parplan.cli import main
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.plan import PLAN_FORMAT_VERSION, Plan
from parplan.runtime.chain import balanced_split, load_plan_model, plan_chain
from parplan.runtime.stages import check_model

GPT = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32"


@pytest.fixture(scope="module")
def plan() -> Plan:
    costs = PipelineCosts(forward=(1.0, 1.25, 0.75, 2.0), backward_input=(1.5, 1.0, 1.0, 2.5),
                          backward_weight=(0.5, 0.75, 1.0, 0.25), transfer=(0.1, 0.2, 0.1, 0.0),
                          activation=(3.0, 2.0, 2.0, 4.0), params=(7.0, 5.0, 5.0, 6.0), overlap_ratio=0.8)
    return plan_chain(GPT, "dualpipev", batch=8, seq=8, num_ranks=2, num_microbatches=4, costs=costs)


def test_round_trip_is_exact(plan, tmp_path):
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again == plan
    assert again.to_json() == path.read_text()
    assert any(t.action.sub_actions for row in again.timeline for t in row), "dualpipev has F&B cells"


def test_plan_contents(plan):
    assert plan.version == PLAN_FORMAT_VERSION
    assert [st.rank for st in plan.stages] == [0, 1, 1, 0]
    assert [p for st in plan.stages for p in st.pieces] == ["wte", "wpe", "h.0", "h.1", "h.2", "h.3", "ln_f", "lm_head"]
    assert plan.stages[0].receives == ("idx",)
    assert plan.predicted.step_time == max(t.end for row in plan.timeline for t in row)
    assert len(plan.predicted.peak_memory_per_rank) == 2


def test_wrong_version_malformed_and_missing_fields(plan, tmp_path):
    data = plan.to_dict()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "version": PLAN_FORMAT_VERSION + 1}))
    with pytest.raises(ParplanError, match="version"):
        Plan.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ParplanError, match="not valid JSON"):
        Plan.load(bad)
    bad.write_text(json.dumps({k: v for k, v in data.items() if k != "stages"}))
    with pytest.raises(ParplanError, match="stages"):
        Plan.load(bad)
    bad.write_text(json.dumps({**data, "stages": data["stages"][:-1]}))
    with pytest.raises(ParplanError, match="one StagePlan per schedule stage"):
        Plan.load(bad)


def test_plan_for_another_model_is_refused(plan):
    other = load_plan_model(GPT.replace("layers=4", "layers=5"), batch=8, seq=8)
    with pytest.raises(ParplanError, match="does not match the plan"):
        check_model(other.model, plan)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(version=99), "version"),
    (lambda d: d["model"].update(fingerprint="sha256:0"), "does not match the plan"),
    (lambda d: d.pop("schedule"), "schedule"),
])
def test_cli_exits_2_before_launching(plan, tmp_path, capsys, edit, message):
    data = plan.to_dict()
    edit(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and "torchrun" not in err


def test_cli_refuses_dualpipe_and_wrong_nproc(tmp_path, capsys):
    path = tmp_path / "dp.json"
    plan_chain(GPT, "dualpipe", batch=8, seq=8, num_ranks=2, num_microbatches=4).save(path)
    assert main(["run", str(path), "--nproc", "2"]) == 2
    assert "DualPipeV" in capsys.readouterr().err
    good = tmp_path / "good.json"
    plan_chain(GPT, "1f1b", batch=8, seq=8, num_ranks=2, num_microbatches=4).save(good)
    assert main(["run", str(good), "--nproc", "3"]) == 2
    assert "--nproc 2" in capsys.readouterr().err


def test_balanced_split_is_optimal_and_contiguous():
    assert balanced_split([5, 1, 1, 1, 1, 5], 3) == [1, 4, 1]
    assert balanced_split([1, 1, 1, 1], 4) == [1, 1, 1, 1]
    with pytest.raises(ParplanError, match="pieces"):
        balanced_split([1, 2], 3)


def test_explicit_split_must_cover_pieces_in_order():
    with pytest.raises(ParplanError, match="in order"):
        plan_chain(GPT, "1f1b", batch=8, seq=8, num_ranks=2, num_microbatches=4,
                   split=[["wpe", "wte", "h.0", "h.1"], ["h.2", "h.3", "ln_f", "lm_head"]])


def test_chain_plans_are_built_by_the_planners_function():
    import parplan.planner.api as planner_api
    import parplan.runtime.chain as chain

    assert chain.plan_from_schedule is planner_api.plan_from_schedule


def test_mip_chain_plan_defaults_to_the_v_placement():
    """`plan_chain(..., "mip")` splits for placement V (2N model stages) and asks the MIP for V."""
    pytest.importorskip("ortools")
    plan = plan_chain(GPT, "mip", batch=8, seq=8, num_ranks=2, num_microbatches=4)
    assert plan.solver["schedule"]["placement"] == "v" and len(plan.stages) == 4
    assert plan.schedule.stage_to_rank == (0, 1, 1, 0)
