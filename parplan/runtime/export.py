"""Export to torch.distributed.pipelining: compute-only CSV, PyTorch's checks, a live schedule.

PyTorch's `_PipelineScheduleRuntime` (what torchtitan's `pipeline_parallel_schedule_csv`
loads) runs one chain of stages 0 … S−1 with any stage→rank map it can infer from the
CSV (loop, V, or any other one-stage-one-rank map). DualPipe's two chains cannot be
expressed; exporting one fails and names DualPipeV, which has DualPipe's per-rank
timeline on one V-shaped chain.

Overlapped F&B cells are lowered to their parts, F first: PyTorch 2.13's `_add_send_recv`
accepts only plain actions, and its runtime executes a cell's sub-actions one after the
other in the listed order anyway, so the lowered CSV runs exactly what the cell would.
The real overlap (two streams, one kernel hiding the other's all-to-all) needs a custom
`OVERLAP_F_B` function and is outside this exporter.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from parplan.errors import ParplanError
from parplan.schedule.ir import Schedule

if TYPE_CHECKING:
    from parplan.plan import Plan

__all__ = ["lower_overlap_cells", "torch_csv", "check_torch_csv", "torch_schedule"]


def lower_overlap_cells(schedule: Schedule) -> Schedule:
    """The same order with each `(F;B)OVERLAP_F_B` cell replaced by its parts, in order."""
    orders = tuple(tuple(a for cell in order for a in cell.atoms) for order in schedule.orders)
    return replace(schedule, orders=orders)


def torch_csv(schedule: Schedule) -> str:
    """PyTorch's compute-only CSV of `schedule`: one row per rank, one plain action per cell."""
    schedule.require_one_chain()
    return lower_overlap_cells(schedule).to_csv()


class _CheckStage:
    """The attributes `PipelineScheduleMulti.__init__` reads from a stage, and nothing else."""

    def __init__(self, num_stages: int, num_ranks: int) -> None:
        self.num_stages = num_stages
        self.group_size = num_ranks
        self.group_rank = 0
        self.stage_index_to_group_rank: dict[int, int] = {}


def check_torch_csv(text: str, *, num_ranks: int, num_stages: int, num_microbatches: int) -> dict[int, list]:
    """Load `text` with `_PipelineScheduleRuntime._load_csv` and dry-run it; return the comm order.

    `_load_csv` runs PyTorch's `_validate_schedule` (counts and F<B<W order per stage,
    one rank per stage) and lowers the schedule (`_add_send_recv`, reduce-grad);
    `_simulate_comms_compute` then raises if the lowered order deadlocks.
    """
    from torch.distributed.pipelining import schedules as ts

    _SIMULATED = {ts.F, ts.I, ts.W, ts.B, ts.SEND_F, ts.RECV_F, ts.SEND_B, ts.RECV_B}
    runtime = ts._PipelineScheduleRuntime(
        [_CheckStage(num_stages, num_ranks)], num_microbatches, loss_fn=lambda out, tgt: out.sum(),
    )
    fd, path = tempfile.mkstemp(suffix=".csv", prefix="parplan-check-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        try:
            runtime._load_csv(path, format="compute_only")
            # The dry run knows compute and send/recv only; FSDP's UNSHARD/RESHARD and the
            # final REDUCE_GRAD are no-ops for its readiness rules, so they are left out.
            order = {r: [a for a in acts if a.computation_type in _SIMULATED] for r, acts in
                     runtime.pipeline_order_with_comms.items()}
            ts._simulate_comms_compute(order, runtime.stage_index_to_group_rank.__getitem__, num_stages)
        except (AssertionError, RuntimeError, ValueError) as err:
            raise ParplanError(f"PyTorch rejects the exported schedule: {err}") from err
    finally:
        os.unlink(path)
    return runtime.pipeline_order_with_comms


def torch_schedule(plan: "Plan", stages: list, *, loss_fn: Callable | None = None, scale_grads: bool = True):
    """A `_PipelineScheduleRuntime` running `plan`'s schedule on this rank's `PipelineStage`s.

    Call it on every rank with that rank's stages (see `parplan.stages_for_rank`) inside
    an initialised process group; then `schedule.step(...)` as with any PyTorch schedule.
    `scale_grads=True` divides gradients by the micro-batch count: a mean loss per
    micro-batch then gives the gradients of the whole batch's mean loss.
    """
    from torch.distributed.pipelining import schedules as ts

    if plan.mode != "train" and loss_fn is not None:
        raise ParplanError("an inference plan runs forwards only; pass no loss_fn")
    if not stages:
        raise ParplanError("this rank has no stages; every rank of a plan holds at least one stage")
    text = torch_csv(plan.schedule)
    runtime = ts._PipelineScheduleRuntime(stages, plan.num_microbatches, loss_fn=loss_fn, scale_grads=scale_grads)
    fd, path = tempfile.mkstemp(suffix=".csv", prefix="parplan-schedule-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        runtime._load_csv(path, format="compute_only")
    finally:
        os.unlink(path)
    return runtime
