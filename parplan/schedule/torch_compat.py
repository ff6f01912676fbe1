"""Bridges to torch.distributed.pipelining's schedule IR (imported lazily: torch is heavy).

PyTorch serves as an independent reference: its `_validate_schedule`,
`_add_send_recv` and `_simulate_comms_compute` check our orders, and its compute-only
CSV is what `_PipelineScheduleRuntime` (and torchtitan) load.
"""

from __future__ import annotations

from parplan.schedule.ir import Action, Schedule

__all__ = ["to_torch_order", "from_torch_order", "check_with_torch"]


def _torch_action(action: Action):
    from torch.distributed.pipelining.schedules import _Action, _ComputationType

    if action.sub_actions:
        subs = tuple(_torch_action(a) for a in action.sub_actions)
        return _Action(-1, _ComputationType.OVERLAP_F_B, None, subs)
    return _Action(action.stage, _ComputationType.from_str(action.kind.value), action.microbatch)


def to_torch_order(schedule: Schedule, *, expand_overlap: bool = False) -> dict[int, list]:
    """rank → list of torch `_Action`; `expand_overlap` lowers F&B cells to their parts in order.

    PyTorch 2.13's `_add_send_recv` and `_validate_schedule` take only plain actions, so
    cells are expanded (F first, then the backward) before those passes.
    """
    schedule.require_one_chain()
    out = {}
    for r, order in enumerate(schedule.orders):
        actions = []
        for a in order:
            parts = a.atoms if expand_overlap else (a,)
            actions.extend(_torch_action(p) for p in parts)
        out[r] = actions
    return out


def from_torch_order(order: list, *, rank: int | None = None) -> list[Action]:
    """Compute actions of one rank's torch order (idle steps and comm/FSDP actions dropped)."""
    return [Action.parse(str(a)) for a in order if a is not None and a.is_compute_op]


def check_with_torch(schedule: Schedule) -> None:
    """Run PyTorch's validator and its deadlock simulation on the (cell-expanded) order."""
    from torch.distributed.pipelining import schedules as ts

    schedule.require_one_chain()
    actions = to_torch_order(schedule, expand_overlap=True)
    ts._validate_schedule(actions, schedule.num_ranks, schedule.num_stages, schedule.microbatches_per_chain)
    stage_to_rank = schedule.stage_to_rank.__getitem__
    with_comms = ts._add_send_recv(actions, stage_to_rank=stage_to_rank, num_stages=schedule.num_stages)
    ts._simulate_comms_compute(with_comms, stage_to_rank=stage_to_rank, num_stages=schedule.num_stages)
