"""One torchrun worker: run plans' training steps on this rank and record what happened.

Launched by `parplan.runtime.launch` as `torchrun … -m parplan.runtime.worker PLAN… --out DIR`.
For each plan (all with the same process count, run one after the other in one process
group) it builds the model from the plan's spec with a fixed seed (every process and the
single-process reference get the same weights), keeps this process's stages, and runs
`--steps` steps of PyTorch's `_PipelineScheduleRuntime` on the plan's exported schedule,
followed by an SGD update each. A plan with expert-parallel degree e > 1 runs as e
replicas of its pipeline (parplan.runtime.replicas: layout, data split, gradient mean),
its MoEs split over each pipeline rank's replicas (parplan.runtime.expert_parallel).
A weight read by several stages has a copy on each; their gradients are summed after
the schedule, before the replica mean and the update (parplan.runtime.tied).
It saves, per plan and process, `rank{r}.pt`:

  losses        the per-micro-batch losses of step 0 (last stage's process; else empty)
  grads         {parameter name: gradient} of this process's stages after step 0 (after
                the replica mean; an expert weight's are its rows only, see expert_slices)
  step_seconds  wall time of every step, barrier to barrier
  timeline      the measured actions of the last step: (lane, label, start, end) in
                seconds from that step's start barrier; lane is "compute" or "comm"
  role          `ProcessRole` fields: rank, replica, pipeline_rank, ep_rank, ep_size, experts
  expert_slices {expert weight name: [first, end)}: the global experts its rows are
  tied_copies   {tied weight name: {stage: (gradient after step 0's sum, value after the last
                step)}} of the copies of tied weights it holds
  device        the torch device it ran on

A rank that raises writes `errors/rank{r}.json` under `--out` before it exits:
{rank, type, message, outer, traceback, time} (time.time() when it was caught), from
which `launch` names the first failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from parplan.errors import ParplanError
from parplan.plan import Plan
from parplan.runtime.expert_parallel import ExpertGroup, expert_slices
from parplan.runtime.export import torch_schedule
from parplan.runtime.replicas import ProcessRole, RunLayout, average_replica_grads, replica_groups, seeded_run
from parplan.runtime.split import tied_weights
from parplan.runtime.stages import stage_graphs, stages_for_rank, token_cross_entropy
from parplan.runtime.tied import sum_tied_grads, tied_groups

__all__ = ["main", "TimelineRecorder", "LEARNING_RATE"]

LEARNING_RATE = 1e-3  # the SGD step's default (`--lr`)


class TimelineRecorder:
    """Wraps a rank's stages' compute calls and PyTorch's p2p waits with wall-clock stamps.

    Compute: `forward_one_chunk` → F, `backward_one_chunk` → B or I, and
    `backward_weight_one_chunk` → W, each labelled `{stage}{kind}{mb}` as in the IR.
    Communication: every wait on received (or, at the end, sent) tensors; a wait is
    labelled after the compute action that follows it.
    """

    def __init__(self, stages: list) -> None:
        self.events: list[tuple[str, str, float, float]] = []
        self.origin = time.perf_counter()
        self._pending_waits: list[int] = []
        for stage in stages:
            self._wrap(stage)

    def reset(self) -> None:
        self.events.clear()
        self._pending_waits.clear()
        self.origin = time.perf_counter()

    def _record(self, lane: str, label: str, start: float, end: float) -> None:
        self.events.append((lane, label, start - self.origin, end - self.origin))

    def _wrap(self, stage) -> None:
        index = stage.stage_index

        def timed(method, label_of):
            def call(*args, **kwargs):
                label = label_of(*args, **kwargs)
                for k in self._pending_waits:
                    lane, _, t0, t1 = self.events[k]
                    self.events[k] = (lane, f"recv for {label}", t0, t1)
                self._pending_waits.clear()
                start = time.perf_counter()
                result = method(*args, **kwargs)
                self._record("compute", label, start, time.perf_counter())
                return result
            return call

        stage.forward_one_chunk = timed(stage.forward_one_chunk, lambda mb, *a, **k: f"{index}F{mb}")
        stage.backward_one_chunk = timed(
            stage.backward_one_chunk,
            lambda mb, *a, full_backward=True, **k: f"{index}{'B' if full_backward else 'I'}{mb}",
        )
        stage.backward_weight_one_chunk = timed(stage.backward_weight_one_chunk, lambda mb, *a, **k: f"{index}W{mb}")

    @contextlib.contextmanager
    def p2p_waits(self):
        """Time PyTorch's `_wait_batch_p2p` (module-level, looked up per call) while running."""
        from torch.distributed.pipelining import schedules

        original = schedules._wait_batch_p2p

        def wait(work):
            start = time.perf_counter()
            original(work)
            self._pending_waits.append(len(self.events))
            self._record("comm", "send drain", start, time.perf_counter())

        schedules._wait_batch_p2p = wait
        try:
            yield
        finally:
            schedules._wait_batch_p2p = original


def _build(plan: Plan, layout: RunLayout, role: ProcessRole, *, seed: int, device: torch.device, groups):
    """This process's stages (MoEs swapped for EP ones with several replicas), its replica's data,
    and the split's tied weights."""
    pipeline_group, replica_group = groups
    model, inputs, target = seeded_run(plan, layout, seed=seed)
    rows = layout.rows(role.replica)
    inputs, target = tuple(x[rows].to(device) for x in inputs), target[rows].to(device)
    expert_group = None
    if layout.num_replicas > 1:
        expert_group = ExpertGroup(group=replica_group, rank=role.replica, size=layout.num_replicas)
    model = model.to(device)
    graphs = stage_graphs(model, plan, inputs)
    stages = stages_for_rank(model, plan, role.pipeline_rank, example_inputs=inputs, device=device,
                             group=pipeline_group, expert_group=expert_group, graphs=graphs)
    return stages, inputs, target, tied_weights(graphs)


def _run_plan(plan: Plan, out: Path, *, steps: int, seed: int, lr: float, device: torch.device) -> None:
    layout = RunLayout.of(plan)
    rank = dist.get_rank()
    if dist.get_world_size() != layout.world_size:
        raise ParplanError(f"the job has {dist.get_world_size()} processes but the plan needs {layout.world_size} "
                           f"({layout.num_pipeline_ranks} pipeline ranks × {layout.num_replicas} replicas)")
    replica, pipeline_rank = layout.position(rank)
    with replica_groups(layout, rank) as groups:
        role = ProcessRole(rank=rank, replica=replica, pipeline_rank=pipeline_rank, ep_rank=replica,
                           ep_size=layout.num_replicas)
        stages, inputs, target, tied = _build(plan, layout, role, seed=seed, device=device, groups=groups)
        named = [(name, p) for st in stages for name, p in st.submod.named_parameters()]
        experts = {name: span for st in stages for name, span in expert_slices(st.submod).items()}
        role = replace(role, experts=tuple(sorted(set(experts.values()))))
        with tied_groups(plan, tied, layout, rank) as tied_sets:

            def reduce() -> None:
                # the tied sum first (across this replica's pipeline ranks), then the replica mean
                sum_tied_grads(stages, tied_sets)
                if layout.num_replicas > 1:
                    average_replica_grads(named, group=groups[1], num_replicas=layout.num_replicas,
                                          expert_names=set(experts))

            record = _train(plan, stages, inputs, target, steps=steps, lr=lr, device=device, reduce=reduce,
                            tied=[t.weight for t in tied_sets])
    out.mkdir(parents=True, exist_ok=True)
    torch.save({**record, "role": asdict(role), "expert_slices": experts, "device": str(device)},
               out / f"rank{rank}.pt")


def _train(plan: Plan, stages: list, inputs: tuple, target: torch.Tensor, *, steps: int, lr: float,
           device: torch.device, reduce, tied: list) -> dict:
    """`steps` steps of the plan's schedule, each followed by `reduce()` (tied sum, replica mean)
    and an SGD update; what was measured, with every copy of the `tied` weights."""
    schedule = torch_schedule(plan, stages, loss_fn=token_cross_entropy)
    params = [p for st in stages for p in st.submod.parameters()]  # a tied weight's copies are distinct
    optimizer = torch.optim.SGD(params, lr=lr)
    recorder = TimelineRecorder(stages)
    has_first = any(st.is_first for st in stages)
    has_last = any(st.is_last for st in stages)

    copies = [(t.name, st) for t in tied for st in stages if st.stage_index in t.stages]
    step_seconds, losses0, grads0, tied_grads0 = [], [], {}, {}
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        losses: list = []
        dist.barrier()
        recorder.reset()
        start = time.perf_counter()
        with recorder.p2p_waits():
            schedule.step(*(inputs if has_first else ()), target=target if has_last else None,
                          losses=losses if has_last else None)
        reduce()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
        step_seconds.append(time.perf_counter() - start)
        if step == 0:
            losses0 = [float(x) for x in losses]
            grads0 = {name: p.grad.detach().cpu().clone() for st in stages for name, p in st.submod.named_parameters()
                      if p.grad is not None}
            tied_grads0 = {(name, st.stage_index): st.submod.get_parameter(name).grad.detach().cpu().clone()
                           for name, st in copies}
        optimizer.step()
    tied_copies: dict[str, dict] = {}
    for name, st in copies:
        value = st.submod.get_parameter(name).detach().cpu().clone()
        tied_copies.setdefault(name, {})[st.stage_index] = (tied_grads0[name, st.stage_index], value)
    return {"losses": losses0, "grads": grads0, "step_seconds": step_seconds, "timeline": list(recorder.events),
            "tied_copies": tied_copies}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parplan-worker")
    parser.add_argument("plans", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        try:
            for k, path in enumerate(args.plans):
                plan = Plan.load(path)
                _run_plan(plan, Path(args.out) / str(k), steps=args.steps, seed=args.seed, lr=args.lr, device=device)
                dist.barrier()
        finally:
            dist.destroy_process_group()
    except Exception as err:
        _record_failure(Path(args.out) / "errors", err)
        raise
    return 0


def _record_failure(folder: Path, err: Exception) -> None:
    """This rank's exception as JSON, for the launcher's report (see the module docstring).

    `type` and `message` are the root cause's: PyTorch re-raises a stage's error as
    `[Stage k] failed to run forward` `from` the original, so the chain of explicit causes
    is followed down; a ParplanError's message already names its cause, so it stops there.
    `outer` is the outermost exception, one line, when it differs from the root.
    """
    root = err
    while root.__cause__ is not None and not isinstance(root, ParplanError):
        root = root.__cause__
    rank = int(os.environ.get("RANK", "0"))
    folder.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "type": type(root).__name__, "message": str(root), "time": time.time(),
              "outer": None if root is err else f"{type(err).__name__}: {' '.join(str(err).split())}",
              "traceback": "".join(traceback.format_exception(err))}
    (folder / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    raise SystemExit(main())
