"""One ``to_dict``/``from_dict`` for every model config dataclass (JSON-friendly, strict on unknown keys)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T", bound="SerializableConfig")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


class SerializableConfig:
    """Mixin for frozen config dataclasses: tuples become lists in JSON and come back as tuples."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            is_tuple = typing.get_origin(hints[name]) is tuple or any(
                typing.get_origin(a) is tuple for a in typing.get_args(hints[name]))
            kwargs[name] = tuple(value) if is_tuple and isinstance(value, list) else value
        return cls(**kwargs)
