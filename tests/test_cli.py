"""The CLI: tables, JSON, files written whole, and exit status 2 with no file on bad input."""

import json
import subprocess
import sys

import pytest

from parplan.baselines import BASELINES
from parplan.cli import main
from parplan.schedule.ir import Schedule


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_defaults_to_all_eight_baselines_in_json(capsys):
    code, out, _ = run(capsys, "compare", "--ranks", "8", "--microbatches", "20", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["schedule"] for r in rows] == list(BASELINES)
    for row in rows:
        for key in ("schedule", "makespan", "bubble_ratio", "bubble_per_rank", "peak_activations_per_rank",
                    "params_per_rank"):
            assert key in row
        assert len(row["bubble_per_rank"]) == 8
    by_name = {r["schedule"]: r for r in rows}
    assert max(by_name["1f1b"]["bubble_per_rank"]) == pytest.approx(21)  # (N-1)(F+B)
    assert max(by_name["dualpipe"]["bubble_per_rank"]) == pytest.approx(6)  # (N/2-1)(F&B+B-3W)
    assert by_name["dualpipe"]["params_per_rank"] == [2.0] * 8


def test_compare_table_and_gantt_png(capsys, tmp_path):
    chart = tmp_path / "c.png"
    code, out, _ = run(capsys, "compare", "-n", "4", "-m", "8", "--cost", "F=1,I=1.2,W=0.8,C=0.1",
                       "--schedules", "1f1b,zb-h1,dualpipe", "--gantt", str(chart))
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["schedule", "makespan"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_csv_output_round_trips(capsys, tmp_path):
    target = tmp_path / "zbv.csv"
    code, _, _ = run(capsys, "schedule", "zb-v", "--ranks", "4", "--microbatches", "8", "--format", "csv",
                     "-o", str(target))
    assert code == 0
    schedule = Schedule.from_csv(target.read_text())
    assert schedule.num_stages == 8 and schedule.stage_to_rank == (0, 1, 2, 3, 3, 2, 1, 0)


def test_schedule_json_includes_the_simulation(capsys):
    code, out, _ = run(capsys, "schedule", "dualpipe", "-n", "4", "-m", "8", "--format", "json")
    data = json.loads(out)
    assert code == 0 and len(data["chains"]) == 2
    assert data["simulation"]["makespan"] > 0


BAD_INPUT = [
    (["schedule", "dualpipe", "-n", "3", "-m", "8"], "even number of ranks"),
    (["schedule", "dualpipe", "-n", "4", "-m", "7"], "even number of micro-batches"),
    (["schedule", "1f1b", "-n", "4", "-m", "3"], "M >= N"),
    (["schedule", "nope", "-n", "4", "-m", "8"], "unknown schedule 'nope'"),
    (["compare", "-n", "4", "-m", "8", "--cost", "F=-1"], "must be finite and >= 0"),
    (["compare", "-n", "4", "-m", "8", "--cost", "F=1;I=2"], "is not a number"),
    (["compare", "-n", "4", "-m", "8", "--cost", "F1,I=2"], "malformed"),
    (["compare", "-n", "4", "-m", "8", "--cost", "Q=1"], "unknown"),
    (["compare", "-n", "4", "-m", "8", "--schedules", "1f1b,bogus"], "unknown schedule 'bogus'"),
    (["compare", "-n", "4", "-m", "8", "--memory-limit", "lots"], "argument --memory-limit: 'lots' is invalid"),
    (["schedule", "zb-v", "-n", "4", "-m", "8", "--chunks", "3"], "--chunks 3 does not apply"),
    (["schedule", "mip", "-n", "4", "-m", "8", "--effort", "0"], "argument --effort: 0 is invalid"),
    (["compare", "-n", "4", "-m", "8", "--schedules", "mip", "--effort=-3"], "argument --effort: -3 is invalid"),
    (["schedule", "mip", "-n", "4", "-m", "8", "--effort", "hard"], "argument --effort: 'hard' is unknown"),
]

# The planner's flags are checked as they are parsed, its degrees before it traces the model.
PLAN_BAD_INPUT = [
    (["--effort", "0"], "argument --effort: 0 is invalid"),
    (["--effort=-1"], "argument --effort: -1 is invalid"),
    (["--effort", "extreme"], "argument --effort: 'extreme' is unknown; use one of quick, normal, thorough"),
    (["--time-limit", "0"], "argument --time-limit: 0 is invalid"),
    (["--time-limit=-5"], "argument --time-limit: -5 is invalid"),
    (["--pp", "0"], "argument --pp: 0 is invalid"),
    (["--pp=-2"], "argument --pp: -2 is invalid"),
    (["--tp", "16"], "--tp 16 is larger than the 8 GPUs"),
]


@pytest.mark.parametrize("argv,message", PLAN_BAD_INPUT)
def test_plan_bad_budget_or_degree_exits_2_and_writes_nothing(capsys, tmp_path, argv, message):
    target = tmp_path / "plan.json"
    code, out, err = run(capsys, "plan", "gpt:layers=2,hidden=64,heads=2,vocab=128", *argv, "-o", str(target))
    assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,message", BAD_INPUT)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(capsys, tmp_path, argv, message):
    target = tmp_path / "out.png" if argv[0] == "compare" else tmp_path / "out.txt"
    flag = "--gantt" if argv[0] == "compare" else "-o"
    code, out, err = run(capsys, *argv, flag, str(target))
    assert code == 2
    assert message in err
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["compare", "-n", "0", "-m", "8"],
    ["compare", "-n", "4", "-m", "-1"],
    ["compare", "-m", "8"],
    ["schedule", "1f1b", "-n", "4", "-m", "8", "--format", "xml"],
])
def test_argument_errors_exit_2(argv):
    assert main(argv) == 2


def test_missing_output_folder_fails_before_work(capsys, tmp_path):
    code, _, err = run(capsys, "compare", "-n", "4", "-m", "8", "--gantt", str(tmp_path / "no" / "c.png"))
    assert code == 2 and "does not exist" in err


def test_console_script_exit_status():
    result = subprocess.run([sys.executable, "-m", "parplan.cli", "schedule", "dualpipe", "-n", "5", "-m", "10"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "dualpipev" in result.stderr


def test_mip_model_dump(capsys, tmp_path):
    dump = tmp_path / "model.pbtxt"
    code, out, _ = run(capsys, "schedule", "mip", "-n", "2", "-m", "4", "--time-limit", "5", "--dump-model", str(dump))
    assert code == 0 and out.startswith("# mip")
    assert "NoOverlap" in dump.read_text() or "no_overlap" in dump.read_text()


def test_minimise_memory_keeps_the_makespan_and_lowers_the_peak(capsys):
    argv = ["schedule", "mip", "-n", "4", "-m", "8", "--cost", "F=1,I=1.2,W=0.8,C=0.1", "--placement", "dualpipe",
            "--time-limit", "8", "--format", "json"]
    sims = []
    for extra in ([], ["--minimise-memory"]):
        code, out, _ = run(capsys, *argv, *extra)
        assert code == 0
        sims.append(json.loads(out)["simulation"])
    plain, lean = sims
    assert lean["makespan"] == pytest.approx(plain["makespan"])
    assert max(lean["peak_activations_per_rank"]) < max(plain["peak_activations_per_rank"])


def test_schedule_mip_reports_its_status_on_stderr_and_keeps_csv_clean(capsys):
    """Text and CSV outputs are loaded by other tools: the solver's status, bound and notes
    go to stderr (JSON carries them inside)."""
    code, out, err = run(capsys, "schedule", "mip", "-n", "4", "-m", "8", "--cost", "F=1,I=1.2,W=0.8,C=0.1",
                         "--placement", "v", "--time-limit", "10", "--format", "csv")
    assert code == 0
    schedule = Schedule.from_csv(out, name="mip")
    assert schedule.num_ranks == 4 and schedule.stage_to_rank == (0, 1, 2, 3, 3, 2, 1, 0)
    assert "mip: status OPTIMAL, objective 25.8" in err and "placement v" in err
    code, out, err = run(capsys, "schedule", "1f1b", "-n", "4", "-m", "8", "--format", "csv")
    assert code == 0 and err == ""
