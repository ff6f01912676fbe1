"""The schedule IR: text, CSV and JSON forms round-trip and match PyTorch's spelling."""

import pytest

from parplan.baselines import BASELINES, build_baseline
from parplan.errors import ParplanError
from parplan.schedule.ir import Action, Kind, Schedule


@pytest.mark.parametrize("text", ["2F0", "7I3", "7W3", "1B4", "12F105", "(0F7;7B3)OVERLAP_F_B", "(3F1;4I0)OVERLAP_F_B"])
def test_action_text_round_trips(text):
    assert str(Action.parse(text)) == text


def test_overlap_cell_holds_its_parts():
    cell = Action.parse("(0F7;7B3)OVERLAP_F_B")
    assert cell.kind is Kind.OVERLAP_F_B
    assert cell.atoms == (Action(0, Kind.F, 7), Action(7, Kind.B, 3))


@pytest.mark.parametrize("bad", ["", "F0", "2X0", "2F", "(0F7)OVERLAP_F_B", "(0F7;7B3)OVERLAP", "2 F 0"])
def test_malformed_actions_are_rejected_with_the_text(bad):
    with pytest.raises(ParplanError, match="malformed"):
        Action.parse(bad)


def test_our_text_equals_torch_text():
    from parplan.schedule.torch_compat import to_torch_order

    schedule = build_baseline("dualpipev", 4, 10)
    torch_order = to_torch_order(schedule)
    for r, order in enumerate(schedule.orders):
        assert [str(a) for a in torch_order[r]] == [str(a) for a in order]


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "dualpipe"])
def test_csv_round_trip(name):
    schedule = build_baseline(name, 4, 8)
    back = Schedule.from_csv(schedule.to_csv(), name=name)
    assert back.orders == schedule.orders
    assert back.stage_to_rank == schedule.stage_to_rank
    assert back.microbatches_per_chain == schedule.microbatches_per_chain


@pytest.mark.parametrize("name", BASELINES)
def test_json_round_trip(name):
    schedule = build_baseline(name, 4, 8)
    assert Schedule.from_json(schedule.to_json()) == schedule


def test_csv_loads_into_torch_runtime_format(tmp_path):
    """PyTorch's own CSV loader parses what we write (cells and all)."""
    from torch.distributed.pipelining.schedules import _Action

    text = build_baseline("dualpipev", 2, 4).to_csv()
    for row in text.splitlines():
        for cell in row.split(","):
            parsed = _Action.from_str(cell)
            assert str(parsed) == cell


def test_dualpipe_cannot_be_written_as_torch_csv():
    with pytest.raises(ParplanError, match="dualpipev"):
        build_baseline("dualpipe", 4, 8).to_csv()


def test_json_version_mismatch_is_refused():
    data = build_baseline("1f1b", 2, 2).to_dict()
    data["version"] = 99
    with pytest.raises(ParplanError, match="version 99"):
        Schedule.from_dict(data)


def test_csv_with_a_stage_on_two_ranks_is_refused():
    with pytest.raises(ParplanError, match="stage 0 appears on ranks 0 and 1"):
        Schedule.from_csv("0F0,0B0\n0F1,0B1\n")
