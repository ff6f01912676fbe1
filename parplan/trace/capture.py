"""Capture a model into parplan's operator DAG without materialising weights.

Pass 1 captures: `torch.export.export(strict=False)` (fake tensors; a meta-device model
allocates nothing), falling back to `torch.fx.symbolic_trace` + shape propagation on meta
tensors when export fails. The warnings and torch log records capture emits are collected
(deduplicated) on the result instead of printed. Pass 2 normalises every node to an `OpCall`
(reading what each attention mask allows with `parplan.trace.masks`) and applies the rules in
`parplan.trace.rules`. Pass 3 keeps leaf modules whole, attributes
parameters, gradient accumulation and repeated blocks, and builds the networkx DAG.

Leaf modules (`leaf_modules=(Cls,)`): on an exported graph every operator run inside a `Cls`
instance reports that instance as its module (its inner module paths are dropped), so it
keeps its exact costs and coarsening keeps the instance in one unit: no stage boundary falls
inside it. On the fx fallback a leaf is not traced into: it is one opaque operator, costed
from its bytes only; that is how code fx cannot trace is hidden from it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Iterable

import networkx as nx
import torch
from torch import nn

from parplan.errors import ParplanError
from parplan.trace.blocks import find_repeated_blocks
from parplan.trace.moe import find_moe_layers
from parplan.trace.graph import OpKind, OpNode, SharedParam, TensorMeta, TracedGraph
from parplan.trace.masks import MaskFacts, MaskReader
from parplan.trace.rules import ArgTensor, OpCall, apply_rule

__all__ = ["trace", "UnknownOperatorWarning"]

EXPORT = "torch.export"
FX = "torch.fx.symbolic_trace"


class UnknownOperatorWarning(UserWarning):
    """Operators without a FLOP rule were costed from bytes only."""


# ---- helpers ------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_meta(value: Any) -> TensorMeta | None:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or not isinstance(dtype, torch.dtype):
        return None
    dims = tuple(int(d) for d in shape)
    return TensorMeta(shape=dims, dtype=_dtype_name(dtype), nbytes=math.prod(dims) * dtype.itemsize)


def _is_contiguous(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_contiguous()
    flag = getattr(value, "is_contiguous", True)
    return bool(flag) if not callable(flag) else True


def _node_value(node: torch.fx.Node) -> Any:
    if "val" in node.meta:
        return node.meta["val"]
    return node.meta.get("tensor_meta")


def _flatten_values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)) and not hasattr(value, "shape"):
        return list(value)
    return [value]


def _short_class(cls: Any) -> str:
    if isinstance(cls, type):
        return cls.__name__
    return str(cls).rsplit(".", 1)[-1]


_PY_OPS = {"truediv": "div", "floordiv": "div", "iadd": "add", "imul": "mul", "isub": "sub", "itruediv": "div"}
_MODULE_OPS = {
    nn.Linear: "linear", nn.LayerNorm: "layer_norm", nn.Embedding: "embedding",
    nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d", nn.Dropout: "dropout",
    nn.GELU: "gelu", nn.SiLU: "silu", nn.ReLU: "relu", nn.Tanh: "tanh", nn.Identity: "alias",
    nn.Softmax: "softmax",
}
if hasattr(nn, "RMSNorm"):
    _MODULE_OPS[nn.RMSNorm] = "rms_norm"


def _op_name(node: torch.fx.Node, root: nn.Module) -> tuple[str, str]:
    """(normalised op name, printable target)."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        name = _MODULE_OPS.get(type(module), type(module).__name__)
        return name, f"module:{type(module).__name__}"
    if node.op == "call_method":
        return node.target, f"method:{node.target}"
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__, str(target)
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target.__name__, str(target)
    name = getattr(target, "__name__", str(target))
    return _PY_OPS.get(name, name), f"{getattr(target, '__module__', '') or ''}.{name}".lstrip(".")


def _scalars(node: torch.fx.Node, op: str, root: nn.Module, masks: MaskReader) -> dict[str, Any]:
    """The non-tensor arguments the rules need (causal flag, dropout p and mode), and what an
    attention's mask allows (`mask_causal`, `mask_pairs`: see `parplan.trace.masks`)."""
    out: dict[str, Any] = {}
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        if isinstance(module, nn.Dropout):
            out.update(p=module.p, train=module.training)
        return out
    kwargs = dict(node.kwargs)
    if isinstance(node.target, torch._ops.OpOverload):
        names = [a.name for a in node.target._schema.arguments]
        kwargs.update({names[i]: a for i, a in enumerate(node.args) if i < len(names)})
    if op == "scaled_dot_product_attention":
        out["is_causal"] = kwargs.get("is_causal", node.args[5] if len(node.args) > 5 else False)
        mask = kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
        if isinstance(mask, torch.fx.Node):
            out.update(_mask_scalars(masks.facts(mask)))
    elif op in ("matmul", "bmm"):
        eager = masks.eager_attention_mask(node)
        if eager is not None:
            product, mask = eager
            out.update(_mask_scalars(masks.facts(mask)), attention_product=product)
    elif op == "einsum":
        out["equation"] = kwargs.get("equation", node.args[0] if node.args else None)
    elif op in ("dropout", "native_dropout"):
        out["p"] = kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
        out["train"] = kwargs.get("train", kwargs.get("training", node.args[2] if len(node.args) > 2 else True))
    return {k: v for k, v in out.items() if not isinstance(v, torch.fx.Node)}


def _mask_scalars(facts: MaskFacts) -> dict[str, Any]:
    return {"mask_causal": facts.causal} | ({} if facts.pairs is None else {"mask_pairs": facts.pairs})


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


@dataclass(frozen=True, kw_only=True, slots=True)
class _Ref:
    """What the capture knows about one value flowing through the graph."""

    metas: tuple[TensorMeta | None, ...]
    storages: tuple[str, ...]
    param: str | None
    requires_grad: bool
    contiguous: bool = True


_VIEWLIKE = frozenset(
    "view _unsafe_view alias t transpose permute unsqueeze squeeze select slice split split_with_sizes "
    "chunk unbind getitem detach flatten unflatten as_strided narrow movedim view_as view_as_real view_as_complex "
    "expand expand_as".split()
)
_NON_DIFFERENTIABLE = frozenset("detach eq ne lt gt le ge argmax argmin arange zeros ones full empty".split())


# ---- capture ----------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    # torch.export names the user frame that broke capture on a later line; quote it too
    frame = next((ln for ln in lines[1:] if ln.startswith(("File ", "  File")) or ".py\", line" in ln), "")
    quoted = f"{type(err).__name__}: {text[:300]}"
    return f"{quoted} ({frame[:200]})" if frame else quoted


class _LeafTracer(torch.fx.Tracer):
    """fx tracer that does not trace into `leaves` and records the innermost module whose
    forward raised (`failed_in`), so an error can name the class to mark a leaf."""

    def __init__(self, leaves: tuple[type, ...]) -> None:
        super().__init__()
        self._leaves = leaves
        self.failed_in: tuple[str, type] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module sees the error first
                self.failed_in = (self.path_of_module(m), type(m))
            raise


def _capture_fx(model: nn.Module, inputs: tuple[Any, ...], tracer: _LeafTracer) -> torch.fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    graph = tracer.trace(model)
    gm = torch.fx.GraphModule(tracer.root, graph)
    meta_inputs = [x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs]
    with torch.no_grad():
        ShapeProp(gm).propagate(*meta_inputs)
    return gm


def _capture(model: nn.Module, inputs: tuple[Any, ...], leaves: tuple[type, ...], method: str):
    export_error: BaseException | None = None
    if method in ("auto", "export"):
        try:
            ep = torch.export.export(model, inputs, strict=False)
            return EXPORT, ep.graph_module, dict(ep.graph_signature.inputs_to_parameters), ep, None
        except Exception as err:  # any capture failure: try the fallback, then report both
            export_error = err
            if method == "export":
                raise _untraceable(model, export_error, None, None) from err
    tracer = _LeafTracer(leaves)
    try:
        gm = _capture_fx(model, inputs, tracer)
    except Exception as err:
        raise _untraceable(model, export_error, err, tracer.failed_in) from err
    return FX, gm, {}, None, export_error


def _untraceable(model: nn.Module, export_error: BaseException | None, fx_error: BaseException | None,
                 failed_in: tuple[str, type] | None) -> ParplanError:
    parts = []
    if export_error is not None:
        parts.append(f"torch.export failed: {_first_line(export_error)}")
    if fx_error is not None:
        parts.append(f"torch.fx.symbolic_trace failed: {_first_line(fx_error)}")
    exportable = ("make the code torch.export names traceable (no Python branching on tensor values: "
                  "torch.cond, torch._check), so export captures the whole model with exact costs")
    if failed_in is not None and _share_of_params(model, failed_in[0]) > 0.5:
        path, cls = failed_in
        fix = (f"Fix: {exportable}. fx failed inside {path} ({cls.__name__}), which holds most of the model's "
               f"parameters: kept whole as a leaf it would leave nothing to split into stages")
    elif failed_in is not None:
        path, cls = failed_in
        cli = "" if "<locals>" in cls.__qualname__ else f" (CLI: --leaf {cls.__module__}.{cls.__qualname__})"
        fix = (f"Fix: either {exportable}; or keep {path} whole with leaf_modules=({cls.__name__},){cli}: "
               f"the fx fallback then keeps each {cls.__name__} as one operator costed from its bytes only")
    elif fx_error is not None:
        fix = (f"Fix: {exportable}. fx failed in {type(model).__name__}.forward itself, outside any submodule, "
               f"so marking a module a leaf cannot help; a free function fx cannot trace can be decorated "
               f"with torch.fx.wrap")
    else:
        fix = f"Fix: {exportable}, or use method='auto' to fall back to torch.fx.symbolic_trace"
    return ParplanError(f"cannot capture {type(model).__name__}: " + "; ".join(parts) + ". " + fix)


def _share_of_params(model: nn.Module, path: str) -> float:
    """The fraction of the model's parameters that the submodule at `path` holds."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.get_submodule(path).parameters()) / total if total else 0.0


class _QuietTorchLogs(logging.Filter):
    """Keeps torch's WARNING-and-above log records (first line) instead of printing them."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # DEBUG/INFO print only when the user asked for them (TORCH_LOGS)
        lines = record.getMessage().strip().splitlines()
        self.messages.append(f"torch log {record.levelname}: {lines[0] if lines else record.name}")
        return False


@contextlib.contextmanager
def _collected(into: list[str]):
    """Collect what capture emits into `into` instead of printing it: Python warnings and
    torch log warnings ("Category: first line" each, in order, repeats included), and text
    written to sys.stderr (torch.export prints a failed capture's partial graph there)."""
    loggers = [logging.getLogger("torch")] + [
        lg for name, lg in logging.Logger.manager.loggerDict.items()
        if name.startswith("torch.") and isinstance(lg, logging.Logger)]
    handlers = {h for lg in loggers for h in lg.handlers}
    quiet = _QuietTorchLogs()
    printed = io.StringIO()
    for h in handlers:
        h.addFilter(quiet)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(printed):
            warnings.simplefilter("always")
            yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)
        into.extend(f"{w.category.__name__}: {(str(w.message).strip().splitlines() or [''])[0]}" for w in caught)
        into.extend(quiet.messages)
        lines = [ln.strip() for ln in printed.getvalue().splitlines() if ln.strip()]
        if lines:
            into.append(f"printed to stderr ({len(lines)} lines): {lines[0]}")


# ---- main entry -------------------------------------------------------------------------------


def trace(
    model: nn.Module,
    example_inputs: tuple[Any, ...] | Any,
    *,
    leaf_modules: Iterable[type] = (),
    method: str = "auto",
) -> TracedGraph:
    """Trace `model` on `example_inputs` into a costed operator DAG (see `TracedGraph`).

    Build the model and inputs on the meta device to avoid materialising weights.
    `method`: "auto" (export, then fx), "export" or "fx". Each instance of a
    `leaf_modules` class is kept whole (module docstring); a class with no instance in the
    model is an error. Warnings emitted during capture are collected on the result
    (`capture_warnings`, `capture_warning_count`), not printed; operators without a FLOP
    rule raise an `UnknownOperatorWarning` listing them.
    """
    if method not in ("auto", "export", "fx"):
        raise ParplanError(f"method={method!r} is not a capture method; use auto, export or fx")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    leaves = tuple(leaf_modules)
    started = time.perf_counter()
    emitted: list[str] = []
    with _collected(emitted):
        capture, gm, inputs_to_params, program, export_error = _capture(model, inputs, leaves, method)
    seconds = time.perf_counter() - started
    notes: list[str] = []
    if capture == FX and export_error is not None:
        notes.append(f"torch.export failed ({_first_line(export_error)}); fell back to torch.fx.symbolic_trace")
    traced = _build(model, gm, inputs_to_params, capture, seconds, notes, leaves)
    object.__setattr__(traced, "capture_warnings", tuple(dict.fromkeys(emitted)))
    object.__setattr__(traced, "capture_warning_count", len(emitted))
    if traced.unknown_ops:
        warnings.warn(
            f"no FLOP rule for {len(traced.unknown_ops)} operator kind(s): {', '.join(traced.unknown_ops)}; "
            f"they are costed from bytes moved only (FLOPs counted as 0 — check they are not compute-heavy)",
            UnknownOperatorWarning,
            stacklevel=2,
        )
    object.__setattr__(traced, "program", gm)
    return traced


def _keep_leaves(calls: list[_Call], model: nn.Module, leaves: tuple[type, ...]) -> tuple[list[_Call], tuple[str, ...]]:
    """Each call's module stack cut after the outermost `leaves` instance it runs in, so every
    operator inside a leaf names the leaf as its module; and the leaf instances, in program order."""
    if not leaves:
        return calls, ()
    is_leaf: dict[str, bool] = {}
    kept: dict[str, None] = {}
    out = []
    for c in calls:
        for i, (path, _) in enumerate(c.stack):
            if path and path not in is_leaf:
                try:
                    is_leaf[path] = isinstance(model.get_submodule(path), leaves)
                except AttributeError:  # a path export made up for a module it could not resolve
                    is_leaf[path] = False
            if path and is_leaf[path]:
                c = replace(c, stack=c.stack[:i + 1])
                kept[path] = None
                break
        out.append(c)
    if not kept:
        names = ", ".join(cls.__name__ for cls in leaves)
        own = sorted({type(m).__name__ for m in model.modules() if not type(m).__module__.startswith("torch.")})
        raise ParplanError(f"leaf module class(es) {names}: no instance runs in {type(model).__name__}'s forward; "
                           f"name a class the model calls (its own classes: {', '.join(own[:8]) or 'none'})")
    return out, tuple(kept)


def _moe_notes(model: nn.Module) -> list[str]:
    notes = []
    for path, module in model.named_modules():
        load = getattr(module, "parplan_expected_load", None)
        if load:
            notes.append(
                f"MoE {path or type(module).__name__}: each of {load['experts']} experts is costed at its "
                f"expected load, tokens x top_k {load['top_k']} / experts x capacity_factor "
                f"{load['capacity_factor']} (routing is data-dependent and cannot run on meta tensors)"
            )
    if len(notes) > 3:  # one line per MoE layer is noise; keep the first and a count
        notes = [notes[0], f"... and {len(notes) - 1} more MoE layers with the same assumption"]
    return notes


@dataclass(frozen=True, slots=True)
class _Params:
    """The model's parameters; tied ones (one tensor, two names) are one parameter."""

    canonical: dict[int, str]  # id(tensor) -> its first name
    by_name: dict[str, nn.Parameter]  # every name, tied names included
    unique: dict[str, nn.Parameter]  # canonical name -> parameter

    @classmethod
    def of(cls, model: nn.Module) -> _Params:
        canonical: dict[int, str] = {}
        by_name: dict[str, nn.Parameter] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            canonical.setdefault(id(p), name)
            by_name[name] = p
        return cls(canonical, by_name, {canonical[id(p)]: p for p in by_name.values()})


@dataclass(frozen=True, slots=True)
class _Call:
    """One tensor-producing node, normalised: its `OpCall` and what the OpNode needs besides."""

    node: torch.fx.Node
    call: OpCall
    target: str  # printable target
    stack: tuple[tuple[str, str], ...]  # (module path, class) outermost first
    ref: _Ref


def _build(
    model: nn.Module,
    gm: torch.fx.GraphModule,
    inputs_to_params: dict[str, str],
    capture: str,
    seconds: float,
    notes: list[str],
    leaves: tuple[type, ...],
) -> TracedGraph:
    params = _Params.of(model)
    # pass 2: a value record per node, an OpCall per call that does tensor work
    refs, calls = _normalise(gm, inputs_to_params, params)
    calls, kept = _keep_leaves(calls, model, leaves)
    if kept:
        notes.append(f"kept {len(kept)} leaf module instance(s) whole ({', '.join(kept[:3])}"
                     f"{', ...' if len(kept) > 3 else ''}): " + (
                         "each is one operator costed from its bytes only (the fx fallback does not trace into "
                         "a leaf)" if capture == FX else "their operators keep exact costs and stay in one unit"))

    # pass 3: storage sizes and gradient fan-in; the costed nodes; repeated blocks; the DAG
    storage_bytes = _storage_sizes(refs, params.unique)
    consumers = _gradient_consumers(calls, refs)
    attributed: set[str] = set()  # parameters already counted: each goes to its first user, in program order
    nodes = []
    for c in calls:
        nodes.append(_op_node(c, storage_bytes, consumers, params.unique, attributed, type(model).__name__))
    members, classes = _block_members(calls, nodes)
    blocks, instance_block = find_repeated_blocks(members, classes)
    tagged = _tag_blocks(nodes, [tuple(p for p, _ in c.stack) for c in calls], instance_block)
    graph = _dag(tagged, calls, refs)

    all_params = params.unique.values()
    return TracedGraph(
        graph=graph,
        nodes=tuple(tagged),
        capture=capture,
        capture_seconds=seconds,
        param_count=sum(p.numel() for p in all_params),
        param_bytes=sum(p.numel() * p.element_size() for p in all_params),
        unattributed_params=tuple(sorted(set(params.unique) - attributed)),
        unknown_ops=tuple(sorted({n.op for n in nodes if n.kind is OpKind.UNKNOWN})),
        blocks=tuple(blocks),
        notes=tuple(notes + _moe_notes(model)),
        moe_layers=find_moe_layers(model, tagged),
        shared_params=_shared_params(calls, storage_bytes, params.unique),
        storage_bytes=storage_bytes,
        leaves=kept,
    )


def _shared_params(calls: list[_Call], storage_bytes: dict[str, int],
                   all_params: dict[str, nn.Parameter]) -> tuple[SharedParam, ...]:
    """Parameters read by two or more calls, with their readers in program order (the
    first is the one `_op_node` attributes the parameter to)."""
    readers: dict[str, list[str]] = {}
    for c in calls:
        for t in c.call.tensors:
            if t.param is not None and t.param in all_params:
                ops = readers.setdefault(t.param, [])
                if c.node.name not in ops:
                    ops.append(c.node.name)
    return tuple(SharedParam(name=p, readers=tuple(ops), param_bytes=storage_bytes[p],
                             param_count=all_params[p].numel()) for p, ops in readers.items() if len(ops) > 1)


# ---- pass 2: normalise ------------------------------------------------------------------------


def _normalise(gm: torch.fx.GraphModule, inputs_to_params: dict[str, str],
               params: _Params) -> tuple[dict[str, _Ref], list[_Call]]:
    """A `_Ref` per node name in program order, and the calls that do tensor work."""
    refs: dict[str, _Ref] = {}
    calls: list[_Call] = []
    masks = MaskReader(lambda n: _op_name(n, gm)[0])
    for node in gm.graph.nodes:
        value = _node_value(node)
        if node.op == "placeholder":
            refs[node.name] = _placeholder_ref(node, value, inputs_to_params, params)
        elif node.op == "get_attr":
            refs[node.name] = _attr_ref(node, value, gm, params)
        elif node.op != "output":
            refs[node.name], call = _normalise_call(node, value, gm, refs, params, masks)
            if call is not None:
                calls.append(call)
    return refs, calls


def _placeholder_ref(node: torch.fx.Node, value: Any, inputs_to_params: dict[str, str], params: _Params) -> _Ref:
    """A graph input: a parameter (torch.export lifts them to inputs) or a user input."""
    meta = _tensor_meta(value)
    fqn = inputs_to_params.get(node.name)
    param = params.canonical[id(params.by_name[fqn])] if fqn in params.by_name else None
    rg = bool(params.unique[param].requires_grad) if param else bool(getattr(value, "requires_grad", False))
    return _Ref(metas=(meta,), storages=(param or node.name,), param=param, requires_grad=rg)


def _attr_ref(node: torch.fx.Node, value: Any, gm: torch.fx.GraphModule, params: _Params) -> _Ref:
    """A module attribute read: a parameter, or a buffer or constant (no gradient)."""
    target = node.target
    param = params.canonical.get(id(params.by_name[target])) if target in params.by_name else None
    obj = getattr(gm, target, None) if param is None else params.unique[param]
    meta = _tensor_meta(obj) or _tensor_meta(value)
    rg = bool(param and params.unique[param].requires_grad)
    return _Ref(metas=(meta,), storages=(param or node.name,), param=param, requires_grad=rg)


def _normalise_call(node: torch.fx.Node, value: Any, gm: torch.fx.GraphModule, refs: dict[str, _Ref],
                    params: _Params, masks: MaskReader) -> tuple[_Ref, _Call | None]:
    """The node's value record, and its `_Call` unless it does no tensor work."""
    op, target = _op_name(node, gm)
    arg_nodes = [n for n in _tensor_args(node) if n.name in refs]
    # getitem picks one output of a multi-output op
    if op == "getitem" and arg_nodes and len(refs[arg_nodes[0].name].metas) > 1 and isinstance(node.args[1], int):
        return _picked_output(refs[arg_nodes[0].name], node.args[1]), None
    metas = tuple(_tensor_meta(v) for v in _flatten_values(value))
    if not any(m is not None for m in metas):
        # a shape or scalar computation (x.size(), sym ints): no tensor work
        return _Ref(metas=(None,), storages=(node.name,), param=None, requires_grad=False), None
    tensors = _call_tensors(node, op, gm, [refs[n.name] for n in arg_nodes], params)
    ref = _output_ref(node.name, op, metas, tensors, refs[arg_nodes[0].name] if arg_nodes else None)
    call = OpCall(
        name=node.name,
        op=op,
        tensors=tuple(tensors),
        outputs=tuple(m for m in metas if m is not None),
        scalars=_scalars(node, op, gm, masks),
        input_contiguous=_is_contiguous(_node_value(arg_nodes[0]) if arg_nodes else None),
    )
    return ref, _Call(node=node, call=call, target=target, stack=_module_stack(node, gm), ref=ref)


def _is_floating(meta: TensorMeta) -> bool:
    return meta.dtype.startswith(("float", "bfloat"))


def _picked_output(parent: _Ref, i: int) -> _Ref:
    """Output i of a multi-output op; it needs a gradient only when floating point."""
    meta = parent.metas[i]
    return _Ref(metas=(meta,), storages=(parent.storages[i],), param=parent.param,
                requires_grad=parent.requires_grad and meta is not None and _is_floating(meta))


def _call_tensors(node: torch.fx.Node, op: str, gm: torch.fx.GraphModule, arg_refs: list[_Ref],
                  params: _Params) -> list[ArgTensor]:
    """The call's tensor inputs in the order the rules expect; a called module's own
    parameters count as inputs (sized now: they are their own storage)."""
    tensors = [ArgTensor(meta=r.metas[0], storage=r.storages[0], storage_bytes=0, param=r.param,
                         requires_grad=r.requires_grad) for r in arg_refs if r.metas[0] is not None]
    if node.op == "call_module":
        for pname, p in gm.get_submodule(node.target).named_parameters():
            full = params.canonical.get(id(p), f"{node.target}.{pname}")
            meta = _tensor_meta(p)
            tensors.append(ArgTensor(meta=meta, storage=full, storage_bytes=meta.nbytes,
                                     param=full, requires_grad=p.requires_grad))
        if op == "embedding":  # module inputs are (indices); rules expect (weight, indices)
            tensors = tensors[1:] + tensors[:1]
    return tensors


def _output_ref(name: str, op: str, metas: tuple[TensorMeta | None, ...], tensors: list[ArgTensor],
                first_arg: _Ref | None) -> _Ref:
    """A call's outputs: a view shares its first input's storage; the outputs need a
    gradient when the op is differentiable, an input needs one and an output is floating."""
    base = first_arg if op in _VIEWLIKE else None
    rg = (
        op not in _NON_DIFFERENTIABLE
        and any(t.requires_grad for t in tensors)
        and any(m is not None and _is_floating(m) for m in metas)
    )
    storages = tuple(base.storages[0] if base else (name if len(metas) == 1 else f"{name}.{i}")
                     for i in range(len(metas)))
    return _Ref(metas=metas, storages=storages, param=base.param if base else None, requires_grad=rg)


def _module_stack(node: torch.fx.Node, gm: torch.fx.GraphModule) -> tuple[tuple[str, str], ...]:
    """(path, class) of the modules the node runs in; a called leaf module is the innermost."""
    stack = node.meta.get("nn_module_stack") or {}
    items = tuple((path, _short_class(cls)) for path, cls in stack.values())
    if node.op == "call_module" and (not items or items[-1][0] != node.target):
        items += ((node.target, type(gm.get_submodule(node.target)).__name__),)
    return items


# ---- pass 3: attribute, cost, find blocks, build the DAG ----------------------------------------


def _storage_sizes(refs: dict[str, _Ref], all_params: dict[str, nn.Parameter]) -> dict[str, int]:
    """Bytes per storage: a view's storage is its base's; a parameter's is the whole tensor."""
    storage_bytes: dict[str, int] = {}
    for r in refs.values():  # program order: a base is seen before its views
        for s, m in zip(r.storages, r.metas):
            if m is not None:
                storage_bytes.setdefault(s, m.nbytes)
    for p, obj in all_params.items():
        storage_bytes[p] = obj.numel() * obj.element_size()
    return storage_bytes


def _gradient_consumers(calls: list[_Call], refs: dict[str, _Ref]) -> dict[str, int]:
    """Differentiable consumers per non-parameter tensor: one used by k > 1 sums k gradients."""
    consumers: dict[str, int] = defaultdict(int)
    for c in calls:
        for n in {a.name for a in _tensor_args(c.node)}:
            r = refs.get(n)
            if r is not None and r.requires_grad and r.param is None and c.call.op not in ("getitem",):
                consumers[n] += 1
    return consumers


def _arg_shapes(call: OpCall) -> tuple:
    return tuple((t.meta.shape, t.meta.dtype, t.param is not None) for t in call.tensors)


def _op_node(c: _Call, storage_bytes: dict[str, int], consumers: dict[str, int],
             all_params: dict[str, nn.Parameter], attributed: set[str], root_class: str) -> OpNode:
    """The costed node of one call. Its parameters are those not yet `attributed` to an
    earlier call (added to it); summing k > 1 input gradients adds (k − 1) · 3 output-sized
    transfers (read two, write one) to its backward-input bytes."""
    call = replace(c.call, tensors=tuple(replace(t, storage_bytes=storage_bytes.get(t.storage, t.meta.nbytes))
                                         for t in c.call.tensors))
    result = apply_rule(call)
    params = []
    for t in call.tensors:
        if t.param is not None and t.param not in attributed:
            attributed.add(t.param)
            params.append(t.param)
    extra_i = 0
    if consumers.get(c.node.name, 0) > 1:
        extra_i = (consumers[c.node.name] - 1) * 3 * call.outputs[0].nbytes
    shapes = _arg_shapes(call)
    path, cls = c.stack[-1] if c.stack else ("", root_class)
    return OpNode(
        name=c.node.name,
        op=call.op,
        target=c.target,
        kind=result.kind,
        module_path=path,
        module_class=cls,
        inputs=tuple(t.meta for t in call.tensors),
        outputs=call.outputs,
        forward_flops=result.forward_flops,
        backward_input_flops=result.backward_input_flops,
        backward_weight_flops=result.backward_weight_flops,
        bytes_read=result.bytes_read,
        bytes_written=result.bytes_written,
        backward_input_bytes=result.backward_input_bytes + extra_i,
        backward_weight_bytes=result.backward_weight_bytes,
        param_bytes=sum(storage_bytes[p] for p in params),
        param_count=sum(all_params[p].numel() for p in params if p in all_params),
        params=tuple(params),
        saved=tuple(dict(result.saved).items()),
        gemms=result.gemms,
        attention=result.attention,
        requires_grad=c.ref.requires_grad,
        input_flags=tuple((t.param is not None, t.requires_grad) for t in call.tensors),
        signature=f"{c.target}|{shapes}|{sorted(call.scalars.items())}|rg={[t.requires_grad for t in call.tensors]}",
    )


def _block_members(calls: list[_Call], nodes: list[OpNode]
                   ) -> tuple[dict[str, list[tuple[str, int]]], dict[str, str]]:
    """Per module path, the (operator key, forward FLOPs) of every node run inside it, and
    its class: what `find_repeated_blocks` compares to find identical instances."""
    members: dict[str, list[tuple[str, int]]] = defaultdict(list)
    classes: dict[str, str] = {}
    for c, op_node in zip(calls, nodes):
        key = (c.call.op, _arg_shapes(c.call), tuple(m.shape for m in c.call.outputs))
        for p, cls in c.stack:
            members[p].append((repr(key), op_node.forward_flops))
            classes.setdefault(p, cls)
    return members, classes


def _tag_blocks(nodes: list[OpNode], node_paths: list[tuple[str, ...]],
                instance_block: dict[str, int]) -> list[OpNode]:
    """Each node tagged with the outermost repeated-block instance it runs in, if any."""
    tagged: list[OpNode] = []
    for op_node, paths in zip(nodes, node_paths):
        instance = next((p for p in paths if p in instance_block), None)
        if instance is not None:
            op_node = replace(op_node, block=instance_block[instance], block_instance=instance)
        tagged.append(op_node)
    return tagged


def _dag(nodes: list[OpNode], calls: list[_Call], refs: dict[str, _Ref]) -> nx.DiGraph:
    """Operators as nodes; an edge per tensor passed from one to another, with its bytes."""
    graph = nx.DiGraph()
    for op_node in nodes:
        graph.add_node(op_node.name, op=op_node)
    producer = {n.name for n in nodes}
    for c in calls:
        for arg in {a.name for a in _tensor_args(c.node)}:
            if arg in producer:
                m = refs[arg].metas[0]
                graph.add_edge(arg, c.node.name, bytes=m.nbytes if m is not None else 0)
    assert nx.is_directed_acyclic_graph(graph), "a captured program is always acyclic"
    return graph
