"""E2Style's face-parsing network: a small U-Net (pytorch-semseg's ``unet``, ``feature_scale`` 4), not BiSeNet.

Filters 16/32/64/128/256, 19 classes, BatchNorm after every 3x3 conv, transposed convolutions up. The official
network builds its up-path blocks with ``is_batchnorm`` as CelebAMask-HQ's ``face_parsing`` U-Net does, whose copy
it is (pytorch-semseg's own up-path has no BatchNorm). The keys are the official file's (``parsing.pth``):
``conv{1..4}.conv{1,2}.{0: Conv, 1: BN}``, ``center.*``, ``up_concat{4..1}.up``, ``up_concat{i}.conv.conv{1,2}.{0,
1}``, ``final``. The weights are not installable here (its ``model_utils.py`` is not in the stored snapshot either);
the module loads the official file strictly when a user has it (:func:`load_parsing_unet`).

E2Style's multi-layer parsing loss compares the encoder levels: after ``maxpool1..4`` (16×128², 32×64², 64×32²,
128×16² at 256 px) and ``center`` (256×16²), on images in [-1, 1] fed directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FILTERS = (16, 32, 64, 128, 256)
NUM_CLASSES = 19


class UNetConv(nn.Module):
    """Two 3x3 convs, each with BN (``batch_norm``) and ReLU: keys ``conv1.{0,1}``, ``conv2.{0,1}``."""

    def __init__(self, in_channels: int, out_channels: int, *, batch_norm: bool) -> None:
        super().__init__()

        def block(cin: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, out_channels, 3, 1, 1)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            return nn.Sequential(*layers, nn.ReLU())

        self.conv1, self.conv2 = block(in_channels), block(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class UNetUp(nn.Module):
    """Transposed 2x2 up-sampling, concatenation with the skip (padded to match), then :class:`UNetConv`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = UNetConv(in_channels, out_channels, batch_norm=True)
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        offset = up.shape[-1] - skip.shape[-1]
        skip = F.pad(skip, 4 * [offset // 2])
        return self.conv(torch.cat([skip, up], dim=1))


class ParsingUNet(nn.Module):
    """``[B,3,256,256]`` in [-1,1] -> ``[B,19,256,256]`` class logits; :meth:`feature_levels` for the loss."""

    def __init__(self, in_channels: int = 3, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        f = FILTERS
        self.conv1 = UNetConv(in_channels, f[0], batch_norm=True)
        self.conv2 = UNetConv(f[0], f[1], batch_norm=True)
        self.conv3 = UNetConv(f[1], f[2], batch_norm=True)
        self.conv4 = UNetConv(f[2], f[3], batch_norm=True)
        self.center = UNetConv(f[3], f[4], batch_norm=True)
        self.up_concat4 = UNetUp(f[4], f[3])
        self.up_concat3 = UNetUp(f[3], f[2])
        self.up_concat2 = UNetUp(f[2], f[1])
        self.up_concat1 = UNetUp(f[1], f[0])
        self.final = nn.Conv2d(f[0], num_classes, 1)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the skips before each max-pool, the pooled levels and ``center``)."""
        skips, levels, h = [], [], x
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = conv(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
            levels.append(h)
        levels.append(self.center(h))
        return skips, levels

    def feature_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """maxpool1..4 and center: the five levels of E2Style's multi-layer parsing loss."""
        return self.encode(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, levels = self.encode(x)
        h = levels[-1]
        for up, skip in zip((self.up_concat4, self.up_concat3, self.up_concat2, self.up_concat1), reversed(skips)):
            h = up(skip, h)
        return self.final(h)


def load_parsing_unet(path: str | os.PathLike, device: torch.device | str = "cpu") -> ParsingUNet:
    """E2Style's ``parsing.pth`` (a state dict, optionally under ``state_dict``), loaded strictly and frozen."""
    from ..errors import CheckpointError
    from ..io.checkpoints import instantiate_strict, load_weights_only

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"E2Style's face-parsing weights not found at {path} (parsing.pth from the "
                                "wty-ustc/e2style repository); without them the parsing loss stays off")
    state = load_weights_only(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return instantiate_strict(ParsingUNet, state, source=str(path)).eval().requires_grad_(False).to(device)
