"""The reference's big-M MIP in Pyomo, solved by HiGHS (through `highspy`).

This is the paper's flexible-job-shop formulation (../shared/reference/mip_formulation.md),
equation numbers as there, specialised to one placement: the placement binaries x_ij
exist but are fixed to the placement (the upper level decides them), which fixes the
channel binaries z_e through (9). It serves as an independent cross-check of the CP-SAT
model on tiny instances and as `--solver highs` for users who want the explicit MIP.

Memory (not recovered from the paper; our choice): activations peak when an F starts,
and on one device the order binaries say exactly which F's have started and which W's
have ended by then, so the cap is one linear row per F:
    act(f) + Σ_(s,j)≠f act_s · (y[F(s,j) before f] − y[W(s,j) before f]) <= Cap.
F&B cells are not modelled here (they need pairing binaries on top of the order
binaries); with overlap_ratio < 1 the CP-SAT model is the one that forms them.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from parplan.mip.cpsat import SolveOutcome
from parplan.mip.problem import Problem, Task
from parplan.mip.timetable import Timetable
from parplan.schedule.ir import Kind

__all__ = ["build_bigm", "solve_bigm"]


@dataclass(frozen=True, kw_only=True, slots=True)
class _Data:
    """The instance in the formulation's indices: tasks i, devices j, edges k (with their delays)."""

    tasks: list[Task]
    index: dict[Task, int]
    devices: range
    horizon: int  # also the big M
    edges: list[tuple[Task, Task, int]]  # (producer, consumer, transfer delay)
    delay: dict[int, int]  # edge k's transfer delay (0 on one device)
    same_device: list[tuple[Task, Task]]  # pairs that need an order binary
    channels: list[tuple[int, int]]  # directed device pairs
    z: dict[tuple[int, int, int], int]  # (9) edge k uses channel (j1, j2): fixed by the placement
    duration: dict[int, int]  # task i's length


def build_bigm(problem: Problem, *, horizon: int, objective: str = "makespan", link_contention: bool = False):
    """The Pyomo model for one placement, with the tasks and their indices in it."""
    # ---- data ---------------------------------------------------------------------------
    data = _data(problem, horizon)
    # ---- variables ----------------------------------------------------------------------
    m = _variables(problem, data)
    # ---- constraints ----------------------------------------------------------------------
    _add_end_times(m, data)
    _add_device_order(m, problem, data)
    _add_transfers(m, data)
    if link_contention:
        _add_channel_order(m, data)
    if problem.memory_cap is not None:
        _add_memory(m, problem, data)
    # ---- objective ------------------------------------------------------------------------
    _set_objective(m, problem, data, objective)
    return m, data.tasks, data.index


def _data(problem: Problem, horizon: int) -> _Data:
    tasks = problem.tasks()
    index = {t: k for k, t in enumerate(tasks)}
    devices = range(problem.num_ranks)
    edges = [(p, t, d) for t in tasks for p, d in problem.predecessors(t)]
    same_device = [(a, b) for a, b in itertools.combinations(tasks, 2) if problem.rank(a[0]) == problem.rank(b[0])]
    channels = [(j1, j2) for j1 in devices for j2 in devices if j1 != j2]
    z = {(k, j1, j2): int(problem.rank(edges[k][0][0]) == j1 and problem.rank(edges[k][1][0]) == j2)
         for k in range(len(edges)) for j1, j2 in channels}
    return _Data(tasks=tasks, index=index, devices=devices, horizon=horizon, edges=edges,
                 delay={k: edges[k][2] for k in range(len(edges))}, same_device=same_device, channels=channels,
                 z=z, duration={index[t]: problem.duration(t) for t in tasks})


def _variables(problem: Problem, data: _Data):
    """Start s, end e, placement x (fixed: the placement is given, so z in (9) is fixed too),
    order y per pair on one device, send c and receive d per edge, C_max."""
    import pyomo.environ as pyo

    horizon, index = data.horizon, data.index
    m = pyo.ConcreteModel("parplan_bigm")
    m.I = pyo.Set(initialize=range(len(data.tasks)))
    m.J = pyo.Set(initialize=data.devices)
    m.E = pyo.Set(initialize=range(len(data.edges)))
    m.P = pyo.Set(initialize=[(index[a], index[b]) for a, b in data.same_device], dimen=2)
    m.s = pyo.Var(m.I, bounds=(0, horizon))
    m.e = pyo.Var(m.I, bounds=(0, horizon))
    m.x = pyo.Var(m.I, m.J, domain=pyo.Binary)
    m.y = pyo.Var(m.P, domain=pyo.Binary)  # y[a, b] = 1: a before b on their device; (8) y_ba = 1 − y_ab
    m.c = pyo.Var(m.E, bounds=(0, horizon))
    m.d = pyo.Var(m.E, bounds=(0, horizon))
    m.cmax = pyo.Var(bounds=(0, horizon))
    for t in data.tasks:
        for j in data.devices:
            m.x[index[t], j].fix(1 if problem.rank(t[0]) == j else 0)
    return m


def _add_end_times(m, data: _Data) -> None:
    """(3) end = start + duration on the task's device, (6) one device per task, (2) C_max >= every end."""
    import pyomo.environ as pyo

    dur = data.duration
    m.end_def = pyo.Constraint(m.I, rule=lambda m, i: m.e[i] == m.s[i] + sum(dur[i] * m.x[i, j] for j in m.J))  # (3)
    m.one_device = pyo.Constraint(m.I, rule=lambda m, i: sum(m.x[i, j] for j in m.J) == 1)  # (6)
    m.cmax_def = pyo.Constraint(m.I, rule=lambda m, i: m.e[i] <= m.cmax)  # (2)


def _add_device_order(m, problem: Problem, data: _Data) -> None:
    """(7–8) two tasks on one device run one after the other, in the order y says."""
    import pyomo.environ as pyo

    tasks, big_m = data.tasks, data.horizon

    def no_overlap(m, a, b, forward):
        j = problem.rank(tasks[a][0])
        if forward:  # (7) b after a when y_ab = 1
            return m.s[b] >= m.e[a] - big_m * (3 - m.x[a, j] - m.x[b, j] - m.y[a, b])
        return m.s[a] >= m.e[b] - big_m * (3 - m.x[a, j] - m.x[b, j] - (1 - m.y[a, b]))

    m.no_overlap = pyo.Constraint(m.P, [True, False], rule=no_overlap)


def _add_transfers(m, data: _Data) -> None:
    """(11–13) an edge's transfer is sent after its producer ends, takes its delay on the
    channel it uses, and is received before its consumer starts."""
    import pyomo.environ as pyo

    edges, delay, index, z, channels = data.edges, data.delay, data.index, data.z, data.channels
    m.send_after = pyo.Constraint(m.E, rule=lambda m, k: m.c[k] >= m.e[index[edges[k][0]]])  # (13)
    m.transfer = pyo.Constraint(m.E, rule=lambda m, k: m.d[k] >= m.c[k] + sum(  # (11)
        delay[k] * z[k, j1, j2] for j1, j2 in channels))
    m.receive_after = pyo.Constraint(m.E, rule=lambda m, k: m.s[index[edges[k][1]]] >= m.d[k])  # (12)


def _add_channel_order(m, data: _Data) -> None:
    """(14–15) one transfer at a time per directed channel: an order binary w per pair of
    transfers (with a delay) that share one."""
    import pyomo.environ as pyo

    delay, z, channels, big_m = data.delay, data.z, data.channels, data.horizon
    pairs = [(k1, k2) for k1, k2 in itertools.combinations(range(len(data.edges)), 2)
             if delay[k1] and delay[k2] and any(z[k1, *ch] and z[k2, *ch] for ch in channels)]
    m.W = pyo.Set(initialize=pairs, dimen=2)
    m.w = pyo.Var(m.W, domain=pyo.Binary)
    m.channel_a = pyo.Constraint(m.W, rule=lambda m, k1, k2: m.c[k2] >= m.d[k1] - big_m * (1 - m.w[k1, k2]))
    m.channel_b = pyo.Constraint(m.W, rule=lambda m, k1, k2: m.c[k1] >= m.d[k2] - big_m * m.w[k1, k2])


def _add_memory(m, problem: Problem, data: _Data) -> None:
    """(mem) at each F's start, the activations its device holds (F's started, W's not yet
    ended, read off the order binaries) are within the cap (the module docstring's row)."""
    import pyomo.environ as pyo

    tasks, index = data.tasks, data.index

    def before(a: Task, b: Task):
        ia, ib = index[a], index[b]
        return m.y[ia, ib] if (ia, ib) in m.y else 1 - m.y[ib, ia]

    def memory(m, i):
        f = tasks[i]
        if f[1] is not Kind.F:
            return pyo.Constraint.Skip
        held = problem.activation(f[0])
        for s in problem.skeleton.stages_of_rank(problem.rank(f[0])):
            for j in problem.microbatches:
                if (s, Kind.F, j) == f:
                    continue
                held += problem.activation(s) * (before((s, Kind.F, j), f) - before((s, Kind.W, j), f))
        return held <= problem.memory_cap

    m.memory = pyo.Constraint(m.I, rule=memory)


def _set_objective(m, problem: Problem, data: _Data, objective: str) -> None:
    """(1) minimise C_max, or (throughput) the longest per-rank span, first start to last end."""
    import pyomo.environ as pyo

    if objective == "makespan":
        m.obj = pyo.Objective(expr=m.cmax, sense=pyo.minimize)  # (1)
        return
    tasks, horizon = data.tasks, data.horizon
    m.first = pyo.Var(m.J, bounds=(0, horizon))
    m.span = pyo.Var(bounds=(0, horizon))
    m.first_def = pyo.Constraint(m.I, rule=lambda m, i: m.first[problem.rank(tasks[i][0])] <= m.s[i])
    m.span_def = pyo.Constraint(m.I, rule=lambda m, i: m.span >= m.e[i] - m.first[problem.rank(tasks[i][0])])
    m.obj = pyo.Objective(expr=m.span, sense=pyo.minimize)


def solve_bigm(
    problem: Problem,
    *,
    hint: Timetable | None,
    time_limit: float,
    objective: str = "makespan",
    dump_path: str | None = None,
    link_contention: bool = False,
) -> SolveOutcome:
    import pyomo.environ as pyo
    from pyomo.contrib.appsi.base import TerminationCondition
    from pyomo.contrib.appsi.solvers import Highs

    started = time.perf_counter()
    notes = []
    if problem.cells_help:
        notes.append("the big-M model does not form F&B cells; use solver='cpsat' to let cells pay off")
    horizon = hint.makespan if hint is not None else sum(problem.duration(t) for t in problem.tasks()) + \
        2 * len(problem.microbatches) * sum(problem.delay)
    m, tasks, index = build_bigm(problem, horizon=horizon, objective=objective, link_contention=link_contention)
    if dump_path:
        m.write(dump_path, io_options={"symbolic_solver_labels": True})
    if hint is not None:  # warm start: the baseline's times and orders
        for t in tasks:
            m.s[index[t]].set_value(hint.start[t])
            m.e[index[t]].set_value(hint.start[t] + problem.duration(t))
        for a, b in m.y:
            m.y[a, b].set_value(1 if hint.start[tasks[a]] <= hint.start[tasks[b]] else 0)
    solver = Highs()
    solver.config.time_limit = max(0.1, time_limit - (time.perf_counter() - started))
    solver.config.load_solution = False
    solver.highs_options = {"random_seed": 0, "threads": 1, "mip_rel_gap": 0.0, "mip_abs_gap": 0.5}
    result = solver.solve(m)
    seconds = time.perf_counter() - started
    condition = result.termination_condition
    status = {TerminationCondition.optimal: "OPTIMAL", TerminationCondition.maxTimeLimit: "FEASIBLE",
              TerminationCondition.infeasible: "INFEASIBLE"}.get(condition, "UNKNOWN")
    has_solution = result.best_feasible_objective is not None
    if not has_solution:
        return SolveOutcome(status="UNKNOWN" if status == "FEASIBLE" else status, timetable=None, objective=None,
                            bound=None, seconds=seconds, notes=tuple(notes))
    result.solution_loader.load_vars()
    start = {t: int(round(pyo.value(m.s[index[t]]))) for t in tasks}
    timetable = Timetable(start=start, end={t: start[t] + problem.duration(t) for t in tasks})
    bound = result.best_objective_bound
    return SolveOutcome(
        status=status, timetable=timetable, objective=int(round(result.best_feasible_objective)),
        bound=None if bound is None else int(-(-round(bound * 1e6) // 1_000_000)), seconds=seconds, notes=tuple(notes),
    )
