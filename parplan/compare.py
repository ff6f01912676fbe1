"""Run schedules under one cost model and tabulate what each wastes.

Cost convention: a cost spec (`F=1,I=1,W=1,FB=3,C=0`) describes one *rank's share* of
the model (1/N of it) for one micro-batch. A schedule with S model stages on N ranks
gives each stage N/S of that (interleaved, ZB-V and DualPipeV split a rank's share into
two chunks; DualPipe keeps N stages and holds each twice). Transfer time is per
boundary and does not shrink with the stage. Activation and parameter figures are in
the same unit: one rank-share (a 1F1B stage) for one micro-batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from parplan.baselines import BASELINES, CHUNKED, build_baseline
from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.schedule.ir import Schedule
from parplan.schedule.simulate import SimResult
from parplan.schedule.validate import validate

if TYPE_CHECKING:
    from parplan.mip import MipOptions

__all__ = ["ComparisonRow", "rank_share_costs", "parse_memory_limit", "compare", "DEFAULT_COST"]

DEFAULT_COST: dict[str, float] = {"f": 1.0, "i": 1.0, "w": 1.0, "c": 0.0}


@dataclass(frozen=True, kw_only=True, slots=True)
class ComparisonRow:
    schedule: Schedule
    simulation: SimResult
    fits: bool | None = None  # within the memory cap, when one is given
    solver: dict = field(default_factory=dict)  # MIP report (status, bound, gap, solve_seconds)
    costs: PipelineCosts | None = None  # per model stage, as simulated (charts draw its transfers)

    def to_dict(self) -> dict:
        sim = self.simulation
        out = {
            "schedule": self.schedule.name,
            "makespan": sim.makespan,
            "bubble_ratio": sim.bubble_ratio,
            "bubble_per_rank": list(sim.bubble_per_rank),
            "max_bubble": sim.max_bubble,
            "mean_bubble": sum(sim.bubble_per_rank) / sim.num_ranks,
            "peak_activations_per_rank": list(sim.peak_activation_per_rank),
            "params_per_rank": list(sim.params_per_rank),
            "num_stages": self.schedule.num_stages,
        }
        if self.fits is not None:
            out["fits_memory_limit"] = self.fits
        out.update(self.solver)
        return out


def rank_share_costs(spec: dict[str, float], num_ranks: int) -> Callable[[int], PipelineCosts]:
    """costs(S): per-stage costs for S model stages when `spec` is one rank's share."""
    merged = {**DEFAULT_COST, **spec}

    def costs(num_model_stages: int) -> PipelineCosts:
        unit = PipelineCosts.uniform(num_model_stages, **merged)
        return unit.scaled(num_ranks / num_model_stages)

    return costs


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


def parse_memory_limit(text: str | None) -> tuple[str, float | str] | None:
    """`match:NAME` → ("match", NAME); `9` → ("units", 9.0); `70GiB` → ("bytes", 7.5e10)."""
    if text is None:
        return None
    if text.startswith("match:"):
        name = text.split(":", 1)[1]
        if name not in BASELINES:
            raise ParplanError(
                f"--memory-limit {text!r}: {name!r} is not a baseline; use match:NAME with NAME in {', '.join(BASELINES)}"
            )
        return ("match", name)
    if m := _SIZE.match(text):
        scale = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
                 "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}[m.group(2).lower()]
        return ("bytes", float(m.group(1)) * scale)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ParplanError(
            f"--memory-limit {text!r} is invalid: give a positive number of activation units "
            f"(one rank-share for one micro-batch), a size such as 70GiB, or match:NAME (e.g. match:dualpipe)"
        )
    return ("units", value)


def simulate_baseline(name: str, num_ranks: int, num_microbatches: int, costs: Callable[[int], PipelineCosts],
                      *, num_chunks: int | None = None) -> tuple[Schedule, SimResult]:
    schedule = build_baseline(name, num_ranks, num_microbatches, num_chunks=num_chunks)
    return schedule, validate(schedule, costs(schedule.num_model_stages))


def resolve_memory_cap(limit, num_ranks, num_microbatches, costs, *, num_chunks=None) -> float | None:
    """A numeric activation cap per rank (rank-share units) from a parsed --memory-limit."""
    if limit is None:
        return None
    kind, value = limit
    if kind == "units":
        return float(value)
    if kind == "match":
        chunks = num_chunks if value in CHUNKED else None
        _, sim = simulate_baseline(value, num_ranks, num_microbatches, costs, num_chunks=chunks)
        return max(sim.peak_activation_per_rank)
    raise ParplanError(
        f"--memory-limit {value:.0f} bytes needs a model's activation sizes; compare works in abstract "
        f"units. Use a bare number (activation units per rank) or match:NAME, or 'parplan plan' for byte caps"
    )


def compare(
    names: list[str],
    *,
    num_ranks: int,
    num_microbatches: int,
    cost_spec: dict[str, float] | None = None,
    num_chunks: int | None = None,
    memory_limit: str | None = None,
    mip_options: "MipOptions | None" = None,
    progress: Callable | None = None,
) -> list[ComparisonRow]:
    """Simulate each named schedule (baselines, and "mip") under the same costs."""
    unknown = [n for n in names if n not in BASELINES and n != "mip"]
    if unknown:
        raise ParplanError(f"unknown schedule {unknown[0]!r}; choose from {', '.join(BASELINES)}, mip")
    costs = rank_share_costs(cost_spec or {}, num_ranks)
    cap = resolve_memory_cap(parse_memory_limit(memory_limit), num_ranks, num_microbatches, costs,
                             num_chunks=num_chunks)
    rows = []
    for name in names:
        if name == "mip":
            rows.append(solve_mip_row(num_ranks, num_microbatches, costs, cap, mip_options, progress))
            continue
        # --chunks shapes interleaved-1f1b; other builders reject it when named alone.
        chunks = num_chunks if name in CHUNKED or len(names) == 1 else None
        schedule, sim = simulate_baseline(name, num_ranks, num_microbatches, costs, num_chunks=chunks)
        fits = None if cap is None else max(sim.peak_activation_per_rank) <= cap + 1e-9
        rows.append(ComparisonRow(schedule=schedule, simulation=sim, fits=fits,
                                  costs=costs(schedule.num_model_stages)))
    return rows


def solve_mip_row(num_ranks, num_microbatches, costs, cap, options: "MipOptions | None",
                  progress: Callable | None = None) -> ComparisonRow:
    from dataclasses import replace

    from parplan.mip import MipOptions, solve_schedule

    result = solve_schedule(num_ranks=num_ranks, num_microbatches=num_microbatches, rank_costs=costs,
                            options=replace(options or MipOptions(placement="auto"), memory_cap=cap),
                            progress=progress)
    report = result.report().as_dict()
    fits = None if cap is None else max(result.simulation.peak_activation_per_rank) <= cap + 1e-9
    return ComparisonRow(schedule=result.schedule, simulation=result.simulation, fits=fits, solver=report,
                         costs=costs(result.schedule.num_model_stages))
