"""The model zoo: configurable plain-PyTorch models the CLI knows by name.

`build("gpt", batch=8, seq=1024, hidden=4096, layers=1)` returns a `ZooModel` holding the
module (on the meta device by default: no weights are materialised) and example inputs.
`load_model(spec, ...)` also resolves `path/to/file.py:factory`, `hf:llama` and
`titan:llama3:debugmodel` (torchtitan's own models) specs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from parplan.errors import ParplanError
from parplan.zoo._config import ZooModel, config_from_options, parse_options, torch_dtype
from parplan.zoo.decoder import Decoder, DecoderConfig
from parplan.zoo.gpt import GPT, GPTConfig
from parplan.zoo.layers import expected_expert_tokens
from parplan.zoo.two_tower import TwoTower, TwoTowerConfig

__all__ = [
    "ZooModel",
    "MODEL_NAMES",
    "build",
    "load_model",
    "parse_options",
    "expected_expert_tokens",
    "GPTConfig",
    "DecoderConfig",
    "TwoTowerConfig",
]


def _token_inputs(batch: int, seq: int, device: str) -> tuple[torch.Tensor]:
    return (torch.zeros(batch, seq, dtype=torch.long, device=device),)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Entry:
    config_cls: type
    model_cls: type
    defaults: dict[str, Any]
    inputs: Callable[[Any, int, int, str], tuple[Any, ...]]


def _decoder_inputs(cfg: Any, batch: int, seq: int, device: str) -> tuple[Any, ...]:
    return _token_inputs(batch, seq, device)


def _two_tower_inputs(cfg: TwoTowerConfig, batch: int, seq: int, device: str) -> tuple[Any, ...]:
    images = torch.zeros(batch, cfg.channels, cfg.image_size, cfg.image_size, device=device, dtype=torch_dtype(cfg.dtype))
    return (images, *_token_inputs(batch, seq, device))


_REGISTRY: dict[str, _Entry] = {
    "gpt": _Entry(config_cls=GPTConfig, model_cls=GPT, defaults={}, inputs=_decoder_inputs),
    "llama": _Entry(config_cls=DecoderConfig, model_cls=Decoder, defaults={}, inputs=_decoder_inputs),
    # Mixtral 8x7B shape: top-2 of 8 SwiGLU experts of width 14336
    "mixtral": _Entry(
        config_cls=DecoderConfig,
        model_cls=Decoder,
        defaults=dict(intermediate=14336, experts=8, top_k=2, expert_hidden=14336, rope_theta=1e6),
        inputs=_decoder_inputs,
    ),
    # DeepSeek-V3 shape (MLA replaced by GQA attention of the same head count and dims):
    # 61 layers, first 3 dense, 256 routed experts of width 2048, 1 shared, top-8; its
    # node-limited routing (at most 4 nodes per token) and FP8 dispatch (technical report §3.2.2).
    "deepseek-moe": _Entry(
        config_cls=DecoderConfig,
        model_cls=Decoder,
        defaults=dict(
            vocab=129280, hidden=7168, heads=128, kv_heads=128, head_dim=128, layers=61,
            intermediate=18432, experts=256, top_k=8, expert_hidden=2048, shared_experts=1,
            first_dense_layers=3, route_nodes=4, dispatch_bytes=1,
        ),
        inputs=_decoder_inputs,
    ),
    "two-tower": _Entry(config_cls=TwoTowerConfig, model_cls=TwoTower, defaults={}, inputs=_two_tower_inputs),
}

MODEL_NAMES = tuple(sorted(_REGISTRY))


def build(name: str, *, batch: int = 1, seq: int = 1024, device: str = "meta", **options: Any) -> ZooModel:
    """Build zoo model `name` with config `options` (typed values or strings)."""
    if name not in _REGISTRY:
        raise ParplanError(f"unknown zoo model {name!r}; known: {', '.join(MODEL_NAMES)}")
    if batch < 1 or seq < 1:
        raise ParplanError(f"batch={batch}, seq={seq} must both be >= 1")
    entry = _REGISTRY[name]
    cfg = config_from_options(entry.config_cls, {**entry.defaults, **options})
    if isinstance(cfg, GPTConfig) and seq > cfg.max_positions:
        raise ParplanError(
            f"gpt sequence length {seq} exceeds max_positions={cfg.max_positions}; "
            f"pass the option max_positions={seq} (or larger)"
        )
    with torch.device(device):
        model = entry.model_cls(cfg)
    model = model.to(torch_dtype(cfg.dtype))
    return ZooModel(name=name, model=model, example_inputs=entry.inputs(cfg, batch, seq, device), config=cfg)


def _load_factory(path: str, factory: str, *, batch: int, seq: int, device: str, options: dict[str, str]) -> ZooModel:
    file = Path(path)
    if not file.is_file():
        raise ParplanError(f"model file {path!r} does not exist; give path/to/file.py:factory")
    spec = importlib.util.spec_from_file_location(f"parplan_user_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise ParplanError(f"model file {path!r} is not a Python module; give path/to/file.py:factory")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: say where it failed, not a traceback
        raise ParplanError(f"model file {path!r} failed to import: {type(err).__name__}: {err}; "
                           f"fix the file (run it with python to see the traceback)") from err
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ParplanError(f"{path} has no callable {factory!r}; define def {factory}(batch, seq, device, **options)")
    try:
        built = fn(batch=batch, seq=seq, device=device, **options)
    except Exception as err:
        raise ParplanError(f"model factory {path}:{factory} raised {type(err).__name__}: {err}; "
                           f"fix the factory, or check the options passed to it") from err
    if isinstance(built, nn.Module):
        return ZooModel(name=f"{path}:{factory}", model=built, example_inputs=_token_inputs(batch, seq, device))
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        return ZooModel(name=f"{path}:{factory}", model=built[0], example_inputs=tuple(built[1]))
    raise ParplanError(
        f"{path}:{factory} returned {type(built).__name__}; return an nn.Module "
        f"(fed token ids [batch, seq]) or a (module, example_inputs) tuple"
    )


def load_model(spec: str, *, batch: int = 1, seq: int = 1024, device: str = "meta") -> ZooModel:
    """Resolve a CLI model spec: `gpt:hidden=4096,layers=1`, `file.py:factory`, `hf:llama:layers=2` or
    `titan:llama3:debugmodel`."""
    head, _, rest = spec.partition(":")
    if head.endswith(".py"):
        factory, _, opts = rest.partition(",")
        if not factory:
            raise ParplanError(f"model spec {spec!r} names no factory; write {head}:make_model")
        return _load_factory(head, factory, batch=batch, seq=seq, device=device, options=parse_options(opts))
    if head == "hf":
        from parplan.zoo import hf  # lazy: transformers is an optional extra

        return hf.load(rest, batch=batch, seq=seq, device=device)
    if head == "titan":
        from parplan.zoo import torchtitan  # lazy: torchtitan is an optional extra

        return torchtitan.build(rest, batch=batch, seq=seq, device=device)
    return build(head, batch=batch, seq=seq, device=device, **parse_options(rest))


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
