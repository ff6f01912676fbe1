"""A stage task's parts on a device's two lanes: compute and communication.

A stage's forward, input-gradient backward (I) and weight-gradient backward (W) are, for
most models, one stretch of compute. An MoE layer under expert parallelism is not: its
forward is attention (+ router) on the compute lane, the dispatch all-to-all on the
communication lane, the experts on compute, the combine all-to-all on communication; its
backward runs the same parts in reverse (the combine's gradient is a dispatch-shaped
all-to-all, and the other way round). `StagePhases` lists those parts, as the traced DAG
gives them, for one stage and one micro-batch.

Run in line — as torch.distributed.pipelining and plain autograd run a stage — every part
waits for the one before it, so the task lasts the sum of its parts: an all-to-all is
exposed. Inside an overlapped F&B cell (DualPipe's, or Megatron's combined 1F1B) the parts
of two micro-batches share the lanes: one's all-to-all runs while the other computes, which
is what those schedules exist for. `lay_out` times a cell's parts by list scheduling on the
two lanes and never returns longer than the parts back to back (a cell can always run its
halves one after the other, which is what DualPipe's code does with nothing to hide).

Compute beside a running all-to-all is slowed by `comm_slowdown` (the communication kernels
take streaming multiprocessors from compute: DeepSeek-V3 gives 20 of an H800's 132 to them).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

from parplan.errors import ParplanError

__all__ = ["Segment", "StagePhases", "PlacedSegment", "action_parts", "lay_out", "in_line", "COMPUTE", "COMM"]

Lane = Literal["compute", "comm"]
COMPUTE: Lane = "compute"
COMM: Lane = "comm"


@dataclass(frozen=True, slots=True)
class Segment:
    """One part of a task. `after` indexes the parts of the same list it waits for
    (None: the one before it, so a plain list is a chain)."""

    lane: Lane
    seconds: float
    label: str
    after: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.lane not in (COMPUTE, COMM):
            raise ParplanError(f"segment lane {self.lane!r} is unknown; use 'compute' or 'comm'")
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds >= 0):
            raise ParplanError(f"segment {self.label!r} lasts {self.seconds!r}: durations must be finite and >= 0")

    def waits_for(self, index: int) -> tuple[int, ...]:
        return (index - 1,) if self.after is None and index > 0 else (self.after or ())

    def to_dict(self) -> dict:
        out = {"lane": self.lane, "seconds": self.seconds, "label": self.label}
        if self.after is not None:
            out["after"] = list(self.after)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Segment":
        after = data.get("after")
        return cls(data["lane"], float(data["seconds"]), data["label"], None if after is None else tuple(after))


Parts = tuple[Segment, ...]


def _check_parts(parts: Parts, where: str, *, input_parts: int = 0) -> None:
    """Each part waits only for earlier parts of its list; a W part may also name I part k
    of the `input_parts` as −(k+1)."""
    for k, seg in enumerate(parts):
        for i in seg.waits_for(k):
            earlier = 0 <= i < k
            an_input_part = i < 0 and -i <= input_parts
            if not (earlier or an_input_part):
                raise ParplanError(f"{where} part {k} ({seg.label}) waits for part {i}: a part waits only for "
                                   f"earlier parts (a W part also for I part k, written -(k+1))")


@dataclass(frozen=True, slots=True)
class StagePhases:
    """A stage's parts for one micro-batch. A W part may wait for I parts: its `after`
    holds negative numbers −(k+1) for I part k (its layer's input gradient).

    Hashed once (cells are laid out per pair of stages, memoised on their phases)."""

    forward: Parts
    backward_input: Parts
    backward_weight: Parts = ()
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        return self._hash

    def __post_init__(self) -> None:
        for name in ("forward", "backward_input", "backward_weight"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_parts(self.forward, "forward")
        _check_parts(self.backward_input, "backward_input")
        _check_parts(self.backward_weight, "backward_weight", input_parts=len(self.backward_input))
        if any(s.lane == COMM for s in self.backward_weight):
            raise ParplanError("a weight-gradient part communicates: W is compute only (its reduce runs after the step)")
        object.__setattr__(self, "_hash", hash((self.forward, self.backward_input, self.backward_weight)))

    @property
    def communicates(self) -> bool:
        return any(s.lane == COMM and s.seconds > 0 for s in (*self.forward, *self.backward_input))

    def total(self, kind: str) -> float:
        return sum(s.seconds for s in getattr(self, kind))

    def comm_seconds(self) -> float:
        return sum(s.seconds for s in (*self.forward, *self.backward_input) if s.lane == COMM)

    def padded(self, forward: float, backward_input: float, backward_weight: float = 0.0) -> "StagePhases":
        """The same parts with extra seconds on the last compute part of F, I and W (the
        contention of a pipeline send and the runtime's per-action overhead folded into
        compute, `placement_costs`)."""
        def pad(parts: Parts, extra: float) -> Parts:
            if not extra:
                return parts
            k = max(i for i, s in enumerate(parts) if s.lane == COMPUTE)
            s = parts[k]
            return parts[:k] + (Segment(s.lane, s.seconds + extra, s.label, s.after),) + parts[k + 1:]
        return StagePhases(pad(self.forward, forward), pad(self.backward_input, backward_input),
                           pad(self.backward_weight, backward_weight))

    def scaled(self, factor: float) -> "StagePhases":
        def mul(parts: Parts) -> Parts:
            return tuple(Segment(s.lane, s.seconds * factor, s.label, s.after) for s in parts)
        return StagePhases(mul(self.forward), mul(self.backward_input), mul(self.backward_weight))

    def to_dict(self) -> dict:
        return {k: [s.to_dict() for s in getattr(self, k)] for k in ("forward", "backward_input", "backward_weight")}

    @classmethod
    def from_dict(cls, data: dict) -> "StagePhases":
        return cls(*(tuple(Segment.from_dict(s) for s in data.get(k, ()))
                     for k in ("forward", "backward_input", "backward_weight")))


@dataclass(frozen=True, slots=True)
class PlacedSegment:
    """A part timed inside its task or cell: offsets from the task's start."""

    atom: int  # which of the task's plain actions it belongs to
    lane: Lane
    label: str
    start: float
    end: float


@dataclass(slots=True)
class _Node:
    atom: int
    seg: Segment
    preds: list[int]
    succ: list[int] = field(default_factory=list)
    tail: float = 0.0  # longest path from this part's start to its atom's end


def _nodes(atom_parts: Sequence[Sequence[tuple[Segment, tuple[int, ...]]]]) -> list[_Node]:
    nodes: list[_Node] = []
    for a, parts in enumerate(atom_parts):
        base = len(nodes)
        nodes += [_Node(a, seg, [base + i for i in preds]) for seg, preds in parts]
    for k, n in enumerate(nodes):
        for p in n.preds:
            nodes[p].succ.append(k)
    for n in reversed(nodes):  # successors come later in the list
        n.tail = n.seg.seconds + max((nodes[m].tail for m in n.succ), default=0.0)
    return nodes


def action_parts(phases: "StagePhases", kind: str) -> list[tuple[Segment, tuple[int, ...]]]:
    """The parts one plain action runs, each with the parts (of this list) it waits for.

    kind is "F", "I", "W" or "B" (I then W: a W part's negative `after` entries name I
    parts; a W part without `after` waits for the part before it, the first for the last I).
    """
    def chain(parts: Parts) -> list[tuple[Segment, tuple[int, ...]]]:
        return [(s, tuple(i for i in s.waits_for(k) if i >= 0)) for k, s in enumerate(parts)]

    if kind == "F":
        return chain(phases.forward)
    if kind == "I":
        return chain(phases.backward_input)
    if kind == "W":
        return chain(phases.backward_weight)
    assert kind == "B", kind
    n_i = len(phases.backward_input)
    out = chain(phases.backward_input)
    for k, s in enumerate(phases.backward_weight):
        if s.after is None:
            preds = (n_i + k - 1,) if k > 0 else ((n_i - 1,) if n_i else ())
        else:
            preds = tuple(-i - 1 if i < 0 else n_i + i for i in s.after)
        out.append((s, preds))
    return out


def in_line(atom_parts: Sequence[Sequence[tuple[Segment, tuple[int, ...]]]]) -> list[PlacedSegment]:
    """Every part after the one before it, atom after atom: a task run without overlap."""
    out, t = [], 0.0
    for a, parts in enumerate(atom_parts):
        for seg, _ in parts:
            out.append(PlacedSegment(a, seg.lane, seg.label, t, t + seg.seconds))
            t += seg.seconds
    return out


def lay_out(atom_parts: Sequence[Sequence[tuple[Segment, tuple[int, ...]]]], *, comm_slowdown: float) -> list[PlacedSegment]:
    """List-schedule the parts of a cell's atoms on one compute and one communication lane.

    Each lane runs one part at a time; a ready part with the longest remaining path to its
    atom's end goes first (ties: earlier atom, earlier part), which starts all-to-alls
    early and fills their time with the other atom's compute. Compute runs at rate
    1 / (1 + comm_slowdown) while an all-to-all is in flight. The result is the faster of
    this layout and the parts in line.
    """
    serial = in_line(atom_parts)
    if len(atom_parts) < 2 or not any(seg.lane == COMM and seg.seconds > 0 for parts in atom_parts for seg, _ in parts):
        return serial
    placed = _simulate_lanes(_nodes(atom_parts), comm_slowdown)
    span = lambda ps: max((p.end for p in ps), default=0.0)  # noqa: E731
    return placed if span(placed) < span(serial) - 1e-15 else serial


def _simulate_lanes(nodes: list[_Node], slowdown: float) -> list[PlacedSegment]:
    """Event by event: at each part's end, every lane left free starts its best ready part."""
    waiting = [len(n.preds) for n in nodes]
    ready: dict[Lane, list] = {COMPUTE: [], COMM: []}
    for k, n in enumerate(nodes):
        if not waiting[k]:
            heapq.heappush(ready[n.seg.lane], (-n.tail, n.atom, k))
    start: dict[int, float] = {}
    done: dict[int, float] = {}
    running: dict[Lane, list | None] = {COMPUTE: None, COMM: None}  # [node, work left]
    t = 0.0
    while len(done) < len(nodes):
        for lane in (COMM, COMPUTE):  # comm first: a compute part's rate depends on it
            if running[lane] is None and ready[lane]:
                k = heapq.heappop(ready[lane])[2]
                start[k] = t
                running[lane] = [k, nodes[k].seg.seconds]
        rate = 1.0 / (1.0 + slowdown) if running[COMM] is not None else 1.0
        steps = [running[COMM][1]] if running[COMM] is not None else []
        if running[COMPUTE] is not None:
            steps.append(running[COMPUTE][1] / rate)
        dt = min(steps)
        t += dt
        for lane, r in ((COMM, 1.0), (COMPUTE, rate)):
            job = running[lane]
            if job is None:
                continue
            job[1] -= dt * r
            if job[1] <= 1e-15 * max(1.0, t):
                k = job[0]
                done[k] = t
                running[lane] = None
                for q in nodes[k].succ:
                    waiting[q] -= 1
                    if not waiting[q]:
                        heapq.heappush(ready[nodes[q].seg.lane], (-nodes[q].tail, nodes[q].atom, q))
    return [PlacedSegment(n.atom, n.seg.lane, n.seg.label, start[k], done[k]) for k, n in enumerate(nodes)]
