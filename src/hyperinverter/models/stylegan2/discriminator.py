"""StyleGAN2 discriminator, ``resnet`` architecture, NVIDIA parameter names (``b{R}.conv0``, ``b4.fc``)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...config_base import SerializableConfig
from ...ops.filters import filter_taps, setup_filter
from .layers import Conv2dLayer, FullyConnectedLayer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscriminatorConfig(SerializableConfig):
    resolution: int
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    mbstd_group_size: int | None = 4  # None: the whole batch is one group (NVIDIA's meaning)
    mbstd_num_channels: int = 1
    resample_filter: tuple[float, ...] = (1, 3, 3, 1)

    def __post_init__(self) -> None:
        res = self.resolution
        if not (isinstance(res, int) and 8 <= res <= 2048 and res & (res - 1) == 0):
            raise ValueError(f"resolution must be a power of two in [8, 2048], got {res!r}")
        object.__setattr__(self, "resample_filter", filter_taps(self.resample_filter))
        if self.conv_clamp is not None and not (math.isfinite(self.conv_clamp) and self.conv_clamp > 0):
            raise ValueError(f"conv_clamp must be a positive number or null, got {self.conv_clamp}")  # (-1 flipped)
        if self.mbstd_group_size is not None and not self.mbstd_group_size >= 1:
            raise ValueError(f"mbstd_group_size must be >= 1 or null (the whole batch), got {self.mbstd_group_size}")

    @property
    def block_resolutions(self) -> list[int]:
        """The resolutions of the blocks, from the input down to 8 (the epilogue works at 4)."""
        return [2**i for i in range(int(math.log2(self.resolution)), 2, -1)]

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)


class DiscriminatorBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        *,
        img_channels: int,
        conv_clamp: float | None,
        resample_filter: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        common = dict(conv_clamp=conv_clamp, resample_filter=resample_filter)
        self.fromrgb = (
            Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", **common) if in_channels == 0 else None
        )
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, **common)
        # (NVIDIA's skip has no conv_clamp: clamped, an ADA discriminator's skip was cut at ±181)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(img)
        y = self.skip(x, gain=float(np.sqrt(0.5)))
        x = self.conv0(x)
        x = self.conv1(x, gain=float(np.sqrt(0.5)))
        return y + x


def minibatch_group(batch: int, group_size: int | None) -> int:
    """The group size a batch is split into: ``group_size`` (None: the whole batch), at most the batch; a batch that
    does not divide into such groups takes the largest group size that fits (NVIDIA's code fails)."""
    g = batch if group_size is None else min(group_size, batch)
    while batch % g:
        g -= 1
    return g


def minibatch_stddev(x: torch.Tensor, group_size: int | None, num_channels: int = 1) -> torch.Tensor:
    """Append the per-group standard deviation as extra feature maps (NVIDIA ``MinibatchStdLayer``; a group size of
    None makes the whole batch one group, as there)."""
    n, c, h, w = x.shape
    g = minibatch_group(n, group_size)
    f = num_channels
    y = x.reshape(g, -1, f, c // f, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, *, mbstd_group_size: int | None, mbstd_num_channels: int,
                 conv_clamp: float | None, resample_filter: tuple[float, ...]) -> None:
        super().__init__()
        self.mbstd_group_size = mbstd_group_size
        self.mbstd_num_channels = mbstd_num_channels
        self._shrunk_batches: set[int] = set()  # (said once per batch size)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp, resample_filter=resample_filter)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def _group_for(self, batch: int) -> int:
        """The minibatch group of ``batch``; said once per batch size where it shrinks (a batch that does not divide
        into groups is judged on statistics D never saw)."""
        used = minibatch_group(batch, self.mbstd_group_size)
        if used < min(batch, self.mbstd_group_size or batch) and batch not in self._shrunk_batches:
            self._shrunk_batches.add(batch)
            logger.warning("minibatch standard deviation: a batch of %d does not divide into groups of %s; groups of "
                           "%d are used%s (give the discriminator batches that divide)", batch, self.mbstd_group_size,
                           used, ", whose deviation is constant" if used == 1 else "")
        return used

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd_num_channels > 0:
            x = minibatch_stddev(x, self._group_for(x.shape[0]), self.mbstd_num_channels)
        x = self.conv(x)
        return self.out(self.fc(x.flatten(1)))


class Discriminator(nn.Module):
    """Image ``[B, C, R, R]`` in [-1, 1] -> realness logit ``[B, 1]``. Built from its config, which it keeps."""

    config_class = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = c = config
        for res in c.block_resolutions:
            block = DiscriminatorBlock(
                c.channels(res) if res < c.resolution else 0, c.channels(res), c.channels(res // 2),
                img_channels=c.img_channels, conv_clamp=c.conv_clamp, resample_filter=c.resample_filter,
            )
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(
            c.channels(4), mbstd_group_size=c.mbstd_group_size, mbstd_num_channels=c.mbstd_num_channels,
            conv_clamp=c.conv_clamp, resample_filter=c.resample_filter,
        )

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The output of every resolution block, ``[B, C_r, r, r]`` for r = R/2 ... 4 (for perceptual losses)."""
        self._check(img)
        x, feats = None, []
        for res in self.config.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
            feats.append(x)
        return feats

    def _check(self, img: torch.Tensor) -> None:
        c, r = self.config.img_channels, self.config.resolution
        assert img.ndim == 4 and img.shape[1:] == (c, r, r), f"expected [B,{c},{r},{r}], got {tuple(img.shape)}"

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.b4(self.features(img)[-1])
