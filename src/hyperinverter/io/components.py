"""Networks saved as self-describing components: one registry of every type our folders hold.

A component folder holds ``config.json`` (format, ``model_type``, the model's config) and ``model.safetensors``.
Loading builds the model from its config (on the meta device first, so nothing is allocated for weights that do
not fit) and loads the weights strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoints import config_from_header, instantiate_strict, read_component, save_component, unique_state


def component_types() -> dict[str, type[nn.Module]]:
    """``model_type`` -> class, for every network our folders hold."""
    # Imported here so that reading this module stays cheap and free of import cycles.
    from ..models.encoders import E2StyleEncoders, FeatureEncoder, StyleCodeEncoder, WEncoder
    from ..models.hypernetwork import HyperNetwork
    from ..models.hyperstyle import HyperStyleNet
    from ..models.stylegan2 import Discriminator, Generator

    return {"stylegan2-generator": Generator, "stylegan2-discriminator": Discriminator, "w-encoder": WEncoder,
            "feature-encoder": FeatureEncoder, "style-code-encoder": StyleCodeEncoder, "hypernetwork": HyperNetwork,
            "hyperstyle-hypernetwork": HyperStyleNet, "e2style-encoders": E2StyleEncoders}


# Type names written by earlier versions, still read.
_ALIASES = {"layerwise-encoder": "feature-encoder"}


def model_type_of(module: nn.Module) -> str:
    for name, cls in component_types().items():
        if type(module) is cls:
            return name
    raise TypeError(f"{type(module).__name__} is not a saveable component")


def save_component_module(directory: Path, module: nn.Module, *, dtype: torch.dtype | None = None,
                          extras: dict | None = None) -> None:
    """Write ``module`` (its config and weights; floating tensors cast to ``dtype`` if given) as a component."""
    tensors, aliases = unique_state(module)  # a shared parameter is stored once
    save_component(directory, tensors, model_type=model_type_of(module), config=module.config.to_dict(),
                   extras={**(extras or {}), **({"aliases": aliases} if aliases else {})}, dtype=dtype)


def load_component(directory: Path, *, expect: str | None = None) -> nn.Module:
    """The network in a component folder (or a lone ``.safetensors`` of ours); ``expect``: the required type."""
    header, state_dict = read_component(directory)
    types = component_types()
    model_type = _ALIASES.get(header["model_type"], header["model_type"])
    cls = types.get(model_type)
    if cls is None:
        raise CheckpointError(directory, f"holds an unknown component type {header['model_type']!r}; "
                              f"known: {sorted(types)}")
    if expect is not None and model_type != expect:
        raise CheckpointError(directory, f"holds a {model_type!r}, not a {expect!r}")
    config = config_from_header(cls.config_class, header, source=Path(directory))
    return instantiate_strict(lambda: cls(config), state_dict, source=str(directory), fresh_from_file=True)
