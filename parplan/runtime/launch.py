"""Launch plans under torchrun, collect what the ranks measured, and the single-process reference.

`launch` starts one `torchrun --standalone` job (gloo on CPU, NCCL with CUDA) that runs
the given plans one after the other and returns each plan's `Measured` result. A job
that outlives `timeout_s` is killed and reported, so a hang fails instead of blocking.
Plans are checked against their models before the job starts (`check_runnable`); a rank
that raises anyway is reported as `rank R failed: Type: message` (`WorkerFailure`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from parplan.errors import ParplanError
from parplan.plan import Plan
from parplan.runtime.chain import load_plan_model
from parplan.runtime.replicas import ProcessRole, RunLayout, seeded_run
from parplan.runtime.stages import stage_graphs, token_cross_entropy

__all__ = ["Measured", "MeasuredAction", "TiedCopy", "WorkerFailure", "launch", "reference_step", "compare_with_reference",
           "check_runnable"]


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasuredAction:
    rank: int
    lane: str  # "compute" or "comm"
    label: str  # IR text such as "2F0", or "recv for 2F0"
    start: float  # seconds from the step's start barrier
    end: float


@dataclass(frozen=True, kw_only=True, slots=True)
class TiedCopy:
    """One copy of a tied weight (parplan.runtime.tied) as a run left it."""

    process: int  # global rank
    stage: int
    grad: torch.Tensor  # after step 0's tied sum (and replica mean), before its update
    value: torch.Tensor  # after the last step's update


@dataclass(frozen=True, kw_only=True, slots=True)
class Measured:
    """What one plan's run measured: step 0's losses and gradients, step times, the last step's timeline.

    With several replicas (expert parallelism, parplan.runtime.replicas) `losses` are every
    replica's, replica by replica; `grads` are whole tensors named as in the model (an
    expert weight put together from its EP ranks' rows); `timeline` is replica 0's, one
    row per pipeline rank (the other replicas run the same orders); `processes` says what
    each process was. `tied_copies` holds every copy of each tied weight (parplan.runtime.tied),
    by process then stage: its step-0 gradient and its value after the last step.
    """

    losses: tuple[float, ...]
    grads: dict[str, torch.Tensor]
    step_seconds: tuple[float, ...]  # per step, rank 0's barrier-to-barrier wall time
    timeline: tuple[tuple[MeasuredAction, ...], ...]  # per pipeline rank (of replica 0), of the last step
    device: str
    processes: tuple[ProcessRole, ...] = ()  # by global rank
    tied_copies: dict[str, tuple[TiedCopy, ...]] = field(default_factory=dict)

    @property
    def step_time(self) -> float:
        """Median step time, leaving out step 0 (shape inference, allocator warm-up) when there are more."""
        steady = self.step_seconds[1:] or self.step_seconds
        return statistics.median(steady)

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)


def check_runnable(plan: Plan, nproc: int) -> None:
    """Everything that can be checked before a process starts, on a meta-device model.

    The process count (pipeline ranks × the expert-parallel degree), one chain, a training
    plan, then against the model built from the plan's spec: expert parallelism (MoE layers
    whose experts the degree divides) and the runtime's own split (`stage_graphs`:
    fingerprint, `check_pieces`, data-flow order), run here exactly as every
    process will run it.
    """
    layout = RunLayout.of(plan)
    if nproc != layout.world_size:
        if layout.num_replicas == 1:
            raise ParplanError(f"--nproc {nproc} but the plan has {plan.num_ranks} ranks: a run starts one process "
                               f"per plan rank; pass --nproc {plan.num_ranks}")
        raise ParplanError(
            f"--nproc {nproc} but the plan has {plan.num_ranks} pipeline rank{'s' * (plan.num_ranks != 1)} × "
            f"expert-parallel degree "
            f"{layout.num_replicas} = {layout.world_size} processes: an EP plan runs {layout.num_replicas} replicas "
            f"of its pipeline, one process per pipeline rank each; pass --nproc {layout.world_size}")
    idle = [r for r in range(plan.num_ranks) if not plan.stages_of_rank(r)]
    if idle:
        raise ParplanError(f"plan ranks {idle} hold no stage: every rank of a run must hold one; "
                           f"regenerate the plan with fewer ranks")
    from parplan.runtime.export import torch_csv

    torch_csv(plan.schedule)  # raises for DualPipe's two chains
    if plan.mode != "train":
        raise ParplanError("parplan run executes training plans; this plan's mode is 'inference'")
    zoo = load_plan_model(plan.model.spec, batch=plan.model.batch, seq=plan.model.seq)
    if layout.num_replicas > 1:
        from parplan.runtime.expert_parallel import check_expert_parallel

        check_expert_parallel(zoo.model, layout.num_replicas)
    stage_graphs(zoo.model, plan, zoo.example_inputs)


class WorkerFailure(ParplanError):
    """A rank raised during a run: the message names the first failure and the exit status.

    `tracebacks` holds every failed rank's traceback, also saved in the file `log`.
    """

    def __init__(self, message: str, *, tracebacks: str, log: str) -> None:
        super().__init__(message)
        self.tracebacks = tracebacks
        self.log = log


def launch(plans: list[Plan], *, nproc: int, steps: int = 3, seed: int = 0, timeout_s: float = 300.0,
           workdir: str | None = None) -> list[Measured]:
    """Run `plans` (same rank count) in one torchrun job; one `Measured` per plan.

    Every plan is checked (`check_runnable`) before the job starts. When a rank raises,
    the error is a `WorkerFailure` naming the first rank that failed (by time).
    """
    for plan in plans:
        check_runnable(plan, nproc)
    with tempfile.TemporaryDirectory(prefix="parplan-run-", dir=workdir) as tmp:
        paths = []
        for k, plan in enumerate(plans):
            paths.append(str(Path(tmp) / f"plan{k}.json"))
            plan.save(paths[-1])
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "parplan.runtime.worker", *paths, "--out", str(out), "--steps", str(steps), "--seed", str(seed)]
        # The children inherit this environment (PYTHONPATH included), so they import this parplan.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        done = _torchrun(cmd, env, timeout_s)
        if done.returncode != 0:
            raise _failure(out / "errors", done.returncode, done.stdout + done.stderr, workdir=workdir)
        return [_collect(out / str(k), nproc) for k in range(len(plans))]


def _torchrun(cmd: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    """The torchrun job, run to its end; a job past `timeout_s` is killed and reported."""
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-3000:] if isinstance(err.stdout, bytes) else (err.stdout or "")[-3000:]
        raise ParplanError(f"the torchrun job did not finish within {timeout_s:.0f}s (a hang?); "
                           f"output tail:\n{tail}") from None


def _failure(errors: Path, status: int, output: str, *, workdir: str | None) -> ParplanError:
    """The first failing rank's exception, by the time it was caught (then by rank), and the exit status.

    Ranks that the worker's error files do not cover (killed, or failed before Python ran
    the worker) leave only torchrun's output: the first traceback in it is reported.
    """
    records = []
    for path in sorted(errors.glob("rank*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # a rank killed while writing it: torchrun's output still has the rest
            continue
    if not records:
        return ParplanError(f"the torchrun job failed with exit status {status} and no rank reported an "
                            f"exception:\n{_first_traceback(output)}")
    first = min(records, key=lambda r: (r["time"], r["rank"]))
    tracebacks = "\n".join(f"---- rank {r['rank']}: {r['type']} ----\n{r['traceback']}"
                           for r in sorted(records, key=lambda r: r["rank"]))
    handle, log = tempfile.mkstemp(prefix="parplan-run-", suffix="-errors.log", dir=workdir)
    with os.fdopen(handle, "w") as f:
        f.write(f"{tracebacks}\n---- torchrun output ----\n{output}")
    later = sorted(r["rank"] for r in records if r is not first)
    message = first["message"] if len(first["message"]) <= 2000 else first["message"][:1997] + "..."
    outer = first.get("outer")
    if outer:
        message += f"\n(raised as {outer[:297] + '...' if len(outer) > 300 else outer})"
    return WorkerFailure(
        f"rank {first['rank']} failed: {first['type']}: {message}\n"
        f"the torchrun job exited with status {status}"
        + (f" (ranks {later} failed after rank {first['rank']})" if later else "")
        + f"; every failed rank's traceback is in {log}",
        tracebacks=tracebacks, log=log)


def _first_traceback(log: str, limit: int = 4000) -> str:
    """The first rank's traceback (the root cause), without caret lines, else the log's tail."""
    lines = [ln for ln in log.splitlines() if not ln.strip(" []rank0123456789:").startswith("^")]
    starts = [k for k, ln in enumerate(lines) if "Traceback (most recent call last)" in ln]
    if not starts:
        return "\n".join(lines)[-limit:]
    text = "\n".join(lines[starts[0]:])
    return text[:limit]


def _collect(folder: Path, nproc: int) -> Measured:
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
    roles = tuple(ProcessRole(**{**d["role"], "experts": tuple(map(tuple, d["role"]["experts"]))}) for d in ranks)
    first_replica = [d for d, role in zip(ranks, roles) if role.replica == 0]
    return Measured(
        losses=tuple(x for d in ranks for x in d["losses"]),  # one process per replica has them
        grads=_whole_grads(ranks, roles),
        step_seconds=tuple(ranks[0]["step_seconds"]),
        timeline=tuple(
            tuple(MeasuredAction(rank=r, lane=lane, label=label, start=t0, end=t1)
                  for lane, label, t0, t1 in data["timeline"])
            for r, data in enumerate(first_replica)
        ),
        device=ranks[0]["device"],
        processes=roles,
        tied_copies=_tied_copies(ranks),
    )


def _tied_copies(ranks: list[dict]) -> dict[str, tuple[TiedCopy, ...]]:
    copies: dict[str, list[TiedCopy]] = {}
    for r, data in enumerate(ranks):
        for name, by_stage in data["tied_copies"].items():
            copies.setdefault(name, []).extend(TiedCopy(process=r, stage=stage, grad=grad, value=value)
                                               for stage, (grad, value) in sorted(by_stage.items()))
    return {name: tuple(parts) for name, parts in sorted(copies.items())}


def _whole_grads(ranks: list[dict], roles: tuple[ProcessRole, ...]) -> dict[str, torch.Tensor]:
    """Every parameter's gradient, whole: non-expert ones from replica 0 (all replicas hold the
    same after the mean), each expert weight stacked from its EP ranks' rows in expert order."""
    grads: dict[str, torch.Tensor] = {}
    rows: dict[str, list[tuple[int, int, torch.Tensor]]] = {}
    for data, role in zip(ranks, roles):
        for name, grad in data["grads"].items():
            if name in data["expert_slices"]:
                rows.setdefault(name, []).append((*data["expert_slices"][name], grad))
            elif role.replica == 0:
                grads[name] = grad
    for name, parts in rows.items():
        parts.sort(key=lambda part: part[0])
        starts, ends = [a for a, _, _ in parts], [b for _, b, _ in parts]
        assert starts == [0] + ends[:-1] and all(g.shape[0] == b - a for a, b, g in parts), (name, starts, ends)
        grads[name] = torch.cat([g for _, _, g in parts])
    return grads


def reference_step(plan: Plan, *, seed: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one whole-batch step in one process, same weights and data as `launch`.

    The batch is every replica's rows together (parplan.runtime.replicas), in one process.
    """
    model, inputs, target = seeded_run(plan, RunLayout.of(plan), seed=seed)
    model.train()
    loss = token_cross_entropy(model(*inputs), target)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def compare_with_reference(measured: Measured, reference: tuple[float, dict[str, torch.Tensor]]) -> dict:
    """Largest absolute differences of the loss and of every gradient (names must match exactly)."""
    loss, grads = reference
    missing = sorted(set(grads) ^ set(measured.grads))
    if missing:
        raise ParplanError(f"pipeline and reference gradients differ in parameters {missing[:5]}")
    worst = max(grads, key=lambda n: float((grads[n] - measured.grads[n]).abs().max()))
    return {
        "loss_diff": abs(measured.loss - loss),
        "max_grad_diff": float((grads[worst] - measured.grads[worst]).abs().max()),
        "worst_parameter": worst,
        "num_parameters": len(grads),
    }
