"""Which memory techniques the search tries on a degree candidate, and the user's choices checked.

A candidate's techniques (`parplan.plan.Techniques`: ZeRO level, the replicate × shard
layout, recomputation, sequence parallelism) are screened in two passes
(`bilevel._screen`). The first keeps small jobs as they were: every degree candidate with
what parplan planned without techniques — ZeRO-1 over the whole data-parallel group, no
recomputation, sequence parallelism with TP (it costs the same time as plain TP here and
saves memory) — unless a cheap estimate says it cannot fit even with one micro-batch in
flight. The second, only while the screening budget lasts or nothing fits yet, takes the
candidates on which the first found no plan within the cap: every other combination the
user left open whose estimate fits (with 1F1B's in-flight micro-batches, else with one),
least estimated extra time first, until one gives a plan that fits; when none is
estimated to fit, the leanest alone (so the error names the smallest peak). At most
`MAX_TRIES` per candidate in all.

The estimate, per pipeline rank of a candidate, with the model's layers spread evenly:
static bytes (`MemoryModel.static_bytes` of 1/pp of the parameters, plus ZeRO-3's two
gathered layers or full recomputation's working set) + 1/pp of a micro-batch's saved
activations × one, or min(pp, micro-batches) in flight (1F1B's first rank); extra time = 1/pp of
the recomputed forward and of the exposed ZeRO-2/3 collectives per micro-batch × the
micro-batches, plus the gradient sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from parplan.cost.hardware import ClusterProfile
from parplan.errors import ParplanError
from parplan.plan import RECOMPUTE_MODES, Techniques
from parplan.planner.costing import Coster
from parplan.planner.degrees import Degrees
from parplan.planner.memory import MemoryModel
from parplan.planner.sharding import layers_of, stage_collectives, step_sync_s

__all__ = ["TechniqueChoice", "technique_choices", "check_techniques", "MAX_TRIES"]

MAX_TRIES = 3

CosterFor = Callable[[Degrees, str, bool], Coster]


@dataclass(frozen=True, kw_only=True, slots=True)
class TechniqueChoice:
    """The techniques the user fixed (`--zero`, `--dp-shard`, `--dp-replicate`,
    `--recompute`, `--sequence-parallel`); None searches that one."""

    zero: int | None = None
    dp_shard: int | None = None
    dp_replicate: int | None = None
    recompute: str | None = None
    sequence_parallel: bool | None = None

    def __post_init__(self) -> None:
        zero, dp_shard, dp_replicate, recompute = self.zero, self.dp_shard, self.dp_replicate, self.recompute
        if zero is not None and (isinstance(zero, bool) or zero not in (0, 1, 2, 3)):
            raise ParplanError(f"--zero {zero!r} is unknown: use 0, 1, 2 or 3 (ZeRO level; 3 is FSDP)")
        for flag, value in (("--dp-shard", dp_shard), ("--dp-replicate", dp_replicate)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ParplanError(f"{flag} {value!r} is invalid: a data-parallel degree is an integer >= 1")
        if recompute is not None and recompute not in RECOMPUTE_MODES:
            raise ParplanError(f"--recompute {recompute!r} is unknown; use {', '.join(RECOMPUTE_MODES)}")

    def check(self, *, mode: str, tp: int | None) -> None:
        """Choices that contradict the job: recomputation in inference, SP without TP."""
        if mode == "inference" and self.recompute not in (None, "none"):
            raise ParplanError(f"--recompute {self.recompute} with --mode inference: inference keeps no activations "
                               f"for a backward, so there is nothing to recompute; drop --recompute")
        if self.sequence_parallel and (tp is None or tp < 2):
            raise ParplanError(f"--sequence-parallel with {'no --tp' if tp is None else f'--tp {tp}'}: sequence "
                               f"parallelism shards the norms and dropouts over the tensor-parallel group, so it "
                               f"needs --tp 2 or more")

    def layouts(self, dp: int, hybrid: int | None) -> list[tuple[int, int]]:
        """(dp_shard, dp_replicate) for `dp` replicas; `hybrid`: replicas per node, the
        searched hybrid shard group (None: only the whole group)."""
        if self.dp_shard is not None or self.dp_replicate is not None:
            shard = self.dp_shard if self.dp_shard is not None else dp // self.dp_replicate
            replicate = self.dp_replicate if self.dp_replicate is not None else dp // shard
            return [(shard, replicate)] if shard * replicate == dp else []
        out = [(dp, 1)]
        if hybrid is not None and 1 < hybrid < dp and dp % hybrid == 0:
            out.append((hybrid, dp // hybrid))
        return out

    def plain(self, degrees: Degrees) -> Techniques:
        """The choice on `degrees` with what it leaves open at the search's first-pass
        default (ZeRO-1 over the whole group, no recomputation, SP with TP): what an
        evaluated hand configuration runs with."""
        shard, replicate = self.layouts(degrees.dp, None)[0]
        sp = self.sequence_parallel if self.sequence_parallel is not None else degrees.tp > 1
        return Techniques(zero=1 if self.zero is None else self.zero, dp_shard=shard, dp_replicate=replicate,
                          recompute=self.recompute or RECOMPUTE_MODES[0], sequence_parallel=sp and degrees.tp > 1)

    def fits_degrees(self, degrees: Degrees) -> bool:
        return bool(self.layouts(degrees.dp, None)) and not (self.sequence_parallel and degrees.tp < 2)


def check_techniques(choice: TechniqueChoice, degrees: Degrees) -> None:
    """Bad layouts for fixed degrees: a shard degree not dividing the data-parallel group,
    or shard × replicate other than it."""
    dp = degrees.dp
    s, r = choice.dp_shard, choice.dp_replicate
    if s is not None and dp % s:
        raise ParplanError(f"--dp-shard {s} does not divide the {dp} data-parallel replicas of {degrees}: every "
                           f"shard group holds the same number of replicas; use a divisor of {dp}")
    if r is not None and dp % r:
        raise ParplanError(f"--dp-replicate {r} does not divide the {dp} data-parallel replicas of {degrees}; "
                           f"use a divisor of {dp}")
    if s is not None and r is not None and s * r != dp:
        raise ParplanError(f"--dp-shard {s} × --dp-replicate {r} = {s * r}, but {degrees} has {dp} data-parallel "
                           f"replicas: the two must multiply to it; leave one out to take what is left")
    if choice.sequence_parallel and degrees.tp < 2:
        raise ParplanError(f"--sequence-parallel with {degrees}: sequence parallelism needs tensor parallelism; "
                           f"give --tp 2 or more")


def _replicas_per_node(degrees: Degrees, cluster: ClusterProfile) -> int:
    node = cluster.placement(degrees.rank(0, 0))[1]
    return sum(1 for d in range(degrees.dp) if cluster.placement(degrees.rank(d, 0))[1] == node)


def technique_choices(choice: TechniqueChoice, degrees: Degrees, *, coster_for: CosterFor, cluster: ClusterProfile,
                      memory: MemoryModel, microbatches: int,
                      cap: float) -> tuple[list[Techniques], Callable[[], list[Techniques]]]:
    """The techniques to screen on `degrees` (module docstring): the first pass's (the plain
    choice, unless it cannot fit), and a function giving the rest, for a later pass."""
    train = memory.mode == "train"
    sp_options = [choice.sequence_parallel] if choice.sequence_parallel is not None else [degrees.tp > 1]
    if degrees.tp < 2:
        sp_options = [False]
    recomputes = [choice.recompute] if choice.recompute is not None else (
        list(RECOMPUTE_MODES) if train else ["none"])
    zeros = [choice.zero] if choice.zero is not None else ([1, 2, 3] if train and degrees.dp > 1 else [1])
    layouts = choice.layouts(degrees.dp, _replicas_per_node(degrees, cluster))
    options = [Techniques(zero=z, dp_shard=s, dp_replicate=r, recompute=rc, sequence_parallel=sp)
               for rc in recomputes for sp in sp_options for z in zeros for s, r in layouts
               if r == 1 or z >= 2 or choice.dp_shard is not None or choice.dp_replicate is not None]
    if not options:
        return [], list
    estimate = lambda t: _estimate(t, degrees, coster_for, cluster, memory, microbatches)  # noqa: E731
    first = options[0]
    first_low = estimate(first)[0] if len(options) > 1 else 0.0
    plain = first_low <= cap  # a memory-aware order may fit it with one micro-batch in flight

    def rest() -> list[Techniques]:
        others = [(estimate(t), k, t) for k, t in enumerate(options) if k > 0]
        fitting = sorted((extra, k, t) for (_, full, extra), k, t in others if full <= cap) or \
            sorted((extra, k, t) for (low, _, extra), k, t in others if low <= cap)
        if fitting:
            return [t for _, _, t in fitting[:MAX_TRIES - plain]]
        if plain:
            return []
        # nothing fits: the leanest, so the error names the smallest peak
        return [min(others + [(estimate(first), 0, first)], key=lambda e: (e[0][0], e[1]))[2]]

    return ([first] if plain else []), rest


def _estimate(t: Techniques, degrees: Degrees, coster_for: CosterFor, cluster: ClusterProfile,
              memory: MemoryModel, microbatches: int) -> tuple[float, float, float]:
    """(bytes with one micro-batch in flight, bytes with 1F1B's min(pp, micro-batches), extra
    seconds per step) on a pipeline rank holding 1/pp of the model."""
    coster = coster_for(degrees, t.recompute, t.sequence_parallel)
    gpu = degrees.gpu(cluster, 0)
    names = [n.name for n in coster.traced.nodes]
    total = coster.ops(names, gpu)
    pp, micro = degrees.pp, microbatches // degrees.dp
    static = memory.static_bytes(total.param_bytes / pp, total.param_count / pp, t,
                                 expert_bytes=total.expert_param_bytes / pp,
                                 expert_count=total.expert_param_count / pp, ep=degrees.ep)
    shard = stage_collectives(names, coster, gpu, degrees, cluster, t, memory)
    if t.zero == 3:  # the two largest layers gathered, not the whole model's
        sizes = sorted((sum(coster.op(n, gpu)[3] for n in layer) for layer in layers_of(names, coster)), reverse=True)
        held = sum(sizes[:2])
    else:
        held = 0.0
    one = total.activation_bytes / pp
    in_flight = min(pp, micro) if memory.mode == "train" else 1
    grad = memory.grad_bytes_per_param_byte
    sync = step_sync_s((total.param_bytes - total.expert_param_bytes) * grad / pp, total.expert_param_bytes * grad / pp,
                       degrees, cluster, t, memory)
    extra = micro * (total.recompute_s + shard.total_s) / pp + sync
    base = static + held + total.working_bytes
    return base + one, base + one * in_flight, extra
