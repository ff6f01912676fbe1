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

from dataclasses import dataclass, field

from parplan.mip.problem import Problem, Task, chain_activation
from parplan.mip.timetable import Timetable
from parplan.schedule.ir import Kind

__all__ = ["greedy_timetable"]

_PRIORITY = {Kind.I: 0, Kind.F: 1, Kind.W: 2}


@dataclass(frozen=True, kw_only=True, slots=True)
class _Chains:
    """What admission control needs to know of each chain, keyed by its head stage."""

    # one micro-batch's activation per rank (at most the cap: build_problem rejects caps
    # below the largest, `smallest_feasible_cap`)
    need: dict[int, list[float]]
    heads: set[int]  # ranks whose choices depend on the reservations
    limit: dict[int, int]  # micro-batches a chain may hold at once
    finished_by: dict[int, int]  # last stage -> head


@dataclass(slots=True)
class _State:
    ready: list[dict[Task, int]]  # per rank: inputs all scheduled, task -> earliest start
    waiting: dict[Task, int]  # inputs not yet scheduled
    free_at: list[int]
    reserved: list[float]
    in_chain: dict[int, int]  # admitted micro-batches whose last stage's W has not ended
    start: dict[Task, int] = field(default_factory=dict)
    end: dict[Task, int] = field(default_factory=dict)


def greedy_timetable(problem: Problem, *, window: bool = False) -> Timetable:
    """`window`: also keep at most as many micro-batches in a chain as it has stages, as
    1F1B does; without it only the cap limits them (uncapped: all of them, as GPipe)."""
    # ---- data: dependencies, what each micro-batch needs on each rank ------------------------
    chains = _chains(problem, window)
    succ = problem.successors()
    # ---- state ------------------------------------------------------------------------------------
    state = _initial_state(problem, chains)
    # ---- dispatch: always the earliest start over all ranks -------------------------------------
    picks = [_pick(problem, chains, state, r) for r in range(problem.num_ranks)]
    for _ in range(len(state.waiting)):
        # Never empty: the cap is at least one micro-batch's need on every rank (build_problem
        # checks it), so with nothing reserved a head is admitted; an admitted one runs on.
        (at, _, t), r = min(((p, r) for r, p in enumerate(picks) if p is not None), key=lambda pr: pr[0][:2])
        for k in _run(problem, chains, state, succ, t, at, r):
            picks[k] = _pick(problem, chains, state, k)
    return Timetable(start=state.start, end=state.end)


def _chains(problem: Problem, window: bool) -> _Chains:
    need = {chain[0]: chain_activation(problem.skeleton, problem.costs, chain) for chain in problem.skeleton.chains}
    return _Chains(
        need=need,
        heads={problem.rank(s) for s in need},
        limit={chain[0]: len(chain) if window else len(problem.microbatches) for chain in problem.skeleton.chains},
        finished_by={chain[-1]: chain[0] for chain in problem.skeleton.chains},
    )


def _initial_state(problem: Problem, chains: _Chains) -> _State:
    """Ready: a chain head's first F only. Its later F's would all be ready at time 0 with
    keys that differ only in the micro-batch, so the lowest always wins: each enters the
    ready set when the one before it starts (`_run`), which keeps a pick O(ranks' ready
    tasks) instead of O(micro-batches) on the head rank."""
    ranks = range(problem.num_ranks)
    waiting = {t: len(problem.predecessors(t)) for t in problem.tasks()}
    ready: list[dict[Task, int]] = [{} for _ in ranks]
    for t, n in waiting.items():
        if n == 0 and (t[1] is not Kind.F or t[2] == 0):
            ready[problem.rank(t[0])][t] = 0
    return _State(ready=ready, waiting=waiting, free_at=[0 for _ in ranks], reserved=[0.0 for _ in ranks],
                  in_chain={head: 0 for head in chains.need})


def _admits(problem: Problem, chains: _Chains, state: _State, head: int) -> bool:
    """(memory, window) a new micro-batch may enter the chain starting at stage `head`."""
    if state.in_chain[head] >= chains.limit[head]:
        return False
    cap = problem.memory_cap
    return cap is None or all(state.reserved[r] + x <= cap * (1 + 1e-9) for r, x in enumerate(chains.need[head]))


def _pick(problem: Problem, chains: _Chains, state: _State, r: int) -> tuple[int, tuple, Task] | None:
    """(priority) rank r's earliest (start, priority, task), or None while it can run nothing."""
    best, best_task = None, None
    free = state.free_at[r]
    admitted: dict[int, bool] = {}  # head stage -> may a micro-batch enter (the same for all its F's)
    for t, at in state.ready[r].items():
        s, kind, j = t
        if kind is Kind.F and s in chains.need:
            if s not in admitted:
                admitted[s] = _admits(problem, chains, state, s)
            if not admitted[s]:
                continue
        key = (at if at > free else free, _PRIORITY[kind], at, j, s)
        if best is None or key < best:
            best, best_task = key, t
    return None if best is None else (best[0], best[1:], best_task)


def _run(problem: Problem, chains: _Chains, state: _State, succ: dict[Task, list[tuple[Task, int]]],
         t: Task, at: int, r: int) -> set[int]:
    """Start t on rank r at `at`: reserve or release memory, make its successors ready.
    Returns the ranks whose pick may have changed."""
    del state.ready[r][t]
    state.start[t], state.end[t] = at, at + problem.duration(t)
    state.free_at[r] = state.end[t]
    touched = {r}
    if t[1] is Kind.F and not problem.predecessors(t) and t[2] + 1 < len(problem.microbatches):
        state.ready[r][(t[0], Kind.F, t[2] + 1)] = 0  # the head's next F (`_initial_state`)
    if t[1] is Kind.F and t[0] in chains.need:
        state.in_chain[t[0]] += 1
        for k, x in enumerate(chains.need[t[0]]):
            state.reserved[k] += x
        touched |= chains.heads
    elif t[1] is Kind.W:
        state.reserved[r] -= problem.activation(t[0])
        touched |= chains.heads
        if t[0] in chains.finished_by:
            state.in_chain[chains.finished_by[t[0]]] -= 1
    for q, _ in succ[t]:
        state.waiting[q] -= 1
        if state.waiting[q] == 0:
            rq = problem.rank(q[0])
            state.ready[rq][q] = max(state.end[p] + d for p, d in problem.predecessors(q))
            touched.add(rq)
    return touched
