"""What an attention mask in a captured graph allows: causal or not, and how many pairs.

A mask's values are unknown on meta tensors, but masks are rarely data: Hugging Face's
masking utilities build them from `arange`s and shapes (causal, sliding window, chunked),
and old code from `tril`/`triu`. So a mask is read two ways:

* **Evaluated.** When everything the mask is computed from is a constant — factories,
  `arange`s, and graph inputs that are read only for their shape (`new_ones(input_ids)`) —
  its subgraph is run on CPU and the allowed (query, key) pairs counted: exact for causal,
  sliding-window and padding-free masks alike. Masks above `MAX_EVALUATED` elements are not
  evaluated (the subgraph would allocate them).
* **Structural**, otherwise: causal when a `tril`/`triu` or a comparison of two tensors that
  both come from an `arange` (query index >= key index) is among the nodes it is computed
  from. A mask read from a graph input alone (padding) is not causal.

Eager attention (`matmul` → scale/softcap → `+ mask` → `softmax` → `matmul`, Gemma2's and
T5's form) is found by that pattern, so both of its products are counted over the allowed
pairs like SDPA's. Their kernels still compute every pair: the cost model times them from
their full GEMM shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["MaskFacts", "MaskReader", "MAX_EVALUATED"]

MAX_EVALUATED = 1 << 24  # elements: a [1, 1, 4096, 4096] mask

_TRIANGLE = frozenset({"tril", "triu"})
_COMPARE = frozenset({"lt", "le", "gt", "ge"})
# ops that read only their input's shape, dtype and device: a graph input used only by
# these does not make a mask data-dependent
_SHAPE_ONLY = frozenset("new_ones new_zeros new_full new_empty zeros_like ones_like empty_like full_like size "
                        "sym_size".split())
# elementwise steps between an eager attention's scores and its softmax, or its softmax and
# the value product (scale, softcap, casts, dropout)
_SCORE_STEPS = frozenset("mul div tanh to _to_copy type_as float dropout native_dropout clone contiguous alias "
                         "getitem".split())
_ADD_MASK = frozenset({"add"})


@dataclass(frozen=True, kw_only=True, slots=True)
class MaskFacts:
    causal: bool
    pairs: int | None  # allowed (query, key) pairs per [q, kv] matrix; None when not evaluated

    def __post_init__(self) -> None:
        assert self.pairs is None or self.pairs >= 0, f"a mask allows {self.pairs} pairs"


class MaskReader:
    """Reads the masks of one captured graph; `name_of(node)` is its normalised op name.
    Each mask node is read once (layers share one mask)."""

    def __init__(self, name_of: Callable[[torch.fx.Node], str]) -> None:
        self._name_of = name_of
        self._facts: dict[torch.fx.Node, MaskFacts] = {}

    def _name(self, node: torch.fx.Node) -> str:
        if node.op in ("placeholder", "get_attr"):
            return node.op
        name = self._name_of(node)
        return name[:-1] if name.endswith("_") and not name.startswith("__") else name  # in-place: its stem

    # ---- one mask -------------------------------------------------------------------------

    def facts(self, mask: torch.fx.Node) -> MaskFacts:
        if mask not in self._facts:
            ancestors = self._ancestors(mask)
            causal = any(op in _TRIANGLE or (op in _COMPARE and self._both_from_arange(n))
                         for n, op in ancestors.items())
            self._facts[mask] = MaskFacts(causal=causal, pairs=self._evaluated_pairs(mask, ancestors))
        return self._facts[mask]

    def _ancestors(self, node: torch.fx.Node) -> dict[torch.fx.Node, str]:
        """`node` and every node it is computed from, with their normalised op names."""
        seen: dict[torch.fx.Node, str] = {}
        todo = [node]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen[n] = self._name(n)
                todo.extend(n.all_input_nodes)
        return seen

    def _both_from_arange(self, compare: torch.fx.Node) -> bool:
        operands = compare.all_input_nodes
        return len(operands) == 2 and all("arange" in self._ancestors(x).values() for x in operands)

    def _evaluated_pairs(self, mask: torch.fx.Node, ancestors: dict[torch.fx.Node, str]) -> int | None:
        value = mask.meta.get("val")
        shape = tuple(getattr(value, "shape", ()))
        if len(shape) < 2 or math.prod(shape) > MAX_EVALUATED:
            return None
        env: dict[torch.fx.Node, Any] = {}
        order = {n: i for i, n in enumerate(mask.graph.nodes)}
        for n in sorted(ancestors, key=order.__getitem__):
            if n.op in ("placeholder", "get_attr"):
                users = {self._name(u) for u in n.users if u in ancestors}
                fake = n.meta.get("val")
                if not users <= _SHAPE_ONLY or not isinstance(fake, torch.Tensor):
                    return None  # the mask depends on data (a padding mask, a learned bias)
                env[n] = torch.zeros(fake.shape, dtype=fake.dtype)
                continue
            try:
                env[n] = _run(n, env)
            except Exception:  # an op that does not run eagerly on CPU: fall back to the structure
                return None
        out = env[mask]
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
            return None
        allowed = out if out.dtype == torch.bool else out > torch.finfo(out.dtype).min / 2
        matrices = math.prod(shape[:-2])
        return round(int(allowed.sum()) / matrices)

    # ---- eager attention ------------------------------------------------------------------

    def eager_attention_mask(self, matmul: torch.fx.Node) -> tuple[str, torch.fx.Node] | None:
        """("scores" | "values", mask) when `matmul` is one of an eager attention's two
        products under an added mask, else None."""
        found = self._scores_mask(matmul)
        if found is not None:
            return "scores", found
        softmax = self._back(matmul.all_input_nodes[0]) if matmul.all_input_nodes else None
        if softmax is None or self._name(softmax) not in ("softmax", "_softmax"):
            return None
        scores = self._scores_of(softmax)
        mask = self._scores_mask(scores) if scores is not None else None
        return ("values", mask) if mask is not None else None

    def _scores_mask(self, matmul: torch.fx.Node) -> torch.fx.Node | None:
        """The mask added to `matmul`'s output on its way to a softmax."""
        if self._name(matmul) not in ("matmul", "bmm"):
            return None
        node, mask = matmul, None
        while len(users := self._users(node)) == 1:
            user = users[0]
            op = self._name(user)
            if op in ("softmax", "_softmax"):
                return mask
            if op in _ADD_MASK and mask is None:
                others = [x for x in user.all_input_nodes if x is not node]
                if len(others) != 1:
                    return None
                mask = others[0]
            elif op not in _SCORE_STEPS:
                return None
            node = user
        return None

    def _users(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        # torch.export's `_assert_tensor_metadata` checks read a value without using it
        return [u for u in node.users if not self._name(u).startswith("_assert")]

    def _back(self, node: torch.fx.Node) -> torch.fx.Node:
        """Walk back through elementwise steps to the node they start from."""
        while self._name(node) in _SCORE_STEPS and node.all_input_nodes:
            node = node.all_input_nodes[0]
        return node

    def _scores_of(self, softmax: torch.fx.Node) -> torch.fx.Node | None:
        node = self._back(softmax.all_input_nodes[0]) if softmax.all_input_nodes else None
        if node is None or self._name(node) not in _ADD_MASK:
            return None
        for operand in node.all_input_nodes:
            start = self._back(operand)
            if self._name(start) in ("matmul", "bmm"):
                return start
        return None


def _run(node: torch.fx.Node, env: dict[torch.fx.Node, Any]) -> Any:
    """One node on CPU: its inputs from `env`, meta devices replaced by CPU."""
    def value(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return env[a]
        if isinstance(a, torch.device) and a.type == "meta":
            return torch.device("cpu")
        return "cpu" if isinstance(a, str) and a == "meta" else a

    args = torch.fx.node.map_aggregate(node.args, value)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, value)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    raise TypeError(f"{node.op} is not evaluated")
