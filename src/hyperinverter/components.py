"""Saving and loading the networks of a pipeline as self-describing components.

A component class has a ``config_class`` (a dataclass with ``to_dict``/``from_dict``), a ``config``
attribute of that type, and ``from_config(config)``; the folder holds the config and the weights, and
loading is strict.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .io.checkpoints import config_from_header, instantiate_strict, read_component, save_component


def _registry() -> dict[str, type[nn.Module]]:
    # Imported here so that reading this module stays cheap and free of import cycles.
    from .models.encoders import LayerWiseEncoder, WEncoder
    from .models.hypernetwork import HyperNetwork

    return {"w-encoder": WEncoder, "layerwise-encoder": LayerWiseEncoder, "hypernetwork": HyperNetwork}


def model_type_of(module: nn.Module) -> str:
    for name, cls in _registry().items():
        if type(module) is cls:
            return name
    raise TypeError(f"{type(module).__name__} is not a saveable pipeline component")


def save_component_module(directory: Path, module: nn.Module, *, dtype: torch.dtype | None = None) -> None:
    save_component(directory, module.state_dict(), model_type=model_type_of(module),
                   config=module.config.to_dict(), dtype=dtype)


def load_component(directory: Path) -> nn.Module:
    header, state_dict = read_component(directory)
    registry = _registry()
    cls = registry.get(header["model_type"])
    if cls is None:
        raise CheckpointError(directory, f"holds an unknown component type {header['model_type']!r}; "
                              f"known: {sorted(registry)}")
    config = config_from_header(cls.config_class, header, source=Path(directory))
    return instantiate_strict(lambda: cls.from_config(config), state_dict, source=str(directory))
