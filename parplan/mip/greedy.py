"""A memory-aware list schedule: a warm start for placements whose baselines exceed the cap.

When every expert schedule of a placement holds more activations than the cap allows, the
only warm start left used to be the serial order (one micro-batch at a time), several
times too slow for the search to start from (4×8 loop placement under DualPipe's cap:
94.4 against the best 24.2; this schedule: 28.4). It is built in the problem's integer time:

  dispatch   repeatedly start, on the rank that can start something earliest, its best
             task that is ready then (all inputs arrived, the rank free)
  priority   at one start time: an I first (it unblocks the ranks upstream), then an F,
             then a W; within a kind the earliest ready, then the lowest micro-batch
  memory     admission control: a micro-batch enters its chain (its first F) only when
             every rank on its path can hold its activations; they stay reserved until
             each stage's W ends. Held (F start to W end, as the simulator counts) never
             exceeds reserved, and an admitted micro-batch never waits on memory, so the
             schedule cannot lock at any cap down to the smallest feasible one.
  window     optionally at most as many micro-batches in a chain as it has stages (1F1B's
             rule): the same makespan at far less memory where the cap is loose (uncapped
             16×64 DualPipe placement, unit costs: 199 both ways, 44 activations vs 64),
             slower elsewhere (chain placement, I ≠ W); the caller keeps the better.

No F&B cells: the search forms them.
"""

from __future__ import annotations

from parplan.mip.problem import Problem, Task, chain_activation
from parplan.mip.timetable import Timetable
from parplan.schedule.ir import Kind

__all__ = ["greedy_timetable"]

_PRIORITY = {Kind.I: 0, Kind.F: 1, Kind.W: 2}


def greedy_timetable(problem: Problem, *, window: bool = False) -> Timetable:
    """`window`: also keep at most as many micro-batches in a chain as it has stages, as
    1F1B does; without it only the cap limits them (uncapped: all of them, as GPipe)."""
    cap = problem.memory_cap
    ranks = range(problem.num_ranks)
    # ---- data: dependencies, what each micro-batch needs on each rank ------------------------
    succ = problem.successors()
    waiting = {t: len(problem.predecessors(t)) for t in problem.tasks()}
    # chain head stage -> one micro-batch's activation per rank (at most the cap: build_problem
    # rejects caps below the largest, `smallest_feasible_cap`)
    need = {chain[0]: chain_activation(problem.skeleton, problem.costs, chain) for chain in problem.skeleton.chains}
    heads = {problem.rank(s) for s in need}  # ranks whose choices depend on the reservations
    limit = {chain[0]: len(chain) if window else len(problem.microbatches) for chain in problem.skeleton.chains}
    finished_by = {chain[-1]: chain[0] for chain in problem.skeleton.chains}  # last stage -> head
    in_chain = {head: 0 for head in need}  # admitted micro-batches whose last stage's W has not ended

    # ---- state ------------------------------------------------------------------------------------
    ready: list[dict[Task, int]] = [{} for _ in ranks]  # inputs all scheduled: task -> earliest start
    for t, n in waiting.items():
        if n == 0:
            ready[problem.rank(t[0])][t] = 0
    free_at = [0 for _ in ranks]
    reserved = [0.0 for _ in ranks]
    start: dict[Task, int] = {}
    end: dict[Task, int] = {}

    def admits(head: int) -> bool:
        if in_chain[head] >= limit[head]:
            return False
        return cap is None or all(reserved[r] + x <= cap * (1 + 1e-9) for r, x in enumerate(need[head]))

    def pick(r: int) -> tuple[int, tuple, Task] | None:
        """Rank r's earliest (start, priority, task), or None while it can run nothing."""
        best = None
        for t, at in ready[r].items():
            if t[1] is Kind.F and t[0] in need and not admits(t[0]):
                continue
            key = (max(at, free_at[r]), (_PRIORITY[t[1]], at, t[2], t[0]), t)
            if best is None or key[:2] < best[:2]:
                best = key
        return best

    # ---- dispatch: always the earliest start over all ranks -------------------------------------
    picks = [pick(r) for r in ranks]
    for _ in range(len(waiting)):
        # Never empty: the cap is at least one micro-batch's need on every rank (build_problem
        # checks it), so with nothing reserved a head is admitted; an admitted one runs on.
        (at, _, t), r = min(((p, r) for r, p in enumerate(picks) if p is not None), key=lambda pr: pr[0][:2])
        del ready[r][t]
        start[t], end[t] = at, at + problem.duration(t)
        free_at[r] = end[t]
        touched = {r}
        if t[1] is Kind.F and t[0] in need:
            in_chain[t[0]] += 1
            for k, x in enumerate(need[t[0]]):
                reserved[k] += x
            touched |= heads
        elif t[1] is Kind.W:
            reserved[r] -= problem.activation(t[0])
            touched |= heads
            if t[0] in finished_by:
                in_chain[finished_by[t[0]]] -= 1
        for q, _ in succ[t]:
            waiting[q] -= 1
            if waiting[q] == 0:
                rq = problem.rank(q[0])
                ready[rq][q] = max(end[p] + d for p, d in problem.predecessors(q))
                touched.add(rq)
        for k in touched:
            picks[k] = pick(k)
    return Timetable(start=start, end=end)
