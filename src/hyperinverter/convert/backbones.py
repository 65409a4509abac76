"""Foreign encoder weights -> our encoders: ArcFace IR-SE, torchvision ResNets, pSp-style ``encoder.*``.

Every loader maps keys explicitly, checks names and shapes before touching the model, and raises
``CheckpointError`` naming the missing, unexpected and mis-shaped keys. Files are read with
``torch.load(..., weights_only=True)``: nothing is unpickled beyond tensors and plain containers.

* ``load_ir_se_trunk``: TreB1eN/pSp ``model_ir_se50.pth`` (a plain state dict) into the ``input_layer`` and
  ``body`` of an ``IRSEBackbone``, ``WEncoder`` or ``FeatureEncoder`` (and into ``output_layer`` if the
  target has one).
* ``load_torchvision_resnet``: torchvision ``resnet34-333f7ec4.pth`` (``conv1``, ``bn1``, ``layer{1..4}.{j}``,
  ``fc``) into the ``conv1``/``bn1``/``body.{n}`` of a ResNet trunk; ``relu`` (a PReLU) has no counterpart.
* ``load_prefixed_state_dict``: the ``encoder.*`` (or ``w_bar_encoder.*``, ...) part of a pSp-style checkpoint
  ``{"state_dict": ..., "opts": ...}``, strictly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..io.checkpoints import key_problems, listing, load_weights_only, refuse_non_finite
from ..models.encoders.backbones import Backbone, IRSEBackbone, ResNetBackbone, TrunkHost

logger = logging.getLogger(__name__)

StateDictSource = str | os.PathLike[str] | Mapping[str, torch.Tensor]
_MAX_LISTED = 12


def read_state_dict(source: StateDictSource, where: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a path (``torch.load`` to CPU, weights only) or a mapping (read from the file ``where``,
    which errors name); unwraps ``state_dict``."""
    where = where if isinstance(source, Mapping) else os.fspath(source)
    data = source if isinstance(source, Mapping) else load_weights_only(source)
    if isinstance(data, Mapping) and "state_dict" in data:
        if not isinstance(data["state_dict"], Mapping):  # (its entries were listed as the non-tensors)
            raise CheckpointError(where, f"its 'state_dict' is a {type(data['state_dict']).__name__}, not a "
                                  "mapping of tensors")
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise CheckpointError(where, f"expected a state dict (a mapping of tensors), got {type(data).__name__}")
    not_tensors = [str(k) for k, v in data.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str)]
    if not_tensors:
        raise CheckpointError(where, f"not a state dict: non-tensor entries {listing(not_tensors)}")
    return dict(data)


def _trunk_of(target: nn.Module) -> Backbone:
    if isinstance(target, Backbone):
        return target
    if isinstance(target, TrunkHost):
        return target.backbone
    raise TypeError(f"expected a Backbone or an encoder built on one, got {type(target).__name__}")


def _source_path(source: StateDictSource) -> str | None:
    """The file a state dict comes from, for errors (None for a mapping)."""
    return None if isinstance(source, Mapping) else os.fspath(source)


def _adapt_input_weight(name: str, file_w: torch.Tensor, own_w: torch.Tensor, where: str | None = None
                        ) -> torch.Tensor:
    """An RGB stem kernel ``[O,3,k,k]`` for a stem with another number of input channels."""
    channels = own_w.shape[1]
    if file_w.shape[1] != 3 or file_w.shape[0] != own_w.shape[0] or file_w.shape[2:] != own_w.shape[2:]:
        raise CheckpointError(
            where, f"{name}: cannot adapt file shape {tuple(file_w.shape)} to {tuple(own_w.shape)}"
        )
    if channels == 1:
        return file_w.sum(dim=1, keepdim=True)  # grayscale = R = G = B, so summing keeps the response
    if channels > 3:
        # As ReStyle's and HyperStyle's 6-channel stems: the RGB filters on the first 3 channels, N(0, 1) (drawn
        # from the global generator, which a training run seeds) on the rest.
        adapted = torch.randn(own_w.shape, dtype=file_w.dtype)
        adapted[:, :3] = file_w
        return adapted
    raise CheckpointError(where, f"{name}: no rule to adapt a 3-channel stem to {channels} channels")


def _load_checked(
    target: nn.Module,
    mapped: Mapping[str, torch.Tensor],
    *,
    expected: Callable[[str], bool],
    what: str,
    where: str | None = None,
) -> None:
    """Load ``mapped`` into ``target`` after checking it covers exactly the keys ``expected`` selects; ``where``: the
    file it comes from, which errors name.

    ``num_batches_tracked`` buffers may be absent (files saved before PyTorch 0.4.1); they keep their values.
    """
    own = target.state_dict()
    problems = key_problems({k: v for k, v in own.items() if expected(k)}, mapped,
                            may_lack=lambda k: k.endswith(".num_batches_tracked"))
    if problems:
        raise CheckpointError(where, f"{what} does not fit {type(target).__name__}: " + "; ".join(problems))
    refuse_non_finite(mapped, source=where)  # (a NaN or infinite trunk was loaded without a word)
    result = target.load_state_dict(dict(mapped), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(not expected(k) or k.endswith(".num_batches_tracked") for k in result.missing_keys)


def load_ir_se_trunk(
    target: nn.Module,
    source: StateDictSource,
    *,
    adapt_input_channels: bool = False,
    skip_input_layer: bool = False,
) -> list[str]:
    """Load an ArcFace/pSp IR-SE state dict (e.g. ``model_ir_se50.pth``) into ``target``'s trunk, strictly.

    ``target``: an ``IRSEBackbone`` or an encoder on one (``WEncoder``/``FeatureEncoder`` with ``"ir_se"``).
    Every ``input_layer.*``/``body.*`` tensor of the target must be in the file with the same shape and vice
    versa; ``output_layer.*`` is loaded too if the target has an output layer, else skipped. Any other key is
    an error. With ``adapt_input_channels`` a 1- or >3-channel target takes the RGB stem kernel (summed, or on
    the first 3 channels with N(0, 1) on the rest, as ReStyle's and HyperStyle's). With ``skip_input_layer`` the
    stem (``input_layer.*``) keeps its own initialisation, as E2Style's refinement stages. Returns the file keys
    that were skipped. Raises ``CheckpointError``.
    """
    trunk = _trunk_of(target)
    if not isinstance(trunk, IRSEBackbone):
        raise TypeError(f"expected an IR-SE trunk, got {type(trunk).__name__}")
    state, where = read_state_dict(source), _source_path(source)
    has_head = trunk.output_layer is not None
    prefixes = ("input_layer.", "body.", "output_layer.") if has_head else ("input_layer.", "body.")
    if skip_input_layer:
        prefixes = prefixes[1:]
    skipped = sorted(k for k in state if (k.startswith("output_layer.") and not has_head)
                     or (k.startswith("input_layer.") and skip_input_layer))
    mapped = {k: v for k, v in state.items() if k not in skipped}

    stem = "input_layer.0.weight"
    own = target.state_dict()
    if adapt_input_channels and stem in mapped and stem in own and mapped[stem].shape != own[stem].shape:
        mapped[stem] = _adapt_input_weight(stem, mapped[stem], own[stem], where)

    _load_checked(target, mapped, expected=lambda k: k.startswith(prefixes), what="IR-SE state dict", where=where)
    logger.info(
        "loaded %d IR-SE tensors into %s (skipped %d)", len(mapped), type(target).__name__, len(skipped)
    )
    return skipped


def torchvision_resnet_key_map(trunk: ResNetBackbone) -> dict[str, str]:
    """torchvision key -> our key, for every trunk tensor but ``relu.weight`` (PReLU, absent in torchvision).

    ``conv1``/``bn1`` keep their names; ``layer{s+1}.{j}.<rest>`` -> ``body.{n}.<rest>`` with ``n`` the flat
    index of block ``j`` of stage ``s`` (ResNet-34: layer1 -> 0-2, layer2 -> 3-6, layer3 -> 7-12,
    layer4 -> 13-15).
    """
    mapping: dict[str, str] = {}
    for key in trunk.state_dict():
        if key.startswith(("conv1.", "bn1.")):
            mapping[key] = key
        elif key.startswith("body."):
            _, index, rest = key.split(".", 2)
            stage, block = trunk.stage_of(int(index))
            mapping[f"layer{stage + 1}.{block}.{rest}"] = key
        else:
            assert key == "relu.weight", key  # the only trunk tensor outside conv1/bn1/body
    return mapping


def load_torchvision_resnet(
    target: nn.Module,
    source: StateDictSource,
    *,
    adapt_input_channels: bool = False,
) -> list[str]:
    """Load a torchvision ResNet state dict (e.g. ``resnet34-333f7ec4.pth``) into ``target``'s ResNet trunk.

    ``target``: a ``ResNetBackbone`` or an encoder on one. ``fc.*`` is skipped; every other file key must map
    (see ``torchvision_resnet_key_map``) onto a trunk tensor of the same shape, and every trunk tensor except
    the PReLU ``relu.weight`` must be covered. Returns the skipped file keys. Raises ``CheckpointError``.
    """
    trunk = _trunk_of(target)
    if not isinstance(trunk, ResNetBackbone):
        raise TypeError(f"expected a ResNet trunk, got {type(trunk).__name__}")
    state, where = read_state_dict(source), _source_path(source)
    key_map = torchvision_resnet_key_map(trunk)
    skipped = sorted(k for k in state if k.startswith("fc."))
    unknown = sorted(k for k in state if k not in key_map and k not in skipped)
    if unknown:
        raise CheckpointError(
            where, f"torchvision ResNet state dict has keys with no counterpart: {listing(unknown)}"
        )
    mapped = {key_map[k]: v for k, v in state.items() if k in key_map}

    own = target.state_dict()
    if (
        adapt_input_channels
        and "conv1.weight" in mapped
        and mapped["conv1.weight"].shape != own["conv1.weight"].shape
    ):
        mapped["conv1.weight"] = _adapt_input_weight(
            "conv1.weight", mapped["conv1.weight"], own["conv1.weight"], where
        )

    covered = set(key_map.values())
    _load_checked(target, mapped, expected=lambda k: k in covered, what="torchvision ResNet state dict", where=where)
    logger.info(
        "loaded %d torchvision tensors into %s (skipped %d)", len(mapped), type(target).__name__, len(skipped)
    )
    return skipped


def load_prefixed_state_dict(target: nn.Module, source: StateDictSource, *, prefix: str = "encoder") -> None:
    """Strictly load the ``<prefix>.*`` tensors of a (pSp-style) checkpoint into ``target``, prefix stripped.

    ``prefix="encoder"`` for pSp/e4e/HyperInverter W-encoder files, ``"w_bar_encoder"`` for the feature encoder inside a
    HyperInverter checkpoint. Other prefixes are ignored; under the prefix, keys must match exactly.
    """
    state = read_state_dict(source)
    head = prefix + "."
    stripped = {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}
    if not stripped:
        prefixes = sorted({k.split(".", 1)[0] for k in state})
        raise CheckpointError(_source_path(source), f"no keys with prefix {head!r}; the file has prefixes "
                              f"{listing(prefixes)}")
    _load_checked(target, stripped, expected=lambda k: True, what=f"'{prefix}.*' state dict",
                  where=_source_path(source))
    logger.info("loaded %d '%s.*' tensors into %s", len(stripped), prefix, type(target).__name__)
