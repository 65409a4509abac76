"""HyperInverter (Dat et al., CVPR 2022): a W encoder, then hypernetworks that predict residual weights.

Phase I: ``w = E1(x) + w_avg`` broadcast to every layer; ``x_w = G(w)``.
Phase II: ``Δθ = H(E2(x_w), E2(x))``; the result is ``G(w; θ + Δθ)``. Only encoders run at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .stylegan2 import Generator
from .weight_delta import WeightDelta


@dataclass
class HyperInverterOutput:
    """``ws: [B,num_ws,w_dim]``; ``w_image``: Phase I image; ``image``: final image (both ``[B,C,R,R]``)."""

    ws: torch.Tensor
    w_image: torch.Tensor
    weight_delta: WeightDelta | None
    image: torch.Tensor


def resize_for_encoder(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``), as the official code does before both encoders.

    The result is channels-last: the encoders' convolutions run measurably faster in that layout.
    """
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def check_compatible(generator: Generator, w_encoder: nn.Module, feature_encoder: nn.Module | None = None,
                     hypernetwork: nn.Module | None = None, encoder_resolution: int | None = None) -> None:
    """Raise ``ValueError`` naming every way the parts of a model do not fit together.

    Parts trained for another generator (other resolution, widths, W size or channels) would otherwise fail
    deep inside a forward pass, or worse, run with shapes that happen to broadcast.
    """
    problems = []

    def check(what: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{what} is {got}, the generator needs {want}")

    G = generator
    config = getattr(w_encoder, "config", None)
    if config is not None:
        check("the W encoder's input channels", config.in_channels, G.config.img_channels)
        check("the W encoder's w_dim", config.w_dim, G.w_dim)
    config = getattr(feature_encoder, "config", None)
    if config is not None:
        check("E2's input channels", config.in_channels, G.config.img_channels)
        if encoder_resolution is not None and config.input_size != encoder_resolution:
            problems.append(f"E2 was built for {config.input_size}-px inputs, but the encoders are fed "
                            f"{encoder_resolution}-px images")
    if hypernetwork is not None:
        shapes = G.synthesis.offsettable_parameters()
        for t in hypernetwork.targets:
            if t.name not in shapes:
                problems.append(f"the hypernetwork predicts {t.name}, which the generator does not have")
            elif tuple(t.shape) != tuple(shapes[t.name]):
                problems.append(f"the hypernetwork predicts {t.name} as {list(t.shape)}, the generator's is "
                                f"{list(shapes[t.name])}")
        if config is not None:
            check("E2's feature maps", config.n_styles >= hypernetwork.num_features, True)
            check("E2's feature channels", config.feature_channels, hypernetwork.config.feature_channels)
            check("E2's feature size", config.feature_size, hypernetwork.config.feature_size)
    if problems:
        raise ValueError("the model's parts do not fit together:\n  " + "\n  ".join(problems))


class HyperInverter(nn.Module):
    """E1 (``w_encoder``), E2 (``feature_encoder``) and one hypernetwork per target layer around a frozen G.

    ``w_encoder``: ``[B,C,S,S] -> [B,w_dim]`` offset from ``w_avg``. ``feature_encoder``:
    ``[B,C,S,S] -> [B,n,C_f,s,s]``. ``hypernetwork``: ``(features of x_w, features of x) -> WeightDelta``.
    The generator is a frozen submodule; it is saved and loaded as its own component.
    """

    def __init__(
        self,
        *,
        generator: Generator,
        w_encoder: nn.Module,
        feature_encoder: nn.Module | None = None,
        hypernetwork: nn.Module | None = None,
        encoder_resolution: int = 256,
    ) -> None:
        super().__init__()
        if (feature_encoder is None) != (hypernetwork is None):
            raise ValueError("Phase II needs both a feature encoder and a hypernetwork (or neither, for Phase I only)")
        check_compatible(generator, w_encoder, feature_encoder, hypernetwork, encoder_resolution)
        self.generator = generator.eval().requires_grad_(False)
        self.w_encoder = w_encoder
        self.feature_encoder = feature_encoder
        self.hypernetwork = hypernetwork
        self.encoder_resolution = encoder_resolution

    @property
    def has_phase2(self) -> bool:
        return self.hypernetwork is not None

    def train(self, mode: bool = True) -> HyperInverter:
        super().train(mode)
        self.generator.eval()  # G is frozen: never in training mode
        return self

    def encode_w(self, x: torch.Tensor) -> torch.Tensor:
        """Phase I: images ``[B,C,H,W]`` in [-1,1] -> ``ws [B,num_ws,w_dim]`` (one w on every layer)."""
        G = self.generator
        assert x.ndim == 4 and x.shape[1] == G.config.img_channels, (
            f"expected [B,{G.config.img_channels},H,W] images, got {tuple(x.shape)}"
        )
        w = self.w_encoder(resize_for_encoder(x, self.encoder_resolution)) + G.w_avg
        assert w.shape == (x.shape[0], G.w_dim), f"W encoder returned {tuple(w.shape)}"
        return w[:, None].repeat(1, G.num_ws, 1)

    def predict_delta(self, x: torch.Tensor, w_image: torch.Tensor) -> WeightDelta:
        """Phase II: Δθ from the input and its Phase I image; E2 runs once on both (shared weights)."""
        assert self.feature_encoder is not None and self.hypernetwork is not None, "this model has no Phase II"
        size = self.encoder_resolution
        w_image, x = resize_for_encoder(w_image, size), resize_for_encoder(x, size)
        if self.feature_encoder.training:
            # Two calls, as the official trainer does: BatchNorm statistics of the inputs and of the Phase I
            # images stay separate, and every sample of the batch counts (no per-sample chunks).
            return self.hypernetwork(self.feature_encoder(w_image), self.feature_encoder(x))
        # Inference: one E2 call per chunk on both images of each sample (shared weights, same result). On CPUs
        # one sample per call is fastest at full size: larger batches push E2's full-width 64x64 maps out of
        # cache (benchmarks/results/hyperinverter-ffhq1024-cpu.md); small encoders run the whole batch.
        chunk = 1 if x.device.type == "cpu" and size >= 256 else x.shape[0]
        image_features, input_features = [], []
        for i in range(0, x.shape[0], chunk):
            f_w, f_x = self.feature_encoder(torch.cat([w_image[i : i + chunk], x[i : i + chunk]])).chunk(2)
            image_features.append(f_w)
            input_features.append(f_x)
        return self.hypernetwork(torch.cat(image_features), torch.cat(input_features))

    def forward(self, x: torch.Tensor, *, phase2: bool = True) -> HyperInverterOutput:
        ws = self.encode_w(x)
        # No no_grad here: Phase I trains E1 through this image. G is frozen, so when E1 is frozen too
        # (Phase II) autograd records nothing for it anyway.
        w_image = self.generator.synthesis(ws, noise_mode="const")
        if not (phase2 and self.has_phase2):
            return HyperInverterOutput(ws=ws, w_image=w_image, weight_delta=None, image=w_image)
        delta = self.predict_delta(x, w_image)
        image = self.generator.synthesis(ws, weight_delta=delta, noise_mode="const")
        return HyperInverterOutput(ws=ws, w_image=w_image, weight_delta=delta, image=image)
