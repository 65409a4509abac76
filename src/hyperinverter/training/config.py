"""Typed training configs read from YAML, with ``key=value`` command-line overrides.

Configs live at the edge: the trainers read them and pass explicit arguments to the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..config_base import decode, encode
from ..errors import ConfigError

__all__ = ["ConfigError", "apply_overrides", "load_config", "to_yaml"]

T = TypeVar("T")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["lr=0.002", "data.path=/x"]`` -> nested updates; values are parsed as YAML scalars."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """The training config ``cls`` from a YAML file and ``key=value`` overrides; errors name the file and key."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(path, f"is not valid YAML ({e})") from None
        except FileNotFoundError:
            raise ConfigError(path, "no such config file") from None
        if not isinstance(data, dict):
            raise ConfigError(path, f"must hold a mapping of config keys, got {type(data).__name__}")
    try:
        return decode(cls, apply_overrides(data, overrides or []))
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(path, str(e)) from None


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(encode(config), sort_keys=False)
