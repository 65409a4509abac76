"""The one dict <-> dataclass codec for every config (model configs in JSON, training configs in YAML).

Decoding is strict: an unknown key, a missing required key or a value of the wrong type is a ``ConfigError``
naming the key path (``hypernetwork.targets[3].shape``), never a crash deeper in a constructor.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _decode_value(value: Any, annotation: Any, key: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode_value(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # an optional value: why the one type it may have does not take it
            raise errors[0]
        raise ConfigError(f"{key}: {value!r} does not fit {_describe(annotation)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis or origin is list:
            inner = args[0] if args else Any
            items = [_decode_value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_decode_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = list(value)
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(annotation):
        return decode(annotation, value, prefix=f"{key}.")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads 1e-4 as a string; YAML 1.2 and everyone else as 1e-4
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def check_value(value: Any, annotation: Any, key: str) -> Any:
    """``value`` decoded as ``annotation`` (see :func:`decode`), or a ``ConfigError`` naming ``key``: the one type
    check for configs and for methods' options."""
    return _decode_value(value, annotation, key)


# Upper bounds of the counts a model config gives (layers, heads, stages): how many modules it builds. Without them a
# damaged or hostile config.json (`mapping_layers: 100000`) spent minutes building, even on the meta device, before its
# weights were found not to fit; 10**12 ran out of memory. Each is far above any published model.
MAX_STYLES = 64  # code rows and feature maps (2·log2(R) - 2: 18 at 1024 px, 20 at 2048)
MAX_LAYERS = 256  # layers in one network or stage (a mapping network has 8; IR-SE152's largest stage 36)
MAX_STAGES = 16  # E2Style's stage encoders (3 officially)


def check_count(name: str, value: Any, high: int, *, low: int = 1) -> None:
    """``value`` (an int, or a sequence of ints) within ``low..high``, else a ``ValueError`` naming ``name``."""
    several = isinstance(value, (tuple, list))
    values = value if several else [value]
    if any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high for v in values):
        what = "integers" if several else "an integer"
        raise ValueError(f"{name} must be {what} from {low} to {high}, got {value!r}")


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def decode(cls: type[T], data: Any, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; every problem is a ``ConfigError`` naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config keys {[prefix + str(k) for k in unknown]}; valid: {sorted(fields)}")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and n not in data]
    if required:
        raise ConfigError(f"missing config keys {[prefix + k for k in required]}")
    kwargs = {name: _decode_value(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def encode(config: Any) -> Any:
    """A dataclass (or value) -> plain JSON/YAML data: nested dataclasses become mappings, tuples lists."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: encode(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [encode(v) for v in config]
    if isinstance(config, dict):
        return {k: encode(v) for k, v in config.items()}
    return config


class SerializableConfig:
    """Mixin for frozen model-config dataclasses: ``to_dict`` / ``from_dict`` through the one codec."""

    def to_dict(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return decode(cls, data)
