"""Our own GAN format: a generator folder (a component), or a GAN folder with ``generator/`` and
``discriminator/``; a lone ``.safetensors`` generator with our metadata."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.stylegan2 import Discriminator, Generator
from .checkpoints import CONFIG_NAME
from .components import load_component, save_component_module
from .files import atomic_write_bytes, staged_directory


def load_gan_folder(path: Path, *, with_discriminator: bool = False) -> tuple[Generator, Discriminator | None]:
    """(generator, discriminator or None) from one of our generator or GAN folders (or a lone ``.safetensors``)."""
    path = Path(path)
    gen_path = path / "generator" if (path / "generator" / CONFIG_NAME).is_file() else path
    generator = load_component(gen_path, expect="stylegan2-generator")
    d_path = path / "discriminator"
    discriminator = None
    if with_discriminator and (d_path / CONFIG_NAME).is_file():
        discriminator = load_component(d_path, expect="stylegan2-discriminator")
    return generator, discriminator


def save_gan(path: str | Path, generator: Generator, discriminator: Discriminator | None = None, *,
             dtype: torch.dtype | None = None, extras: dict | None = None,
             files: dict[str, bytes] | None = None) -> Path:
    """Write our format. Without a discriminator, ``path`` is a plain generator folder.

    An existing folder at ``path`` is replaced only if it is a generator we wrote; ``files`` (name -> bytes) are
    written into the folder too, in the same atomic step (``export-generator`` adds the image's codes).
    """
    with staged_directory(path, "generator") as tmp:
        save_component_module(tmp / "generator" if discriminator is not None else tmp, generator, dtype=dtype,
                              extras=extras)
        if discriminator is not None:
            save_component_module(tmp / "discriminator", discriminator, dtype=dtype)
        for name, data in (files or {}).items():
            atomic_write_bytes(tmp / name, data)
    return Path(path)
