"""Progress on stderr: one line per finished phase off a terminal, a live incumbent, bound
and gap on one, nothing with --quiet; written files named; the summary in words; and
the plan the same whether anyone watches or not."""

from __future__ import annotations

import contextlib
import io
import json
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from parplan.cli import main
from parplan.cli import plan as plan_cli
from parplan.cli import progress as progress_cli
from parplan.cli.plan import summary_line
from parplan.cli.progress import ProgressDisplay
from parplan.plan import without_timing
from parplan.planner.bilevel import _mip_notes
from parplan.planner.events import Phase, PlanProgress, Step

TINY = ["plan", "gpt:hidden=64,heads=2,layers=4,vocab=128", "--seq", "32", "-m", "8", "--pp", "4",
        "--effort", "quick"]
PHASE_LINE = re.compile(r"^\s*\d+\.\d s  (screen|boundary moves|upper MIP|lower MIP|memory pass)\b")


class _Recording(ProgressDisplay):
    events: list[PlanProgress] = []

    def __call__(self, event: PlanProgress) -> None:
        type(self).events.append(event)
        super().__call__(event)


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`parplan plan` on a tiny model twice, off a terminal: watched (its events recorded)
    and --quiet."""
    tmp = tmp_path_factory.mktemp("progress")
    shown, quiet = tmp / "shown.json", tmp / "quiet.json"
    chart = tmp / "shown.svg"
    real, plan_cli.ProgressDisplay = plan_cli.ProgressDisplay, _Recording
    try:
        watched = _run_cli([*TINY, "-o", str(shown), "--gantt", str(chart)])
    finally:
        plan_cli.ProgressDisplay = real
    silent = _run_cli([*TINY, "-o", str(quiet), "--quiet"])
    return SimpleNamespace(watched=watched, silent=silent, shown=shown, quiet=quiet, chart=chart,
                           events=list(_Recording.events))


def test_off_a_terminal_one_line_per_finished_phase(runs):
    code, out, err = runs.watched
    assert code == 0 and "parplan: " in out
    lines = [line for line in err.splitlines() if PHASE_LINE.match(line)]
    ends = [e for e in runs.events if e.step is Step.END]
    assert len(lines) == len(ends) and len(ends) == sum(e.step is Step.BEGIN for e in runs.events)
    assert [PHASE_LINE.match(line).group(1) for line in lines] == [e.phase.value for e in ends]
    assert {Phase.SCREEN, Phase.BOUNDARY_MOVES, Phase.UPPER_MIP, Phase.LOWER_MIP, Phase.MEMORY_PASS} <= \
        {e.phase for e in ends}
    assert all(line.startswith("wrote ") for line in err.splitlines() if not PHASE_LINE.match(line)), err
    assert any(e.step is Step.UPDATE and e.phase is Phase.LOWER_MIP and e.bound is not None for e in runs.events)


def test_quiet_prints_no_progress(runs):
    code, _, err = runs.silent
    assert code == 0
    assert err == f"wrote {runs.quiet}\n"


def test_written_files_are_named_on_stderr(runs, tmp_path):
    err = runs.watched[2]
    assert f"wrote {runs.shown}\n" in err and f"wrote {runs.chart}\n" in err
    chart = tmp_path / "c.svg"
    code, _, err = _run_cli(["compare", "-n", "4", "-m", "8", "--schedules", "1f1b,zb-h1", "--gantt", str(chart)])
    assert code == 0 and err == f"wrote {chart}\n"


def test_the_plan_is_the_same_watched_or_not(runs):
    shown, quiet = (without_timing(json.loads(p.read_text())) for p in (runs.shown, runs.quiet))
    assert shown == quiet


def test_a_terminal_shows_incumbent_bound_and_gap():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160, color_system=None)
    subject = "dualpipe PP4×DP2×TP1"
    with ProgressDisplay(console=console) as display:
        display(PlanProgress(phase=Phase.LOWER_MIP, step=Step.BEGIN, subject=subject))
        display(PlanProgress(phase=Phase.LOWER_MIP, step=Step.UPDATE, subject=subject, incumbent=25.5, bound=24.0,
                             gap=0.0588))
        display(PlanProgress(phase=Phase.LOWER_MIP, step=Step.END, subject=subject, message="FEASIBLE, step 25.5"))
    text = buffer.getvalue()
    assert "lower MIP dualpipe PP4×DP2×TP1" in text
    assert "incumbent 25.5  bound 24  gap 5.9%" in text
    assert "lower MIP dualpipe PP4×DP2×TP1: FEASIBLE, step 25.5" in text


def test_a_bound_stays_when_lns_reports_an_incumbent_alone():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160, color_system=None)
    with ProgressDisplay(console=console) as display:
        display(PlanProgress(phase=Phase.LOWER_MIP, step=Step.BEGIN, subject="v"))
        display(PlanProgress(phase=Phase.LOWER_MIP, step=Step.UPDATE, subject="v", incumbent=None, bound=20.0))
        display(PlanProgress(phase=Phase.LOWER_MIP, step=Step.UPDATE, subject="v", incumbent=25.0))
    assert "incumbent 25  bound 20  gap 20.0%" in buffer.getvalue()


def test_schedule_mip_on_a_terminal_draws_the_solver(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(progress_cli, "_stderr_console",
                        lambda: Console(file=buffer, force_terminal=True, width=160, color_system=None))
    code, out, _ = _run_cli(["schedule", "mip", "-n", "4", "-m", "8", "--cost", "F=1,I=1.2,W=0.8,C=0.1",
                             "--placement", "v", "--effort", "quick"])
    assert code == 0 and out
    text = buffer.getvalue()
    assert re.search(r"lower MIP placement v\s+incumbent \S+  bound \S+  gap \S+%", text), text[-2000:]
    assert "lower MIP placement v: OPTIMAL on v, makespan 25.8" in text


@pytest.mark.parametrize("ours, theirs, words", [
    (0.1848, 0.2129, "parplan: 0.1848 s per step, 13.2% faster than dualpipe (0.2129 s)"),
    (0.2129, 0.1848, "parplan: 0.2129 s per step, 15.2% slower than dualpipe (0.1848 s)"),
    (0.18480, 0.18481, "parplan: 0.1848 s per step, the same as dualpipe (0.1848 s)"),
])
def test_summary_in_words(ours, theirs, words):
    assert summary_line(ours, "dualpipe", theirs) == words


def test_notes_of_families_not_kept_are_named():
    def mip(family: str, *notes: str):
        return SimpleNamespace(mip=SimpleNamespace(notes=notes), placed=SimpleNamespace(family=SimpleNamespace(
            name=family)))

    kept = mip("dualpipe", "rounded", "stopped early: the clock")
    others = [mip("loop", "rounded", "the warm start meets the lower bound 25: optimal without search"),
              mip("v", "the warm start meets the lower bound 25: optimal without search")]
    assert _mip_notes(kept, [kept, *others]) == [
        "rounded", "lower MIP on loop, v (not kept): the warm start meets the lower bound 25: optimal without search"]
