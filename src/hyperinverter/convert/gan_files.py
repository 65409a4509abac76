"""Read and write StyleGAN2 files in every supported format.

Formats:
- ``hyperinverter``: a folder (``config.json`` + ``model.safetensors``), or a GAN folder holding
  ``generator/`` and optionally ``discriminator/``; a lone ``.safetensors`` file with our metadata.
- ``rosinality``: ``.pt`` with ``g_ema`` and ``latent_avg``; read with ``weights_only=True``.
- ``nvidia``: stylegan2-ada / stylegan3-repo StyleGAN2 ``.pkl``; read by the whitelisting unpickler.

The configuration is read from the file; loading is strict.
"""

from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..device import resolve_device
from ..errors import CheckpointError, OutputError
from ..io.checkpoints import check_zip_records, instantiate_strict, load_state_dict_strict, load_weights_only
from ..io.files import atomic_write_bytes, check_replaceable, refuse_special_file
from ..io.gan import load_gan_folder, save_gan
from ..models.stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from ..ops.filters import setup_filter
from . import rosinality

logger = logging.getLogger(__name__)

GeneratorFormat = Literal["hyperinverter", "rosinality", "nvidia"]


@dataclass
class LoadedGAN:
    """A generator (EMA weights) and, when the file has one, its discriminator."""

    generator: Generator
    discriminator: Discriminator | None
    source_format: GeneratorFormat


def detect_format(path: Path) -> GeneratorFormat:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such model file or folder", str(path))
    refuse_special_file(path, CheckpointError, "a model file or folder")
    suffix = path.suffix.lower()  # (g.PT, as some tools and systems name them)
    if path.is_dir() or suffix == ".safetensors":
        return "hyperinverter"
    if suffix == ".pkl":
        return "nvidia"
    if suffix in (".pt", ".pth", ".ckpt"):
        return "nvidia" if _is_pickled_persistent_module(path) else "rosinality"
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" and not zipfile.is_zipfile(path):
        return "nvidia"
    return "rosinality"


def _is_pickled_persistent_module(path: Path) -> bool:
    """A torch zip archive of a whole NVIDIA network (PTI's ``torch.save(G)``), not of a state dict: its pickle
    names NVIDIA's persistence module. Only the pickle's bytes are searched; nothing is unpickled."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            check_zip_records(archive, path)
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return len(pickles) == 1 and b"torch_utils.persistence" in archive.read(pickles[0])
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        # (an internal error before; an unknown compression method or an encrypted record too)
        raise CheckpointError(path, f"is a damaged zip archive ({e})") from None


# --- rosinality -------------------------------------------------------------------------------------


def _torch_load(path: Path) -> dict:
    # rosinality train.py checkpoints hold an argparse.Namespace; allow that plain data class only.
    obj = load_weights_only(path, allowed_globals=[argparse.Namespace])
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def rosinality_generator(g_ema: dict[str, torch.Tensor], latent_avg: torch.Tensor | None, source: str) -> Generator:
    """A generator from a rosinality ``g_ema`` state dict (and ``latent_avg``), loaded strictly. Buffers such files
    may lack are filled: noise is seeded, filters are known, ``w_avg`` is computed from the mapping."""
    try:
        config = rosinality.infer_config(g_ema)
        sd, absent = rosinality.to_nvidia(g_ema, config, latent_avg=latent_avg)
    except ValueError as e:
        raise CheckpointError(source, str(e)) from None
    G = Generator(config)
    fresh = G.state_dict()
    gen = torch.Generator().manual_seed(0)
    for name in absent:
        if name.endswith("noise_const"):
            sd[name] = torch.randn(fresh[name].shape, generator=gen)
        elif name.endswith("resample_filter"):
            sd[name] = fresh[name]
        elif name == "mapping.w_avg":
            sd[name] = torch.zeros_like(fresh[name])
    noise = [n for n in absent if n.endswith("noise_const")]
    if noise:
        logger.warning("%s has no noise buffers; using seeded random constant noise for %d layers", source, len(noise))
    load_state_dict_strict(G, sd, source=source)
    if "mapping.w_avg" in absent:
        logger.warning("%s has no latent_avg; computing w_avg from 10,000 seeded samples", source)
        G.mapping.w_avg.copy_(G.compute_w_avg())
    return G


def _load_rosinality(path: Path) -> LoadedGAN:
    ckpt = _torch_load(path)
    keys = sorted(map(str, ckpt))[:12]
    if "g_ema" not in ckpt:
        if "state_dict" in ckpt:
            raise CheckpointError(path, f"looks like an encoder checkpoint (keys {keys}); give it to "
                                  "import-official, not as a generator")
        raise CheckpointError(path, f"is not a rosinality generator: no 'g_ema' among its keys {keys}")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(path, f"its 'latent_avg' is a {type(latent_avg).__name__}, not a tensor")
    return LoadedGAN(rosinality_generator(ckpt["g_ema"], latent_avg, str(path)), None, "rosinality")


ROSINALITY_MARKER = "hyperinverter"  # a key rosinality-based tools ignore: marks the files we wrote


def check_rosinality_replaceable(path: Path) -> None:
    """Raise ``OutputError`` if ``path`` exists and is not a rosinality file that we wrote (never overwrite a
    user's own checkpoint, e.g. the original a conversion started from)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() or path.is_symlink():
        raise OutputError(path, "exists and is not a plain file; a rosinality generator is one .pt file")
    try:
        ours = ROSINALITY_MARKER in _torch_load(path)
    except CheckpointError:
        ours = False
    if not ours:
        raise OutputError(path, "exists and hyperinverter did not write it; nothing was changed: choose a new name")


def save_rosinality(path: Path, generator: Generator, *, extras: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``{"g_ema", "latent_avg"}`` that rosinality-based tools (pSp, e4e, HyperStyle) read, plus
    ``extras`` (``export-generator`` adds the image's codes as ``ws``)."""
    check_rosinality_replaceable(path)
    if not rosinality.is_standard_layout(generator.config):
        logger.warning(
            "this generator's widths (base %d, max %d, %d channels) are not expressible by rosinality's "
            "Generator(size, channel_multiplier); tools must build it with matching widths",
            generator.config.channel_base, generator.config.channel_max, generator.config.img_channels,
        )
    if generator.config.conv_clamp is not None:
        logger.warning("rosinality's Generator does not clamp its activations: this generator's conv_clamp %g is not "
                       "kept (a clamp of 256 rarely cuts in fp32)", generator.config.conv_clamp)
    g_ema = rosinality.from_nvidia(rosinality.at_rosinality_lr(generator.state_dict(), generator.config),
                                   generator.config)
    latent_avg = g_ema.pop("latent_avg")
    buf = io.BytesIO()
    torch.save({"g_ema": g_ema, "latent_avg": latent_avg, **(extras or {}),
                ROSINALITY_MARKER: {"format_version": 1}}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


# --- NVIDIA -----------------------------------------------------------------------------------------


# What a class of the stylegan3 repo's networks_stylegan2.py takes for an argument its pickle does not record (its
# train.py passes conv_clamp only with --fp32); stylegan2-ada-pytorch's classes default to None and 0.995.
_STYLEGAN3_REPO_DEFAULTS = {"conv_clamp": 256, "w_avg_beta": 0.998}


def _from_stylegan3_repo(generator_kwargs: dict) -> bool:
    """Whether a generator was built by the stylegan3 repo, whose Generator takes its synthesis arguments flat;
    stylegan2-ada-pytorch's takes (and its training and converter always pass) ``synthesis_kwargs``."""
    return "synthesis_kwargs" not in generator_kwargs


def _nv_generator_config(kwargs: dict, source: str) -> GeneratorConfig:
    defaults = _STYLEGAN3_REPO_DEFAULTS if _from_stylegan3_repo(kwargs) else {"conv_clamp": None, "w_avg_beta": 0.995}
    synth = dict(kwargs.get("synthesis_kwargs") or {})
    # The stylegan3 repo passes synthesis arguments flat (**synthesis_kwargs).
    for key in ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture",
                "resample_filter", "use_noise", "activation"):
        if key in kwargs and key not in synth:
            synth[key] = kwargs[key]
    mapping = dict(kwargs.get("mapping_kwargs") or {})
    if kwargs.get("c_dim", 0):
        raise CheckpointError(f"{source}: conditional generators (c_dim={kwargs['c_dim']}) are not supported")
    if synth.get("architecture", "skip") != "skip":
        raise CheckpointError(f"{source}: only the 'skip' generator architecture is supported, got {synth['architecture']!r}")
    if synth.get("activation", "lrelu") != "lrelu" or mapping.get("activation", "lrelu") != "lrelu":
        raise CheckpointError(f"{source}: only lrelu activations are supported")
    # (embed_features sizes the class embedding, which an unconditional network does not have: NVIDIA ignores it)
    if mapping.get("layer_features") not in (None, kwargs["w_dim"]):
        raise CheckpointError(f"{source}: custom mapping feature widths are not supported")
    return GeneratorConfig(
        resolution=int(kwargs["img_resolution"]),
        img_channels=int(kwargs["img_channels"]),
        z_dim=int(kwargs["z_dim"]),
        w_dim=int(kwargs["w_dim"]),
        mapping_layers=int(mapping.get("num_layers", 8)),
        mapping_lr_multiplier=float(mapping.get("lr_multiplier", 0.01)),
        w_avg_beta=float(mapping.get("w_avg_beta", defaults["w_avg_beta"]) or defaults["w_avg_beta"]),
        channel_base=int(synth.get("channel_base", 32768)),
        channel_max=int(synth.get("channel_max", 512)),
        conv_clamp=None if (clamp := synth.get("conv_clamp", defaults["conv_clamp"])) is None else float(clamp),
        use_noise=bool(synth.get("use_noise", True)),
        resample_filter=tuple(synth.get("resample_filter", (1, 3, 3, 1))),
    )


def _nv_discriminator_config(kwargs: dict, source: str, *, stylegan3_repo: bool = False) -> DiscriminatorConfig:
    """``stylegan3_repo``: the pickle's generator is the stylegan3 repo's (see ``_from_stylegan3_repo``), whose
    Discriminator clamps at 256 when its arguments do not say."""
    if kwargs.get("c_dim", 0):
        raise CheckpointError(f"{source}: conditional discriminators are not supported")
    if kwargs.get("architecture", "resnet") != "resnet":
        raise CheckpointError(f"{source}: only the 'resnet' discriminator architecture is supported")
    epilogue = dict(kwargs.get("epilogue_kwargs") or {})
    block = dict(kwargs.get("block_kwargs") or {})
    if any(part.get("activation", "lrelu") != "lrelu" for part in (kwargs, block, epilogue)):
        raise CheckpointError(f"{source}: only lrelu discriminators are supported")
    return DiscriminatorConfig(
        resolution=int(kwargs["img_resolution"]),
        img_channels=int(kwargs["img_channels"]),
        channel_base=int(kwargs.get("channel_base", 32768)),
        channel_max=int(kwargs.get("channel_max", 512)),
        conv_clamp=None if (clamp := kwargs.get("conv_clamp", 256 if stylegan3_repo else None)) is None
        else float(clamp),
        # NVIDIA's default is 4; None (which its converter writes for TensorFlow pickles) means the whole batch.
        mbstd_group_size=None if (group := epilogue.get("mbstd_group_size", 4)) is None else int(group),
        mbstd_num_channels=int(epilogue.get("mbstd_num_channels", 1)),
        resample_filter=tuple(block.get("resample_filter", kwargs.get("resample_filter", (1, 3, 3, 1)))),
    )


# Layers that NVIDIA builds with its default filter [1,3,3,1], whatever the network's, and that never resample:
# a generator's conv1 (SynthesisBlock passes resample_filter to conv0 only), a discriminator's fromrgb, conv0 and
# epilogue conv. Ours hold the network's filter there (unused alike).
_NV_UNUSED_FILTERS = re.compile(r"(synthesis\.b\d+\.conv1|b\d+\.(fromrgb|conv0)|b4\.conv)\.resample_filter")


def _nv_state_dict(state_dict: dict[str, torch.Tensor], resample_filter: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """A pickled network's tensors as our model holds them: its unused default filters are the network's filter (a
    network with another filter than NVIDIA's default was refused, its unused filters being of another shape), and
    a filter of 8 taps or more, which NVIDIA keeps separable (``[fw]``, sum 1, applied along each axis), is its 2-D
    outer product ``[fw, fw]`` (the same filter; it was refused)."""
    own = setup_filter(resample_filter)
    out = {}
    for k, v in state_dict.items():
        if _NV_UNUSED_FILTERS.fullmatch(k):
            v = own.clone()
        elif k.endswith("resample_filter") and v.ndim == 1:
            v = torch.outer(v, v)
        out[k] = v
    return out


def _load_nvidia(path: Path, with_discriminator: bool) -> LoadedGAN:
    from .nvidia_pickle import load_nvidia_pickle

    nets = load_nvidia_pickle(path)
    g = nets["G_ema"]
    if any(".input." in k or k.startswith("synthesis.input") for k in g.state_dict):
        raise CheckpointError(f"{path} holds a StyleGAN3 generator; only StyleGAN2 is supported")
    for key in ("G_ema", "D") if with_discriminator else ("G_ema",):  # (a list was an AttributeError inside)
        if key in nets and not isinstance(nets[key].init_kwargs, dict):
            raise CheckpointError(path, f"its {key}'s constructor arguments are a "
                                  f"{type(nets[key].init_kwargs).__name__}, not a dict of StyleGAN2's arguments")
    try:
        g_config = _nv_generator_config(g.init_kwargs, str(path))
        d_config = _nv_discriminator_config(nets["D"].init_kwargs, str(path),
                                            stylegan3_repo=_from_stylegan3_repo(g.init_kwargs)) \
            if with_discriminator and "D" in nets else None
    except CheckpointError:
        raise
    # constructor arguments missing or of the wrong type (an infinite img_resolution is an OverflowError)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(path, f"its networks' constructor arguments are not StyleGAN2's ({e!r})") from None
    G = instantiate_strict(lambda: Generator(g_config), _nv_state_dict(g.state_dict, g_config.resample_filter),
                           source=f"{path} [G_ema]")
    D = None
    if d_config is not None:
        D = instantiate_strict(lambda: Discriminator(d_config),
                               _nv_state_dict(nets["D"].state_dict, d_config.resample_filter), source=f"{path} [D]")
    return LoadedGAN(G, D, "nvidia")


# --- entry points -----------------------------------------------------------------------------------


def load_gan(path: str | Path, *, with_discriminator: bool = False, device: str | torch.device = "cpu") -> LoadedGAN:
    """Load a generator (and optionally its discriminator) from any supported format, on ``device`` (``"auto"``
    or a device this machine has, as ``resolve_device`` takes it)."""
    device = resolve_device(device)  # (before reading the file: "cuda" without CUDA failed in torch, after the load)
    path = Path(path)
    fmt = detect_format(path)
    logger.info("loading %s generator from %s", fmt, path)
    if fmt == "hyperinverter":
        gan = LoadedGAN(*load_gan_folder(path, with_discriminator=with_discriminator), "hyperinverter")
    elif fmt == "nvidia":
        gan = _load_nvidia(path, with_discriminator)
    else:
        gan = _load_rosinality(path)
        if with_discriminator:
            logger.warning("%s: discriminators are read from NVIDIA pickles and our format only", path)
    gan.generator.eval().requires_grad_(False).to(device)
    if gan.discriminator is not None:
        gan.discriminator.eval().requires_grad_(False).to(device)
    return gan


def load_generator(path: str | Path, *, device: str | torch.device = "cpu") -> Generator:
    return load_gan(path, device=device).generator


def output_format(path: str | Path, to: GeneratorFormat | None = None) -> GeneratorFormat:
    """The format a generator is written to ``path`` in: ``to``, else by the suffix, in any case (rosinality's for
    ``.pt``/``.pth``, our folder otherwise; g.PT was written as a folder of that name). NVIDIA's pickles are refused:
    they embed NVIDIA's source code."""
    suffix = Path(path).suffix.lower()
    to = to or ("rosinality" if suffix in (".pt", ".pth") else "nvidia" if suffix == ".pkl" else "hyperinverter")
    if to == "nvidia":
        raise CheckpointError(path, "writing NVIDIA pickles is not supported (they embed NVIDIA's source code); "
                              "write our format or rosinality .pt")
    return to


def convert_generator(src: str | Path, dst: str | Path, *, to: GeneratorFormat | None = None) -> GeneratorFormat:
    """Convert ``src`` (any format) to ``dst``; the target format follows ``dst``'s suffix unless given."""
    dst = Path(dst)
    to = output_format(dst, to)
    # Refuse an output that is not ours before the (possibly long) read of the source.
    if to == "rosinality":
        check_rosinality_replaceable(dst)
    else:
        check_replaceable(dst, "generator")
    # Our format carries the source's discriminator, where one is read (a rosinality file's is not: the loader's
    # warning of it named nothing the user asked for).
    gan = load_gan(src, with_discriminator=to == "hyperinverter" and detect_format(Path(src)) != "rosinality")
    if to == "rosinality":
        save_rosinality(dst, gan.generator)
    else:
        save_gan(dst, gan.generator, gan.discriminator)
    return to
