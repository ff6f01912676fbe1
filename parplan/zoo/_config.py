"""Typed model options (parse `gpt:hidden=4096,heads=32` into a frozen config dataclass) and
the built model every zoo builder returns (`ZooModel`)."""

from __future__ import annotations

import dataclasses
import typing

import torch
from torch import nn

from parplan.errors import ParplanError

__all__ = ["ZooModel", "parse_options", "config_from_options", "torch_dtype"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ZooModel:
    name: str
    model: nn.Module
    example_inputs: tuple[typing.Any, ...]
    config: typing.Any = None


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ParplanError(f"dtype={name!r} is not supported: use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def parse_options(text: str) -> dict[str, str]:
    """`hidden=4096,heads=32` -> {"hidden": "4096", "heads": "32"} (values stay strings)."""
    options: dict[str, str] = {}
    if not text:
        return options
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ParplanError(
                f"model option {item!r} is malformed: expected KEY=VALUE, "
                f"e.g. gpt:hidden=4096,heads=32,layers=1"
            )
        if key.strip() in options:
            raise ParplanError(f"model option {key.strip()!r} is given twice; give each option once")
        options[key.strip()] = value.strip()
    return options


def _convert(name: str, raw: object, kind: object, cls_name: str) -> object:
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ParplanError(
            f"{cls_name} option {name}={raw!r} is not a valid {kind.__name__}; write e.g. {name}=2"
        ) from None
    return raw


def config_from_options(cls: type, options: dict[str, object]):
    """Build `cls` (a dataclass) from string or typed options; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ParplanError(
            f"{cls.__name__} has no option {unknown[0]!r}; known options: {sorted(fields)}"
        )
    kwargs = {k: _convert(k, v, hints[k], cls.__name__) for k, v in options.items()}
    return cls(**kwargs)
