"""``e2style``: E2Style, "A Simple Baseline for StyleGAN Inversion" (Wei et al.), as its released code runs it.

A shallow IR-SE encoder with three efficient heads predicts W+ codes from ``latent_avg``; each further stage reads
the image and the previous stage's reconstruction and adds a correction to the codes. Every stage's image is kept
(``InversionResult.steps``). The networks are :class:`~hyperinverter.models.encoders.E2StyleEncoders`; released
checkpoints load through ``hyperinverter.convert.official``.

Released checkpoints always predict 18 rows; with a generator that takes fewer, only its first ``num_ws`` rows are
used, as the official code does. Models trained here predict exactly ``num_ws`` rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..models.encoders import E2StyleEncoders, encoder_preset
from ..models.stylegan2 import Generator
from .base import InversionResult, Inverter, Stopwatch
from .phase1 import encoder_fit, raise_if, resize_for_encoder
from .registry import register_method


def check_e2style_encoders(generator: Generator, encoders: E2StyleEncoders) -> list[str]:
    """What does not fit between E2Style's encoders and the generator (empty if it fits)."""
    c = encoders.config.encoder
    problems = []
    if c.in_channels != generator.config.img_channels:
        problems.append(f"the encoders read {c.in_channels}-channel images, the generator makes "
                        f"{generator.config.img_channels}")
    if c.w_dim != generator.w_dim:
        problems.append(f"the encoders predict {c.w_dim}-d codes, the generator takes {generator.w_dim}")
    if c.n_styles < generator.num_ws:
        problems.append(f"the encoders predict {c.n_styles} code rows, the generator takes {generator.num_ws}")
    return problems


@register_method
class E2Style(Inverter):
    """E2Style's stage encoders (``encoders``) around a frozen generator.

    ``encoder_resolution``: the side the images are resized to before the encoders (256 officially).
    Option ``stages``: how many stages to run (None: every trained one).
    """

    name = "e2style"
    label = "E2Style"
    initial_label = "stage 1"
    components = ("encoders",)
    options: ClassVar[Mapping[str, Any]] = {"stages": None}
    official_antialias = True  # the official data transforms reduce the photo with PIL (Resize(256))
    summary = ("a shallow IR-SE encoder with efficient heads predicting W+ codes, refined by feed-forward stages "
               "(E2Style, 'A Simple Baseline for StyleGAN Inversion')")

    def __init__(self, generator: Generator, *, encoders: E2StyleEncoders, encoder_resolution: int = 256,
                 task: str | None = None, encoder_antialias: bool | None = None) -> None:
        """``task``: the restoration task the encoders were trained for (``sr4``, ``inpainting``, ...; see
        ``hyperinverter.data.degradations``), None for inversion."""
        super().__init__(generator)
        raise_if(check_e2style_encoders(generator, encoders))
        if encoders.input_size != encoder_resolution:
            raise ValueError(f"the encoders were built for {encoders.input_size}-px inputs, not {encoder_resolution}")
        if task is not None:  # (sr32 on 32-px inputs failed inside torch, at the first training step)
            from ..data.degradations import check_task_fits

            check_task_fits(task, encoder_resolution)
        self.encoders = encoders
        self.encoder_resolution = encoder_resolution
        self.task = task
        self.encoder_antialias = encoder_antialias

    @classmethod
    def create(cls, generator: Generator, *, preset: str = "tiny", encoder_resolution: int | None = None,
               stages: int = 3) -> E2Style:
        """Untrained stage encoders from an ``encoder_preset`` sized for ``generator``, starting from its w_avg."""
        spec = encoder_preset(preset, **encoder_fit(generator, encoder_resolution))
        encoders = spec.build_e2style_encoders(stages)
        with torch.no_grad():
            encoders.latent_avg.copy_(generator.w_avg.expand_as(encoders.latent_avg))
        return cls(generator, encoders=encoders, encoder_resolution=spec.input_size)

    def settings(self) -> dict:
        return {"encoder_resolution": self.encoder_resolution, **({"task": self.task} if self.task else {}),
                **self.reading_settings()}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        self.check_stages(options["stages"])
        return options

    def check_stages(self, stages: int | None) -> int:
        trained = self.encoders.stages
        if stages is None:
            return trained
        if not (isinstance(stages, int) and not isinstance(stages, bool) and 1 <= stages <= trained):  # (True: 1)
            raise ValueError(f"stages must be between 1 and the {trained} trained stages, got {stages!r}")
        return stages

    def render(self, codes: torch.Tensor, noise: torch.Generator | None = None) -> torch.Tensor:
        """The generator's image of the first ``num_ws`` code rows (``noise``: draw its noise maps from it)."""
        return self.generator.synthesis(codes[:, : self.generator.num_ws], noise_generator=noise,
                                        noise_mode="const" if noise is None else "random")

    def forward(self, images: torch.Tensor, *, stopwatch: Stopwatch | None = None,
                stages: int | None = None, noise: torch.Generator | None = None) -> InversionResult:
        """``noise``: draw the generator's noise maps from it (training, as the official coach), instead of its
        fixed ones."""
        G, stages = self.generator, self.check_stages(stages)
        x = resize_for_encoder(images, self.encoder_resolution, antialias=self.encoder_antialias)
        codes = self.encoders.first_codes(x)
        image = self.render(codes, noise)
        steps = [image]
        if stopwatch is not None:
            stopwatch.lap("stage 1")
        for index in range(1, stages):
            codes = self.encoders.refine_codes(index, codes, x, image)
            image = self.render(codes, noise)
            steps.append(image)
            if stopwatch is not None:
                stopwatch.lap(f"stage {index + 1}")
        ws = codes[:, : G.num_ws]
        return InversionResult(ws=ws, image=image, initial_image=steps[0], steps=steps)
