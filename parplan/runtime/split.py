"""Split a model's exported graph into a chain of stage modules (torch.export → torch.fx).

The model is exported once (`torch.export.export`, non-strict) at the micro-batch shape.
Every graph node is given a stage:

  * a node inside a planned *piece* (a module path such as `h.3`) runs on that piece's
    stage — `nn_module_stack` says which module a node came from;
  * a parameter or buffer (`get_attr`) goes to every stage that reads it. A parameter read
    by several stages (GPT's tied `wte`/`lm_head`) is a *tied weight*: the first reader
    keeps the model's tensor, each later one holds its own copy (same value, same name),
    and `StageGraph.tied` records which stages share it, so the runtime can sum the
    copies' gradients before the optimizer step (parplan.runtime.tied). A tied tensor is
    read under the model's first name for it (`named_parameters()` order: `wte.weight`);
  * glue code outside every piece (`wte(idx) + wpe(pos)`) runs on the latest stage of its
    inputs, or, having none (`arange`), on the earliest stage of its users;
  * an MoE is one opaque call of the model's own module (parplan.runtime.opaque: its
    routing cannot be exported), on the stage of the piece holding it.

A value produced at stage i and read at stage k > i + 1 (a skip connection or branch, such
as the two-tower model's image tokens feeding every text layer) is *passed along*: stages
i+1 … k−1 receive it and return it unchanged next to their own output. So every plan
becomes a chain that PyTorch's one-direction runtime can run with plain point-to-point
transfers between neighbours; the price is the extra hops' bandwidth (see docs/runtime.md).

Stage k's module takes the values crossing boundary k−1→k (in graph order) and returns
those crossing k→k+1; stage 0 takes the model's inputs, the last stage returns the model's
output. Parameter names are the model's own (`h.3.mlp.fc.weight`), so gradients compare
one-to-one with a single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import fx, nn

from parplan.errors import ParplanError
from parplan.runtime.opaque import (collapse_opaque_calls, module_path, opaque_path, stage_of_opaque_call,
                                    static_stand_ins)

__all__ = ["StageGraph", "TiedWeight", "split_graph", "default_pieces", "check_pieces", "export_graph", "tied_weights"]

_MODULE_LISTS = (nn.ModuleList, nn.Sequential)


@dataclass(frozen=True, kw_only=True, slots=True)
class TiedWeight:
    """A parameter read by several stages: each holds a copy under `name`; their gradients are summed."""

    name: str
    stages: tuple[int, ...]  # the stages holding a copy, ascending (the first holds the model's tensor)

    def __post_init__(self) -> None:
        if len(self.stages) < 2 or list(self.stages) != sorted(set(self.stages)):
            raise ParplanError(f"tied weight {self.name!r} on stages {list(self.stages)}: a tied weight is held "
                               f"by two or more distinct stages, listed in ascending order")


@dataclass(frozen=True, kw_only=True, slots=True)
class StageGraph:
    """One stage's module and the values it receives and passes on (graph node names)."""

    index: int
    module: fx.GraphModule
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    passed_along: tuple[str, ...]  # inputs returned unchanged for a later stage
    input_meta: tuple[torch.Tensor, ...]  # meta-device tensors shaped like the inputs
    computes_on_tokens: bool  # a non-first stage reading a non-float input it receives (not just passing)
    output_meta: tuple[torch.Tensor, ...]  # … and like the outputs
    tied: tuple[TiedWeight, ...] = ()  # the tied weights this stage holds a copy of, by name


def tied_weights(graphs: Sequence[StageGraph]) -> tuple[TiedWeight, ...]:
    """Every tied weight of a split, by name (the same order on every rank)."""
    return tuple(sorted({t for g in graphs for t in g.tied}, key=lambda t: t.name))


def _meta(node: fx.Node) -> torch.Tensor:
    """A meta tensor like `node`'s value; computed floats carry gradients, model inputs do not."""
    val = node.meta["val"]
    meta = torch.empty_strided(tuple(val.shape), tuple(val.stride()), dtype=val.dtype, device="meta")
    return meta.requires_grad_(node.op != "placeholder" and val.dtype.is_floating_point)


def default_pieces(model: nn.Module) -> tuple[str, ...]:
    """The model cut at its repeated blocks: each ModuleList item is a piece, other leaves too.

    GPT gives `wte, wpe, h.0 … h.L−1, ln_f, lm_head`; a submodule that holds a ModuleList
    somewhere below it is opened up (two-tower's `vision` → `vision.patch_embed`,
    `vision.layers.0`, …), anything else is kept whole.
    """

    def has_list(module: nn.Module) -> bool:
        return any(isinstance(m, _MODULE_LISTS) for m in module.modules())

    def walk(module: nn.Module, prefix: str) -> list[str]:
        out = []
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, _MODULE_LISTS):
                out += [f"{path}.{k}" for k, _ in child.named_children()]
            elif has_list(child):
                out += walk(child, f"{path}.")
            else:
                out.append(path)
        return out

    return tuple(walk(model, ""))


def _holders(name: str, pieces: set[str]) -> list[str]:
    """The pieces among `pieces` that hold the parameter or module path `name`."""
    out = []
    while "." in name:
        name = name.rpartition(".")[0]
        if name in pieces:
            out.append(name)
    return out


def check_pieces(model: nn.Module, pieces_per_stage: Sequence[Sequence[str]]) -> None:
    """Refuse stage pieces that do not describe `model` (checked without tracing it):

      1. every piece is a module path of the model;
      2. no piece is listed on two stages, and no parameter lies in pieces of two stages;
      3. the pieces cover the model: every parameter inside one of its `default_pieces`
         lies in some stage's pieces.

    Parameters outside every default piece (held by the root module, or by a container
    `default_pieces` opens up) are glue: the splitter puts them on the stage that reads
    them. Pieces nested on one stage (`h.1.attn` with `h.1.attn.qkv`) are allowed.
    """
    modules = {name for name, _ in model.named_modules() if name}
    defaults = default_pieces(model)
    stage_of: dict[str, int] = {}
    for s, pieces in enumerate(pieces_per_stage):
        for piece in pieces:
            if piece not in modules:
                raise ParplanError(
                    f"stage {s} piece {piece!r} is not a module of {type(model).__name__}: pieces are module "
                    f"paths of the model, such as {list(defaults[:4])}; correct the name or regenerate the plan"
                )
            if stage_of.setdefault(piece, s) != s:
                raise ParplanError(
                    f"piece {piece!r} is listed on stages {stage_of[piece]} and {s}: each piece runs on one "
                    f"stage; remove it from one of them"
                )
    uncovered = []
    listed, default_set = set(stage_of), set(defaults)
    for name, _ in model.named_parameters():
        holders = _holders(name, listed)
        owners = sorted({stage_of[p] for p in holders})
        if len(owners) > 1:
            raise ParplanError(
                f"parameter {name!r} lies in pieces {holders[::-1]} of stages {owners}: each parameter belongs "
                f"to exactly one stage; keep the pieces holding it on one stage"
            )
        if not owners:
            uncovered += [(name, p) for p in _holders(name, default_set)]
    if uncovered:
        name, piece = uncovered[0]
        raise ParplanError(
            f"parameter {name!r} (and {len(uncovered) - 1} more) lies in no stage's pieces: the pieces must "
            f"cover the model; add {piece!r} (or the pieces under it) to a stage, or regenerate the plan"
        )


def export_graph(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """The model as one flat fx graph with parameters as `get_attr` nodes (training mode),
    each MoE as one `call_module` node of the model's own module (parplan.runtime.opaque)."""
    model.train()
    try:
        with static_stand_ins(model):
            exported = torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as err:  # export failures come in many types; name the model and the cause
        raise ParplanError(
            f"torch.export could not trace {type(model).__name__} at the micro-batch shape "
            f"{[tuple(getattr(x, 'shape', ())) for x in example_inputs]}: {err}"
        ) from err
    gm = exported.module()
    collapse_opaque_calls(gm, model)
    _read_tied_under_first_name(gm, model)
    return gm


def _read_tied_under_first_name(gm: fx.GraphModule, model: nn.Module) -> None:
    """Make every `get_attr` of a tied tensor read it under the model's first name for it.

    torch.export reads GPT's tied weight as `lm_head.weight` (its last name) while
    `model.named_parameters()` and the trace (parplan.trace.capture) call it `wte.weight`;
    with one name, stage gradients compare with a single-process run name by name.
    """
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        try:
            param = gm.get_parameter(node.target)
        except AttributeError:  # a buffer or a constant: never tied by name
            continue
        node.target = first.get(id(param), node.target)
    gm.recompile()


def _piece_of(path: str, pieces: dict[str, int]) -> int | None:
    """Stage of the piece `path` lies in (the longest piece prefix), or None for glue."""
    while path:
        if path in pieces:
            return pieces[path]
        path = path.rpartition(".")[0]
    return None


def _assign_stages(graph: fx.Graph, piece_stage: dict[str, int], num_stages: int
                   ) -> tuple[dict[fx.Node, int], dict[fx.Node, tuple[int, ...]]]:
    """Each node's stage, and the readers of each `get_attr` read by several stages (it is
    copied onto all of them; its stage is the first)."""
    stage: dict[fx.Node, int] = {}
    shared: dict[fx.Node, tuple[int, ...]] = {}
    # call_module nodes are the opaque calls (MoE); export's own (`_guards_fn`) run nowhere
    nodes = [n for n in graph.nodes if n.op != "output" and (n.op != "call_module" or opaque_path(n))]
    for node in nodes:
        if node.op == "placeholder":
            stage[node] = 0
        elif node.op in ("call_function", "call_module"):
            own = _piece_of(module_path(node), piece_stage)
            if node.op == "call_module":
                own = stage_of_opaque_call(module_path(node), piece_stage, own)
            from_inputs = [stage[a] for a in node.all_input_nodes if a in stage and a.op != "get_attr"]
            if own is not None:
                late = [s for s in from_inputs if s > own]
                if late:
                    raise ParplanError(
                        f"graph node {node.name} ({module_path(node)}) is planned on stage {own} but reads a "
                        f"value computed on stage {max(late)}; the plan's pieces must follow the model's "
                        f"data flow (a piece may not come before a piece it reads from); move it to stage {max(late)} or "
                        f"later, or regenerate the plan"
                    )
                stage[node] = own
            elif from_inputs:
                stage[node] = max(from_inputs)
    output = next(n for n in graph.nodes if n.op == "output")
    for node in reversed(nodes):  # input-free glue (arange, full) and weights go where they are read
        if node in stage:
            continue
        readers = {stage[u] if u is not output else num_stages - 1 for u in node.users if u in stage or u is output}
        if not readers:
            stage[node] = 0 if node.op != "get_attr" else -1
            continue
        if node.op == "get_attr" and len(readers) > 1:
            shared[node] = tuple(sorted(readers))
        stage[node] = min(readers)
    return stage, shared


def _own_copies(module: fx.GraphModule, shared: dict[fx.Node, tuple[int, ...]], k: int) -> tuple[TiedWeight, ...]:
    """Give stage `k`'s module its own copy of each tensor it shares with an earlier stage.

    The first reader keeps the model's tensor; a later one gets a clone (same value, same
    name). Two stages on one rank (V placements) must not share a Parameter: PyTorch scales
    each stage's gradients by 1/M on its own, which would scale a shared one twice, and
    the tied sum (parplan.runtime.tied) adds the copies' gradients explicitly. Returns the
    tied weights (parameters that take gradients) the stage holds.
    """
    tied = []
    for node, readers in shared.items():
        if k not in readers:
            continue
        owner, _, attr = node.target.rpartition(".")
        holder = module.get_submodule(owner)
        value = getattr(holder, attr)
        if isinstance(value, nn.Parameter) and value.requires_grad:
            tied.append(TiedWeight(name=node.target, stages=readers))
        if k != readers[0]:
            if type(holder) is not nn.Module:  # fx made a fresh holder unless it is a model module run whole
                raise ParplanError(
                    f"weight {node.target!r} is read by stages {list(readers)} but lives inside {owner!r}, a "
                    f"module that runs whole (an MoE) on stage {k}: its copy cannot be made there; keep the "
                    f"readers of {node.target!r} on one stage"
                )
            copy = value.detach().clone()
            if isinstance(value, nn.Parameter):
                holder.register_parameter(attr, nn.Parameter(copy, requires_grad=value.requires_grad))
            else:
                setattr(holder, attr, copy)
    return tuple(sorted(tied, key=lambda t: t.name))


def _pass_along(graph: fx.Graph, value: fx.Node) -> fx.Node:
    """A stage input handed on unchanged, as a copy with its own autograd node.

    Returning the input tensor itself makes a stage output identical to a stage input,
    and PyTorch's split backward (I, then W) detaches its outputs in place after the I
    step — which detaches the input too and breaks the rest of the backward. A view
    (`alias`) cannot be detached in place at all. So the value is copied: one extra
    activation-sized copy per hop, the price of carrying branches down a chain.
    """
    if not value.meta["val"].dtype.is_floating_point:
        return value
    node = graph.call_function(torch.ops.aten.clone.default, (value,))
    node.meta = dict(value.meta)
    return node


def _flat_nodes(value) -> list[fx.Node]:
    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, (tuple, list)):
        return [n for v in value for n in _flat_nodes(v)]
    return []


def split_graph(gm: fx.GraphModule, pieces_per_stage: list[list[str]]) -> list[StageGraph]:
    """Cut `gm` into `len(pieces_per_stage)` chained stage modules (see the module docstring)."""
    num_stages = len(pieces_per_stage)
    piece_stage = {p: s for s, ps in enumerate(pieces_per_stage) for p in ps}
    known = {module_path(n) for n in gm.graph.nodes}
    opaque = [opaque_path(n) for n in gm.graph.nodes if opaque_path(n)]
    missing = [p for p in piece_stage if not any(k == p or k.startswith(p + ".") for k in known)
               and not any(p.startswith(o + ".") for o in opaque)]
    if missing:
        raise ParplanError(
            f"pieces {missing[:4]} run no operation in the traced model; name module paths of this model "
            f"(e.g. {sorted(k for k in known if k)[:4]})"
        )
    stage, shared = _assign_stages(gm.graph, piece_stage, num_stages)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    values = [n for n in gm.graph.nodes if n in stage and n.op != "get_attr" and stage[n] >= 0]
    last_read = {}
    for v in values:
        readers = [num_stages - 1 if u is output else stage[u] for u in v.users if u is output or u in stage]
        last_read[v] = max(readers, default=stage[v])
    # boundary[k]: values entering stage k (k = 0: the model inputs)
    boundary = [[n for n in gm.graph.nodes if n.op == "placeholder"]]
    for k in range(1, num_stages):
        boundary.append([v for v in values if stage[v] < k and last_read[v] >= k])

    stages = []
    for k in range(num_stages):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for v in boundary[k]:
            env[v] = graph.placeholder(v.name)
            env[v].meta = dict(v.meta)
        for node in gm.graph.nodes:
            if node in stage and (stage[node] == k or k in shared.get(node, ())) and node.op != "placeholder":
                env[node] = graph.node_copy(node, lambda a: env[a])
        if k == num_stages - 1:
            (result,) = output.args
            if isinstance(result, (tuple, list)) and len(result) == 1:
                result = result[0]  # exported graphs return a flat tuple; one output is the tensor
            graph.output(fx.node.map_arg(result, lambda a: env[a]))
            outputs: list[fx.Node] = []
            output_meta = tuple(_meta(n) for n in _flat_nodes(result))
        else:
            outputs = boundary[k + 1]
            output_meta = tuple(_meta(v) for v in outputs)
            results = [_pass_along(graph, env[v]) if v in boundary[k] else env[v] for v in outputs]
            graph.output(tuple(results) if len(results) > 1 else results[0])
        graph.lint()
        module = fx.GraphModule(gm, graph, class_name=f"Stage{k}")
        tied = _own_copies(module, shared, k)
        stages.append(StageGraph(
            index=k,
            module=module,
            inputs=tuple(v.name for v in boundary[k]),
            outputs=tuple(v.name for v in outputs),
            passed_along=tuple(v.name for v in boundary[k] if k + 1 < num_stages and v in boundary[k + 1]),
            input_meta=tuple(_meta(v) for v in boundary[k]),
            computes_on_tokens=k > 0 and any(
                not v.meta["val"].dtype.is_floating_point and any(stage.get(u) == k for u in v.users)
                for v in boundary[k]
            ),
            output_meta=output_meta,
            tied=tied,
        ))
    return stages
