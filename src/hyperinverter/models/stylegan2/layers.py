"""StyleGAN2 building blocks in pure PyTorch, with NVIDIA's parameter names.

Parameters are stored raw (``randn`` scale) and the equalised-learning-rate gains are applied at run
time, exactly as in both official implementations, so checkpoints map 1:1.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...ops.filters import setup_filter, upfirdn2d

PerSampleKernel = Literal["grouped", "loop"]
LRELU_GAIN = math.sqrt(2.0)


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    activation: Literal["linear", "lrelu"] = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Bias along dim 1, activation, gain, clamp: the order of NVIDIA's ``bias_act``."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """Equalised-lr linear layer (NVIDIA ``FullyConnectedLayer`` / rosinality ``EqualLinear``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        activation: Literal["linear", "lrelu"] = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [B, in]``. ``weight``, if given, is a per-sample weight ``[B, out, in]``."""
        bias = self.bias * self.bias_gain if self.bias is not None else None
        if weight is None:
            x = F.linear(x, self.weight * self.weight_gain)
        else:
            x = torch.bmm(weight * self.weight_gain, x.unsqueeze(2)).squeeze(2)
        if self.activation == "lrelu":
            return bias_act(x, bias, activation="lrelu", gain=LRELU_GAIN)
        return x + bias if bias is not None else x

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


def _grouped_conv(
    x: torch.Tensor, w: torch.Tensor, *, up: int, padding: int, kernel: PerSampleKernel
) -> torch.Tensor:
    """Convolve sample b of ``x: [B,I,H,W]`` with its own weight ``w[b]: [O,I,k,k]``."""
    b, i = x.shape[:2]
    o, k = w.shape[1], w.shape[-1]
    if kernel == "loop":
        if up > 1:
            outs = [F.conv_transpose2d(x[j : j + 1], w[j].transpose(0, 1), stride=up) for j in range(b)]
        else:
            outs = [F.conv2d(x[j : j + 1], w[j], padding=padding) for j in range(b)]
        return torch.cat(outs)
    x = x.reshape(1, b * i, *x.shape[2:])
    if up > 1:
        w = w.transpose(1, 2).reshape(b * i, o, k, k)
        x = F.conv_transpose2d(x, w, stride=up, groups=b)
    else:
        x = F.conv2d(x, w.reshape(b * o, i, k, k), padding=padding, groups=b)
    return x.reshape(b, o, *x.shape[2:])


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: torch.Tensor | None = None,
    per_sample_kernel: PerSampleKernel = "grouped",
) -> torch.Tensor:
    """StyleGAN2 modulated convolution.

    ``x: [B,I,H,W]``; ``styles: [B,I]``; ``weight: [O,I,k,k]`` shared by the batch, or ``[B,O,I,k,k]``
    per sample. Shared weights take the non-fused path (scale activations, one ordinary conv, scale
    outputs), which is mathematically identical and much faster than grouped convolution on CPUs.
    ``up=2`` is a transposed stride-2 conv followed by the FIR filter, as in both official codes.
    """
    batch, in_channels = x.shape[:2]
    per_sample = weight.ndim == 5
    out_channels, _, kh, kw = weight.shape[-4:]
    assert styles.shape == (batch, in_channels), f"styles {tuple(styles.shape)} != {(batch, in_channels)}"
    assert weight.shape[-3] == in_channels, f"weight {tuple(weight.shape)} does not take {in_channels} channels"
    if per_sample:
        assert weight.shape[0] == batch, f"per-sample weight batch {weight.shape[0]} != input batch {batch}"
    padding = kw // 2

    dcoefs = None
    if demodulate:
        if per_sample:
            w_sq = weight.square().sum(dim=[3, 4])  # [B,O,I]
            dcoefs = (torch.bmm(w_sq, styles.square().unsqueeze(2)).squeeze(2) + 1e-8).rsqrt()
        else:
            w_sq = weight.square().sum(dim=[2, 3])  # [O,I]
            dcoefs = (styles.square() @ w_sq.t() + 1e-8).rsqrt()  # [B,O]

    x = x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1)
    weight = weight.to(x.dtype)
    if per_sample:
        x = _grouped_conv(x, weight, up=up, padding=padding, kernel=per_sample_kernel)
    elif up > 1:
        x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=up)
    else:
        x = F.conv2d(x, weight, padding=padding)

    if up > 1:
        # Transposed conv gives 2H+k-2; the FIR filter brings it back to 2H, centred.
        assert resample_filter is not None
        fw = resample_filter.shape[-1]
        p = (fw - up) - (kw - 1)
        pad0, pad1 = (p + 1) // 2 + up - 1, p // 2 + up - 1
        x = upfirdn2d(x, resample_filter, padding=(pad0, pad1, pad0, pad1), gain=up * up)

    if dcoefs is not None:
        x = x * dcoefs.to(x.dtype).reshape(batch, out_channels, 1, 1)
    return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + lrelu (NVIDIA ``SynthesisLayer``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        conv_clamp: float | None = None,
        resample_filter: tuple[float, ...] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        *,
        noise_mode: str = "const",
        weight: torch.Tensor | None = None,
        affine_weight: torch.Tensor | None = None,
        per_sample_kernel: PerSampleKernel = "grouped",
    ) -> torch.Tensor:
        styles = self.affine(w, affine_weight)
        x = modulated_conv2d(
            x,
            self.weight if weight is None else weight,
            styles,
            up=self.up,
            resample_filter=self.resample_filter,
            per_sample_kernel=per_sample_kernel,
        )
        assert x.shape[2] == self.resolution, f"{x.shape[2]} != {self.resolution}"
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
            elif noise_mode == "const":
                noise = self.noise_const
            else:
                raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
            x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        clamp = self.conv_clamp * LRELU_GAIN if self.conv_clamp is not None else None
        return bias_act(x, self.bias, activation="lrelu", gain=LRELU_GAIN, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation (NVIDIA ``ToRGBLayer``)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, w_dim: int, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        *,
        weight: torch.Tensor | None = None,
        affine_weight: torch.Tensor | None = None,
        per_sample_kernel: PerSampleKernel = "grouped",
    ) -> torch.Tensor:
        styles = self.affine(w, affine_weight) * self.weight_gain
        x = modulated_conv2d(
            x,
            self.weight if weight is None else weight,
            styles,
            demodulate=False,
            per_sample_kernel=per_sample_kernel,
        )
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """Equalised-lr conv with optional FIR down-sampling (NVIDIA ``Conv2dLayer``, used by D)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: Literal["linear", "lrelu"] = "linear",
        down: int = 1,
        conv_clamp: float | None = None,
        resample_filter: tuple[float, ...] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size**2)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * float(self.weight_gain)
        if self.down > 1:
            # Blur then strided conv; padding keeps the result centred (H -> H/2).
            fw = self.resample_filter.shape[-1]
            kw = w.shape[-1]
            p = (fw - self.down) + (kw - 1)
            x = upfirdn2d(x, self.resample_filter, padding=((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
            x = F.conv2d(x, w.to(x.dtype), stride=self.down)
        else:
            x = F.conv2d(x, w.to(x.dtype), padding=self.padding)
        act_gain = self.act_gain * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, activation=self.activation, gain=act_gain, clamp=clamp)
