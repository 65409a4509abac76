"""``psp`` and ``e4e``: W+ encoders. One encoder pass gives a code row per generator layer, rendered by the
frozen generator; no weight offsets.

pSp (Richardson et al., CVPR 2021) reads every row from its FPN level; e4e (Tov et al., SIGGRAPH 2021) predicts one
w and per-row deltas from it, which keeps the codes near W and so more editable. The networks are
:class:`~hyperinverter.models.encoders.StyleCodeEncoder`; released checkpoints load through
``hyperinverter.convert.official``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.encoders import StyleCodeEncoder, encoder_preset
from ..models.stylegan2 import Generator
from .base import InversionResult, Inverter, Stopwatch
from .phase1 import check_w_encoder, encoder_fit, encoder_input_shape, raise_if, resize_for_encoder
from .registry import register_method


def check_style_code_encoder(generator: Generator, encoder: nn.Module, mode: str) -> list[str]:
    """What does not fit between a W+ encoder, its method and the generator (empty if it fits)."""
    config = encoder.config
    problems = check_w_encoder(generator, encoder)  # image channels and code size, as for a W encoder
    if config.mode != mode:
        problems.append(f"the encoder runs the {config.mode} forward, the method is {mode}")
    if config.n_styles != generator.num_ws:
        problems.append(f"the encoder makes {config.n_styles} code rows, the generator takes {generator.num_ws}")
    return problems


@register_method
class PSP(Inverter):
    """A W+ encoder (``style_encoder``, ``[B,C,S,S] -> [B,num_ws,w_dim]`` offsets) around a frozen generator.

    ``encoder_resolution``: the side S the images are resized to before the encoder (256 officially; the width,
    where the encoder's input is not square). ``content_rows``: for a domain that fills only some rows of the
    generator's square (the released cars encoders: 192x256 photos, rows 64 to 448 of the 512-px image), those
    rows as fractions; only they are read (:func:`~hyperinverter.methods.phase1.resize_for_encoder`).
    """

    name = "psp"
    label = "pSp (W+)"
    components = ("style_encoder",)
    summary = "a W+ encoder: one code row per layer from its FPN level (pSp, CVPR 2021)"
    mode = "psp"
    official_antialias = True  # the official data transforms reduce the photo with PIL (Resize(256))

    def __init__(self, generator: Generator, *, style_encoder: StyleCodeEncoder,
                 encoder_resolution: int = 256, content_rows: tuple[float, float] | None = None,
                 encoder_antialias: bool | None = None) -> None:
        super().__init__(generator)
        raise_if(check_style_code_encoder(generator, style_encoder, self.mode))
        self.style_encoder = style_encoder
        self.encoder_resolution = encoder_resolution
        self.content_rows = content_rows
        self.encoder_antialias = encoder_antialias
        shape = encoder_input_shape(encoder_resolution, self.content_rows)
        if style_encoder.config.input_shape != shape:
            raise ValueError(f"the encoder reads {style_encoder.config.input_shape} inputs, the method feeds it "
                             f"{shape} (encoder_resolution {encoder_resolution}, content_rows {self.content_rows})")

    @classmethod
    def create(cls, generator: Generator, *, preset: str = "tiny", encoder_resolution: int | None = None) -> PSP:
        """An untrained encoder from an ``encoder_preset`` sized for ``generator``."""
        spec = encoder_preset(preset, **encoder_fit(generator, encoder_resolution))
        return cls(generator, style_encoder=spec.build_style_code_encoder(cls.mode),
                   encoder_resolution=spec.input_size)

    def settings(self) -> dict:
        return {"encoder_resolution": self.encoder_resolution, **self.content_settings(), **self.reading_settings()}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B,C,H,W]`` in [-1,1] -> ``ws [B,num_ws,w_dim]``."""
        G = self.generator
        assert x.ndim == 4 and x.shape[1] == G.config.img_channels, (
            f"expected [B,{G.config.img_channels},H,W] images, got {tuple(x.shape)}"
        )
        encoder = self.style_encoder
        average = encoder.latent_avg if encoder.config.own_latent_avg else G.w_avg[None]
        x = resize_for_encoder(x, self.encoder_resolution, self.content_rows, antialias=self.encoder_antialias)
        ws = encoder(x) + average
        assert ws.shape == (x.shape[0], G.num_ws, G.w_dim), f"W+ encoder returned {tuple(ws.shape)}"
        return ws

    def forward(self, images: torch.Tensor, *, stopwatch: Stopwatch | None = None,
                noise: torch.Generator | None = None) -> InversionResult:
        """``noise``: draw the generator's noise maps from it (training, as the official coaches), instead of its
        fixed ones."""
        ws = self.encode(images)
        image = self.generator.synthesis(ws, noise_mode="const" if noise is None else "random", noise_generator=noise)
        if stopwatch is not None:
            stopwatch.lap(self.name)
        return InversionResult(ws=ws, image=image)


@register_method
class E4E(PSP):
    """e4e: the same encoder layout, with one w and per-row deltas (see :class:`StyleCodeEncoder`)."""

    name = "e4e"
    label = "e4e (W+)"
    summary = "a W+ encoder for editing: one w plus per-row deltas from it (e4e, SIGGRAPH 2021)"
    mode = "e4e"
