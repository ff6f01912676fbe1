"""What the pipeline runtime adds to each action's compute, measured (`parplan calibrate --links`).

`parplan run` executes a schedule with PyTorch's `_PipelineScheduleRuntime`: every action
(F, I, W) goes through the stage's `forward_one_chunk` / `backward_*_one_chunk` (input
preparation, autograd bookkeeping, output checks) and the runtime's own loop (posting
send/recv, bookkeeping per action). None of that is in a stage's compute time. Measured
here on the real runtime: a tiny GPT, whose stages compute in tens of microseconds, runs
a ZB-H1 schedule (F, I and W each a separate action, as the cost model charges them)
under `launch` exactly as `parplan run` runs it, and each action's measured duration
minus its stage's own compute, timed bare in this process (`measure_stage_costs`, one
thread, the same modules) and slowed by the ranks' compute share, is the runtime's overhead
of that action. The median over
every action of the last step is the profile's `action_overhead`.

The step's fixed work (the schedule's set-up before its first action, the gradient
reduction and the barrier after its last) is reported beside it: measured, not charged
(the simulator's step time is the makespan of the actions).

`measure_compute_share` measures what N one-thread ranks computing at once each get of the
rate one of them gets alone: the same GPT block's forward and backward timed in one process,
then in N processes started together. On N ranks sharing C < N cores it is about C / N; on
cores that share execution units (SMT siblings, a VM's vCPUs) or memory bandwidth it is below
1 even when N <= C. The profile's `compute_share` is this measurement.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from parplan.errors import ParplanError

__all__ = ["RuntimeOverhead", "PROBE_MODEL", "measure_runtime_overhead", "SHARE_WORKLOAD", "measure_compute_share"]

# A GPT small enough that its compute is a small fraction of the runtime's per-action cost,
# with enough pieces (wte, wpe, 4 blocks, ln_f, lm_head) for up to 8 pipeline stages.
PROBE_MODEL = "gpt:vocab=64,hidden=32,heads=2,layers=4,max_positions=16,dtype=float32,tie_embeddings=false"
PROBE_SEQ = 16
PROBE_MICROBATCH = 2
PROBE_MICROBATCHES = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeOverhead:
    action_s: float  # median over actions of measured duration − the stage's bare compute
    step_s: float  # the last step's time − the span of its actions (set-up, reduction, barrier)
    num_actions: int
    bare_compute_s: float  # median bare compute of those actions (how small the probe's work was)

    def __post_init__(self) -> None:
        if self.num_actions < 1:
            raise ParplanError("no pipeline action was measured; the runtime probe produced an empty timeline")


def _kind_and_stage(label: str) -> tuple[int, str] | None:
    import re

    m = re.fullmatch(r"(\d+)([FBIW])(\d+)", label)
    return (int(m.group(1)), m.group(2)) if m else None


def measure_runtime_overhead(*, nproc: int, steps: int = 4, compute_share: float = 1.0,
                             timeout_s: float = 300.0) -> RuntimeOverhead:
    """Run the probe model's ZB-H1 plan on `nproc` local ranks and measure what the runtime adds:
    each action's duration minus its bare compute slowed by the ranks' `compute_share`."""
    if not 0 < compute_share <= 1:
        raise ParplanError(f"compute_share {compute_share} must be in (0, 1]")
    from parplan.runtime.chain import plan_chain
    from parplan.runtime.launch import launch
    from parplan.runtime.measure import measure_stage_costs

    plan = plan_chain(PROBE_MODEL, "zb-h1", batch=PROBE_MICROBATCH * PROBE_MICROBATCHES, seq=PROBE_SEQ,
                      num_ranks=nproc, num_microbatches=PROBE_MICROBATCHES)
    (measured,) = launch([plan], nproc=nproc, steps=steps, timeout_s=timeout_s)
    groups = [stage.pieces for stage in plan.stages]
    bare = measure_stage_costs(PROBE_MODEL, groups, batch=PROBE_MICROBATCH, seq=PROBE_SEQ, repeats=20)
    extra, base = [], []
    for row in measured.timeline:
        for action in row:
            parsed = _kind_and_stage(action.label) if action.lane == "compute" else None
            if parsed is None:
                continue
            stage, kind = parsed
            compute = bare.task_time(stage, kind) / compute_share
            extra.append(action.end - action.start - compute)
            base.append(compute)
    span = max((a.end for row in measured.timeline for a in row), default=0.0)
    return RuntimeOverhead(action_s=max(statistics.median(extra), 0.0) if extra else 0.0,
                           step_s=max(measured.step_seconds[-1] - span, 0.0), num_actions=len(extra),
                           bare_compute_s=statistics.median(base) if base else 0.0)


# The work each rank repeats in `measure_compute_share`: a zoo GPT block (fp32), forward and
# backward, [batch, seq, hidden] — the kind of compute a CPU pipeline stage runs — repeated for
# about half a second, long against a scheduler time slice and the processes' staggered starts.
SHARE_WORKLOAD = {"batch": 2, "seq": 128, "hidden": 256, "heads": 4, "repeats": 60}


def _block_seconds(start=None, out=None) -> float:
    """Seconds of `repeats` forward + backward passes of the workload's block, on one thread
    (after a warm-up); with `start` (a barrier) all processes begin together."""
    import time

    import torch

    from parplan.zoo.gpt import Block, GPTConfig

    torch.set_num_threads(1)
    w = SHARE_WORKLOAD
    torch.manual_seed(0)
    block = Block(GPTConfig(hidden=w["hidden"], heads=w["heads"], dtype="float32"))
    x = torch.randn(w["batch"], w["seq"], w["hidden"], requires_grad=True)

    def once() -> None:
        block(x).sum().backward()

    for _ in range(2):
        once()
    if start is not None:
        start.wait()
    began = time.perf_counter()
    for _ in range(w["repeats"]):
        once()
    seconds = time.perf_counter() - began
    if out is not None:
        out.put(seconds)
    return seconds


def measure_compute_share(nproc: int, *, timeout_s: float = 300.0) -> float:
    """The rate each of `nproc` one-thread processes computing together gets, over one alone's
    (at most 1): the median of their times against the lone run's."""
    import multiprocessing

    if nproc < 1:
        raise ParplanError(f"nproc {nproc} must be >= 1")
    ctx = multiprocessing.get_context("spawn")
    alone = ctx.Queue()
    proc = ctx.Process(target=_block_seconds, kwargs={"out": alone})
    proc.start()
    lone = alone.get(timeout=timeout_s)
    proc.join()
    start, out = ctx.Barrier(nproc), ctx.Queue()
    procs = [ctx.Process(target=_block_seconds, kwargs={"start": start, "out": out}) for _ in range(nproc)]
    for p in procs:
        p.start()
    together = [out.get(timeout=timeout_s) for _ in procs]
    for p in procs:
        p.join()
    return min(1.0, lone / statistics.median(together))
