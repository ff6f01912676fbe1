"""The placement-family registry: one source for planner, MIP and baselines."""

from __future__ import annotations

import pytest

from parplan.baselines import build_baseline
from parplan.errors import ParplanError
from parplan.mip.api import WARM_STARTS
from parplan.mip.problem import num_model_stages, placement_skeleton
from parplan.planner import partition
from parplan.schedule.placement import FAMILIES, PLACEMENTS, family

# Every expert schedule belongs to exactly one family.
FAMILY_OF = {name: f for f in FAMILIES.values() for name in f.schedules}


@pytest.mark.parametrize("n", range(2, 9))
@pytest.mark.parametrize("name", sorted(FAMILY_OF))
def test_registry_maps_agree_with_every_baseline(name, n):
    if name == "dualpipe" and n % 2:
        pytest.skip("dualpipe needs an even rank count")
    schedule = build_baseline(name, n, 4 * n)  # M = 4N: within every baseline's preconditions
    fam = FAMILY_OF[name]
    assert schedule.stage_to_rank == fam.stage_to_rank(n)
    assert schedule.chains == fam.chains(n)
    assert schedule.model_stage == fam.model_stage(n)
    assert schedule.num_model_stages == fam.num_stages(n) == num_model_stages(fam.name, n)
    for m in range(fam.num_stages(n)):  # every rank computing model stage m, once per copy
        ranks = [schedule.stage_to_rank[s] for s in range(schedule.num_stages) if schedule.model_stage[s] == m]
        assert fam.ranks_of_stage(m, n) == tuple(ranks)


@pytest.mark.parametrize("n", range(2, 9))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_mip_skeleton_is_the_registry_placement(placement, n):
    if placement == "dualpipe" and n % 2:
        with pytest.raises(ParplanError, match="even number of ranks"):
            placement_skeleton(placement, n, 8)
        return
    sk = placement_skeleton(placement, n, 8)
    fam = FAMILIES[placement]
    assert (sk.stage_to_rank, sk.chains, sk.model_stage) == (fam.stage_to_rank(n), fam.chains(n), fam.model_stage(n))
    assert sk.total_microbatches == 8


def test_warm_starts_planner_families_and_baselines_are_one_table():
    assert WARM_STARTS == {name: f.schedules for name, f in FAMILIES.items()}
    assert partition.FAMILIES is FAMILIES and partition.Family is type(FAMILIES["chain"])
    assert sorted(FAMILY_OF) == sorted(n for f in FAMILIES.values() for n in f.schedules)  # no schedule twice


def test_interleaved_with_v_chunks_uses_the_loop_map():
    schedule = build_baseline("interleaved-1f1b", 3, 6, num_chunks=3)
    assert schedule.stage_to_rank == FAMILIES["loop"].stage_to_rank(3, num_chunks=3) == (0, 1, 2) * 3


def test_unknown_placement_and_chunks_are_user_errors():
    with pytest.raises(ParplanError, match="placement 'ring' is unknown"):
        family("ring")
    with pytest.raises(ParplanError, match="placement 'loop'"):
        FAMILIES["v"].stage_to_rank(4, num_chunks=3)
