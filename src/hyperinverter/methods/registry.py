"""The registry of inversion methods: a method module registers its :class:`~.base.Inverter` by name."""

from __future__ import annotations

from .base import Inverter

_METHODS: dict[str, type[Inverter]] = {}


def register_method(cls: type[Inverter]) -> type[Inverter]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are registered as {cls.name!r}: {_METHODS[cls.name]} and {cls}")
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Inverter]:
    """The method class registered as ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    if not isinstance(name, str) or name not in _METHODS:  # (an API client's list was a TypeError; a name cut)
        raise ValueError(f"unknown method {repr(name)[:80]}; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def registered_methods() -> dict[str, type[Inverter]]:
    return dict(_METHODS)
