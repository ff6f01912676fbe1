"""The plan file: what to run where and when, as nested frozen dataclasses (`plan.json`).

A plan is data only — the algorithms that produce it (`parplan.runtime.chain.plan_chain`
for chain plans, the bi-level planner in `parplan.planner`), the runtime that executes it
and the renderers that draw it (`parplan.render`) read and write these classes; this
module imports none of them. `Plan.save` / `Plan.load` round-trip exactly; the format is
versioned and documented field by field in docs/plan-format.md.

Units: times are in the plan's `time_unit` ("s" when the costs were measured or come
from the cost model, "unit" for abstract costs); memory in its `memory_unit` ("bytes" or
"unit", one stage's activation for one micro-batch).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from parplan.schedule.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.schedule.ir import Action, Schedule

__all__ = [
    "PLAN_FORMAT_VERSION",
    "TIMING_FIELDS",
    "without_timing",
    "ModelSummary",
    "ClusterSummary",
    "StagePlan",
    "PlannedAction",
    "PredictedMetrics",
    "EvaluatedConfig",
    "Techniques",
    "RECOMPUTE_MODES",
    "Plan",
    "model_fingerprint",
]

PLAN_FORMAT_VERSION = 1

Mode = Literal["train", "inference"]
TimeUnit = Literal["s", "unit"]
Recompute = Literal["none", "selective", "full"]
RECOMPUTE_MODES: tuple[str, ...] = ("none", "selective", "full")
MemoryUnit = Literal["bytes", "unit"]


# plan.json's wall-clock fields: the only ones that may differ between two runs of the
# same input (the search is bounded by work, parplan.budget).
TIMING_FIELDS = ("seconds", "solve_seconds")


def without_timing(data):
    """`Plan.to_dict()` (or any part of it) without its wall-clock fields."""
    if isinstance(data, dict):
        return {k: without_timing(v) for k, v in data.items() if k not in TIMING_FIELDS}
    if isinstance(data, list):
        return [without_timing(v) for v in data]
    return data


def model_fingerprint(model) -> str:
    """sha256 of the module tree's class names and every parameter/buffer name, shape, dtype.

    Works on the meta device (no weights needed). Two models with the same fingerprint
    have the same structure, so a plan made for one splits the other the same way.
    """
    lines = [f"{name or '<root>'}:{type(m).__name__}" for name, m in model.named_modules()]
    lines += [f"P {n} {tuple(p.shape)} {p.dtype}" for n, p in model.named_parameters(remove_duplicate=False)]
    lines += [f"B {n} {tuple(b.shape)} {b.dtype}" for n, b in model.named_buffers()]
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSummary:
    spec: str  # zoo spec `gpt:hidden=64,layers=4` or `path/to/file.py:factory`
    batch: int  # the whole step's batch; micro-batches are batch / num_microbatches
    seq: int
    num_parameters: int
    fingerprint: str  # model_fingerprint(model)

    def __post_init__(self) -> None:
        if self.batch < 1 or self.seq < 1:
            raise ParplanError(f"plan model: batch={self.batch}, seq={self.seq} must both be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSummary:
    name: str
    devices: tuple[dict[str, Any], ...]  # one free-form record per rank, at least {"name": ...}

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(dict(d) for d in self.devices))
        nameless = [k for k, d in enumerate(self.devices) if "name" not in d]
        if nameless:
            raise ParplanError(f"plan cluster {self.name!r}: device {nameless[0]} has no 'name'")


@dataclass(frozen=True, kw_only=True, slots=True)
class StagePlan:
    """One schedule stage: where it runs and which model pieces it computes, in order.

    `receives` names the tensors that enter the stage from the previous one, in order
    (stage 0: the model's inputs); `passes` names those among them it hands on unchanged
    to the next stage because a later stage reads them (a skip or branch value). A chain
    of stages thereby carries any DAG (see docs/runtime.md). Names are labels (graph
    value names for chain plans, or the planner's).
    """

    index: int
    rank: int
    pieces: tuple[str, ...]
    receives: tuple[str, ...] = ()
    passes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("pieces", "receives", "passes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.pieces:
            raise ParplanError(f"plan stage {self.index} has no pieces; every stage must run part of the model")
        unknown = sorted(set(self.passes) - set(self.receives))
        if unknown:
            raise ParplanError(
                f"plan stage {self.index} passes {unknown} it does not receive; a stage can only hand on "
                f"tensors it received (list them in 'receives')"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedAction:
    action: Action
    start: float
    end: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Techniques:
    """The memory techniques a plan runs with (what torchtitan / Megatron users configure).

    `zero`: 0 replicates everything over the data-parallel group; 1 shards optimizer
    state, 2 also gradients, 3 also parameters (FSDP), each over the `dp_shard` replicas
    of a shard group; `dp_replicate` such groups hold copies (FSDP's hybrid layout,
    torchtitan's data_parallel_replicate_degree × data_parallel_shard_degree), so
    dp_shard × dp_replicate is the data-parallel degree. `recompute`: activation
    recomputation of the layers (none, selective: the attention core, full: the whole
    layer from its input). `sequence_parallel`: Megatron's sequence parallelism beside
    tensor parallelism.
    """

    zero: int = 1
    dp_shard: int = 1
    dp_replicate: int = 1
    recompute: Recompute = "none"
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.zero, bool) or self.zero not in (0, 1, 2, 3):
            raise ParplanError(f"ZeRO level {self.zero!r} is unknown; use 0, 1, 2 or 3")
        for name in ("dp_shard", "dp_replicate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParplanError(f"{name} {value!r} is invalid: a data-parallel degree is an integer >= 1")
        if self.recompute not in RECOMPUTE_MODES:
            raise ParplanError(f"recompute {self.recompute!r} is unknown; use {', '.join(RECOMPUTE_MODES)}")
        if not isinstance(self.sequence_parallel, bool):
            raise ParplanError(f"sequence_parallel {self.sequence_parallel!r} must be true or false")

    @property
    def dp(self) -> int:
        return self.dp_shard * self.dp_replicate

    def label(self) -> str:
        """Short words for tables: `ZeRO-3 (shard 4 × replicate 2), recompute full, SP`."""
        layout = f" (shard {self.dp_shard} × replicate {self.dp_replicate})" if self.dp_replicate > 1 else ""
        zero = f"ZeRO-{self.zero}{layout}" if self.dp > 1 else "no DP"
        return ", ".join([zero] + ([f"recompute {self.recompute}"] if self.recompute != "none" else [])
                         + (["SP"] if self.sequence_parallel else []))

    def to_dict(self) -> dict:
        return {"zero": self.zero, "dp_shard": self.dp_shard, "dp_replicate": self.dp_replicate,
                "recompute": self.recompute, "sequence_parallel": self.sequence_parallel}

    @classmethod
    def from_dict(cls, data: dict) -> "Techniques":
        return cls(zero=int(data["zero"]), dp_shard=int(data["dp_shard"]), dp_replicate=int(data["dp_replicate"]),
                   recompute=data["recompute"], sequence_parallel=bool(data["sequence_parallel"]))


@dataclass(frozen=True, kw_only=True, slots=True)
class PredictedMetrics:
    step_time: float  # in the plan's time_unit: the simulated makespan of one step
    bubble_ratio: float  # 1 − Σ busy / (ranks × step_time)
    peak_activation_per_rank: tuple[float, ...]
    params_per_rank: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak_activation_per_rank", tuple(self.peak_activation_per_rank))
        object.__setattr__(self, "params_per_rank", tuple(self.params_per_rank))

    @property
    def peak_memory_per_rank(self) -> tuple[float, ...]:
        return tuple(a + p for a, p in zip(self.peak_activation_per_rank, self.params_per_rank))


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluatedConfig:
    """A hand configuration `parplan plan --schedule` timed as given, not searched: the
    choices it fixed, and what it costs (`parplan.planner.evaluate`)."""

    schedule: str  # the expert schedule (a `parplan.baselines` name)
    chunks: int | None  # --chunks as given; None: the schedule's own count
    placement: str  # the placement family the schedule runs on
    pp: int
    dp: int
    tp: int
    ep: int
    microbatches: int  # per step, all data-parallel replicas together (-m)
    step_time: float  # in the plan's time_unit: the makespan plus the gradient sync after it
    peak_memory_per_rank: tuple[float, ...]  # per pipeline rank: parameters, gradients, optimizer, activations
    memory_cap: float  # the cap it was checked against (memory_unit)
    options: dict[str, Any] = field(default_factory=dict)  # the other planner choices in force, by field name

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak_memory_per_rank", tuple(float(x) for x in self.peak_memory_per_rank))
        # plain JSON values, so that the file reads back exactly what was written
        object.__setattr__(self, "options", json.loads(json.dumps(dict(self.options))))
        bad = [(k, v) for k, v in (("pp", self.pp), ("dp", self.dp), ("tp", self.tp), ("ep", self.ep),
                                   ("microbatches", self.microbatches)) if not isinstance(v, int) or v < 1]
        if bad:
            raise ParplanError(f"plan evaluated.{bad[0][0]} = {bad[0][1]!r}: a degree or count is an integer >= 1")

    def to_dict(self) -> dict:
        return {"schedule": self.schedule, "chunks": self.chunks, "placement": self.placement, "pp": self.pp,
                "dp": self.dp, "tp": self.tp, "ep": self.ep, "microbatches": self.microbatches,
                "step_time": self.step_time, "peak_memory_per_rank": list(self.peak_memory_per_rank),
                "memory_cap": self.memory_cap, "options": self.options}

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluatedConfig":
        chunks = d["chunks"]
        return cls(schedule=_text(d["schedule"]), chunks=None if chunks is None else int(chunks),
                   placement=_text(d["placement"]), pp=int(d["pp"]), dp=int(d["dp"]), tp=int(d["tp"]),
                   ep=int(d["ep"]), microbatches=int(d["microbatches"]), step_time=float(d["step_time"]),
                   peak_memory_per_rank=tuple(float(x) for x in d["peak_memory_per_rank"]),
                   memory_cap=float(d["memory_cap"]), options=dict(d["options"]))


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    model: ModelSummary
    cluster: ClusterSummary
    mode: Mode
    num_microbatches: int  # per step, all chains together
    stages: tuple[StagePlan, ...]
    schedule: Schedule
    costs: PipelineCosts  # per model stage, in time_unit / memory_unit
    time_unit: TimeUnit
    memory_unit: MemoryUnit
    timeline: tuple[tuple[PlannedAction, ...], ...]  # per rank, in the schedule's order
    predicted: PredictedMetrics
    solver: dict[str, dict[str, Any]] = field(default_factory=dict)  # one free report per planning level
    evaluated: EvaluatedConfig | None = None  # set when a fixed configuration was timed instead of searched
    techniques: Techniques | None = None  # the planner's memory techniques (None: a chain plan, none used)
    version: int = PLAN_FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "timeline", tuple(tuple(row) for row in self.timeline))
        s = self.schedule
        if self.mode not in ("train", "inference"):
            raise ParplanError(f"plan mode {self.mode!r} is unknown; use 'train' or 'inference'")
        if self.time_unit not in ("s", "unit") or self.memory_unit not in ("bytes", "unit"):
            raise ParplanError(
                f"plan units time={self.time_unit!r}, memory={self.memory_unit!r}: use time 's' or 'unit', "
                f"memory 'bytes' or 'unit'"
            )
        if [st.index for st in self.stages] != list(range(s.num_stages)):
            raise ParplanError(
                f"plan stages are numbered {[st.index for st in self.stages]} but schedule {s.name!r} has "
                f"stages 0..{s.num_stages - 1}; give one StagePlan per schedule stage, in order"
            )
        moved = [st.index for st in self.stages if st.rank != s.stage_to_rank[st.index]]
        if moved:
            k = moved[0]
            raise ParplanError(
                f"plan stage {k} is on rank {self.stages[k].rank} but the schedule places it on rank "
                f"{s.stage_to_rank[k]}; the two placements must agree"
            )
        if self.num_microbatches != s.total_microbatches:
            raise ParplanError(
                f"plan num_microbatches={self.num_microbatches} but schedule {s.name!r} runs "
                f"{s.total_microbatches}"
            )
        if self.model.batch % self.num_microbatches:
            raise ParplanError(
                f"batch {self.model.batch} is not divisible by {self.num_microbatches} micro-batches; "
                f"pick a batch that is a multiple of the micro-batch count"
            )
        if len(self.timeline) != s.num_ranks or len(self.cluster.devices) != s.num_ranks:
            raise ParplanError(
                f"plan has {len(self.timeline)} timeline rows and {len(self.cluster.devices)} devices for "
                f"{s.num_ranks} ranks; give one of each per rank"
            )

    # ---- queries --------------------------------------------------------------------
    @property
    def num_ranks(self) -> int:
        return self.schedule.num_ranks

    @property
    def microbatch_size(self) -> int:
        return self.model.batch // self.num_microbatches

    def overlap_note(self) -> str | None:
        """What a run cannot reproduce of the prediction: the all-to-alls its F&B cells hide.
        The runtime executes a cell's two halves one after the other, each all-to-all in line."""
        cells = sum(1 for order in self.schedule.orders for a in order if a.sub_actions)
        if not cells or not self.costs.communicates:
            return None
        return (f"note: the prediction hides all-to-alls under the other micro-batch's compute inside {cells} F&B "
                f"cells; parplan run executes each cell's halves one after the other (dispatch and combine in "
                f"line), so a run measures the in-line time of those cells, not the overlap")

    def stages_of_rank(self, rank: int) -> tuple[StagePlan, ...]:
        return tuple(st for st in self.stages if st.rank == rank)

    # ---- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": "parplan-plan",
            "version": self.version,
            "model": {
                "spec": self.model.spec, "batch": self.model.batch, "seq": self.model.seq,
                "num_parameters": self.model.num_parameters, "fingerprint": self.model.fingerprint,
            },
            "cluster": {"name": self.cluster.name, "devices": [dict(d) for d in self.cluster.devices]},
            "mode": self.mode,
            "num_microbatches": self.num_microbatches,
            "time_unit": self.time_unit,
            "memory_unit": self.memory_unit,
            "stages": [
                {"index": st.index, "rank": st.rank, "pieces": list(st.pieces),
                 "receives": list(st.receives), "passes": list(st.passes)}
                for st in self.stages
            ],
            "schedule": self.schedule.to_dict(),
            "costs": self.costs.to_dict(),
            "timeline": [[[str(t.action), t.start, t.end] for t in row] for row in self.timeline],
            "predicted": {
                "step_time": self.predicted.step_time,
                "bubble_ratio": self.predicted.bubble_ratio,
                "peak_activation_per_rank": list(self.predicted.peak_activation_per_rank),
                "params_per_rank": list(self.predicted.params_per_rank),
                "peak_memory_per_rank": list(self.predicted.peak_memory_per_rank),
            },
            "solver": self.solver,
            "evaluated": None if self.evaluated is None else self.evaluated.to_dict(),
            "techniques": self.techniques.to_dict() if self.techniques is not None else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "plan") -> "Plan":
        if not isinstance(data, dict) or data.get("format") != "parplan-plan":
            raise ParplanError(f"{source} is not a parplan plan (no \"format\": \"parplan-plan\"); "
                               f"make one with `parplan plan-chain` or parplan.plan_chain")
        if data.get("version") != PLAN_FORMAT_VERSION:
            raise ParplanError(
                f"{source} has plan format version {data.get('version')!r}; this parplan reads version "
                f"{PLAN_FORMAT_VERSION}. Regenerate the plan with this parplan"
            )
        try:
            m, c, p = data["model"], data["cluster"], data["predicted"]
            return cls(
                model=ModelSummary(spec=_text(m["spec"]), batch=int(m["batch"]), seq=int(m["seq"]),
                                   num_parameters=int(m["num_parameters"]), fingerprint=_text(m["fingerprint"])),
                cluster=ClusterSummary(name=_text(c["name"]), devices=tuple(c["devices"])),
                mode=data["mode"],
                num_microbatches=int(data["num_microbatches"]),
                time_unit=data["time_unit"],
                memory_unit=data["memory_unit"],
                stages=tuple(
                    StagePlan(index=int(st["index"]), rank=int(st["rank"]), pieces=_texts(st["pieces"]),
                              receives=_texts(st.get("receives", ())), passes=_texts(st.get("passes", ())))
                    for st in data["stages"]
                ),
                schedule=Schedule.from_dict(data["schedule"]),
                costs=PipelineCosts.from_dict(data["costs"]),
                timeline=tuple(
                    tuple(PlannedAction(action=Action.parse(a), start=float(t0), end=float(t1)) for a, t0, t1 in row)
                    for row in data["timeline"]
                ),
                predicted=PredictedMetrics(
                    step_time=float(p["step_time"]), bubble_ratio=float(p["bubble_ratio"]),
                    peak_activation_per_rank=tuple(float(x) for x in p["peak_activation_per_rank"]),
                    params_per_rank=tuple(float(x) for x in p["params_per_rank"]),
                ),
                solver=dict(data.get("solver", {})),
                evaluated=None if data.get("evaluated") is None else EvaluatedConfig.from_dict(data["evaluated"]),
                techniques=Techniques.from_dict(data["techniques"]) if data.get("techniques") else None,
                version=data["version"],
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            if isinstance(err, ParplanError):
                raise ParplanError(f"{source}: {err}") from None
            what = f"lacks the field {err}" if isinstance(err, KeyError) else f"is malformed ({err})"
            raise ParplanError(f"{source} {what}; regenerate it with parplan") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "plan") -> "Plan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ParplanError(f"{source} is not valid JSON ({err}); regenerate it with parplan") from None
        return cls.from_dict(data, source=source)

    def save(self, path: str | Path) -> None:
        from parplan.io import write_outputs

        write_outputs({str(path): self.to_json()})

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "it is not UTF-8 text"
            raise ParplanError(f"plan file {str(path)!r} cannot be read: {reason}; give a plan.json "
                               f"parplan wrote") from None
        return cls.from_json(text, source=f"plan file {str(path)!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _texts(values: Any) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{values!r} is not a list of strings")
    return tuple(_text(v) for v in values)
