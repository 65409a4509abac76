"""Typed training configs read from YAML, with ``key=value`` command-line overrides.

Configs live at the edge: the trainers read them and pass explicit arguments to the models.
"""

from __future__ import annotations

import re
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
        if not all(parts):
            raise ConfigError(f"override {item!r}", "needs a key before '=' (keys of nested configs: trunk.units)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"override {item!r}", f"its value is not a YAML scalar, list or mapping ({problem})"
                              ) from None
        node = data
        for depth, part in enumerate(parts[:-1], start=1):
            inner = node.get(part)
            if inner is not None and not isinstance(inner, dict):
                raise ConfigError(f"override {item!r}", f"{'.'.join(parts[:depth])} holds {inner!r:.40}, not a "
                                  "config of its own keys")
            node[part] = dict(inner or {})
            node = node[part]
        node[parts[-1]] = value
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
    overrides = overrides or []
    merged = apply_overrides(data, overrides)
    try:
        return decode(cls, merged)
    except ConfigError as e:
        if path is None:
            raise
        # A value given on the command line is named with the file, so that nobody looks for it in the file.
        given = [o for o in overrides if re.search(rf"\b{re.escape(o.split('=', 1)[0].strip())}\b", str(e))]
        raise ConfigError(f"{path} with {' '.join(given)}" if given else path, str(e)) from None


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(encode(config), sort_keys=False)
