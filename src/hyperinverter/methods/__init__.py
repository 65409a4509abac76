"""Every inversion method behind one interface, found by name.

A method is one module that defines an :class:`Inverter` subclass and registers it with
:func:`register_method`; importing this package imports the built-in ones. Everything downstream (the pipeline,
batch inversion, files, editing, evaluation, the CLI, the demo and the web page) works for any registered method.
"""

from __future__ import annotations

from .base import InversionResult, Inverter, Stopwatch

_METHODS: dict[str, type[Inverter]] = {}


def register_method(cls: type[Inverter]) -> type[Inverter]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are registered as {cls.name!r}: {_METHODS[cls.name]} and {cls}")
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Inverter]:
    """The method class registered as ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def registered_methods() -> dict[str, type[Inverter]]:
    return dict(_METHODS)


# The built-in methods (each module registers itself).
from . import hyperinverter, phase1  # noqa: E402,F401

__all__ = ["InversionResult", "Inverter", "Stopwatch", "get_method", "register_method", "registered_methods"]
