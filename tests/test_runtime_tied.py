"""Tied weights run: a weight read by two stages has a copy on each, their gradients are summed.

GPT ties `wte` and `lm_head` (the zoo default): stage 0 embeds with the weight, the last
stage projects onto the vocabulary with it. Checked against one process: the loss, every
gradient, each copy's gradient (the sum of both stages' shares) and each copy's value
after one SGD step (initial value − lr × the one-process gradient), on 2 stages over 2
processes, on a V (both copies on one rank: summed locally), on 4 stages over 4 processes,
and with expert-parallel replicas (the sum runs inside each replica's pipeline). Each
process count is launched once.
"""

from __future__ import annotations

import pytest
import torch

from parplan.runtime.chain import load_plan_model, plan_chain
from parplan.runtime.launch import compare_with_reference, reference_step
from parplan.runtime.replicas import RunLayout, seeded_run
from parplan.runtime.split import TiedWeight, default_pieces, export_graph, split_graph, tied_weights
from parplan.runtime.stages import synthetic_batch
from parplan.runtime.worker import LEARNING_RATE

from _launched import launch_each_count, with_ep

GPT = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,dtype=float32"  # tie_embeddings=true by default
MOE = ("mixtral:vocab=64,hidden=16,heads=2,kv_heads=2,intermediate=32,top_k=2,expert_hidden=8,dtype=float32,"
       "layers=2,experts=4,tie_embeddings=true")
TOLERANCE = 1e-5


# ---- the split (one process) ------------------------------------------------------------
def test_each_reading_stage_holds_its_own_copy_of_the_tied_weight():
    torch.manual_seed(0)
    zoo = load_plan_model(GPT, batch=2, seq=8, device="cpu")
    assert zoo.model.lm_head.weight is zoo.model.wte.weight
    inputs, _ = synthetic_batch(zoo.model, zoo.example_inputs, seed=1)
    pieces = default_pieces(zoo.model)  # wte, wpe, h.0 … h.3, ln_f, lm_head
    stages = split_graph(export_graph(zoo.model, inputs), [list(pieces[:3]), list(pieces[3:6]), list(pieces[6:])])
    tied = TiedWeight(name="wte.weight", stages=(0, 2))
    assert tied_weights(stages) == (tied,)
    assert [g.tied for g in stages] == [(tied,), (), (tied,)]
    first, last = (stages[k].module.get_parameter("wte.weight") for k in (0, 2))
    assert first is zoo.model.wte.weight  # the first reader keeps the model's tensor
    assert last is not first and torch.equal(last, first)  # a later reader: its own copy, the same value
    values = inputs
    for stage in stages:
        out = stage.module(*values)
        values = out if isinstance(out, tuple) else (out,)
    torch.testing.assert_close(values[0], zoo.model(*inputs), rtol=0, atol=1e-6)
    # names are the model's own (the tied weight under its first name), each stage holding what it reads
    held = [sorted(n for n, _ in g.module.named_parameters()) for g in stages]
    assert sorted(set(n for names in held for n in names)) == sorted(n for n, _ in zoo.model.named_parameters())
    assert "wte.weight" in held[2] and "lm_head.weight" not in held[2]


def test_a_tied_weight_is_held_by_two_distinct_stages():
    with pytest.raises(Exception, match="two or more distinct stages"):
        TiedWeight(name="wte.weight", stages=(1, 1))


# ---- equivalence under torchrun ---------------------------------------------------------
def _plans() -> dict[int, dict]:
    return {
        2: {"gpt-1f1b-2": plan_chain(GPT, "1f1b", batch=4, seq=8, num_ranks=2, num_microbatches=2),
            "gpt-zb-v-2": plan_chain(GPT, "zb-v", batch=4, seq=8, num_ranks=2, num_microbatches=2)},
        4: {"gpt-1f1b-4": plan_chain(GPT, "1f1b", batch=4, seq=8, num_ranks=4, num_microbatches=4),
            "moe-pp2-ep2": with_ep(plan_chain(MOE, "1f1b", batch=4, seq=8, num_ranks=2, num_microbatches=2), 2)},
    }


@pytest.fixture(scope="module")
def runs() -> dict:
    return launch_each_count(_plans(), steps=1)


# name: (tied weight, the pieces that read it, process count)
CASES = {"gpt-1f1b-2": ("wte.weight", ("wte", "lm_head"), 2), "gpt-zb-v-2": ("wte.weight", ("wte", "lm_head"), 2),
         "gpt-1f1b-4": ("wte.weight", ("wte", "lm_head"), 4), "moe-pp2-ep2": ("embed.weight", ("embed", "lm_head"), 4)}


def _expected_copies(plan, readers: tuple[str, ...], nproc: int) -> list[tuple[int, int]]:
    """(process, stage) of every copy: each stage holding a reading piece, in every replica."""
    stages = sorted({st.index for st in plan.stages for piece in readers if piece in st.pieces})
    ranks = plan.num_ranks
    return sorted((replica * ranks + plan.stages[s].rank, s) for replica in range(nproc // ranks) for s in stages)


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_every_gradient_match_one_process(runs, name):
    plan, measured = runs[name]
    diff = compare_with_reference(measured, reference_step(plan))
    assert diff["loss_diff"] <= TOLERANCE and diff["max_grad_diff"] <= TOLERANCE, diff


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_copy_gets_the_one_process_gradient_and_stays_equal_after_the_step(runs, name):
    plan, measured = runs[name]
    weight, readers, nproc = CASES[name]
    _, grads = reference_step(plan)
    model, _, _ = seeded_run(plan, RunLayout.of(plan), seed=0)
    updated = model.get_parameter(weight).detach() - LEARNING_RATE * grads[weight]  # one SGD step, one process
    copies = measured.tied_copies[weight]
    assert sorted((c.process, c.stage) for c in copies) == _expected_copies(plan, readers, nproc)
    for copy in copies:
        torch.testing.assert_close(copy.grad, grads[weight], rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(copy.value, updated, rtol=0, atol=1e-6)
        assert torch.equal(copy.value, copies[0].value), (copy.process, copy.stage)  # the copies did not drift


def test_the_v_places_both_copies_on_one_rank(runs):
    plan, measured = runs["gpt-zb-v-2"]
    (first, last) = measured.tied_copies["wte.weight"]
    assert (first.process, first.stage) == (0, 0) and (last.process, last.stage) == (0, plan.schedule.num_stages - 1)


def test_the_run_report_names_each_copy(runs):
    from parplan.cli.run import _tied

    _, measured = runs["gpt-1f1b-4"]
    (line,) = _tied(measured)
    assert line == ("tied weight wte.weight: copies on stage 0 on process 0, stage 3 on process 3; gradients summed "
                    "before each update; copies after the last step differ by at most 0")
