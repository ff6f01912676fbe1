"""The per-rank step structure DualPipe and DualPipeV share (deepseek-ai/DualPipe).

A rank runs two stages: `near`, fed from its own end of the pipeline (phase 0), and
`far`, the other (phase 1). With n ranks per direction-half, ρ the rank's distance from
its end and m micro-batches per phase (reference §1.3):

  S1  2(n−ρ−1) × [F0]
  S2  (ρ+1)    × [F0 F1]
  S3  (n−ρ−1)  × [I1 W F1]                     zero-bubble
  S4  (m−2n+ρ+1) × [F0&B1 F1&B0]               main overlapped phase; on the turn rank
                                               (ρ = n−1) the first F0, B1 stay apart
  S5  (n−ρ−1)  × [B1 F1&B0]
  S6  (ρ+1)    × [B1 B0]; the last ρ+1 backwards are I (switch before B1 if ρ odd,
                                               between B1 and B0 if ρ even)
  S7  (n−ρ−1)  × [W I0]
  S8  (ρ+1)    × [W]

W's are a FIFO over both stages (DualPipe's WeightGradStore): `W` pops the oldest I.
"""

from __future__ import annotations

from collections import defaultdict, deque

from parplan.schedule.ir import Action, Kind

__all__ = ["rank_order"]


def rank_order(*, n: int, rho: int, m: int, near: int, far: int) -> list[Action]:
    stage = {0: near, 1: far}
    forwards: dict[int, int] = defaultdict(int)
    backwards: dict[int, int] = defaultdict(int)
    pending_w: deque[tuple[int, int]] = deque()
    order: list[Action] = []

    def f(phase: int) -> Action:
        s = stage[phase]
        forwards[s] += 1
        return Action(s, Kind.F, forwards[s] - 1)

    def b(phase: int, *, split: bool = False) -> Action:
        s = stage[phase]
        backwards[s] += 1
        if split:
            pending_w.append((s, backwards[s] - 1))
            return Action(s, Kind.I, backwards[s] - 1)
        return Action(s, Kind.B, backwards[s] - 1)

    def w() -> None:
        if pending_w:
            s, j = pending_w.popleft()
            order.append(Action(s, Kind.W, j))

    def fb(f_phase: int, b_phase: int) -> Action:
        return Action.overlap(f(f_phase), b(b_phase))

    for _ in range(2 * (n - rho - 1)):                     # S1: F0
        order.append(f(0))
    for _ in range(rho + 1):                               # S2: F0 F1
        order += [f(0), f(1)]
    for _ in range(n - rho - 1):                           # S3: I1 W F1
        order.append(b(1, split=True))
        w()
        order.append(f(1))
    for i in range(m - 2 * n + rho + 1):                   # S4: F0&B1 F1&B0
        if i == 0 and rho == n - 1:
            order += [f(0), b(1)]
        else:
            order.append(fb(0, 1))
        order.append(fb(1, 0))
    for _ in range(n - rho - 1):                           # S5: B1 F1&B0
        order += [b(1), fb(1, 0)]
    split = False
    for i in range(rho + 1):                               # S6: B1 B0, switching to I
        if i == (rho + 1) // 2 and rho % 2 == 1:
            split = True
        order.append(b(1, split=split))
        if i == (rho + 1) // 2 and rho % 2 == 0:
            split = True
        order.append(b(0, split=split))
    for _ in range(n - rho - 1):                           # S7: W I0
        w()
        order.append(b(0, split=split))
    for _ in range(rho + 1):                               # S8: W
        w()
    return order
