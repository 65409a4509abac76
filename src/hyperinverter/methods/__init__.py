"""Every inversion method behind one interface, found by name.

A method is one module that defines an :class:`Inverter` subclass and registers it with
:func:`register_method`; importing this package imports the built-in ones. Everything downstream (the pipeline,
batch inversion, files, editing, evaluation, the CLI, the demo and the web page) works for any registered method.
"""

from . import e2style, hyperinverter, hyperstyle, phase1, projector, psp, pti  # noqa: F401  (the built-in methods register themselves)
from .base import InversionResult, Inverter, Stopwatch
from .registry import get_method, register_method, registered_methods

__all__ = ["InversionResult", "Inverter", "Stopwatch", "get_method", "register_method", "registered_methods"]
