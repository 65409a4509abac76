"""Every inversion method behind one interface: ``invert(images) -> InversionResult``."""

from .base import InversionResult, Inverter

__all__ = ["InversionResult", "Inverter"]
