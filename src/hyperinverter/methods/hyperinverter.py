"""``hyperinverter`` (Dat et al., CVPR 2022): a W encoder, then hypernetworks that predict residual weights.

Phase I: ``w = E1(x) + w_avg`` on every layer; ``x_w = G(w)`` (see :mod:`.phase1`).
Phase II: ``Δθ = H(F(x_w), F(x))``; the result is ``G(w; θ + Δθ)``. Only encoders run at inference.
F is the feature encoder (:class:`hyperinverter.models.encoders.FeatureEncoder`, E2 in the paper), H the
per-layer hypernetworks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.encoders import encoder_preset
from ..models.hypernetwork import HyperNetwork, TargetSet
from ..models.stylegan2 import Generator
from ..models.weight_delta import WeightDelta
from .base import InversionResult, Stopwatch
from .phase1 import Phase1, check_w_encoder, encoder_fit, encoder_input_shape, raise_if, resize_for_encoder
from .registry import register_method


def feature_encoder_chunk(device: torch.device, resolution: int, batch: int) -> int:
    """Samples per feature-encoder call at inference (each call takes both images of each of its samples).

    On CPUs at full size, 4 samples (8 images): per image 0.69-0.74 s against 0.75-0.79 for one sample per call
    (alternating A/B at batch 4 in one process), and it bounds the 256-px maps a call holds. Elsewhere the batch.
    """
    return min(batch, 4) if device.type == "cpu" and resolution >= 256 else batch


def _size(shape: tuple[int, int]) -> str:
    return f"{shape[1]}-px" if shape[0] == shape[1] else f"{shape[0]}x{shape[1]}"


def check_compatible(generator: Generator, w_encoder: nn.Module, feature_encoder: nn.Module,
                     hypernetwork: nn.Module, encoder_resolution: int,
                     content_rows: tuple[float, float] | None = None) -> list[str]:
    """Every way the parts of a HyperInverter do not fit together (empty if they fit).

    Parts trained for another generator (other resolution, widths, W size or channels) would otherwise fail
    deep inside a forward pass, or worse, run with shapes that happen to broadcast.
    """
    problems = check_w_encoder(generator, w_encoder)
    G = generator
    config = getattr(feature_encoder, "config", None)
    if config is not None:
        if config.in_channels != G.config.img_channels:
            problems.append(f"the feature encoder's input channels are {config.in_channels}, the generator makes "
                            f"{G.config.img_channels}")
        shape = encoder_input_shape(encoder_resolution, content_rows)
        if config.input_shape != shape:
            problems.append(f"the feature encoder was built for {_size(config.input_shape)} inputs, but the encoders "
                            f"are fed {_size(shape)} images")
    shapes = G.synthesis.offsettable_parameters()
    for t in hypernetwork.targets:
        if t.name not in shapes:
            problems.append(f"the hypernetwork predicts {t.name}, which the generator does not have")
        elif tuple(t.shape) != tuple(shapes[t.name]):
            problems.append(f"the hypernetwork predicts {t.name} as {list(t.shape)}, the generator's is "
                            f"{list(shapes[t.name])}")
    if config is not None:
        if config.n_styles < hypernetwork.num_features:
            problems.append(f"the feature encoder makes {config.n_styles} feature maps, the hypernetwork reads "
                            f"{hypernetwork.num_features}")
        for field in ("feature_channels", "feature_size"):
            if getattr(config, field) != getattr(hypernetwork.config, field):
                problems.append(f"the feature encoder's {field} is {getattr(config, field)}, the hypernetwork's "
                                f"{getattr(hypernetwork.config, field)}")
    return problems


@register_method
class HyperInverter(Phase1):
    """E1 (``w_encoder``), the feature encoder (``feature_encoder``) and one hypernetwork per target layer around a frozen G.

    ``feature_encoder``: ``[B,C,S,S] -> [B,n,C_f,s,s]``. ``hypernetwork``: ``(features of x_w, features of x)
    -> WeightDelta`` (additive). ``encoder_resolution``: the side S both encoders read. ``content_rows``: for a
    domain that fills only some rows of the generator's square (cars), both encoders read those rows only.
    """

    name = "hyperinverter"
    label = "HyperInverter"
    initial_label = "Phase I (W)"
    components = ("w_encoder", "feature_encoder", "hypernetwork")
    summary = "W code from E1, then residual generator weights from per-layer hypernetworks (CVPR 2022)"

    def __init__(self, generator: Generator, *, w_encoder: nn.Module, feature_encoder: nn.Module,
                 hypernetwork: nn.Module, encoder_resolution: int = 256,
                 content_rows: tuple[float, float] | None = None, encoder_antialias: bool | None = None) -> None:
        super().__init__(generator, w_encoder=w_encoder, encoder_resolution=encoder_resolution,
                         content_rows=content_rows, encoder_antialias=encoder_antialias)
        raise_if(check_compatible(generator, w_encoder, feature_encoder, hypernetwork, encoder_resolution,
                                  self.content_rows))
        self.feature_encoder = feature_encoder
        self.hypernetwork = hypernetwork

    @classmethod
    def create(cls, generator: Generator, *, preset: str = "tiny", encoder_resolution: int | None = None,
               targets: TargetSet = "conv_without_bias", hidden_dim: int = 8,
               inner_channels: int = 8) -> HyperInverter:
        """Untrained encoders from an ``encoder_preset`` and hypernetworks, sized for ``generator``."""
        spec = encoder_preset(preset, **encoder_fit(generator, encoder_resolution))
        hypernetwork = HyperNetwork.from_generator(generator, targets=targets, feature_channels=spec.feature_channels,
                                                   feature_size=spec.feature_size, hidden_dim=hidden_dim,
                                                   inner_channels=inner_channels)
        return cls(generator, w_encoder=spec.build_w_encoder(), feature_encoder=spec.build_feature_encoder(),
                   hypernetwork=hypernetwork, encoder_resolution=spec.input_size)

    def offset_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.hypernetwork.targets)

    def predict_delta(self, x: torch.Tensor, w_image: torch.Tensor, stopwatch: Stopwatch | None = None
                      ) -> WeightDelta:
        """Phase II: Δθ from the input and its Phase I image; the feature encoder runs on both (shared weights)."""
        size, rows = self.encoder_resolution, self.content_rows
        w_image, x = resize_for_encoder(w_image, size, rows), resize_for_encoder(x, size, rows)
        if self.feature_encoder.training:
            # Two calls, in the official trainer's order (the input first): BatchNorm statistics of the inputs and
            # of the Phase I images stay separate, and every sample of the batch counts (no per-sample chunks).
            input_features = self.feature_encoder(x)
            return self.hypernetwork(self.feature_encoder(w_image), input_features)
        # Inference: one call per chunk of samples on both images of each (shared weights, the same result).
        chunk = feature_encoder_chunk(x.device, size, x.shape[0])
        image_features, input_features = [], []
        for i in range(0, x.shape[0], chunk):
            f_w, f_x = self.feature_encoder(torch.cat([w_image[i : i + chunk], x[i : i + chunk]])).chunk(2)
            image_features.append(f_w)
            input_features.append(f_x)
        if stopwatch is not None:
            stopwatch.lap("feature_encoder")
        delta = self.hypernetwork(torch.cat(image_features), torch.cat(input_features))
        if stopwatch is not None:
            stopwatch.lap("hypernetworks")
        return delta

    def forward(self, images: torch.Tensor, *, stopwatch: Stopwatch | None = None) -> InversionResult:
        phase1 = super().forward(images, stopwatch=stopwatch)
        delta = self.predict_delta(images, phase1.image, stopwatch)
        image = self.generator.synthesis(phase1.ws, weight_delta=delta, noise_mode="const")
        if stopwatch is not None:
            stopwatch.lap("synthesis")
        return InversionResult(ws=phase1.ws, image=image, weight_delta=delta, initial_image=phase1.image)
