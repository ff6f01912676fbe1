"""Expert parallelism (EP): each process of an EP group holds a slice of every MoE's experts.

With an EP group of e processes and E routed experts per MoE (e divides E), EP rank r holds
the global experts [r·E/e, (r+1)·E/e): global expert g lives on EP rank g // (E/e) as its
local expert g % (E/e). `to_expert_parallel` swaps each `parplan.zoo.layers.MoE` of a module
for an `ExpertParallelMoE` that holds this rank's rows of `w_gate` / `w_up` / `w_down` as
Parameters [E/e, …] under the same names (`layers.1.mlp.w_gate`) and shares the router and
the shared experts (same module objects, same names), so checkpoints and gradients map
name by name and row by row onto the whole model.

One MoE forward on one process, for its own tokens:
  1. route with `top_k_routing`, the zoo MoE's own rule (softmax, top k): same experts, same gates;
  2. sort the token copies (token, slot) by expert: they are then grouped by destination rank;
  3. exchange counts: one all_to_all of the per-expert counts (integers, no gradient);
  4. dispatch: a differentiable all_to_all sends each copy to the rank holding its expert;
  5. run the local experts (`expert_swiglu`) on the copies that arrived;
  6. combine: the reverse all_to_all returns each result to its token's process;
  7. weigh each copy by its gate and sum into its token, as `MoE._dynamic` does; shared
     experts run locally on all of this process's tokens.

Gradients flow through both all_to_alls: the backward of each is the reverse all_to_all, so an
expert's weight gradient sums the contributions of every process's tokens routed to it, and
input gradients return to the processes the tokens came from. Every process of the group
must run the same MoE forwards and backwards in the same order (the runtime's replicas run
the same schedule). The collectives run in line, blocking this process's compute; nothing
overlaps them with another micro-batch (docs/runtime.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from parplan.errors import ParplanError
from parplan.zoo.layers import MoE, expert_swiglu, top_k_routing

__all__ = ["ExpertGroup", "ExpertParallelMoE", "to_expert_parallel", "expert_slices", "check_expert_parallel"]

_EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExpertGroup:
    """An EP process group and this process's rank in it (`dist.get_rank(group)`)."""

    group: Any  # a torch.distributed ProcessGroup of `size` processes
    rank: int
    size: int

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ParplanError(f"EP rank {self.rank} of a group of {self.size}: need size >= 1 and 0 <= rank < size")

    def experts(self, num_experts: int) -> tuple[int, int]:
        """[first, end) of the global experts this rank holds, of `num_experts`."""
        local = num_experts // self.size
        return self.rank * local, (self.rank + 1) * local


def check_expert_parallel(model: nn.Module, degree: int) -> None:
    """Refuse an EP degree the model cannot run: it needs MoE layers, each with a multiple of `degree` experts."""
    moes = {path: m for path, m in model.named_modules() if isinstance(m, MoE)}
    if not moes:
        raise ParplanError(
            f"the plan asks for expert parallelism {degree} but {type(model).__name__} has no MoE layers "
            f"(parplan.zoo.layers.MoE): EP splits MoE experts over processes; plan this model without expert "
            f"parallelism (expert_parallel 1), or an MoE model such as mixtral:… or deepseek-moe:…"
        )
    for path, m in moes.items():
        if m.experts % degree:
            fits = [d for d in range(1, m.experts + 1) if m.experts % d == 0]
            raise ParplanError(
                f"expert parallelism {degree} does not divide the {m.experts} experts of {path!r}: each EP rank "
                f"holds experts/EP of them; use an EP degree among {fits}"
            )


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    # torch.distributed.nn.functional.all_to_all_single is deprecated in PyTorch 2.13 (and warns
    # on every call); the functional collective is its named successor, differentiable, and runs
    # on gloo and NCCL. Its result waits for the collective on first use: in line, not overlapped.
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    return all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group)


class ExpertParallelMoE(nn.Module):
    """An MoE whose routed experts are spread over an EP group (module docstring)."""

    def __init__(self, moe: MoE, ep: ExpertGroup) -> None:
        super().__init__()
        if moe.experts % ep.size:
            raise ParplanError(f"an EP group of {ep.size} cannot split {moe.experts} experts evenly")
        self.ep = ep
        self.num_experts, self.top_k = moe.experts, moe.top_k
        self.num_local = moe.experts // ep.size
        self.first_expert, end = ep.experts(moe.experts)
        self.router = moe.router
        for name in _EXPERT_WEIGHTS:
            full = getattr(moe, name)
            setattr(self, name, nn.Parameter(full.detach()[self.first_expert:end].clone(),
                                             requires_grad=full.requires_grad))
        self.shared = moe.shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        flat = x.reshape(b * s, d)
        _, weights, chosen = top_k_routing(self.router, flat, self.top_k)
        order = torch.argsort(chosen.reshape(-1), stable=True)  # copies grouped by expert, then by rank
        token, slot = order // self.top_k, order % self.top_k
        sent = torch.bincount(chosen.reshape(-1), minlength=self.num_experts)
        received = torch.empty_like(sent)  # [from rank j: its copies for each of my local experts]
        dist.all_to_all_single(received, sent, group=self.ep.group)
        send_splits = sent.view(self.ep.size, self.num_local).sum(1).tolist()
        recv_splits = received.view(self.ep.size, self.num_local).sum(1).tolist()
        arrived = _all_to_all(flat[token], recv_splits, send_splits, self.ep.group)  # dispatch
        results = self._local_experts(arrived, received)
        returned = _all_to_all(results, send_splits, recv_splits, self.ep.group)  # combine
        out = torch.zeros_like(flat)
        out.index_add_(0, token, returned * weights[token, slot].unsqueeze(-1))
        out = out.view(b, s, d)
        return out if self.shared is None else out + self.shared(x)

    def _local_experts(self, arrived: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """Each local expert on its rows of `arrived` (sources in rank order, each grouped by expert)."""
        local_ids = torch.arange(self.num_local, device=arrived.device).repeat(self.ep.size)
        expert_of_row = torch.repeat_interleave(local_ids, received)
        out = torch.zeros_like(arrived)
        for e in range(self.num_local):
            rows = torch.nonzero(expert_of_row == e).squeeze(1)
            if rows.numel():
                out.index_add_(0, rows, expert_swiglu(arrived[rows], self.w_gate[e], self.w_up[e], self.w_down[e]))
        return out


def to_expert_parallel(module: nn.Module, ep: ExpertGroup) -> list[str]:
    """Swap every MoE under `module` for an `ExpertParallelMoE` on `ep`, in place; their paths.

    `module` may be a whole model or a stage module that holds MoE submodules (the
    runtime's stages call them as opaque modules, parplan.runtime.opaque).
    """
    paths = [path for path, m in module.named_modules() if path and isinstance(m, MoE)]
    for path in paths:
        parent, _, name = path.rpartition(".")
        holder = module.get_submodule(parent) if parent else module
        setattr(holder, name, ExpertParallelMoE(holder.get_submodule(name), ep))
    return paths


def expert_slices(module: nn.Module) -> dict[str, tuple[int, int]]:
    """Parameter name -> [first, end) of the global experts its rows are, for every EP expert weight."""
    out = {}
    for path, m in module.named_modules():
        if isinstance(m, ExpertParallelMoE):
            span = (m.first_expert, m.first_expert + m.num_local)
            out.update({f"{path}.{name}" if path else name: span for name in _EXPERT_WEIGHTS})
    return out
