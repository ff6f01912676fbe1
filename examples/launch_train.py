"""Train a small GPT with a parplan plan under torchrun, on CPU with gloo.

    python examples/launch_train.py                      # re-launches itself under torchrun, 2 ranks
    torchrun --standalone --nproc-per-node 2 examples/launch_train.py

Every rank makes the same chain plan (ZB-V: two stages per rank in a V), keeps its own
stage modules split from the traced model, and runs PyTorch's pipeline runtime on the
plan's exported schedule. GPT ties its embedding and output weights (the zoo default):
the first and last stage each hold a copy, and `sum_tied_grads` adds their gradients
before every update. The last stage's rank asserts that the loss went down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SPEC = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=16,dtype=float32"  # tied embeddings
BATCH, SEQ, MICROBATCHES, STEPS = 8, 16, 4, 6


def train() -> None:
    import torch
    import torch.distributed as dist

    from parplan.plan import Plan
    from parplan.runtime import (RunLayout, load_plan_model, plan_chain, stage_graphs, stages_for_rank,
                                 sum_tied_grads, tied_groups, tied_weights, torch_schedule)
    from parplan.runtime.stages import synthetic_batch, token_cross_entropy

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # Plan (the same on every rank), and a save/load round trip as a launcher would do it.
    plan = plan_chain(SPEC, "zb-v", batch=BATCH, seq=SEQ, num_ranks=world, num_microbatches=MICROBATCHES)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "plan.json")
        plan.save(path)
        assert Plan.load(path) == plan

    # The same weights on every rank: seed, then build the whole model and keep this rank's stages.
    torch.manual_seed(0)
    zoo = load_plan_model(SPEC, batch=BATCH, seq=SEQ, device="cpu")
    graphs = stage_graphs(zoo.model, plan, zoo.example_inputs)
    stages = stages_for_rank(zoo.model, plan, rank, example_inputs=zoo.example_inputs, graphs=graphs)
    schedule = torch_schedule(plan, stages, loss_fn=token_cross_entropy)
    optimizer = torch.optim.SGD([p for s in stages for p in s.submod.parameters()], lr=0.1)
    inputs, target = synthetic_batch(zoo.model, zoo.example_inputs, seed=1)
    has_first = any(s.is_first for s in stages)
    has_last = any(s.is_last for s in stages)

    history = []
    # One process group per tied weight over the ranks holding its copies (here both copies
    # are on rank 0, the V's first and last stage: summed locally, no group needed).
    with tied_groups(plan, tied_weights(graphs), RunLayout.of(plan), rank) as tied:
        for step in range(STEPS):
            optimizer.zero_grad()
            losses: list = []
            schedule.step(*(inputs if has_first else ()), target=target if has_last else None,
                          losses=losses if has_last else None)
            sum_tied_grads(stages, tied)  # every copy gets the whole model's gradient
            optimizer.step()
            if has_last:
                history.append(sum(float(x) for x in losses) / len(losses))
                print(f"rank {rank} step {step}: loss {history[-1]:.4f}", flush=True)
    if has_last:
        assert history[-1] < history[0], f"the loss did not go down: {history}"
    for entry in tied:  # the copies trained in step
        copies = [s.submod.get_parameter(entry.weight.name) for s in stages if s.stage_index in entry.weight.stages]
        assert all(torch.equal(c, copies[0]) for c in copies), f"copies of {entry.weight.name} drifted apart"
    dist.destroy_process_group()


def relaunch() -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300).returncode


if __name__ == "__main__":
    if "RANK" in os.environ:
        train()
    else:
        sys.exit(relaunch())
