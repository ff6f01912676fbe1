"""What a command says on stderr while it runs: its progress, and the files it wrote.

`ProgressDisplay` takes the planner's `PlanProgress` events (`parplan.planner.events`).
On a terminal it is a live rich line — the current phase and what it works on, seconds
in the phase and in all, and for a solver its incumbent, bound and gap as they move —
above which each finished phase stays as one line. Elsewhere (a pipe, a CI log) it
prints only that one line per finished phase; `quiet` prints nothing. It keeps its own
clock: events carry none, and nothing it does reaches the planner's decisions.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from parplan.planner.events import PlanProgress

__all__ = ["ProgressDisplay", "name_written"]

_REFRESH_S = 0.125  # solver updates redraw the live line at most this often


class ProgressDisplay:
    """A context manager and a `PlanProgress` callback (see the module docstring).

    `console`: a rich Console to draw on (default: one on stderr); whether it is a
    terminal picks the live display or the plain lines. Solver threads may call it."""

    def __init__(self, *, quiet: bool = False, console=None) -> None:
        self._quiet = quiet
        self._console = console
        self._live = None
        self._spinner = None
        self._started = self._phase_started = self._drawn = time.perf_counter()
        self._current: PlanProgress | None = None  # the running phase's last BEGIN or UPDATE
        self._numbers: tuple[float | None, float | None, float | None] = (None, None, None)

    def __enter__(self) -> ProgressDisplay:
        if self._quiet:
            return self
        self._console = self._console or _stderr_console()
        if self._console.is_terminal:
            from rich.live import Live
            from rich.spinner import Spinner

            self._spinner = Spinner("dots", style="cyan")
            self._live = Live(console=self._console, get_renderable=self._render, refresh_per_second=8,
                              transient=True, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self._live is not None:
            self._live.stop()
            self._live = None
        return False

    def __call__(self, event: PlanProgress) -> None:
        if self._quiet:
            return
        from parplan.planner.events import Step  # here: importing the planner takes seconds, --help should not

        now = time.perf_counter()
        first = self._numbers[0] is None  # no incumbent drawn yet: draw this update at once
        if event.step is Step.BEGIN:
            self._current, self._numbers, self._phase_started = event, (None, None, None), now
        elif event.step is Step.UPDATE:
            self._current, self._numbers = event, _merged(self._numbers, event)
        else:
            self._current = None
            self._finished(event, now)
        if self._live is not None and (event.step is not Step.UPDATE or first or now - self._drawn >= _REFRESH_S):
            self._drawn = now
            self._live.refresh()

    def _finished(self, event: PlanProgress, now: float) -> None:
        line = f"{now - self._started:6.1f} s  {event.phase.value}"
        line += f" {event.subject}: {event.message}" if event.subject else f": {event.message}"
        if self._live is not None:
            self._live.console.print(f"[green]✓[/green] {_escape(line)}", highlight=False)
        else:
            print(line, file=sys.stderr if self._console is None else self._console.file, flush=True)

    def _render(self):
        from rich.text import Text

        now = time.perf_counter()
        event = self._current
        if event is None:
            self._spinner.update(text=Text(f"total {now - self._started:.1f} s"))
            return self._spinner
        text = f"{event.phase.value} {event.subject}"
        incumbent, bound, gap = self._numbers
        if incumbent is not None or bound is not None:
            text += f"   incumbent {_num(incumbent)}  bound {_num(bound)}  gap {'n/a' if gap is None else f'{gap:.1%}'}"
        text += f"   {now - self._phase_started:.1f} s (total {now - self._started:.1f} s)"
        self._spinner.update(text=Text(text))
        return self._spinner


def _stderr_console():
    """The console progress draws on: stderr, live when it is a terminal."""
    from rich.console import Console

    return Console(stderr=True)


def _merged(numbers: tuple, event) -> tuple:
    """The latest incumbent, bound and gap; windowed LNS reports incumbents alone, so the
    bound found before stays, and the gap is taken against it."""
    from parplan.mip.cpsat import relative_gap  # loaded by the solver sending the event

    incumbent = numbers[0] if event.incumbent is None else event.incumbent
    bound = numbers[1] if event.bound is None else event.bound
    gap = event.gap
    if gap is None and incumbent is not None and bound is not None:
        gap = relative_gap(incumbent, bound)
    return incumbent, bound, gap


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def name_written(paths: Iterable[str]) -> None:
    """`wrote PATH` on stderr for each file a command wrote (after `write_outputs`)."""
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
