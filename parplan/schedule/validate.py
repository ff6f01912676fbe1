"""The validator: numbered invariants every schedule parplan emits must satisfy.

  V1  placement      every action's stage exists and lives on the rank whose list runs it
  V2  micro-batches  every micro-batch index is in 0 … m−1
  V3  completeness   each (stage, micro-batch) runs exactly one F and either one B or one
                     I and one W — nothing missing, nothing twice (an inference schedule:
                     one F each and no backward at all)
  V4  local order    on its rank, F(s, j) precedes I/B(s, j), and I(s, j) precedes W(s, j)
  V5  overlap cells  a cell holds exactly one F and one backward (B or I), of stages on
                     the cell's rank
  V6  dependencies   the order runs to the end: no rank waits forever (cross-stage
                     forward and backward dependencies can be met in this order)
  V7  memory         peak activation per rank <= the cap, when one is given

On failure `ScheduleError` carries the violations and its message shows the rank × step
grid with the first bad cell marked, like PyTorch's `_validate_schedule`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.schedule.ir import Kind, Schedule
from parplan.schedule.simulate import DeadlockError, SimResult, simulate

__all__ = ["Violation", "ScheduleError", "validate", "format_grid"]


@dataclass(frozen=True, slots=True)
class Violation:
    code: str  # "V1" … "V7"
    message: str
    rank: int | None = None
    step: int | None = None


class ScheduleError(ParplanError):
    def __init__(self, schedule: Schedule, violations: list[Violation]):
        self.violations = violations
        first = violations[0]
        lines = [f"schedule {schedule.name!r} breaks {len(violations)} invariant(s):"]
        lines += [f"  {v.code}: {v.message}" for v in violations[:12]]
        if len(violations) > 12:
            lines.append(f"  … and {len(violations) - 12} more")
        if first.rank is not None and first.step is not None:
            lines.append(format_grid(schedule, mark=(first.rank, first.step)))
        super().__init__("\n".join(lines))


def validate(
    schedule: Schedule,
    costs: PipelineCosts | None = None,
    *,
    memory_cap: float | None = None,
) -> SimResult:
    """Check every invariant; return the simulation (with `costs`, default unit) on success."""
    violations = _structure(schedule)
    if violations:
        raise ScheduleError(schedule, violations)
    if costs is None:
        costs = PipelineCosts.uniform(schedule.num_model_stages)
    try:
        result = simulate(schedule, costs)
    except DeadlockError as err:
        raise ScheduleError(schedule, [Violation("V6", str(err), *_first_blocked(schedule, str(err)))]) from None
    if memory_cap is not None:
        over = [
            Violation("V7", f"rank {r} peaks at {peak:g} activation units, above the cap {memory_cap:g}", r)
            for r, peak in enumerate(result.peak_activation_per_rank) if peak > memory_cap + 1e-9
        ]
        if over:
            raise ScheduleError(schedule, over)
    return result


def _structure(schedule: Schedule) -> list[Violation]:
    out: list[Violation] = []
    m = schedule.microbatches_per_chain
    forward_only = schedule.forward_only  # a scan of every action: once, not per (stage, micro-batch)
    seen: Counter = Counter()
    position: dict[tuple[int, Kind, int], tuple[int, int]] = {}
    for r, order in enumerate(schedule.orders):
        for step, action in enumerate(order):
            if action.kind is Kind.OVERLAP_F_B:
                kinds = sorted(a.kind.value for a in action.sub_actions)
                if kinds not in (["B", "F"], ["F", "I"]):
                    out.append(Violation("V5", f"cell {action} must hold one F and one B or I", r, step))
            for a in action.atoms:
                if not 0 <= a.stage < schedule.num_stages:
                    out.append(Violation("V1", f"{a} names stage {a.stage}, outside 0..{schedule.num_stages - 1}", r, step))
                    continue
                if schedule.stage_to_rank[a.stage] != r:
                    out.append(Violation(
                        "V1", f"{a} runs on rank {r} but stage {a.stage} lives on rank "
                        f"{schedule.stage_to_rank[a.stage]}", r, step))
                if not 0 <= a.microbatch < m:
                    out.append(Violation("V2", f"{a} names micro-batch {a.microbatch}, outside 0..{m - 1}", r, step))
                    continue
                key = (a.stage, a.kind, a.microbatch)
                seen[key] += 1
                if seen[key] == 2:
                    out.append(Violation("V3", f"{a} runs twice (first at rank {position[key][0]} step {position[key][1]})", r, step))
                position.setdefault(key, (r, step))
    for s in range(schedule.num_stages):
        for j in range(m):
            f, b, i, w = (seen[(s, k, j)] for k in (Kind.F, Kind.B, Kind.I, Kind.W))
            where = (schedule.stage_to_rank[s], None)
            if f == 0:
                out.append(Violation("V3", f"{s}F{j} is missing", *where))
            if forward_only:
                continue
            if not ((b == 1 and i == w == 0) or (b == 0 and i == 1 and w == 1)):
                out.append(Violation(
                    "V3", f"stage {s} micro-batch {j} has B×{b}, I×{i}, W×{w}; it needs one B, or one I and one W",
                    *where))
            for earlier, later in ((Kind.F, Kind.B), (Kind.F, Kind.I), (Kind.I, Kind.W)):
                p, q = position.get((s, earlier, j)), position.get((s, later, j))
                if p and q and p[0] == q[0] and p[1] > q[1]:
                    out.append(Violation(
                        "V4", f"{s}{later.value}{j} at step {q[1]} comes before {s}{earlier.value}{j} at step {p[1]}",
                        q[0], q[1]))
    return out


def _first_blocked(schedule: Schedule, message: str) -> tuple[int | None, int | None]:
    for line in message.splitlines():
        words = line.split()
        if len(words) > 4 and words[0] == "rank" and words[2] == "step":
            return int(words[1]), int(words[3])
    return None, None


def format_grid(schedule: Schedule, *, mark: tuple[int, int] | None = None, window: int = 6) -> str:
    """Steps down, ranks across; the marked cell is wrapped in >> << with an arrow on its row."""
    rows = max(len(o) for o in schedule.orders)
    lo, hi = 0, rows
    if mark is not None:
        lo, hi = max(0, mark[1] - window), min(rows, mark[1] + window + 1)
    cell = lambda r, k: str(schedule.orders[r][k]) if k < len(schedule.orders[r]) else ""  # noqa: E731
    width = max([len(cell(r, k)) for r in range(schedule.num_ranks) for k in range(lo, hi)] + [6]) + 4
    header = "step  " + "".join(f"rank {r}".ljust(width) for r in range(schedule.num_ranks))
    lines = [header]
    for k in range(lo, hi):
        texts = []
        for r in range(schedule.num_ranks):
            text = cell(r, k)
            if mark == (r, k):
                text = f">>{text}<<"
            texts.append(text.ljust(width))
        suffix = "  <-- ERROR HERE" if mark is not None and k == mark[1] else ""
        lines.append(f"{k:>4}  " + "".join(texts).rstrip() + suffix)
    return "\n".join(lines)
