"""The schedule IR: one ordered list of actions per rank, as data.

Text form is torch.distributed.pipelining's, so PyTorch's schedules are reference answers
and our schedules load into its runtime: `2F0` (stage 2, forward, micro-batch 0), `7I3`
(backward-input), `7W3` (backward-weight), `1B4` (full backward) and the compound
`(0F7;7B3)OVERLAP_F_B` (DualPipe's overlapped F&B cell).

A schedule may run several *chains* of stages. Ordinary pipelines have one chain
0 → 1 → … → S−1. DualPipe has two (one per direction): its stage N+k is the second copy
of model stage k, fed from the other end, so `model_stage` maps schedule stages to the
model stages whose costs and parameters they carry. Each chain carries its own
micro-batches 0 … m−1.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from enum import Enum

from parplan.errors import ParplanError

__all__ = ["Kind", "Action", "Schedule", "SCHEDULE_FORMAT_VERSION"]

SCHEDULE_FORMAT_VERSION = 1


class Kind(str, Enum):
    F = "F"  # forward
    I = "I"  # backward for inputs only  # noqa: E741
    W = "W"  # backward for weights only
    B = "B"  # full backward (I then W)
    OVERLAP_F_B = "OVERLAP_F_B"  # one F and one backward of different micro-batches, overlapped


_ATOM = re.compile(r"^(\d+)(F|I|W|B)(\d+)$")
_COMPOUND = re.compile(r"^\((.*)\)(OVERLAP_F_B)$")


@dataclass(frozen=True, slots=True)
class Action:
    stage: int
    kind: Kind
    microbatch: int | None = None
    sub_actions: tuple["Action", ...] = ()

    def __post_init__(self) -> None:
        if self.kind is Kind.OVERLAP_F_B:
            assert len(self.sub_actions) >= 2 and all(not a.sub_actions for a in self.sub_actions)
        else:
            assert not self.sub_actions and self.microbatch is not None

    @classmethod
    def overlap(cls, *actions: "Action") -> "Action":
        return cls(-1, Kind.OVERLAP_F_B, None, tuple(actions))

    @property
    def atoms(self) -> tuple["Action", ...]:
        """The plain actions this one performs (itself, or an overlap cell's parts)."""
        return self.sub_actions if self.sub_actions else (self,)

    def __str__(self) -> str:
        if self.sub_actions:
            return f"({';'.join(str(a) for a in self.sub_actions)}){self.kind.value}"
        return f"{self.stage}{self.kind.value}{self.microbatch}"

    __repr__ = __str__

    @classmethod
    def parse(cls, text: str) -> "Action":
        text = text.strip()
        if (m := _COMPOUND.match(text)) and ";" in m.group(1):
            return cls.overlap(*(cls.parse(part) for part in m.group(1).split(";")))
        if m := _ATOM.match(text):
            return cls(int(m.group(1)), Kind(m.group(2)), int(m.group(3)))
        raise ParplanError(
            f"action {text!r} is malformed: expected STAGE KIND MICROBATCH such as '2F0', "
            f"'7I3', '7W3', '1B4', or a cell '(0F7;7B3)OVERLAP_F_B'"
        )


def _index(value) -> int:
    """A stage or rank number read from JSON: an integer, never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer stage or rank")
    return value


def _default(value, fallback):
    return fallback if value is None else value


@dataclass(frozen=True, kw_only=True, slots=True)
class Schedule:
    """Per-rank action orders plus the placement they assume.

    `orders[r]` is rank r's compute order. `stage_to_rank[s]` is the rank holding stage s.
    `chains` lists the stage sequences micro-batches flow through (default: one chain
    0 … S−1); `model_stage[s]` is the model stage schedule stage s computes (default:
    identity). Each chain processes `microbatches_per_chain` micro-batches.
    """

    name: str
    stage_to_rank: tuple[int, ...]
    microbatches_per_chain: int
    orders: tuple[tuple[Action, ...], ...]
    chains: tuple[tuple[int, ...], ...] = None  # type: ignore[assignment]
    model_stage: tuple[int, ...] = None  # type: ignore[assignment]
    num_ranks: int = field(init=False)
    num_stages: int = field(init=False)
    # stage -> (previous, next) stage on its chain (None at the ends), built once: the
    # simulator asks for every action
    _neighbours: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("stage_to_rank", tuple(self.stage_to_rank))
        set_("orders", tuple(tuple(o) for o in self.orders))
        num_stages = len(self.stage_to_rank)
        set_("num_stages", num_stages)
        set_("num_ranks", len(self.orders))
        set_("chains", tuple(tuple(c) for c in _default(self.chains, (tuple(range(num_stages)),))))
        set_("model_stage", tuple(_default(self.model_stage, tuple(range(num_stages)))))
        if sorted(s for c in self.chains for s in c) != list(range(num_stages)):
            raise ParplanError(
                f"schedule {self.name!r}: chains {self.chains} must cover stages 0..{num_stages - 1} "
                f"exactly once"
            )
        neighbours = {}
        for chain in self.chains:
            for k, st in enumerate(chain):
                neighbours[st] = (chain[k - 1] if k > 0 else None, chain[k + 1] if k + 1 < len(chain) else None)
        set_("_neighbours", neighbours)
        if len(self.model_stage) != num_stages:
            raise ParplanError(f"schedule {self.name!r}: model_stage needs one entry per stage")
        bad = [s for s, r in enumerate(self.stage_to_rank) if not 0 <= r < self.num_ranks]
        if bad:
            raise ParplanError(
                f"schedule {self.name!r}: stage {bad[0]} is mapped to rank "
                f"{self.stage_to_rank[bad[0]]}, outside ranks 0..{self.num_ranks - 1}"
            )

    # ---- structure ------------------------------------------------------------------
    @property
    def num_model_stages(self) -> int:
        return max(self.model_stage) + 1

    @property
    def total_microbatches(self) -> int:
        return self.microbatches_per_chain * len(self.chains)

    @property
    def forward_only(self) -> bool:
        """An inference schedule: forwards and nothing else."""
        return all(a.kind is Kind.F for o in self.orders for x in o for a in x.atoms)

    def prev_stage(self, stage: int) -> int | None:
        if stage not in self._neighbours:
            self._chain_of(stage)  # raises naming the stage
        return self._neighbours[stage][0]

    def next_stage(self, stage: int) -> int | None:
        if stage not in self._neighbours:
            self._chain_of(stage)
        return self._neighbours[stage][1]

    def _chain_of(self, stage: int) -> tuple[int, ...]:
        for chain in self.chains:
            if stage in chain:
                return chain
        raise ParplanError(f"stage {stage} is in no chain of schedule {self.name!r}")

    def stages_of_rank(self, rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.stage_to_rank) if r == rank)

    # ---- text -----------------------------------------------------------------------
    def to_text(self) -> str:
        width = len(str(self.num_ranks - 1))
        lines = [f"# {self.name}: {self.num_ranks} ranks, {self.num_stages} stages, "
                 f"{self.total_microbatches} micro-batches"]
        for r, order in enumerate(self.orders):
            lines.append(f"rank {r:>{width}}: " + " ".join(str(a) for a in order))
        return "\n".join(lines) + "\n"

    # ---- PyTorch's compute-only CSV: one row per rank, one action per cell -----------
    def require_one_chain(self) -> None:
        """PyTorch's IR, CSV and runtime run one chain 0 … S−1; refuse anything else."""
        if len(self.chains) != 1 or self.chains[0] != tuple(range(self.num_stages)):
            raise ParplanError(
                f"schedule {self.name!r} runs {len(self.chains)} chains (DualPipe's bidirectional "
                f"placement: each rank holds a stage of both directions); torch.distributed.pipelining "
                f"runs one chain 0..S-1 only and cannot express it. Use 'dualpipev' instead: DualPipeV "
                f"has DualPipe's per-rank timeline on one V-shaped chain"
            )

    def to_csv(self) -> str:
        self.require_one_chain()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for order in self.orders:
            writer.writerow([str(a) for a in order])
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str, *, name: str = "csv") -> "Schedule":
        rows = [[Action.parse(cell) for cell in row if cell.strip()] for row in csv.reader(io.StringIO(text))]
        if not rows:
            raise ParplanError("the CSV has no rows; expected one row of actions per rank")
        stage_to_rank: dict[int, int] = {}
        num_mb = 0
        for r, row in enumerate(rows):
            for action in row:
                for a in action.atoms:
                    if stage_to_rank.setdefault(a.stage, r) != r:
                        raise ParplanError(
                            f"CSV: stage {a.stage} appears on ranks {stage_to_rank[a.stage]} and {r}; "
                            f"each stage must live on one rank"
                        )
                    num_mb = max(num_mb, a.microbatch + 1)
        num_stages = max(stage_to_rank) + 1
        missing = [s for s in range(num_stages) if s not in stage_to_rank]
        if missing:
            raise ParplanError(f"CSV: stages {missing} have no actions; stages must be 0..{num_stages - 1}")
        return cls(
            name=name,
            stage_to_rank=tuple(stage_to_rank[s] for s in range(num_stages)),
            microbatches_per_chain=num_mb,
            orders=tuple(tuple(row) for row in rows),
        )

    # ---- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": SCHEDULE_FORMAT_VERSION,
            "name": self.name,
            "num_ranks": self.num_ranks,
            "stage_to_rank": list(self.stage_to_rank),
            "chains": [list(c) for c in self.chains],
            "model_stage": list(self.model_stage),
            "microbatches_per_chain": self.microbatches_per_chain,
            "orders": [[str(a) for a in order] for order in self.orders],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        version = data.get("version")
        if version != SCHEDULE_FORMAT_VERSION:
            raise ParplanError(
                f"schedule JSON has version {version!r}; this parplan reads version "
                f"{SCHEDULE_FORMAT_VERSION}. Regenerate it with this parplan"
            )
        try:
            return cls(
                name=data["name"],
                stage_to_rank=tuple(_index(r) for r in data["stage_to_rank"]),
                microbatches_per_chain=int(data["microbatches_per_chain"]),
                orders=tuple(tuple(Action.parse(a) for a in order) for order in data["orders"]),
                chains=tuple(tuple(_index(s) for s in c) for c in data["chains"]),
                model_stage=tuple(_index(s) for s in data["model_stage"]),
            )
        except KeyError as err:
            raise ParplanError(f"schedule JSON lacks the field {err}; regenerate it with parplan") from None
        except (TypeError, AttributeError) as err:
            raise ParplanError(f"schedule JSON is malformed ({err}); regenerate it with parplan") from None

    @classmethod
    def from_json(cls, text: str) -> "Schedule":
        return cls.from_dict(json.loads(text))
