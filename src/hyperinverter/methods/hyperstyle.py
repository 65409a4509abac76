"""``hyperstyle`` (Alaluf et al., CVPR 2022): a W encoder, then a hypernetwork that refines the generator's weights
multiplicatively over several iterations; the codes never change.

``w`` from the W encoder (plus its average code) on every row, ``ŷ_0 = G(w)``; then for t = 1..T:
``Δ_t = Δ_{t-1} + H(cat(x, ŷ_{t-1}))`` and ``ŷ_t = G(w; θ·(1 + Δ_t))``. The result holds every ``ŷ_t``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io.images import content_of
from ..models.encoders import encoder_preset
from ..models.encoders.backbones import TrunkConfig
from ..models.hyperstyle import HyperStyleNet
from ..models.stylegan2 import Generator
from .base import InversionResult, Stopwatch
from .phase1 import Phase1, check_w_encoder, encoder_fit, encoder_input_shape, raise_if, resize_for_encoder
from .registry import register_method

MAX_ITERATIONS = 100


def pool_to(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``x`` at ``size`` (a side, or (height, width)): average pooling for an integer reduction (the official
    ``face_pool``), bilinear otherwise."""
    height, width = (size, size) if isinstance(size, int) else size
    if x.shape[-2:] == (height, width):
        return x
    if all(s > t and s % t == 0 for s, t in zip(x.shape[-2:], (height, width))):
        return F.adaptive_avg_pool2d(x, (height, width))
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)


def check_compatible(generator: Generator, hypernetwork: HyperStyleNet) -> list[str]:
    """Every way a HyperStyle hypernetwork does not fit ``generator``."""
    shapes = generator.synthesis.offsettable_parameters()
    layers = generator.synthesis.layers()
    problems = []
    for t in hypernetwork.config.targets:
        if t.index >= len(layers) or f"{layers[t.index].name}.weight" != t.name:
            problems.append(f"HyperStyle layer {t.index} is {t.name}, which this generator does not have there")
        elif tuple(shapes[t.name]) != tuple(t.shape):
            problems.append(f"HyperStyle predicts {t.name} as {list(t.shape)}, the generator's is "
                            f"{list(shapes[t.name])}")
    return problems


@register_method
class HyperStyle(Phase1):
    """The W encoder (``w_encoder``) and the hypernetwork (``hypernetwork``) around a frozen generator.

    ``encoder_resolution``: the side the W encoder reads; the hypernetwork reads its own ``input_size``.
    """

    name = "hyperstyle"
    label = "HyperStyle"
    initial_label = "W encoder"
    components = ("w_encoder", "hypernetwork")
    options = {"iterations": 5}  # the official test default for faces
    official_antialias = True  # its data transforms reduce the photo with PIL (the hypernetwork's x too)
    summary = "W code from a W encoder, then iterative multiplicative weight offsets θ·(1+Δ) (CVPR 2022)"

    def __init__(self, generator: Generator, *, w_encoder: nn.Module, hypernetwork: HyperStyleNet,
                 encoder_resolution: int = 256, content_rows: tuple[float, float] | None = None,
                 encoder_antialias: bool | None = None) -> None:
        """``encoder_antialias``: how the W encoder reads (default: as the official one; a HyperStyle trained on
        a HyperInverter Phase I reads as that Phase I). The hypernetwork reads as the official one."""
        super().__init__(generator, w_encoder=w_encoder, encoder_resolution=encoder_resolution,
                         content_rows=content_rows, encoder_antialias=encoder_antialias)
        raise_if(check_w_encoder(generator, w_encoder) + check_compatible(generator, hypernetwork))
        shape = encoder_input_shape(hypernetwork.config.input_size, self.content_rows)
        if hypernetwork.config.input_shape != shape:
            raise ValueError(f"the hypernetwork reads {hypernetwork.config.input_shape} inputs, the method feeds it "
                             f"{shape} (content_rows {self.content_rows})")
        self.hypernetwork = hypernetwork

    @classmethod
    def create(cls, generator: Generator, *, preset: str = "tiny", layers: tuple[int, ...] | None = None,
               separable: bool = False) -> HyperStyle:
        """An untrained W encoder and hypernetwork sized for ``generator`` (``preset`` "tiny" for tests and small
        models: one-unit trunk stages of widths 8..64, 64-px inputs; "ffhq" for the official sizes)."""
        spec = encoder_preset(preset, **encoder_fit(generator))
        official = preset in ("ffhq", "church")
        trunk = TrunkConfig("resnet", 34) if official else TrunkConfig("resnet", units=spec.trunk.units,
                                                                        widths=spec.trunk.widths)
        hypernetwork = HyperStyleNet.from_generator(
            generator, layers=layers, trunk=trunk, input_size=spec.input_size, separable=separable,
            hyper_inner=128 if official else 16, refine_inner=256 if official else 32)
        return cls(generator, w_encoder=spec.build_w_encoder(), hypernetwork=hypernetwork,
                   encoder_resolution=spec.input_size)

    def offset_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.hypernetwork.config.targets)

    def refine(self, x: torch.Tensor, ws: torch.Tensor, start: torch.Tensor, *, iterations: int,
               stopwatch: Stopwatch | None = None, detach: bool = False) -> InversionResult:
        """The iterations from the image ``start`` (``ŷ_0``). ``detach``: cut the graph between iterations (the
        official training scheme: each iteration's loss reaches only its own hypernetwork pass)."""
        size = self.hypernetwork.config.input_shape
        target = resize_for_encoder(x, self.hypernetwork.config.input_size, self.content_rows,
                                    antialias=self.official_antialias)
        assert target.shape[-2:] == size, (tuple(target.shape), size)
        delta, image, steps = None, start, []
        for t in range(1, iterations + 1):
            previous = image.detach() if detach else image
            # As the photo: cars' official inference crops each output to the car's rows before pooling it to 192x256.
            fed_back = pool_to(content_of(previous, self.content_rows), size)
            step = self.hypernetwork(torch.cat([target, fed_back], dim=1))
            if delta is not None and detach:
                delta = delta.detach()
            delta = step if delta is None else delta.plus(step)
            image = self.generator.synthesis(ws, weight_delta=delta, noise_mode="const")
            steps.append(image)
            if stopwatch is not None:
                stopwatch.lap(f"iteration {t}")
        return InversionResult(ws=ws, image=image, weight_delta=delta, initial_image=start, steps=steps)

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        iterations = options["iterations"]
        # (10**9 ran for good, keeping every iteration's image; the paper's curves flatten within 10)
        if not isinstance(iterations, int) or isinstance(iterations, bool) or not 1 <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations must be a whole number from 1 to {MAX_ITERATIONS}, got {iterations!r}")
        return options

    def forward(self, images: torch.Tensor, *, stopwatch: Stopwatch | None = None,
                iterations: int = 5) -> InversionResult:
        self.check_options({"iterations": iterations})
        with torch.no_grad():  # the W encoder is frozen in HyperStyle, in training too
            ws = self.encode_w(images)
            start = self.generator.synthesis(ws, noise_mode="const")
        if stopwatch is not None:
            stopwatch.lap("w_encoder")
        return self.refine(images, ws, start, iterations=iterations, stopwatch=stopwatch)
