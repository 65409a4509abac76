"""The registry of inversion methods: a method module registers its :class:`~.base.Inverter` by name."""

from __future__ import annotations

from collections.abc import Mapping

from .base import Inverter

_METHODS: dict[str, type[Inverter]] = {}


def register_method(cls: type[Inverter]) -> type[Inverter]:
    """Class decorator: make ``cls`` available under ``cls.name``; what is not an :class:`Inverter` subclass with a
    name, a label and a mapping of options is a ``TypeError`` naming it (it broke every pipeline's method list)."""
    if not (isinstance(cls, type) and issubclass(cls, Inverter)):
        raise TypeError(f"register_method takes an Inverter subclass, got {cls!r}")
    for attribute, kind in (("name", str), ("label", str), ("options", Mapping)):
        value = getattr(cls, attribute, None)
        if not isinstance(value, kind) or (kind is str and not value):
            raise TypeError(f"method class {cls.__name__} must set {attribute} to a "
                            f"{'non-empty string' if kind is str else 'mapping'}, got {value!r}")
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
