"""Executing plans: stage splitting, and loss/gradient equivalence with one process (torchrun, gloo).

Each rank count is launched once (one torchrun job runs all its plans in a row), so the
multi-process start-up is paid twice per CI run, not once per plan.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from parplan.errors import ParplanError
from parplan.runtime.chain import load_plan_model, plan_chain
from parplan.runtime.launch import compare_with_reference, reference_step
from parplan.runtime.split import default_pieces, export_graph, split_graph
from parplan.runtime.stages import stage_graphs, synthetic_batch

from _launched import launch_each_count

GPT = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32"
TWO_TOWER = ("two-tower:image_size=8,patch=4,channels=3,vision_hidden=16,vision_heads=2,vision_layers=2,"
             "vocab=64,hidden=32,heads=2,layers=3,dtype=float32")
# Four stages: the vision tower's output (image tokens) is read by every text layer, so
# stages 1 and 2 pass it along; the token ids pass through stage 0 to the text embedding.
BRANCHY_SPLIT = [["vision.patch_embed", "vision.layers.0", "vision.layers.1", "vision.norm", "vision.proj"],
                 ["embed", "layers.0"], ["layers.1"], ["layers.2", "norm", "lm_head"]]
TOLERANCE = 1e-5
HAS_MIP = importlib.util.find_spec("parplan.mip") is not None


# ---- stage splitting (one process) ------------------------------------------------------
@pytest.mark.parametrize("spec", [GPT, TWO_TOWER])
def test_chained_stages_compute_the_model(spec):
    torch.manual_seed(0)
    zoo = load_plan_model(spec, batch=2, seq=8, device="cpu")
    inputs, _ = synthetic_batch(zoo.model, zoo.example_inputs, seed=1)
    pieces = default_pieces(zoo.model)
    third = len(pieces) // 3
    stages = split_graph(export_graph(zoo.model, inputs),
                         [list(pieces[:third]), list(pieces[third:2 * third]), list(pieces[2 * third:])])
    values = inputs
    for stage in stages:
        out = stage.module(*values)
        values = out if isinstance(out, tuple) else (out,)
    torch.testing.assert_close(values[0], zoo.model(*inputs), rtol=0, atol=1e-6)
    names = [n for s in stages for n, _ in s.module.named_parameters()]
    assert sorted(names) == sorted(n for n, _ in zoo.model.named_parameters())


def test_branch_values_are_passed_along():
    plan = plan_chain(TWO_TOWER, "zb-v", batch=8, seq=8, num_ranks=2, num_microbatches=4, split=BRANCHY_SPLIT)
    (image,) = plan.stages[1].passes
    assert plan.stages[0].passes == ("idx",)
    assert image in plan.stages[2].receives and plan.stages[2].passes == (image,)
    assert image in plan.stages[3].receives and plan.stages[3].passes == ()
    zoo = load_plan_model(TWO_TOWER, batch=8, seq=8)
    graphs = stage_graphs(zoo.model, plan, zoo.example_inputs)
    assert [g.computes_on_tokens for g in graphs] == [False, True, False, False]


def test_stages_for_another_model_are_refused():
    plan = plan_chain(GPT, "1f1b", batch=8, seq=8, num_ranks=2, num_microbatches=4)
    other = load_plan_model(GPT.replace("hidden=32", "hidden=16"), batch=8, seq=8)
    with pytest.raises(ParplanError, match="does not match the plan"):
        stage_graphs(other.model, plan, other.example_inputs)


# ---- equivalence under torchrun ---------------------------------------------------------
def _plans_two_ranks() -> dict:
    plans = {
        "gpt-1f1b": plan_chain(GPT, "1f1b", batch=8, seq=8, num_ranks=2, num_microbatches=4),
        "gpt-zb-v": plan_chain(GPT, "zb-v", batch=8, seq=8, num_ranks=2, num_microbatches=4),
        "gpt-dualpipev": plan_chain(GPT, "dualpipev", batch=8, seq=8, num_ranks=2, num_microbatches=4),
        "two-tower-zb-v-branchy": plan_chain(TWO_TOWER, "zb-v", batch=8, seq=8, num_ranks=2, num_microbatches=4,
                                             split=BRANCHY_SPLIT),
    }
    if HAS_MIP:
        from parplan.mip import MipOptions

        plans["gpt-mip"] = plan_chain(GPT, "mip", batch=8, seq=8, num_ranks=2, num_microbatches=4,
                                      mip_options=MipOptions(placement="v", work=1.0))
    return plans


def _plans_four_ranks() -> dict:
    return {
        "gpt-1f1b-4": plan_chain(GPT, "1f1b", batch=8, seq=8, num_ranks=4, num_microbatches=4),
        "two-tower-1f1b-4-branchy": plan_chain(TWO_TOWER, "1f1b", batch=8, seq=8, num_ranks=4, num_microbatches=4,
                                               split=BRANCHY_SPLIT),
    }


@pytest.fixture(scope="module")
def runs() -> dict:
    return launch_each_count({2: _plans_two_ranks(), 4: _plans_four_ranks()}, steps=2)


CASES = ["gpt-1f1b", "gpt-zb-v", "gpt-dualpipev", "two-tower-zb-v-branchy", "gpt-1f1b-4", "two-tower-1f1b-4-branchy"]


@pytest.mark.parametrize("name", CASES)
def test_loss_and_every_gradient_match_one_process(runs, name):
    plan, measured = runs[name]
    diff = compare_with_reference(measured, reference_step(plan))
    assert diff["loss_diff"] <= TOLERANCE, diff
    assert diff["max_grad_diff"] <= TOLERANCE, diff
    assert len(measured.losses) == plan.num_microbatches


@pytest.mark.skipif(not HAS_MIP, reason="parplan.mip is not importable in this checkout; no MIP schedule to run")
def test_mip_schedule_matches_one_process(runs):
    plan, measured = runs["gpt-mip"]
    assert plan.schedule.name == "mip" and plan.solver["schedule"]["status"]
    diff = compare_with_reference(measured, reference_step(plan))
    assert diff["loss_diff"] <= TOLERANCE and diff["max_grad_diff"] <= TOLERANCE, diff


@pytest.mark.parametrize("name", ["gpt-dualpipev", "gpt-1f1b-4"])
def test_measured_timeline_holds_every_planned_action(runs, name):
    plan, measured = runs[name]
    for rank, row in enumerate(measured.timeline):
        labels = sorted(m.label for m in row if m.lane == "compute")
        planned = sorted(str(a) for cell in plan.schedule.orders[rank] for a in cell.atoms)
        assert labels == planned
        assert all(0 <= m.start <= m.end for m in row)
    assert len(measured.step_seconds) == 2 and measured.step_time > 0


def test_launch_example_trains():
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "launch_train.py"
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "step 5: loss" in done.stdout
