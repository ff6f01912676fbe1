"""Pipeline costs: the one cost description shared by the simulator, the baselines and the MIP.

A pipeline has S stages. Stage s costs `forward[s]` for one micro-batch's forward (F),
`backward_input[s]` for its input-gradient backward (I) and `backward_weight[s]` for its
weight-gradient backward (W); a full backward (B) costs I + W. Units are whatever the
caller uses (seconds from the cost model, or unit times in tests), consistently.

Memory follows the reference's accounting: one (stage, micro-batch) holds
`activation[s]` from the start of its F until its W ends (until its B ends when the
backward is not split); a rank holds `params[s]` for every stage placed on it.

Transfers: stage s's output activation (and, going back, the gradient of the same
shape) takes `transfer[s]` to reach stage s+1 when the two sit on different ranks; a
hand-off on the same rank is free. Transfers are delays, not rank time: they overlap
compute (their contention is the cost model's business, folded into these numbers).

An overlapped F&B cell (DualPipe's F&B) runs one F and one backward of different
micro-batches together. A stage with `phases` (its parts on the compute and communication
lanes, `parplan.schedule.phases`: an MoE layer's all-to-alls under expert parallelism)
gets the cell its parts give, one micro-batch's all-to-all hidden under the other's
compute; without parts a cell lasts `overlap_ratio × (F + backward)`. The default 1.0 is
"no gain": two computes on one GPU do not finish sooner together (the H100 overlap
measurements), and a cell with nothing to hide runs its halves one after the other.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace

from parplan.errors import ParplanError
from parplan.schedule.phases import Segment, StagePhases, action_parts, in_line, lay_out

__all__ = ["PipelineCosts", "parse_cost_spec"]


def _check_tuple(name: str, values: tuple[float, ...], num_stages: int) -> None:
    if len(values) != num_stages:
        raise ParplanError(
            f"costs.{name} has {len(values)} entries but there are {num_stages} stages; "
            f"give one value per stage"
        )
    for s, v in enumerate(values):
        if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v) or v < 0:
            raise ParplanError(
                f"costs.{name}[{s}] = {v!r} is invalid: costs must be finite and >= 0; "
                f"use 0 for a free step"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineCosts:
    forward: tuple[float, ...]
    backward_input: tuple[float, ...]
    backward_weight: tuple[float, ...]
    transfer: tuple[float, ...]
    activation: tuple[float, ...]
    params: tuple[float, ...]
    overlap_ratio: float = 1.0
    phases: tuple[StagePhases | None, ...] | None = None  # per stage, None: one stretch of compute
    comm_slowdown: float = 0.0  # compute runs 1 / (1 + this) slower beside an all-to-all
    num_stages: int = field(init=False)
    # cell durations asked of these costs, by (stage, kind) atoms: the MIP and the simulator
    # ask for the same pairs many times
    _cells: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        num_stages = len(self.forward)
        if num_stages < 1:
            raise ParplanError("costs.forward is empty; a pipeline needs at least one stage")
        object.__setattr__(self, "num_stages", num_stages)
        for name in ("forward", "backward_input", "backward_weight", "transfer", "activation", "params"):
            values = tuple(float(v) for v in getattr(self, name))
            object.__setattr__(self, name, values)
            _check_tuple(name, values, num_stages)
        r = self.overlap_ratio
        if not (isinstance(r, (int, float)) and 0 < r <= 1e6 and not math.isnan(r)):
            raise ParplanError(
                f"costs.overlap_ratio = {r!r} is invalid: an F&B cell lasts ratio × (F + B) "
                f"with ratio > 0; use 1.0 for no overlap gain"
            )
        if not (isinstance(self.comm_slowdown, (int, float)) and 0 <= self.comm_slowdown < 10):
            raise ParplanError(f"costs.comm_slowdown = {self.comm_slowdown!r} is invalid: need 0 <= value < 10")
        if self.phases is not None:
            object.__setattr__(self, "phases", tuple(self.phases))
            self._check_phases()

    def _check_phases(self) -> None:
        if len(self.phases) != self.num_stages:
            raise ParplanError(f"costs.phases has {len(self.phases)} entries for {self.num_stages} stages")
        for s, ph in enumerate(self.phases):
            if ph is None:
                continue
            for kind, total in (("forward", self.forward[s]), ("backward_input", self.backward_input[s]),
                                ("backward_weight", self.backward_weight[s])):
                parts = ph.total(kind)
                if (parts or total) and not math.isclose(parts, total, rel_tol=1e-6, abs_tol=1e-12):
                    raise ParplanError(f"costs.phases[{s}].{kind} sums to {parts:g} but costs.{kind}[{s}] is "
                                       f"{total:g}; a stage's parts must add up to its task")

    # ---- construction -------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        num_stages: int,
        *,
        f: float = 1.0,
        i: float = 1.0,
        w: float = 1.0,
        c: float = 0.0,
        fb: float | None = None,
        activation: float = 1.0,
        params: float = 1.0,
        a2a: float = 0.0,
        comm_slowdown: float = 0.0,
    ) -> "PipelineCosts":
        """Every stage alike. `fb` is the F&B cell duration (default F + I + W: no gain).

        `a2a` > 0 makes each stage an MoE layer under expert parallelism: its F is attention
        (F/2), a dispatch all-to-all (a2a/2), experts (F/2) and a combine (a2a/2); its I the
        same parts reversed (I/2 each, the same all-to-alls); its W two halves, each after
        its part's I. F and I then last F + a2a and I + a2a in line; cells can hide the
        all-to-alls (`parplan.schedule.phases`)."""
        if num_stages < 1:
            raise ParplanError(f"num_stages = {num_stages} is invalid: need at least 1 stage")
        full = f + i + w
        ratio = 1.0 if fb is None else (fb / full if full > 0 else 1.0)
        n = num_stages
        phases = (_moe_layer_phases(f, i, w, a2a),) * n if a2a > 0 else None
        return cls(
            forward=(f + (a2a if phases else 0.0),) * n,
            backward_input=(i + (a2a if phases else 0.0),) * n,
            backward_weight=(w,) * n,
            transfer=(c,) * n,
            activation=(activation,) * n,
            params=(params,) * n,
            overlap_ratio=ratio,
            phases=phases,
            comm_slowdown=comm_slowdown,
        )

    def scaled(self, factor: float) -> "PipelineCosts":
        """Compute times, activations and params × factor (a stage split into 1/factor chunks).

        Transfer times stay: a boundary activation does not shrink when a stage does.
        """
        mul = lambda xs: tuple(x * factor for x in xs)  # noqa: E731
        return replace(
            self,
            forward=mul(self.forward),
            backward_input=mul(self.backward_input),
            backward_weight=mul(self.backward_weight),
            activation=mul(self.activation),
            params=mul(self.params),
            phases=None if self.phases is None else tuple(p and p.scaled(factor) for p in self.phases),
        )

    def restaged(self, model_stage: tuple[int, ...]) -> "PipelineCosts":
        """Costs of a schedule whose stage k computes model stage `model_stage[k]`.

        DualPipe runs each model stage twice (once per direction): its 2N schedule stages
        map onto N model stages and inherit their costs.
        """
        pick = lambda xs: tuple(xs[m] for m in model_stage)  # noqa: E731
        return replace(
            self,
            forward=pick(self.forward),
            backward_input=pick(self.backward_input),
            backward_weight=pick(self.backward_weight),
            transfer=pick(self.transfer),
            activation=pick(self.activation),
            params=pick(self.params),
            phases=None if self.phases is None else pick(self.phases),
        )

    # ---- queries --------------------------------------------------------------------
    def backward(self, stage: int) -> float:
        return self.backward_input[stage] + self.backward_weight[stage]

    def overlap(self, forward_time: float, backward_time: float) -> float:
        return self.overlap_ratio * (forward_time + backward_time)

    @property
    def communicates(self) -> bool:
        """Some stage has an all-to-all a cell could hide."""
        return self.phases is not None and any(p is not None and p.communicates for p in self.phases)

    def task_time(self, stage: int, kind: str) -> float:
        """One plain action (F, I, W or B) run in line."""
        if kind == "F":
            return self.forward[stage]
        if kind == "I":
            return self.backward_input[stage]
        if kind == "W":
            return self.backward_weight[stage]
        return self.backward(stage)

    def cell_time(self, atoms: tuple[tuple[int, str], ...]) -> float:
        """An F&B cell running `atoms` ((stage, kind) of its plain actions) together."""
        hit = self._cells.get(atoms)
        if hit is None:
            if not self.communicates:
                fwd = sum(self.task_time(s, k) for s, k in atoms if k == "F")
                hit = self.overlap(fwd, sum(self.task_time(s, k) for s, k in atoms if k != "F"))
            else:
                hit = max((p.end for p in self.cell_parts(atoms)), default=0.0)
            self._cells[atoms] = hit
        return hit

    def cell_parts(self, atoms: tuple[tuple[int, str], ...]):
        """The cell's parts timed on the compute and communication lanes (offsets from its start)."""
        key = tuple((self._phases_of(s), k) for s, k in atoms)
        return _laid_out(key, self.comm_slowdown if self.communicates else None)

    def _phases_of(self, stage: int) -> StagePhases:
        ph = self.phases[stage] if self.phases is not None else None
        if ph is None:  # one stretch of compute per kind
            ph = _compute_only(self.forward[stage], self.backward_input[stage], self.backward_weight[stage])
        return ph

    def to_dict(self) -> dict:
        return {
            "forward": list(self.forward),
            "backward_input": list(self.backward_input),
            "backward_weight": list(self.backward_weight),
            "transfer": list(self.transfer),
            "activation": list(self.activation),
            "params": list(self.params),
            "overlap_ratio": self.overlap_ratio,
            **({} if self.phases is None else {"phases": [None if p is None else p.to_dict() for p in self.phases]}),
            # written whenever set (it only acts with phases), so that the file reads back equal
            **({"comm_slowdown": self.comm_slowdown} if self.phases is not None or self.comm_slowdown else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PipelineCosts":
        keys = {"forward", "backward_input", "backward_weight", "transfer", "activation", "params"}
        missing = keys - set(data)
        if missing:
            raise ParplanError(f"costs are missing {sorted(missing)}; every per-stage list is required")
        phases = data.get("phases")
        return cls(**{k: tuple(data[k]) for k in keys}, overlap_ratio=float(data.get("overlap_ratio", 1.0)),
                   phases=None if phases is None else tuple(p and StagePhases.from_dict(p) for p in phases),
                   comm_slowdown=float(data.get("comm_slowdown", 0.0)))


@functools.lru_cache(maxsize=65536)
def _laid_out(atoms: tuple[tuple[StagePhases, str], ...], slowdown: float | None):
    """Memoised on the atoms' phases (hashed once each): a planner prices the same stage
    pairs in every problem it builds. `slowdown` None: in line, nothing to overlap."""
    parts = [action_parts(ph, kind) for ph, kind in atoms]
    return tuple(in_line(parts) if slowdown is None else lay_out(parts, comm_slowdown=slowdown))


def _moe_layer_phases(f: float, i: float, w: float, a2a: float) -> StagePhases:
    """One MoE layer's parts (`PipelineCosts.uniform(a2a=...)`)."""
    half = lambda x, label: Segment("compute", x / 2, label)  # noqa: E731
    comm = lambda label: Segment("comm", a2a / 2, label)  # noqa: E731
    return StagePhases(
        forward=(half(f, "attention"), comm("dispatch"), half(f, "experts"), comm("combine")),
        backward_input=(comm("combine"), half(i, "experts"), comm("dispatch"), half(i, "attention")),
        backward_weight=(Segment("compute", w / 2, "experts", after=(-2,)),
                         Segment("compute", w / 2, "attention", after=(-4,))))


@functools.lru_cache(maxsize=4096)
def _compute_only(forward: float, backward_input: float, backward_weight: float) -> StagePhases:
    return StagePhases((Segment("compute", forward, "F"),), (Segment("compute", backward_input, "I"),),
                       (Segment("compute", backward_weight, "W"),))


_COST_KEYS = {"F": "f", "I": "i", "W": "w", "FB": "fb", "C": "c", "B": "b", "A2A": "a2a", "SLOW": "comm_slowdown"}
_COST_ITEM = re.compile(r"^\s*([A-Za-z][A-Za-z0-9&]*)\s*=\s*([^,]+?)\s*$")


def parse_cost_spec(spec: str) -> dict[str, float]:
    """Parse `F=1,I=1.2,W=0.8,FB=3,C=0.1` into keyword arguments of `PipelineCosts.uniform`.

    `B=x` (full backward) without I/W splits it evenly; F&B may be written FB. `A2A=x`: each
    F and each I also runs x of MoE all-to-all (dispatch and combine) that cells can hide;
    `SLOW=s`: compute beside an all-to-all runs 1 / (1 + s) as fast.
    """
    values: dict[str, float] = {}
    for item in spec.split(","):
        match = _COST_ITEM.match(item)
        if not match:
            raise ParplanError(
                f"--cost item {item!r} is malformed: expected KEY=NUMBER with KEY in "
                f"{sorted(_COST_KEYS)}, e.g. --cost F=1,I=1.2,W=0.8,C=0.1"
            )
        key, raw = match.group(1).upper().replace("&", ""), match.group(2)
        if key not in _COST_KEYS:
            raise ParplanError(
                f"--cost key {match.group(1)!r} is unknown: use one of {sorted(_COST_KEYS)} "
                f"(F forward, I backward-input, W backward-weight, B full backward, FB overlapped F&B cell, C transfer, "
                f"A2A all-to-all per F and per I, SLOW compute slowdown beside an all-to-all)"
            )
        try:
            number = float(raw)
        except ValueError:
            raise ParplanError(f"--cost {key}={raw!r} is not a number; write e.g. {key}=1.5") from None
        if math.isnan(number) or math.isinf(number) or number < 0:
            raise ParplanError(f"--cost {key}={raw} is invalid: costs must be finite and >= 0")
        if _COST_KEYS[key] in values:
            raise ParplanError(f"--cost gives {key} twice; give each key once")
        values[_COST_KEYS[key]] = number
    if "b" in values:
        b = values.pop("b")
        if "i" in values or "w" in values:
            if abs(values.get("i", b / 2) + values.get("w", b / 2) - b) > 1e-9:
                raise ParplanError(
                    f"--cost B={b} disagrees with I + W = {values.get('i')} + {values.get('w')}; "
                    f"give B, or I and W, not conflicting values"
                )
        values.setdefault("i", b / 2)
        values.setdefault("w", b - values["i"])
    return values
