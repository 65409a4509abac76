"""Released HyperInverter and HyperStyle checkpoints and pSp/e4e-style W-encoder checkpoints -> our methods.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.degradations import OFFICIAL_RESIZE_FACTORS, SR_FACTORS, get_degradation
from ..errors import CheckpointError, NonFiniteWeightsError
from ..io.checkpoints import instantiate_strict, load_weights_only
from ..methods import Inverter
from ..methods.e2style import E2Style
from ..methods.hyperinverter import HyperInverter
from ..methods.hyperstyle import HyperStyle
from ..methods.phase1 import Phase1, encoder_input_height
from ..methods.psp import E4E, PSP
from ..models.encoders import (
    E2StyleConfig,
    E2StyleEncoderConfig,
    E2StyleEncoders,
    FeatureEncoder,
    FeatureEncoderConfig,
    StyleCodeEncoder,
    StyleCodeEncoderConfig,
    TrunkConfig,
    WEncoder,
    WEncoderConfig,
)
from ..models.hypernetwork import HyperNetwork
from ..models.hyperstyle import HyperStyleConfig, HyperStyleNet, hyperstyle_targets
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
    encoder = WEncoder(WEncoderConfig(**_trunk_spec(sd), w_dim=sd["linear.weight"].shape[0],
                                      own_latent_avg="latent_avg" in sd))
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
    sd = read_state_dict(ckpt, checkpoint)
    opts = ckpt.get("opts") or {}
    if not isinstance(opts, Mapping):
        raise CheckpointError(checkpoint, f"its 'opts' is a {type(opts).__name__}, not a mapping")
    unexpected = sorted(k for k in sd if not k.startswith(KNOWN_PREFIXES))
    if unexpected:
        raise CheckpointError(f"{checkpoint}: unexpected keys {unexpected[:12]} (known prefixes: {KNOWN_PREFIXES})")
    G = generator if isinstance(generator, Generator) else load_gan(generator).generator
    check_output_size(opts, G, checkpoint)
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


# --- the pSp family (pSp, e4e, HyperStyle): {"state_dict": prefix.* tensors, "opts": {...}, "latent_avg": ...} ---


@dataclass
class PspFile:
    """A pSp-family checkpoint: its state dict, ``opts`` and ``latent_avg`` (``[w_dim]``: the rows of a
    ``[num_ws, w_dim]`` average are the same)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    opts: dict
    latent_avg: torch.Tensor | None

    @classmethod
    def read(cls, path: str | Path) -> PspFile:
        path = Path(path)
        ckpt = load_weights_only(path)
        if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
            raise CheckpointError(path, "is not a released inversion checkpoint (HyperInverter, HyperStyle, pSp, "
                                  "e4e): it has no 'state_dict'")
        opts = ckpt.get("opts") or {}
        if not isinstance(opts, Mapping):
            raise CheckpointError(path, f"its 'opts' is a {type(opts).__name__}, not a mapping")
        latent_avg = ckpt.get("latent_avg")
        if latent_avg is not None:
            # (an empty one failed to reshape inside; a complex one lost its imaginary part with a warning)
            if not isinstance(latent_avg, torch.Tensor) or latent_avg.ndim not in (1, 2) or 0 in latent_avg.shape \
                    or not latent_avg.is_floating_point():
                got = f"{tuple(latent_avg.shape)} {latent_avg.dtype}" if isinstance(latent_avg, torch.Tensor) \
                    else type(latent_avg).__name__
                raise CheckpointError(path, "its 'latent_avg' must be a [w_dim] or [num_ws, w_dim] tensor of real "
                                      f"numbers, got {got}")
            latent_avg = latent_avg.float().reshape(-1, latent_avg.shape[-1])
            if not bool(torch.isfinite(latent_avg).all()):  # (NaN rows were said to differ: "a W+ average")
                raise NonFiniteWeightsError(path, "its 'latent_avg' holds NaN or infinite values")
            if not torch.allclose(latent_avg, latent_avg[:1].expand_as(latent_avg)):
                raise CheckpointError(path, "its 'latent_avg' rows differ: a W+ average, not a W encoder's")
            latent_avg = latent_avg[0]
        return cls(path, read_state_dict(ckpt, path), dict(opts), latent_avg)

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        return _strip(self.state_dict, prefix)

    @property
    def is_cars(self) -> bool:
        """Trained on cars (``dataset_type`` ``cars_*``): 192x256 photos, rows 64 to 448 of the 512-px images."""
        dataset_type = self.opts.get("dataset_type")
        return isinstance(dataset_type, str) and dataset_type.startswith("cars")

    @property
    def content_rows(self) -> tuple[float, float] | None:
        """The rows of the generator's square its methods read (cars), or None for a square domain."""
        return CARS_CONTENT_ROWS if self.is_cars else None

    def refuse_cars(self, what: str) -> None:
        """A ``CheckpointError`` for a cars file where ``what`` (a kind of method) does not run on cars yet."""
        if self.is_cars:  # (run on square images, it would give other results than the official code, silently)
            raise CheckpointError(self.path, f"was trained on cars (dataset_type {self.opts['dataset_type']!r}): "
                                  f"cars run as pSp, e4e, W encoders and HyperStyle here, not as {what}")

    def check_input_channels(self, channels: int, generator: Generator) -> None:
        """A ``CheckpointError`` unless its encoder (reading ``channels``) reads the generator's images: pSp's
        sketch- and segmentation-to-face files read 1- and 19-channel maps (``input_nc``), which this version does
        not make (it failed in the method, with a message that named no file)."""
        if channels != generator.config.img_channels:
            raise CheckpointError(self.path, f"its encoder reads {channels}-channel inputs (dataset_type "
                                  f"{self.opts.get('dataset_type')!r}), not the generator's "
                                  f"{generator.config.img_channels}-channel images: a translation from sketches or "
                                  "segmentation maps, which this version does not run")

    def decoder(self) -> Generator | None:
        """The rosinality ``decoder.*`` inside the file, or None where it holds none."""
        decoder = self.part("decoder.")
        if not decoder:
            return None
        from .gan_files import rosinality_generator

        return rosinality_generator(decoder, self.latent_avg, f"{self.path} [decoder]").eval().requires_grad_(False)

    def generator(self, given: str | Path | Generator | None, *, given_as: str = "the generator given",
                  remedy: str = "give the generator it was trained with, or none to use the decoder it holds",
                  ) -> Generator:
        """``given`` (any generator file, or a module), else the decoder inside the file. A given generator must
        hold the weights of the file's decoder where it has one: its encoders were trained for that generator
        (``given_as`` names it in the error, ``remedy`` says what to do)."""
        decoder = self.decoder()
        if given is None:
            if decoder is None:
                raise CheckpointError(self.path, "holds no decoder (generator): give the generator it was trained "
                                      "with (--generator)")
            check_output_size(self.opts, decoder, self.path)
            return decoder
        G = given if isinstance(given, Generator) else load_gan(given).generator
        check_output_size(self.opts, G, self.path)
        if decoder is not None:
            from ..pipeline import check_same_weights

            what = given_as + ("" if isinstance(given, Generator) else f" ({Path(given).name})")
            check_same_weights(G, decoder, source=str(self.path), ours=what, remedy=remedy)
        return G


def w_encoder_with_average(psp: PspFile, latent_avg: torch.Tensor | None = None) -> WEncoder:
    """The ``encoder.*`` W encoder of a pSp-family file, whose codes are offsets from ``latent_avg`` (default: the
    file's; never the generator's ``w_avg``, since a generator given beside the file may hold another one)."""
    average = psp.latent_avg if latent_avg is None else latent_avg
    if average is None:
        raise CheckpointError(psp.path, "has no latent_avg, which this encoder's codes are offsets from")
    return w_encoder_from_state_dict({**psp.part("encoder."), "latent_avg": average}, source=f"{psp.path} [encoder]")


def load_psp_w_encoder(checkpoint: str | Path, generator: str | Path | Generator | None = None, *,
                       encoder_resolution: int = 256) -> Phase1:
    """A pSp/e4e-style W-encoder checkpoint (``encoder.*``, ``decoder.*``, ``latent_avg``) as the ``phase1``
    method; the generator is ``generator`` or, when not given, the file's own decoder. As the official forward:
    the codes start from the file's ``latent_avg`` where its opts say ``start_from_latent_avg`` (a file that does
    not say is taken to where it holds one: the official coaches save it only then), else they are absolute; the
    photo is reduced with antialiasing, as the official data transforms reduce it."""
    psp = PspFile.read(checkpoint)
    extra = sorted(k for k in psp.state_dict if not k.startswith(("encoder.", "decoder.")))
    if extra:
        raise CheckpointError(psp.path, f"unexpected keys {extra[:12]} (expected encoder.* and decoder.*)")
    from_average = option(psp.opts, "start_from_latent_avg", bool, psp.path, default=psp.latent_avg is not None)
    try:
        G = psp.generator(generator)
        encoder = w_encoder_with_average(psp, None if from_average else torch.zeros(G.w_dim))
    except (KeyError, IndexError, TypeError) as e:
        raise CheckpointError(psp.path, f"does not have the layout of a W-encoder checkpoint ({e!r})") from None
    if encoder.w_dim != G.w_dim:
        raise CheckpointError(psp.path, f"its W encoder makes {encoder.w_dim}-d codes, the generator takes {G.w_dim}")
    psp.check_input_channels(encoder.config.in_channels, G)
    return Phase1(G, w_encoder=encoder, encoder_resolution=encoder_resolution, content_rows=psp.content_rows,
                  encoder_antialias=True)


# opts['encoder_type'] -> our forward (pSp and e4e files share one key set)
STYLE_CODE_ENCODER_TYPES = {"GradualStyleEncoder": "psp", "Encoder4Editing": "e4e"}
# The rows of the cars generator's square images (LSUN cars, 512x384 padded to 512x512) that hold the car.
CARS_CONTENT_ROWS = (0.125, 0.875)


def style_code_encoder_from_state_dict(sd: Mapping[str, torch.Tensor], *, source: str, mode: str,
                                       latent_avg: torch.Tensor | None = None,
                                       content_rows: tuple[float, float] | None = None) -> StyleCodeEncoder:
    """Build a pSp/e4e W+ encoder shaped like ``sd`` and load it strictly.

    The input size and the level split are read from the heads: a head on c3 (1/16 of the input) has
    ``log2(input/16)`` convs, one on p2 one more, one on p1 two more. ``latent_avg`` (``[w_dim]``): the code the
    offsets start from, kept in the encoder. ``content_rows``: for a domain in those rows of the generator's square
    (cars), the input is their shape (192x256; the weights cannot tell).
    """
    n_styles = len({int(m.group(1)) for k in sd if (m := re.match(r"styles\.(\d+)\.", k))})
    if n_styles == 0 or "styles.0.linear.weight" not in sd:
        raise CheckpointError(f"{source}: no styles.N.linear heads: not a pSp/e4e W+ encoder")
    convs = [len([k for k in sd if re.fullmatch(rf"styles\.{i}\.convs\.\d+\.weight", k)]) for i in range(n_styles)]
    first = convs[0]
    levels = [c - first for c in convs]  # 0 coarse, 1 middle, 2 fine
    if levels != sorted(levels) or not set(levels) <= {0, 1, 2}:
        raise CheckpointError(f"{source}: head conv counts {convs} are not coarse, then middle, then fine heads")
    w_dim, feature_channels = sd["styles.0.linear.weight"].shape
    width = 16 * 2**first
    height = encoder_input_height(width, content_rows)
    config = StyleCodeEncoderConfig(**_trunk_spec(sd), input_size=width, input_height=height, n_styles=n_styles,
                                    feature_channels=int(feature_channels), coarse_end=levels.count(0),
                                    middle_end=levels.count(0) + levels.count(1), w_dim=int(w_dim), mode=mode,
                                    own_latent_avg=latent_avg is not None)
    if latent_avg is not None:
        sd = {**sd, "latent_avg": latent_avg.reshape(1, -1).expand(n_styles, -1).clone()}
    return instantiate_strict(lambda: StyleCodeEncoder(config), dict(sd), source=source)


def load_psp_encoder(checkpoint: str | Path, generator: str | Path | Generator | None = None) -> PSP:
    """A released pSp or e4e W+ encoder (``encoder.*`` with ``styles.*``, ``decoder.*``, ``latent_avg``, ``opts``)
    as the ``psp`` or ``e4e`` method, chosen by ``opts['encoder_type']``; the generator is ``generator`` or, when
    not given, the file's own decoder. Codes start from the file's ``latent_avg`` when its opts say
    ``start_from_latent_avg`` (an e4e file that does not say is taken to, as the released ones are trained), else
    they are absolute, as in the official forward."""
    psp = PspFile.read(checkpoint)
    extra = sorted(k for k in psp.state_dict if not k.startswith(("encoder.", "decoder.")))
    if extra:
        raise CheckpointError(psp.path, f"unexpected keys {extra[:12]} (expected encoder.* and decoder.*)")
    encoder_type = option(psp.opts, "encoder_type", str, psp.path)
    mode = STYLE_CODE_ENCODER_TYPES.get(encoder_type)
    if mode is None:
        raise CheckpointError(psp.path, f"its opts['encoder_type'] is {encoder_type!r}; a W+ encoder file has one of "
                              f"{sorted(STYLE_CODE_ENCODER_TYPES)}")
    from_average = option(psp.opts, "start_from_latent_avg", bool, psp.path, default=mode == "e4e")
    G = psp.generator(generator)
    if from_average and psp.latent_avg is None:
        raise CheckpointError(psp.path, "has no latent_avg, which its codes are offsets from")
    average = psp.latent_avg if from_average else torch.zeros(G.w_dim)
    rows = psp.content_rows  # cars: the official codes read 192x256 photos, rows 64 to 448 of the 512-px images
    try:
        encoder = style_code_encoder_from_state_dict(psp.part("encoder."), source=f"{psp.path} [encoder]", mode=mode,
                                                     latent_avg=average, content_rows=rows)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise CheckpointError(psp.path, f"does not have the layout of a pSp/e4e checkpoint ({e})") from None
    if (encoder.config.n_styles, encoder.w_dim) != (G.num_ws, G.w_dim):
        raise CheckpointError(psp.path, f"its encoder makes [{encoder.config.n_styles}, {encoder.w_dim}] codes, the "
                              f"generator takes [{G.num_ws}, {G.w_dim}]")
    psp.check_input_channels(encoder.config.in_channels, G)
    method = E4E if mode == "e4e" else PSP
    return method(G, style_encoder=encoder.eval(), encoder_resolution=encoder.config.input_size, content_rows=rows)


# --- E2Style: {"state_dict": encoder_firststage.*, encoder_refinestage_list.{i}.*, decoder.*; "latent_avg"; "opts"} ---


def e2style_encoders_from_state_dict(sd: Mapping[str, torch.Tensor], *, source: str,
                                     latent_avg: torch.Tensor) -> E2StyleEncoders:
    """E2Style's stage encoders shaped like ``sd`` (``encoder_firststage.*``, ``encoder_refinestage_list.{i}.*``),
    loaded strictly. The trunk and each head's rows and pooling are read from the tensors; the input size is the
    official 256 (nothing in the weights fixes it); the unused fourth trunk stage must be there, as the official files
    hold it."""
    first = _strip(sd, "encoder_firststage.")
    if "output_layer_3.3.weight" not in first:
        raise CheckpointError(f"{source}: no encoder_firststage.output_layer_3: not an E2Style checkpoint")
    trunk = _trunk_spec(first)
    heads = []
    for name, width in zip(("output_layer_3", "output_layer_4", "output_layer_5"),
                           (trunk["trunk"].widths[2], trunk["trunk"].widths[1], trunk["trunk"].widths[0])):
        out_features, in_features = first[f"{name}.3.weight"].shape
        pool = round((in_features / width) ** 0.5)
        if pool * pool * width != in_features:
            raise CheckpointError(f"{source}: {name} reads {in_features} features, not a square pooling of {width} "
                                  "channels")
        heads.append((pool, out_features))
    w_dim = int(latent_avg.shape[-1])
    if any(rows % w_dim for _, rows in heads):
        raise CheckpointError(f"{source}: head outputs {[r for _, r in heads]} are not whole rows of {w_dim}")
    rows = tuple(r // w_dim for _, r in heads)
    refine = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder_refinestage_list\.(\d+)\.", k))})
    if refine != list(range(len(refine))):
        raise CheckpointError(f"{source}: refinement stages {refine} are not numbered 0..n-1")
    config = E2StyleConfig(encoder=E2StyleEncoderConfig(
        **trunk, input_size=256, n_styles=sum(rows), w_dim=w_dim, pool_sizes=tuple(p for p, _ in heads),
        head_rows=rows), stages=1 + len(refine))
    average = latent_avg.reshape(1, -1).expand(sum(rows), -1).clone()
    return instantiate_strict(lambda: E2StyleEncoders(config), {**sd, "latent_avg": average}, source=source)


# E2Style's dataset_type -> the restoration task (hyperinverter.data.degradations) its encoders were trained for.
_E2STYLE_TASKS = {"ffhq_encode": None, "ffhq_colorization": "colorization", "ffhq_denoise": "denoising",
                  "ffhq_inpainting": "inpainting", "celebs_super_resolution": "sr"}


def e2style_task(opts: Mapping, path: Path, task: str | None = None) -> str | None:
    """The restoration task of a released E2Style file, from its ``opts`` (``dataset_type``; for super-resolution
    ``resize_factors``, the official default 1..32 where unset): one trained factor ``sr4``, or several drawn per
    image ``sr1,2,4,8,16,32``, as the official transforms do. ``task`` narrows a multi-factor file to one of its
    factors (``sr8``: ``restore --simulate`` then degrades by 8 only). None for inversion."""
    dataset_type = option(opts, "dataset_type", str, path) or "ffhq_encode"
    if dataset_type in ("celebs_sketch_to_face", "celebs_seg_to_face"):
        raise CheckpointError(path, f"was trained for {dataset_type!r}, a translation from sketches or segmentation "
                              "maps to faces, which this version does not run (restoration and inversion it does)")
    if dataset_type not in _E2STYLE_TASKS:
        raise CheckpointError(path, f"has an unknown dataset_type {dataset_type!r} (known: {sorted(_E2STYLE_TASKS)})")
    trained = _E2STYLE_TASKS[dataset_type]
    if trained != "sr":
        if task is not None and task != trained:
            raise CheckpointError(path, f"was trained for {trained or 'inversion'} ({dataset_type}), not {task}")
        return trained
    recorded = opts.get("resize_factors")
    factors = list(dict.fromkeys(int(f) for f in re.findall(r"\d+", str(recorded)))) if recorded is not None else \
        list(OFFICIAL_RESIZE_FACTORS)
    everything = "sr" + ",".join(map(str, factors))
    try:
        get_degradation(everything)
    except ValueError as e:
        raise CheckpointError(path, f"has resize_factors {recorded!r}, which this version cannot degrade by ({e})"
                              ) from None
    offered = [f"sr{f}" for f in factors if f in SR_FACTORS]
    if task is None or task == everything or (task == "sr" and tuple(factors) == OFFICIAL_RESIZE_FACTORS):
        return everything
    if task not in offered:
        raise CheckpointError(path, f"was trained for super-resolution at factors {factors}: {task} is not one of "
                              f"them ({', '.join(offered)}, or leave --task out to keep them all)")
    return task


def load_official_e2style(checkpoint: str | Path, generator: str | Path | Generator | None = None, *,
                          task: str | None = None) -> E2Style:
    """A released E2Style checkpoint (every stage in one file, the decoder inside) as the ``e2style`` method; the
    generator is ``generator`` or, when not given, the file's own decoder. A generator with fewer rows than the
    file's 18 uses the first ``num_ws`` of them, as the official code does. A restoration checkpoint (colorization,
    denoising, inpainting, super-resolution) keeps its task, which ``restore`` reads (:func:`e2style_task`)."""
    psp = PspFile.read(checkpoint)
    psp.refuse_cars("E2Style")
    task = e2style_task(psp.opts, psp.path, task)
    extra = sorted(k for k in psp.state_dict
                   if not k.startswith(("encoder_firststage.", "encoder_refinestage_list.", "decoder.")))
    if extra:
        raise CheckpointError(psp.path, f"unexpected keys {extra[:12]} (expected encoder_firststage.*, "
                              "encoder_refinestage_list.*, decoder.*)")
    # As the official forward: latent_avg is added only with start_from_latent_avg (its coach saves it only then).
    from_average = option(psp.opts, "start_from_latent_avg", bool, psp.path, default=psp.latent_avg is not None)
    if from_average and psp.latent_avg is None:
        raise CheckpointError(psp.path, "has no latent_avg, which E2Style's codes start from")
    G = psp.generator(generator)
    average = psp.latent_avg if from_average else torch.zeros(G.w_dim)
    encoders_sd = {k: v for k, v in psp.state_dict.items() if not k.startswith("decoder.")}
    try:
        encoders = e2style_encoders_from_state_dict(encoders_sd, source=str(psp.path), latent_avg=average)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise CheckpointError(psp.path, f"does not have the layout of an E2Style checkpoint ({e})") from None
    model = E2Style(G, encoders=encoders.eval(), encoder_resolution=encoders.input_size, task=task)
    logger.info("loaded %s: E2Style with %d stages, rows per head %s%s", psp.path, encoders.stages,
                encoders.config.encoder.rows, f", trained for {task}" if task else "")
    return model


_OPTION_KINDS = {int: "a whole number", str: "a string", bool: "true or false"}


def option(opts: Mapping, key: str, kind: type, source: str | Path, default: Any = None) -> Any:
    """``opts[key]`` (the official code's argparse options, stored in its files), or ``default`` where absent; a
    value of another type is a ``CheckpointError`` naming the file and the option (an ``output_size`` of "1024" was
    refused as "trained for 1024px but the generator makes 1024px")."""
    value = opts.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CheckpointError(source, f"its opts {key!r} is {value!r}, not {_OPTION_KINDS[kind]}")
    return value


def check_output_size(opts: Mapping, generator: Generator, source: str | Path) -> None:
    """The image size a released file was trained for (its ``output_size``, where it records one) must be the
    generator's."""
    size = option(opts, "output_size", int, source)
    if size is not None and size != generator.resolution:
        raise CheckpointError(source, f"was trained for {size}px but the generator makes {generator.resolution}px")


def _layers_to_tune(opts: Mapping, source: Path) -> tuple[int, ...] | None:
    value = opts.get("layers_to_tune")
    if value is None:
        return None
    try:
        layers = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip())
    except (TypeError, ValueError):
        raise CheckpointError(source, f"its opts 'layers_to_tune' is not a list of layer indices: {value!r}") from None
    return layers


def hyperstyle_from_state_dict(sd: Mapping[str, torch.Tensor], generator: Generator, *, opts: Mapping,
                               source: Path, content_rows: tuple[float, float] | None = None) -> HyperStyleNet:
    """Build a HyperStyle hypernetwork shaped like ``sd`` (keys without ``hypernet.``) and load it strictly; for a
    domain in ``content_rows`` of the generator's square (cars), on inputs of their shape (192 x 256).

    The shared hypernetwork is stored once per block that uses it and once as ``shared_weight_hypernet``; every
    copy must be the same tensor."""
    shared_keys = sorted(k for k in sd if re.match(r"(refinement_blocks\.\d+\.hypernet|shared_weight_hypernet)\.", k))
    for name in ("w1", "b1", "w2", "b2"):
        copies = [k for k in shared_keys if k.endswith(f".{name}")]
        differing = [k for k in copies if not torch.equal(sd[k], sd[copies[0]])]
        if differing:
            raise CheckpointError(source, f"the copies of the shared hypernetwork differ: {differing[:4]} vs "
                                  f"{copies[0]}")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"refinement_blocks\.(\d+)\.", k))})
    layers = _layers_to_tune(opts, source)
    if layers:
        # The official code builds a block for each of its generator's layers that the list names and ignores the
        # rest: its default list is the 1024-px one, which the 256- and 512-px releases keep (up to 24).
        count = len(generator.synthesis.layers())
        listed, layers = layers, tuple(i for i in layers if i < count)
        if not layers:
            raise CheckpointError(source, f"its opts 'layers_to_tune' {list(listed)} lists none of the generator's "
                                  f"layers (0..{count - 1})")
    if layers is not None:
        try:  # (an empty list tunes every layer, ToRGB included, as the official code reads it)
            tuned = sorted(t.index for t in hyperstyle_targets(generator, layers))
        except ValueError as e:
            raise CheckpointError(source, f"its opts 'layers_to_tune': {e}") from None
        if tuned != blocks:
            raise CheckpointError(source, f"its opts tune layers {tuned}, but it holds refinement blocks {blocks}")
    spec = _trunk_spec(sd)
    channels = 2 * generator.config.img_channels
    if spec["trunk"].backbone != "resnet" or spec["in_channels"] != channels:
        raise CheckpointError(source, f"its trunk is not HyperStyle's {channels}-channel ResNet (it reads "
                              f"{spec['in_channels']} channels)")
    separable = any(".output.0.make_kernel_in." in k for k in sd) or "Separable" in str(opts.get("encoder_type", ""))
    targets = hyperstyle_targets(generator, tuple(blocks))
    shared = [t.index for t in targets if t.shared]
    if not shared:  # the official model always builds the shared hypernetwork, used by no block here
        sd = {k: v for k, v in sd.items() if not k.startswith("shared_weight_hypernet.")}
    plain = [t.index for t in targets if not t.shared]
    code_dim = sd["shared_weight_hypernet.w1"].shape[0] if shared else spec["trunk"].widths[-1]
    hyper_inner = sd[f"refinement_blocks.{shared[0]}.convs.0.weight"].shape[0] if shared else 128
    refine_inner = sd[f"refinement_blocks.{plain[0]}.convs.0.weight"].shape[0] if plain else 256
    size = option(opts, "hypernet_input_size", int, source, default=256)
    config = HyperStyleConfig(targets, spec["trunk"], size, code_dim, hyper_inner, refine_inner, separable,
                              generator.config.img_channels, encoder_input_height(size, content_rows))
    return instantiate_strict(lambda: HyperStyleNet(config), sd, source=f"{source} [hypernet]")


def load_official_hyperstyle(checkpoint: str | Path, w_encoder: str | Path, generator: str | Path | Generator | None = None,
                             ) -> HyperStyle:
    """A released ``hyperstyle_ffhq.pt`` and its W encoder (``faces_w_encoder.pt``) as the ``hyperstyle`` method.

    The generator is ``generator``, else the ``decoder.*`` of either file. The W encoder's codes start from the
    HyperStyle file's ``latent_avg`` (the one its hypernetwork was trained with), else the W encoder file's.
    """
    psp = PspFile.read(checkpoint)
    encoder_file = PspFile.read(w_encoder)
    # (a W encoder file that does not say which domain it was trained on follows the HyperStyle file)
    if "dataset_type" in encoder_file.opts and encoder_file.is_cars != psp.is_cars:
        raise CheckpointError(psp.path, f"and its W encoder {encoder_file.path} were trained on different domains "
                              f"(dataset_type {psp.opts.get('dataset_type')!r} and "
                              f"{encoder_file.opts.get('dataset_type')!r})")
    extra = sorted(k for k in psp.state_dict if not k.startswith(("hypernet.", "decoder.")))
    if extra:
        raise CheckpointError(psp.path, f"unexpected keys {extra[:12]} (a HyperStyle file holds hypernet.* and "
                              "decoder.*)")
    try:
        G = psp.generator(generator) if generator is not None or psp.part("decoder.") else encoder_file.generator(None)
        if psp.part("decoder.") or generator is not None:  # (its W encoder was trained for the same generator)
            encoder_file.generator(G, given_as="the generator given" if generator is not None else
                                   f"the one in {psp.path.name}", remedy="give the W encoder released with it")
        check_output_size(psp.opts, G, psp.path)
        if psp.latent_avg is not None:
            if encoder_file.latent_avg is not None and not torch.allclose(psp.latent_avg, encoder_file.latent_avg):
                logger.warning("%s and %s hold different latent_avg; using the HyperStyle file's", psp.path,
                               encoder_file.path)
            encoder_file.latent_avg = psp.latent_avg
        encoder = w_encoder_with_average(encoder_file)
        hypernetwork = hyperstyle_from_state_dict(psp.part("hypernet."), G, opts=psp.opts, source=psp.path,
                                                  content_rows=psp.content_rows)
    except (KeyError, IndexError, TypeError) as e:
        raise CheckpointError(psp.path, f"does not have the layout of a HyperStyle checkpoint ({e!r})") from None
    logger.info("loaded %s: %d tuned layers (%d shared), W encoder %s", psp.path, len(hypernetwork.config.targets),
                sum(t.shared for t in hypernetwork.config.targets), encoder_file.path)
    return HyperStyle(G, w_encoder=encoder, hypernetwork=hypernetwork,
                      encoder_resolution=hypernetwork.config.input_size, content_rows=psp.content_rows)


def import_official(checkpoint: str | Path, *, generator: str | Path | Generator | None = None,
                    w_encoder: str | Path | None = None, task: str | None = None) -> dict[str, Inverter]:
    """Recognise a released checkpoint from its keys and return the methods a bundle of it holds:

    * HyperInverter (``w_encoder.*``, ``w_bar_encoder.*``, ``hypernet.weight_regressors.*``) -> ``phase1`` and
      ``hyperinverter`` (the generator must be given: it is not inside);
    * HyperStyle (``hypernet.refinement_blocks.*``) -> ``phase1`` (its W encoder) and ``hyperstyle``; its W encoder
      file must be given (``w_encoder``);
    * a pSp-style W encoder (``encoder.linear.*``) -> ``phase1``;
    * a pSp or e4e W+ encoder (``encoder.styles.*``) -> ``psp`` or ``e4e`` (by ``opts['encoder_type']``), with the
      generator from the file's decoder unless one is given;
    * E2Style (``encoder_firststage.*``, ``encoder_refinestage_list.*``) -> ``e2style``, likewise, with the
      restoration task it was trained for (``task`` picks the factor of a super-resolution file trained on several).
    """
    path = Path(checkpoint)
    keys = set(PspFile.read(path).state_dict)
    is_e2style = "encoder_firststage.output_layer_3.3.weight" in keys
    if task is not None and not is_e2style:
        raise CheckpointError(path, "is not an E2Style checkpoint: a task is for E2Style's restoration files")
    is_hyperstyle = any(k.startswith(("hypernet.refinement_blocks.", "hypernet.shared_weight_hypernet.")) for k in keys)
    if w_encoder is not None and not is_hyperstyle:  # (it was ignored without a word)
        raise CheckpointError(path, "is not a HyperStyle checkpoint: a W encoder file is for HyperStyle's, which "
                              "starts from one; leave out --w-encoder")
    if any(k.startswith(("hypernet.weight_regressors.", "w_bar_encoder.")) for k in keys):
        if generator is None:
            raise CheckpointError(path, "is a HyperInverter checkpoint, which holds no generator: give --generator")
        model = load_official_hyperinverter(path, generator)
        return {"phase1": Phase1(model.generator, w_encoder=model.w_encoder,
                                 encoder_resolution=model.encoder_resolution), "hyperinverter": model}
    if is_hyperstyle:
        if w_encoder is None:
            raise CheckpointError(path, "is a HyperStyle checkpoint: give its W encoder file too (--w-encoder, e.g. "
                                  "faces_w_encoder.pt)")
        model = load_official_hyperstyle(path, w_encoder, generator)
        # Its first pass, as a method of its own: the W encoder reads what HyperStyle's reads (cars: the car's rows),
        # reduced with antialiasing as HyperStyle's data transforms reduce it.
        first_pass = Phase1(model.generator, w_encoder=model.w_encoder, encoder_resolution=model.encoder_resolution,
                            content_rows=model.content_rows, encoder_antialias=model.encoder_antialias)
        return {"phase1": first_pass, "hyperstyle": model}
    if "encoder.linear.weight" in keys:
        return {"phase1": load_psp_w_encoder(path, generator)}
    if "encoder.styles.0.linear.weight" in keys:
        model = load_psp_encoder(path, generator)
        return {model.name: model}
    if is_e2style:
        model = load_official_e2style(path, generator, task=task)
        return {model.name: model}
    raise CheckpointError(path, "is not a checkpoint this version recognises (HyperInverter, HyperStyle, pSp, e4e, "
                          f"E2Style, or a pSp-style W encoder); its keys start with {sorted({k.split('.')[0] for k in keys})[:8]}")
