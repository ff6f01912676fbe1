"""Expert parallelism that runs: MoE stages route for real, EP plans match one process, bad EP plans exit 2.

An EP plan is a chain plan with `solver["planning"]["expert_parallel"]` set (what the
planner writes). It runs as e replicas of its pipeline (parplan.runtime.replicas); the
reference is one process on all replicas' rows. Each process count is launched once.
"""

from __future__ import annotations

import json

import pytest
import torch

from parplan.cli import main
from parplan.errors import ParplanError
from parplan.runtime import launch as launch_module
from parplan.runtime.chain import load_plan_model, plan_chain
from parplan.runtime.expert_parallel import ExpertGroup, ExpertParallelMoE, expert_slices, to_expert_parallel
from parplan.runtime.launch import compare_with_reference, reference_step
from parplan.runtime.split import default_pieces, export_graph, split_graph
from parplan.runtime.stages import synthetic_batch
from parplan.zoo.layers import MoE

from _launched import launch_each_count, with_ep

_TINY = "mixtral:vocab=64,hidden=16,heads=2,kv_heads=2,intermediate=32,top_k=2,expert_hidden=8,dtype=float32"
SHARED = f"{_TINY},layers=2,experts=4,shared_experts=1"  # routed experts plus one shared expert
THREE = f"{_TINY},layers=3,experts=4"
EIGHT = f"{_TINY},layers=2,experts=8"
GPT = "gpt:hidden=32,heads=2,layers=2,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32"
# zb-v places stages 0, 3 on rank 0 and 1, 2 on rank 1: MoEs on both pipeline ranks, split I/W backward
V_SPLIT = [["embed", "layers.0"], ["layers.1"], ["layers.2"], ["norm", "lm_head"]]
TOLERANCE = 1e-5


# ---- one process ------------------------------------------------------------------------
def test_moe_stages_route_tokens_for_real():
    torch.manual_seed(0)
    zoo = load_plan_model(SHARED, batch=2, seq=8, device="cpu")
    inputs, _ = synthetic_batch(zoo.model, zoo.example_inputs, seed=1)
    pieces = default_pieces(zoo.model)
    stages = split_graph(export_graph(zoo.model, inputs), [list(pieces[:2]), list(pieces[2:])])
    values = inputs
    for stage in stages:
        out = stage.module(*values)
        values = out if isinstance(out, tuple) else (out,)
    torch.testing.assert_close(values[0], zoo.model(*inputs), rtol=0, atol=0)  # real routing, as the model
    assert stages[1].module.get_submodule("layers.1.mlp") is zoo.model.layers[1].mlp
    assert {m.routing for m in zoo.model.modules() if isinstance(m, MoE)} == {"auto"}  # the stand-in is undone
    names = [n for s in stages for n, _ in s.module.named_parameters()]
    assert sorted(names) == sorted(n for n, _ in zoo.model.named_parameters())


def test_pieces_of_one_moe_on_two_stages_are_refused():
    zoo = load_plan_model(SHARED, batch=2, seq=8)
    first = ["embed", "layers.0.attn_norm", "layers.0.attn", "layers.0.mlp_norm", "layers.0.mlp.router"]
    with pytest.raises(ParplanError, match=r"'layers.0.mlp' are planned on stages \[0, 1\].*keep 'layers.0.mlp'"):
        split_graph(export_graph(zoo.model, zoo.example_inputs),
                    [first, ["layers.0.mlp", "layers.1", "norm", "lm_head"]])


def test_the_swap_keeps_names_and_holds_its_rank_of_experts():
    zoo = load_plan_model(SHARED, batch=2, seq=8, device="cpu")
    full = {n: p.detach().clone() for n, p in zoo.model.named_parameters()}
    router = zoo.model.layers[0].mlp.router
    paths = to_expert_parallel(zoo.model, ExpertGroup(group=None, rank=1, size=2))
    assert paths == ["layers.0.mlp", "layers.1.mlp"]
    moe = zoo.model.layers[0].mlp
    assert isinstance(moe, ExpertParallelMoE) and moe.router is router
    assert set(dict(zoo.model.named_parameters())) == set(full)
    for name, param in zoo.model.named_parameters():
        rows = expert_slices(zoo.model).get(name)
        expected = full[name] if rows is None else full[name][rows[0]:rows[1]]
        assert torch.equal(param.detach(), expected), name
    assert expert_slices(zoo.model)["layers.1.mlp.w_down"] == (2, 4)  # EP rank 1 of 2 holds experts 2, 3 of 4


# ---- equivalence under torchrun ---------------------------------------------------------
def _plans() -> dict[int, dict]:
    return {
        2: {"pp1-ep2": with_ep(plan_chain(SHARED, "1f1b", batch=4, seq=8, num_ranks=1, num_microbatches=2), 2)},
        4: {"pp2-ep2-zb-v": with_ep(plan_chain(THREE, "zb-v", batch=4, seq=8, num_ranks=2, num_microbatches=2,
                                               split=V_SPLIT), 2),
            "pp1-ep4": with_ep(plan_chain(EIGHT, "1f1b", batch=4, seq=8, num_ranks=1, num_microbatches=2), 4)},
    }


@pytest.fixture(scope="module")
def runs() -> dict:
    return launch_each_count(_plans(), steps=1)


CASES = {"pp1-ep2": (1, 2), "pp2-ep2-zb-v": (2, 2), "pp1-ep4": (1, 4)}  # name: (pipeline ranks, EP degree)


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_every_gradient_match_one_process(runs, name):
    plan, measured = runs[name]
    pipeline_ranks, degree = CASES[name]
    _, grads = reference = reference_step(plan)
    diff = compare_with_reference(measured, reference)
    assert diff["loss_diff"] <= TOLERANCE and diff["max_grad_diff"] <= TOLERANCE, diff
    assert len(measured.losses) == degree * plan.num_microbatches  # every replica's micro-batches
    # each process holds its EP rank's experts (one count per model), rows that match the reference's
    expert_weights = [n for n in grads if n.rpartition(".")[2] in ("w_gate", "w_up", "w_down")]
    slices = 0
    for role in measured.processes:
        assert role.rank == role.replica * pipeline_ranks + role.pipeline_rank and role.ep_rank == role.replica
        for first, end in role.experts:
            assert (first, end) == (role.ep_rank * (end - first), (role.ep_rank + 1) * (end - first))
            for weight in expert_weights:
                torch.testing.assert_close(measured.grads[weight][first:end], grads[weight][first:end],
                                           rtol=0, atol=TOLERANCE)
                slices += 1
    assert slices >= degree * len(expert_weights)


def test_the_report_says_what_each_process_was(runs):
    from parplan.cli.run import _replicas

    plan, measured = runs["pp2-ep2-zb-v"]
    lines = _replicas(plan, measured)
    assert lines[0].startswith("expert parallel: 2 replicas of the 2-rank pipeline")
    assert "  process 2: replica 1, pipeline rank 0, EP rank 1 of 2, experts [2, 4)" in lines
    assert len(lines) == 5


# ---- bad EP plans: exit 2 before any process starts ------------------------------------
@pytest.fixture
def no_torchrun(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("torchrun was started for a plan the parent process should have refused")

    monkeypatch.setattr(launch_module, "_torchrun", refuse)


BAD = {
    # name: (model spec, EP degree, --nproc, phrase of the rule and the fix)
    "nproc": (SHARED, 2, 1, "--nproc 1 but the plan has 1 pipeline rank × expert-parallel degree 2 = 2 processes"
                            ": an EP plan runs 2 replicas of its pipeline, one process per pipeline rank each; "
                            "pass --nproc 2"),
    "not-dividing": (SHARED, 3, 3, "expert parallelism 3 does not divide the 4 experts of 'layers.0.mlp'"),
    "no-moe": (GPT, 2, 2, "the plan asks for expert parallelism 2 but GPT has no MoE layers"),
    "not-a-degree": (SHARED, 0, 1, "expert_parallel=0 is not an integer >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_ep_plan_exits_2_before_any_process_starts(case, tmp_path, capsys, no_torchrun):
    spec, degree, nproc, phrase = BAD[case]
    path = tmp_path / "plan.json"
    with_ep(plan_chain(spec, "1f1b", batch=4, seq=8, num_ranks=1, num_microbatches=2), degree).save(path)
    assert json.loads(path.read_text())["solver"]["planning"]["expert_parallel"] == degree
    trace = tmp_path / "trace.json"
    code = main(["run", str(path), "--nproc", str(nproc), "--steps", "1", "--trace", str(trace)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("parplan run: error: ") and phrase in err, err
    assert not trace.exists()
