"""Exported CSVs load into PyTorch's runtime and pass its validation and deadlock dry run."""

from __future__ import annotations

import csv
import io

import pytest

from parplan.baselines import BASELINES, build_baseline
from parplan.cli import main
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.runtime.chain import plan_chain
from parplan.runtime.export import check_torch_csv, lower_overlap_cells, torch_csv
from parplan.schedule.ir import Kind, Schedule

GPT = "gpt:hidden=32,heads=2,layers=4,vocab=64,max_positions=8,tie_embeddings=false,dtype=float32"
ONE_CHAIN = [n for n in BASELINES if n != "dualpipe"]
GRID = [(1, 3), (2, 4), (3, 7), (4, 8), (4, 10), (5, 12)]


def _buildable(name: str, n: int, m: int) -> Schedule | None:
    try:
        return build_baseline(name, n, m)
    except ParplanError:
        return None  # the builder's own precondition (e.g. interleaved needs m % n == 0)


def _check(schedule: Schedule) -> dict:
    text = torch_csv(schedule)
    return check_torch_csv(text, num_ranks=schedule.num_ranks, num_stages=schedule.num_stages,
                           num_microbatches=schedule.microbatches_per_chain)


@pytest.mark.parametrize("name", ONE_CHAIN)
@pytest.mark.parametrize("n, m", GRID)
def test_every_one_chain_baseline_passes_pytorch(name, n, m):
    schedule = _buildable(name, n, m)
    if schedule is None:
        pytest.skip(f"{name} does not build for N={n}, M={m}")
    with_comms = _check(schedule)
    assert set(with_comms) == set(range(n))


def test_overlap_cells_are_lowered_in_order():
    schedule = build_baseline("dualpipev", 4, 10)
    cells = [a for order in schedule.orders for a in order if a.kind is Kind.OVERLAP_F_B]
    assert cells, "DualPipeV has F&B cells"
    lowered = lower_overlap_cells(schedule)
    for order, low in zip(schedule.orders, lowered.orders):
        assert list(low) == [atom for a in order for atom in a.atoms]
    rows = list(csv.reader(io.StringIO(torch_csv(schedule))))
    assert "OVERLAP_F_B" not in "".join(c for row in rows for c in row)
    assert [len(r) for r in rows] == [len(o) for o in lowered.orders]


def test_dualpipe_export_fails_naming_dualpipev():
    with pytest.raises(ParplanError, match="DualPipeV"):
        torch_csv(build_baseline("dualpipe", 4, 8))


def test_mip_schedule_passes_pytorch():
    pytest.importorskip("parplan.mip", reason="parplan.mip (the MIP scheduler) is not importable")
    from parplan.mip import MipOptions, solve_schedule

    costs = PipelineCosts.uniform(6, f=1, i=1.5, w=0.5, c=0.25)
    for placement in ("v", "loop"):
        result = solve_schedule(num_ranks=3, num_microbatches=6, costs=costs,
                                options=MipOptions(placement=placement, work=1))
        _check(result.schedule)


def test_cli_export_writes_the_checked_csv(tmp_path, capsys):
    plan_path, out = tmp_path / "plan.json", tmp_path / "zbv.csv"
    plan_chain(GPT, "zb-v", batch=8, seq=8, num_ranks=2, num_microbatches=4).save(plan_path)
    assert main(["export", str(plan_path), "--torch-csv", str(out)]) == 0
    assert Schedule.from_csv(out.read_text()).orders == build_baseline("zb-v", 2, 4).orders
    dp_path = tmp_path / "dp.json"
    plan_chain(GPT, "dualpipe", batch=8, seq=8, num_ranks=2, num_microbatches=4).save(dp_path)
    assert main(["export", str(dp_path), "--torch-csv", str(tmp_path / "dp.csv")]) == 2
    assert "DualPipeV" in capsys.readouterr().err
    assert not (tmp_path / "dp.csv").exists()
