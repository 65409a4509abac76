"""Random initial values that cost nothing where a module is built only to be loaded.

Loading builds modules on the meta device, then copies every value from the file
(:func:`hyperinverter.io.checkpoints.instantiate_strict`). Arithmetic on meta tensors runs PyTorch's Python meta
kernels, whose first use imports Dynamo and SymPy: about 1 s of every command's start. Meta tensors skip it.
"""

from __future__ import annotations

import torch


def randn(*shape: int, times: float | None = None, over: float | None = None) -> torch.Tensor:
    """``torch.randn(*shape)`` multiplied by ``times`` or divided by ``over``, bit for bit as written with ``*`` and
    ``/`` (``times`` gives ``nn.init.normal_``'s values for that std); on the meta device, the shape alone."""
    assert times is None or over is None, "give times or over, not both"
    x = torch.empty(*shape)
    if x.is_meta:
        return x
    x.normal_()  # what torch.randn does
    if times is not None:
        x.mul_(times)
    if over is not None:
        x.div_(over)
    return x
