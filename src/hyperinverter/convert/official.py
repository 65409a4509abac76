"""Released HyperInverter checkpoints and pSp/e4e-style W-encoder checkpoints -> our modules.

A HyperInverter file is ``{"state_dict": ..., "opts": {...}}`` with the prefixes ``w_encoder.`` (E1),
``w_bar_encoder.`` (E2), ``hypernet.weight_regressors.<param_with_underscores>.`` and ``discriminator.``;
the generator is not inside: it comes from the NVIDIA pickle the model was trained with. Architectures are
read from tensor shapes (trunk depth and widths, style heads, hidden size), the target set from the keys, and
every component is loaded strictly; a key under any other prefix is an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..io.checkpoints import load_weights_only
from ..methods.hyperinverter import HyperInverter
from ..methods.phase1 import Phase1
from ..models.encoders import FeatureEncoder, FeatureEncoderConfig, TrunkConfig, WEncoder, WEncoderConfig
from ..models.hypernetwork import HyperNetwork
from ..models.stylegan2 import Generator
from .backbones import read_state_dict
from .gan_files import load_gan

logger = logging.getLogger(__name__)

KNOWN_PREFIXES = ("w_encoder.", "w_bar_encoder.", "hypernet.", "discriminator.")


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _trunk_spec(sd: Mapping[str, torch.Tensor]) -> dict:
    """The trunk (kind, units per stage, widths) and input channels of a trunk state dict, as config fields."""
    bodies = sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k))})
    if not bodies:
        raise CheckpointError("no trunk found (no body.N.* keys)")
    if "input_layer.0.weight" in sd:
        kind, in_channels = "ir_se", sd["input_layer.0.weight"].shape[1]
        outs = [sd[f"body.{n}.res_layer.1.weight"].shape[0] for n in bodies]
        starts = [0] + [i for i in range(1, len(outs)) if outs[i] != outs[i - 1]]
    elif "conv1.weight" in sd:
        kind, in_channels = "resnet", sd["conv1.weight"].shape[1]
        outs = [sd[f"body.{n}.conv1.weight"].shape[0] for n in bodies]
        starts = [0] + [n for n in bodies[1:] if f"body.{n}.downsample.0.weight" in sd]
    else:
        raise CheckpointError("unknown trunk: neither input_layer (IR-SE) nor conv1 (ResNet) keys")
    if len(starts) != 4:
        raise CheckpointError(f"cannot read 4 stages from the trunk (found stage starts {starts}); "
                              "stage widths must differ between stages")
    ends = starts[1:] + [len(bodies)]
    units = tuple(e - s for s, e in zip(starts, ends))
    widths = tuple(outs[s] for s in starts)
    return {"trunk": TrunkConfig(kind, units=units, widths=widths), "in_channels": int(in_channels)}


def w_encoder_from_state_dict(sd: Mapping[str, torch.Tensor], *, source: str) -> WEncoder:
    """Build a ``WEncoder`` shaped like ``sd`` (pSp ``...UsingLastLayerIntoW`` keys) and load it strictly."""
    from ..io.checkpoints import load_state_dict_strict

    if "linear.weight" not in sd:
        raise CheckpointError(f"{source}: no linear.weight: not a W encoder (pSp/e4e W+ encoders are not W encoders)")
    encoder = WEncoder(WEncoderConfig(**_trunk_spec(sd), w_dim=sd["linear.weight"].shape[0]))
    load_state_dict_strict(encoder, sd, source=source)
    return encoder


def feature_encoder_from_state_dict(sd: Mapping[str, torch.Tensor], *, source: str, input_size: int | None = None,
                                    feature_size: int | None = None) -> FeatureEncoder:
    """Build a ``FeatureEncoder`` shaped like ``sd`` and load it strictly.

    The state dict does not say the input size: give it, or the feature size its consumer expects (each head
    halves the FPN's 1/16-scale map once per stride-2 conv, so either one fixes the other).
    """
    from ..io.checkpoints import load_state_dict_strict

    n_styles = len({int(m.group(1)) for k in sd if (m := re.match(r"styles\.(\d+)\.", k))})
    if n_styles == 0:
        raise CheckpointError(f"{source}: no styles.N.* heads: not a feature encoder")
    convs0 = sorted(int(m.group(1)) for k in sd if (m := re.match(r"styles\.0\.convs\.(\d+)\.weight", k)))
    feature_channels = (sd["styles.0.convs.0.weight"].shape[0] if convs0 else sd["latlayer1.weight"].shape[0])
    if (input_size is None) == (feature_size is None):
        raise ValueError("give exactly one of input_size and feature_size")
    if input_size is None:
        input_size = feature_size * 16 * 2 ** len(convs0)
    feature_size = input_size // 16 // 2 ** len(convs0)
    encoder = FeatureEncoder(FeatureEncoderConfig(**_trunk_spec(sd), input_size=input_size, n_styles=n_styles,
                                                  feature_channels=feature_channels, feature_size=feature_size))
    load_state_dict_strict(encoder, sd, source=source)
    return encoder


def hypernetwork_from_state_dict(sd: Mapping[str, torch.Tensor], generator: Generator, *, source: str) -> HyperNetwork:
    from ..io.checkpoints import load_state_dict_strict

    names = {m.group(1) for k in sd if (m := re.match(r"weight_regressors\.([^.]+)\.", k))}
    if not names:
        raise CheckpointError(f"{source}: no hypernet.weight_regressors.*")
    if any(n.endswith("affine_weight") for n in names):
        targets = "all_without_bias"
    elif not any("torgb" in n for n in names):
        targets = "conv_without_bias_without_torgb"
    else:
        targets = "conv_without_bias"
    first = sorted(names)[0]
    fe = sorted(int(m.group(1)) for k in sd
                if (m := re.match(rf"weight_regressors\.{first}\.feature_extractor\.(\d+)\.weight", k)))
    hyper = HyperNetwork.from_generator(
        generator, targets=targets,
        feature_channels=sd[f"weight_regressors.{first}.fusion.0.weight"].shape[0],
        feature_size=2 ** (len(fe) - 1),
        hidden_dim=sd[f"weight_regressors.{first}.w1"].shape[0],
        inner_channels=sd[f"weight_regressors.{first}.feature_extractor.0.weight"].shape[0],
    )
    load_state_dict_strict(hyper, sd, source=source)
    return hyper


def load_official_hyperinverter(checkpoint: str | Path, generator: str | Path | Generator, *,
                                encoder_resolution: int | None = None) -> HyperInverter:
    """A released ``hyper_inverter_*.pt`` plus its generator (NVIDIA ``.pkl`` or any format we read).

    ``encoder_resolution``: None reads it from the checkpoint (the size at which E2's maps fit the
    hypernetworks; 256 for the released models).
    """
    checkpoint = Path(checkpoint)
    ckpt = load_weights_only(checkpoint)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(checkpoint, "is not a HyperInverter checkpoint: no 'state_dict'")
    try:
        return _hyperinverter_from(checkpoint, ckpt, generator, encoder_resolution)
    except (KeyError, IndexError, TypeError) as e:  # a tensor the layout needs is absent or of another rank
        raise CheckpointError(checkpoint, f"does not have the layout of a HyperInverter checkpoint ({e!r})") from None


def _hyperinverter_from(checkpoint: Path, ckpt: Mapping, generator: str | Path | Generator,
                        encoder_resolution: int | None) -> HyperInverter:
    sd = read_state_dict(ckpt)
    opts = ckpt.get("opts") or {}
    if not isinstance(opts, Mapping):
        raise CheckpointError(checkpoint, f"its 'opts' is a {type(opts).__name__}, not a mapping")
    unexpected = sorted(k for k in sd if not k.startswith(KNOWN_PREFIXES))
    if unexpected:
        raise CheckpointError(f"{checkpoint}: unexpected keys {unexpected[:12]} (known prefixes: {KNOWN_PREFIXES})")
    G = generator if isinstance(generator, Generator) else load_gan(generator).generator
    size = opts.get("output_size")
    if size is not None and size != G.resolution:
        raise CheckpointError(f"{checkpoint} was trained for {size}px but the generator makes {G.resolution}px")
    w_encoder = w_encoder_from_state_dict(_strip(sd, "w_encoder."), source=f"{checkpoint} [w_encoder]")
    hypernetwork = hypernetwork_from_state_dict(_strip(sd, "hypernet."), G, source=f"{checkpoint} [hypernet]")
    size = ({"input_size": encoder_resolution} if encoder_resolution is not None
            else {"feature_size": hypernetwork.config.feature_size})
    feature_encoder = feature_encoder_from_state_dict(_strip(sd, "w_bar_encoder."), **size,
                                                      source=f"{checkpoint} [w_bar_encoder]")
    encoder_resolution = feature_encoder.config.input_size
    if feature_encoder.n_styles != G.num_ws:
        raise CheckpointError(f"{checkpoint}: E2 has {feature_encoder.n_styles} heads, the generator "
                              f"{G.num_ws} style inputs: wrong generator for this checkpoint?")
    if w_encoder.w_dim != G.w_dim:
        raise CheckpointError(f"{checkpoint}: W encoder makes {w_encoder.w_dim}-d codes, the generator takes {G.w_dim}")
    logger.info("loaded %s (%s, %d targets, D=%d)", checkpoint, w_encoder.config.trunk.backbone,
                len(hypernetwork.targets), hypernetwork.config.hidden_dim)
    return HyperInverter(G, w_encoder=w_encoder, feature_encoder=feature_encoder,
                         hypernetwork=hypernetwork, encoder_resolution=encoder_resolution)


def load_psp_w_encoder(checkpoint: str | Path, generator: str | Path | Generator, *,
                       encoder_resolution: int = 256) -> Phase1:
    """A pSp/e4e-style W-encoder checkpoint (``encoder.*`` keys; ``decoder.*`` ignored) as the ``phase1`` method."""
    checkpoint = Path(checkpoint)
    sd = read_state_dict(checkpoint)
    try:
        return _psp_w_encoder_from(checkpoint, sd, generator, encoder_resolution)
    except (KeyError, IndexError, TypeError) as e:
        raise CheckpointError(checkpoint, f"does not have the layout of a W-encoder checkpoint ({e!r})") from None


def _psp_w_encoder_from(checkpoint: Path, sd: dict, generator: str | Path | Generator,
                        encoder_resolution: int) -> Phase1:
    extra = sorted(k for k in sd if not k.startswith(("encoder.", "decoder.")))
    if extra:
        raise CheckpointError(f"{checkpoint}: unexpected keys {extra[:12]} (expected encoder.* and decoder.*)")
    G = generator if isinstance(generator, Generator) else load_gan(generator).generator
    encoder = w_encoder_from_state_dict(_strip(sd, "encoder."), source=f"{checkpoint} [encoder]")
    if encoder.w_dim != G.w_dim:
        raise CheckpointError(f"{checkpoint}: W encoder makes {encoder.w_dim}-d codes, the generator takes {G.w_dim}")
    return Phase1(G, w_encoder=encoder, encoder_resolution=encoder_resolution)
