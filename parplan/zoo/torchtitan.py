"""torchtitan's own model definitions (optional extra `parplan[torchtitan]`, torchtitan 0.3.x).

`titan:llama3:debugmodel` builds the model of torchtitan's config function
`llama3_debugmodel` (`torchtitan.models.llama3.config_registry`) on the meta device, so
the traced module paths are torchtitan's FQNs (`tok_embeddings`, `layers.0`, `norm`,
`lm_head`) and a plan's stage pieces are what its `module_fqns_per_model_part` takes
(`parplan export --torchtitan`, `parplan/runtime/torchtitan_export.py`). The same config
function names the job `torchtitan.train` runs (`--module llama3 --config
llama3_debugmodel`). Options: `layers=N` keeps the first N decoder layers (a plan of a
cut-down model cannot be exported: torchtitan would build every layer), `dtype=`.

Two stand-ins make the model traceable on meta tensors without changing a module path or
a parameter: torchtitan's language models attend with FlexAttention (a `torch.compile`d
kernel and a `BlockMask`), traced here as causal SDPA on the same q, k, v (the FLOPs of
the block-causal mask of one document); and its MoE routes tokens data-dependently, so
each routed expert processes its expected token count, as the zoo's `MoE` does
(`parplan.trace.moe` then finds the layer by its `parplan_expected_load`).
"""

from __future__ import annotations

import importlib
import logging

import torch
import torch.nn.functional as F

from parplan.errors import ParplanError
from parplan.zoo._config import ZooModel, parse_options, torch_dtype
from parplan.zoo.layers import expected_expert_tokens

__all__ = ["TITAN_MODELS", "EXTRA_HINT", "build", "config_name", "parse_spec", "load_job_config", "model_fqns",
           "config_fqns", "flavor_fqns"]

# torchtitan model modules whose debug flavours are checked against torchtitan itself
# (tests/test_torchtitan.py); others of `torchtitan.models` may trace too.
TITAN_MODELS = ("llama3", "qwen3", "deepseek_v3")
EXTRA_HINT = "pip install 'parplan[torchtitan]' (torchtitan==0.3.0 and triton)"
_OPTIONS = ("layers", "dtype")


def config_name(model: str, flavor: str) -> str:
    """torchtitan's config function for `titan:MODEL:FLAVOR`: `llama3_debugmodel`."""
    return f"{model}_{flavor.lower()}"


def parse_spec(rest: str) -> tuple[str, str, dict[str, str]]:
    """`llama3:debugmodel,layers=4` (the part after `titan:`) -> model, flavor, options."""
    head, _, opts = rest.partition(",")
    model, sep, flavor = head.partition(":")
    if not sep or not model or not flavor:
        raise ParplanError(f"torchtitan spec 'titan:{rest}' names no flavor; write titan:MODEL:FLAVOR, "
                           f"e.g. titan:llama3:debugmodel or titan:deepseek_v3:debugmodel,layers=4")
    options = parse_options(opts)
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ParplanError(f"torchtitan model option {unknown[0]!r} is unknown; known options: {list(_OPTIONS)}")
    return model, flavor, options


def load_job_config(model: str, flavor: str):
    """torchtitan's `Trainer.Config` from its config function for `titan:MODEL:FLAVOR`."""
    try:
        import torchtitan  # noqa: F401
    except ImportError:
        raise ParplanError(f"titan:{model}:{flavor} needs the optional extra: {EXTRA_HINT}") from None
    try:
        registry = importlib.import_module(f"torchtitan.models.{model}.config_registry")
    except ImportError as err:
        raise ParplanError(f"torchtitan has no model {model!r} ({err}); use one of "
                           f"{', '.join(TITAN_MODELS)}") from None
    name = config_name(model, flavor)
    fn = getattr(registry, name, None)
    if not callable(fn):
        known = sorted(n.removeprefix(f"{model}_") for n in dir(registry)
                       if n.startswith(f"{model}_") and callable(getattr(registry, n)))
        raise ParplanError(f"torchtitan's {model} has no config function {name!r}; flavors: {', '.join(known)}")
    # torchtitan logs on the root logger while building configs ("initial_load_model_only=True has
    # no effect …" about checkpoint defaults): noise for a planner that only reads the model.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return fn()
    finally:
        logging.disable(previous)


def _traceable(model_config) -> None:
    """Swap each layer's FlexAttention for SDPA (same q, k, v; no parameters): see the module doc."""
    from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention

    for layer in model_config.layers:
        attention = getattr(layer, "attention", None)
        if attention is not None and isinstance(attention.inner_attention, FlexAttention.Config):
            attention.inner_attention = ScaledDotProductAttention.Config()


def _expected_load_moe_class():
    """A subclass of torchtitan's `MoE` whose forward runs every routed expert on its expected
    tokens (torchtitan's parameters, names and shared experts unchanged)."""
    from torchtitan.models.common.moe import MoE

    class ExpectedLoadMoE(MoE):
        def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
            b, s, d = x_BLD.shape
            flat = x_BLD.reshape(b * s, d)
            router = self.router
            scores = router.gate(flat)
            probs = torch.sigmoid(scores) if router.score_func == "sigmoid" else F.softmax(scores, dim=-1)
            experts = self.routed_experts.inner_experts
            load = self.parplan_expected_load
            n = expected_expert_tokens(b * s, experts=load["experts"], top_k=load["top_k"],
                                       capacity_factor=load["capacity_factor"])
            # Stand-in for the dispatch: each expert gets n tokens; which ones does not change the cost.
            # The weights ([E, out, in]) enter each GEMM untransposed, as the left operand of
            # w @ tokens^T, so the tracer sees the parameter on the GEMM and costs its gradient.
            tokens_t = flat[:n].t().unsqueeze(0).expand(load["experts"], d, n)
            hidden_t = F.silu(torch.bmm(experts.w1_EFD, tokens_t)) * torch.bmm(experts.w3_EFD, tokens_t)
            routed_t = torch.bmm(experts.w2_EDF, hidden_t)  # [E, d, n]
            routed = (routed_t.transpose(-2, -1) * probs[:n].t().unsqueeze(-1)).sum(0)
            out = F.pad(routed, (0, 0, 0, b * s - n)).view(b, s, d)
            return out if self.shared_experts is None else out + self.shared_experts(x_BLD)

    return MoE, ExpectedLoadMoE


def _expected_load(model: torch.nn.Module) -> None:
    moe_cls, expected_cls = _expected_load_moe_class()
    for module in model.modules():
        if type(module) is moe_cls:
            module.__class__ = expected_cls
            module.parplan_expected_load = {"experts": module.routed_experts.inner_experts.num_experts,
                                            "top_k": module.router.top_k, "capacity_factor": 1.0}


def build(rest: str, *, batch: int, seq: int, device: str = "meta") -> ZooModel:
    """The model of `titan:` + `rest` (`llama3:debugmodel,layers=4`) with token inputs [batch, seq]."""
    model_name, flavor, options = parse_spec(rest)
    job = load_job_config(model_name, flavor)
    model_config = job.model_spec.model
    if "layers" in options:
        keep = int(options["layers"]) if options["layers"].isdigit() else 0
        if not 1 <= keep <= len(model_config.layers):
            raise ParplanError(f"titan:{model_name}:{flavor} layers={options['layers']}: give 1 … "
                               f"{len(model_config.layers)} (the flavor's layer count)")
        model_config.layers = model_config.layers[:keep]
    _traceable(model_config)
    with torch.device(device):
        model = model_config.build()
    _expected_load(model)
    model = model.to(torch_dtype(options.get("dtype", "bfloat16")))
    inputs = (torch.zeros(batch, seq, dtype=torch.long, device=device),)
    return ZooModel(name=f"titan:{model_name}:{flavor}", model=model, example_inputs=inputs, config=model_config)



def model_fqns(model: torch.nn.Module) -> tuple[str, ...]:
    """The names torchtitan's `module_fqns_per_model_part` takes, in forward order:
    each top-level child, an `nn.ModuleDict` / `nn.ModuleList` child's items as `layers.0`, …
    (what `torchtitan.distributed.pipeline_parallel._split_module` keeps or drops)."""
    out: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, (torch.nn.ModuleDict, torch.nn.ModuleList)):
            out += [f"{name}.{key}" for key, _ in child.named_children()]
        elif child is not None:
            out.append(name)
    return tuple(out)


def config_fqns(model_config) -> tuple[str, ...]:
    """`model_fqns` of the model a torchtitan model config builds (on the meta device)."""
    with torch.device("meta"):
        return model_fqns(model_config.build())


def flavor_fqns(model: str, flavor: str) -> tuple[str, ...]:
    """`model_fqns` of the model torchtitan's config function for MODEL:FLAVOR builds."""
    return config_fqns(load_job_config(model, flavor).model_spec.model)
