"""``phase1``: a W encoder alone. One code ``w = E1(x) + w_avg`` on every layer, rendered by the generator.

This is HyperInverter's Phase I, and any pSp/e4e-style encoder into W (``...EncoderUsingLastLayerIntoW``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..io.images import content_of
from ..models.encoders import encoder_preset
from ..models.stylegan2 import Generator
from .base import InversionResult, Inverter, Stopwatch
from .registry import register_method


def encoder_input_shape(width: int, content_rows: tuple[float, float] | None = None) -> tuple[int, int]:
    """(height, width) of an encoder's input: square, or for a domain that fills only ``content_rows`` of the
    generator's square, those rows' share of the width (cars: 192 x 256)."""
    return (width, width) if content_rows is None else (round(width * (content_rows[1] - content_rows[0])), width)


def encoder_input_height(width: int, content_rows: tuple[float, float] | None) -> int | None:
    """An encoder's ``input_height`` setting for a domain in ``content_rows`` (None for square inputs)."""
    return None if content_rows is None else encoder_input_shape(width, content_rows)[0]


def resize_for_encoder(x: torch.Tensor, width: int, content_rows: tuple[float, float] | None = None, *,
                       antialias: bool = False) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) to an encoder's input, ``width`` wide (``encoder_input_shape``); of
    the ``content_rows`` only, where the domain fills only those rows of the generator's square (cars: the official
    codes read the 192x256 photo, and crop the image to it).

    ``antialias``: as the pSp family's official data transforms (``Resize(256)`` on the photo: PIL's bilinear, which
    widens its filter when it reduces); without it, as HyperInverter's model (``F.interpolate`` on the full-size
    tensor, which reads only the pixels nearest each sample). The result is channels-last: the encoders'
    convolutions run measurably faster in that layout.
    """
    x = content_of(x, content_rows)
    height, width = encoder_input_shape(width, content_rows)
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
    return x.contiguous(memory_format=torch.channels_last)


def check_w_encoder(generator: Generator, w_encoder: nn.Module) -> list[str]:
    """What does not fit between an image encoder (``config.in_channels``, ``config.w_dim``) and the generator
    (empty if it fits)."""
    config = getattr(w_encoder, "config", None)
    if config is None:
        return []
    problems = []
    if config.in_channels != generator.config.img_channels:
        problems.append(f"the W encoder takes {config.in_channels}-channel images, the generator makes "
                        f"{generator.config.img_channels}")
    if config.w_dim != generator.w_dim:
        problems.append(f"the W encoder makes {config.w_dim}-d codes, the generator takes {generator.w_dim}")
    return problems


def encoder_fit(generator: Generator, encoder_resolution: int | None = None) -> dict:
    """The ``encoder_preset`` overrides that size encoders for ``generator`` (channels, W size, style rows)."""
    fit = dict(in_channels=generator.config.img_channels, w_dim=generator.w_dim, n_styles=generator.num_ws)
    return fit if encoder_resolution is None else {**fit, "input_size": encoder_resolution}


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError("the model's parts do not fit together:\n  " + "\n  ".join(problems))


@register_method
class Phase1(Inverter):
    """E1 (``w_encoder``, ``[B,C,S,S] -> [B,w_dim]``, an offset from ``w_avg``) around a frozen generator.

    ``encoder_resolution``: the side S the images are resized to before the encoder (256 officially).
    ``content_rows``: for a domain that fills only some rows of the generator's square (cars), those rows; only they
    are read, at ``encoder_input_shape`` (192 x 256 for cars).
    """

    name = "phase1"
    label = "Phase I (W)"
    components = ("w_encoder",)
    summary = "a W encoder alone: one code w on every layer (HyperInverter's Phase I, or a pSp/e4e W encoder)"

    def __init__(self, generator: Generator, *, w_encoder: nn.Module, encoder_resolution: int = 256,
                 content_rows: tuple[float, float] | None = None, encoder_antialias: bool | None = None) -> None:
        super().__init__(generator)
        raise_if(check_w_encoder(generator, w_encoder))
        self.w_encoder = w_encoder
        self.encoder_resolution = encoder_resolution
        self.content_rows = content_rows
        self.encoder_antialias = encoder_antialias

    @classmethod
    def create(cls, generator: Generator, *, preset: str = "tiny", encoder_resolution: int | None = None) -> Phase1:
        """An untrained encoder from an ``encoder_preset`` sized for ``generator``."""
        spec = encoder_preset(preset, **encoder_fit(generator, encoder_resolution))
        return cls(generator, w_encoder=spec.build_w_encoder(), encoder_resolution=spec.input_size)

    def settings(self) -> dict:
        return {"encoder_resolution": self.encoder_resolution, **self.content_settings(), **self.reading_settings()}

    def encode_w(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B,C,H,W]`` in [-1,1] -> ``ws [B,num_ws,w_dim]`` (one w on every layer)."""
        G = self.generator
        assert x.ndim == 4 and x.shape[1] == G.config.img_channels, (
            f"expected [B,{G.config.img_channels},H,W] images, got {tuple(x.shape)}"
        )
        average = self.w_encoder.latent_avg if self.w_encoder.config.own_latent_avg else G.w_avg
        x = resize_for_encoder(x, self.encoder_resolution, self.content_rows, antialias=self.encoder_antialias)
        w = self.w_encoder(x) + average
        assert w.shape == (x.shape[0], G.w_dim), f"W encoder returned {tuple(w.shape)}"
        return w[:, None].repeat(1, G.num_ws, 1)

    def forward(self, images: torch.Tensor, *, stopwatch: Stopwatch | None = None) -> InversionResult:
        ws = self.encode_w(images)
        if stopwatch is not None:
            stopwatch.lap("w_encoder")
        # No no_grad here: Phase I trains E1 through this image (G is frozen, so it records nothing for G).
        image = self.generator.synthesis(ws, noise_mode="const")
        if stopwatch is not None:
            stopwatch.lap("w_image")
        return InversionResult(ws=ws, image=image)
