"""E2Style's multi-layer losses: cosine distances between the features of the output and of the target at several
levels of a frozen network, summed with equal weights (official: ``Σ_l CosineEmbeddingLoss(f_l(ŷ), f_l(y).detach())``
over flattened features).

- identity: the IR-SE50 ArcFace network's stage 1-4 outputs and its un-normalised embedding, on the face crop
  pooled to 112 px; offline, SFace's four stage ends and its un-normalised embedding (:meth:`SFace.feature_levels`);
- face parsing: the encoder levels of E2Style's parsing U-Net (:class:`~hyperinverter.models.parsing.ParsingUNet`),
  whose weights cannot be installed here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import full_precision
from .identity import FFHQ_CROP, CropBox, face_crop

FeatureLevels = Callable[[torch.Tensor], list[torch.Tensor]]


def cosine_distance_sum(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """``Σ_l (1 − cos(flatten a_l, flatten b_l))`` per sample ``[B]``."""
    assert len(a) == len(b), f"{len(a)} vs {len(b)} levels"
    return sum(1 - F.cosine_similarity(x.flatten(1), y.flatten(1), dim=1) for x, y in zip(a, b))


class MultiLayerLoss(nn.Module):
    """``(output, target) [B,C,H,W]`` in [-1,1] -> ``[B]``: the cosine distances of ``levels(prepare(image))``.

    ``network``: the frozen feature network (kept in eval mode); ``levels``: its feature levels of a prepared
    image; ``prepare``: the crop and resize the network expects.
    """

    def __init__(self, network: nn.Module, levels: FeatureLevels, prepare: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.levels, self.prepare = levels, prepare

    def train(self, mode: bool = True) -> MultiLayerLoss:
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert output.shape == target.shape, f"{tuple(output.shape)} vs {tuple(target.shape)}"
        with full_precision(output.device):  # (in fp32 under autocast, as every loss: see ReconstructionLoss)
            output, target = output.float(), target.float()
            with torch.no_grad():
                reference = self.levels(self.prepare(target))
            return cosine_distance_sum(self.levels(self.prepare(output)), reference)


def arcface_levels(network) -> FeatureLevels:
    """IR-SE50 ArcFace: the ends of its four stages and the un-normalised ``output_layer`` embedding."""
    ends = {end - 1 for end in itertools.accumulate(network.units)}  # body indices ending stages 1-4

    def levels(x: torch.Tensor) -> list[torch.Tensor]:
        h = network.stem(x)
        out = []
        for index, unit in enumerate(network.body):
            h = unit(h)
            if index in ends:
                out.append(h)
        return [*out, network.output_layer(h)]

    return levels


def multilayer_identity_loss(model: str = "sface", *, crop: CropBox | None = FFHQ_CROP,
                             device: torch.device | str = "cpu", path: str | None = None) -> MultiLayerLoss:
    """E2Style's multi-layer identity loss with ``model`` ``"arcface"`` (the official ``model_ir_se50.pth``) or
    ``"sface"`` (offline), on the face box ``crop`` (None: the whole image) resized to 112 px."""
    from .identity import load_identity_embedder

    embedder = load_identity_embedder(model, device, path=path)
    if model == "arcface":
        network = embedder.network
        levels = arcface_levels(network)
    else:
        network = embedder
        levels = network.feature_levels
    return MultiLayerLoss(network, levels, lambda x: face_crop(x, crop)).to(device)
