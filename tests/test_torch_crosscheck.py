"""Our baseline orders against PyTorch 2.13's own schedules, validator and deadlock simulation."""

import pytest

from parplan.baselines import BASELINES, build_baseline
from parplan.errors import ParplanError
from parplan.schedule.torch_compat import check_with_torch, from_torch_order

torch_viz = pytest.importorskip("torch.distributed.pipelining._schedule_visualizer")

# (PyTorch class name, our name, stages per rank)
SAME_SCHEDULES = [
    ("GPipe", "gpipe", None),
    ("Interleaved1F1B", "interleaved-1f1b", 2),
    ("ZBVZeroBubble", "zb-v", 2),
    ("DualPipeV", "dualpipev", 2),
]


def _microbatch_counts(n):
    return sorted({n, n + 1, 2 * n, 2 * n + 2, 3 * n, 4 * n, 20})


def _grid():
    for torch_name, ours, per_rank in SAME_SCHEDULES:
        for n in (2, 4, 8):
            for m in _microbatch_counts(n):
                yield pytest.param(torch_name, ours, per_rank, n, m, id=f"{ours}-N{n}-M{m}")


@pytest.mark.parametrize("torch_name,ours,per_rank,n,m", list(_grid()))
def test_compute_order_equals_pytorch(torch_name, ours, per_rank, n, m):
    try:
        reference = torch_viz.get_schedule_ops(torch_name, n, m, num_stages_per_rank=per_rank)
    except (ValueError, AssertionError):
        # PyTorch rejects this size; then so must we.
        with pytest.raises(ParplanError):
            build_baseline(ours, n, m)
        return
    schedule = build_baseline(ours, n, m)
    for r in range(n):
        assert [str(a) for a in schedule.orders[r]] == [str(a) for a in from_torch_order(reference[r])], f"rank {r}"


def _validation_grid():
    for name in BASELINES:
        if name == "dualpipe":
            continue
        for n in (2, 3, 4, 8):
            for m in sorted({n, 2 * n, 2 * n + 1, 3 * n, 20}):
                yield pytest.param(name, n, m, id=f"{name}-N{n}-M{m}")


@pytest.mark.parametrize("name,n,m", list(_validation_grid()))
def test_pytorch_validates_and_runs_our_order(name, n, m):
    """PyTorch's _validate_schedule passes and _add_send_recv + _simulate_comms_compute do not deadlock."""
    try:
        schedule = build_baseline(name, n, m)
    except ParplanError:
        pytest.skip("size outside this schedule's preconditions")
    check_with_torch(schedule)


def test_pytorch_1f1b_order_is_off_by_one_and_ours_is_not():
    """PyTorch 2.13's visual 1F1B order fails its own validator on the last rank; ours passes it."""
    from torch.distributed.pipelining import schedules as ts

    n, m = 4, 8
    theirs = torch_viz.get_schedule_ops("1F1B", n, m)
    actions = {r: [a for a in theirs[r] if a is not None and a.is_compute_op] for r in range(n)}
    with pytest.raises(Exception):
        ts._validate_schedule(actions, n, n, m)
    check_with_torch(build_baseline("1f1b", n, m))
