"""Modules a stage runs whole: exported as a static stand-in, then called as the real module.

torch.export cannot trace data-dependent control flow, and the zoo MoE's real routing
(`MoE._dynamic`: a `nonzero` per expert whose token count decides the shapes) is exactly
that — export fails with "Could not guard on data-dependent expression". So while the
runtime exports a model, every MoE runs its static stand-in (`routing="expected"`: the
same input, parameters and output shape; the path a meta-device trace takes anyway), and
afterwards the nodes each MoE ran are collapsed into one `call_module` node calling the
model's own MoE module. A stage then routes tokens for real, the MoE's parameters keep
their names (`layers.1.mlp.w_gate`), and the module can be swapped after splitting:
expert parallelism swaps in `ExpertParallelMoE` (parplan.runtime.expert_parallel).

Limits: an opaque module takes one tensor and returns one (`MoE.forward(x)` does), is
called once per forward, and runs on one stage — pieces inside it cannot be spread over
stages (`stage_of_opaque_call`).
"""

from __future__ import annotations

import contextlib

from torch import fx, nn

from parplan.errors import ParplanError
from parplan.zoo.layers import MoE

__all__ = ["OPAQUE_MODULES", "module_path", "opaque_path", "static_stand_ins", "collapse_opaque_calls",
           "stage_of_opaque_call"]

# Module classes whose forward export cannot trace for real (data-dependent shapes).
OPAQUE_MODULES: tuple[type[nn.Module], ...] = (MoE,)

_OPAQUE = "parplan_opaque"  # node.meta key: the module path an opaque call runs


def module_path(node: fx.Node) -> str:
    """The innermost module a graph node ran in (`nn_module_stack`), "" for the root or none."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return list(stack.values())[-1][0]


def opaque_path(node: fx.Node) -> str | None:
    """The module path of an opaque call node, else None."""
    return node.meta.get(_OPAQUE)


def _within(path: str, outer: str) -> bool:
    return path == outer or path.startswith(outer + ".")


def _opaque_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and isinstance(m, OPAQUE_MODULES)}


@contextlib.contextmanager
def static_stand_ins(model: nn.Module):
    """While exporting: every MoE takes its static `expected` path; restored afterwards."""
    modules = _opaque_modules(model)
    saved = {path: m.routing for path, m in modules.items()}
    try:
        for m in modules.values():
            m.routing = "expected"
        yield
    finally:
        for path, routing in saved.items():
            modules[path].routing = routing


def collapse_opaque_calls(gm: fx.GraphModule, model: nn.Module) -> None:
    """Replace the nodes each opaque module of `model` ran in `gm` by one call of the module itself.

    `gm` is `model`'s exported graph (`torch.export.export(...).module()`); afterwards the
    submodule at each opaque path of `gm` is `model`'s own module object.
    """
    for path, module in _opaque_modules(model).items():
        _collapse_one(gm, path, module)
    gm.graph.lint()
    gm.recompile()


def _collapse_one(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    graph = gm.graph
    inside = [n for n in graph.nodes if n.op == "call_function" and _within(module_path(n), path)]
    if not inside:
        return  # never called in forward: nothing to run
    members = set(inside)
    reads = list(dict.fromkeys(a for n in inside for a in n.all_input_nodes
                               if a not in members and a.op != "get_attr"))
    results = [n for n in inside if any(u not in members for u in n.users)]
    kind = type(module).__name__
    if len(reads) != 1 or len(results) != 1:
        raise ParplanError(
            f"{kind} {path!r} reads {len(reads)} values and gives {len(results)} to the rest of the exported "
            f"graph; the runtime runs a {kind} as one call of one tensor to one tensor (its routing cannot be "
            f"exported), called once per forward. Call it once, on one tensor"
        )
    (x,), (out,) = reads, results
    with graph.inserting_after(out):
        call = graph.call_module(path, (x,))
    stack = out.meta.get("nn_module_stack", {})
    keys = list(stack)
    depth = next(k for k, key in enumerate(keys) if stack[key][0] == path)
    call.meta = {"val": out.meta["val"], "nn_module_stack": {k: stack[k] for k in keys[:depth + 1]}, _OPAQUE: path}
    out.replace_all_uses_with(call, delete_user_cb=lambda user: user not in members)
    for node in reversed(inside):
        graph.erase_node(node)
    for node in [n for n in graph.nodes if n.op == "get_attr" and not n.users and _within(str(n.target), path)]:
        graph.erase_node(node)
    parent, _, name = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def stage_of_opaque_call(path: str, piece_stage: dict[str, int], holder: int | None) -> int | None:
    """The stage an opaque call at `path` runs on: that of the piece holding it (`holder`)
    and of any pieces inside it, which must all be one; None when no piece covers it (glue)."""
    stages = {s for piece, s in piece_stage.items() if piece.startswith(path + ".")}
    if holder is not None:
        stages.add(holder)
    if len(stages) > 1:
        raise ParplanError(
            f"the pieces in and around {path!r} are planned on stages {sorted(stages)}, but the runtime runs an "
            f"MoE as one call (its data-dependent routing cannot be split by torch.export); keep {path!r} and "
            f"the pieces inside it on one stage, or regenerate the plan"
        )
    return next(iter(stages), None)
