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
from ...precision import full_precision

ConvKernel = Literal["batched", "grouped", "loop"]
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

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [B, in]``. ``weight`` / ``bias``, if given, are per-sample ``[B, out, in]`` / ``[B, out]``."""
        bias = self.bias if bias is None else bias
        bias = bias * self.bias_gain if bias is not None else None
        if weight is None:
            x = F.linear(x, self.weight * self.weight_gain)
        else:
            x = torch.bmm(weight * self.weight_gain, x.unsqueeze(2)).squeeze(2)
        if self.activation == "lrelu":
            if bias is not None and bias.ndim == 2:  # per sample
                x, bias = x + bias, None
            return bias_act(x, bias, activation="lrelu", gain=LRELU_GAIN)
        return x + bias if bias is not None else x

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


def _inplace_ok(x: torch.Tensor) -> bool:
    """In-place epilogues save whole passes over large activations, but only when autograd is not recording."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def _blur_after_transpose(x: torch.Tensor, f: torch.Tensor, *, up: int, kernel_size: int,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """The FIR filter that follows a stride-``up`` transposed conv (2H+k-2 -> 2H), with an optional bias ``[C]``.

    A depthwise conv with symmetric padding: on CPUs it is several times faster in channels-last layout.
    """
    fw = f.shape[-1]
    p = (fw - up) - (kernel_size - 1)
    pad0, pad1 = (p + 1) // 2 + up - 1, p // 2 + up - 1
    c = x.shape[1]
    taps = (f * (up * up)).flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, fw, fw)
    if pad0 != pad1:
        return upfirdn2d(x, f, padding=(pad0, pad1, pad0, pad1), gain=up * up) + (
            0 if bias is None else bias.reshape(1, -1, 1, 1))
    return F.conv2d(x, taps, bias=bias, padding=pad0, groups=c)


def _conv(x: torch.Tensor, w: torch.Tensor, *, up: int, bias: torch.Tensor | None, groups: int = 1,
          f: torch.Tensor | None = None) -> torch.Tensor:
    """One convolution ``w: [O·g, I, k, k]``: plain, or transposed stride-``up`` followed by the FIR filter."""
    k = w.shape[-1]
    if up == 1:
        return F.conv2d(x, w, bias=bias, padding=k // 2, groups=groups)
    o = w.shape[0] // groups
    wt = w.reshape(groups, o, -1, k, k).transpose(1, 2).reshape(-1, o, k, k)  # [g·I, O, k, k]
    y = F.conv_transpose2d(x, wt, stride=up, groups=groups)
    return _blur_after_transpose(y, f, up=up, kernel_size=k, bias=bias)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    gain: float = 1.0,
    kernel: ConvKernel = "batched",
) -> torch.Tensor:
    """StyleGAN2 modulated convolution: ``gain · (conv(x, modulate(weight, styles)) + bias)``.

    ``x: [B,I,H,W]``; ``styles: [B,I]``; ``weight: [O,I,k,k]`` shared by the batch, or ``[B,O,I,k,k]`` per
    sample; ``bias: [O]`` shared, or ``[B,O]`` per sample. ``up=2`` is a transposed stride-2 conv followed by the FIR filter, as in both official codes.
    Kernels (same result, different speed; see benchmarks/bench_kernels.py):

    - ``"batched"`` (shared weights only): scale activations by the styles, one ordinary conv over the batch,
      scale the outputs by the demodulation coefficients (NVIDIA's non-fused path);
    - ``"grouped"``: modulate a weight per sample and run one grouped conv (rosinality's fused path);
    - ``"loop"``: modulate a weight per sample and run one conv per sample; no passes over the activations
      for modulation at all, so it wins on CPUs at high resolution and for single images.
    """
    batch, in_channels = x.shape[:2]
    per_sample = weight.ndim == 5
    out_channels, _, k, _ = weight.shape[-4:]
    assert styles.shape == (batch, in_channels), f"styles {tuple(styles.shape)} != {(batch, in_channels)}"
    assert weight.shape[-3] == in_channels, f"weight {tuple(weight.shape)} does not take {in_channels} channels"
    if per_sample:
        assert weight.shape[0] == batch, f"per-sample weight batch {weight.shape[0]} != input batch {batch}"
        assert kernel != "batched", "per-sample weights need the 'grouped' or 'loop' kernel"
    per_sample_bias = bias is not None and bias.ndim == 2
    if per_sample_bias:
        assert bias.shape == (batch, out_channels), f"per-sample bias {tuple(bias.shape)} != {(batch, out_channels)}"
    bias = None if bias is None else (bias * gain).to(x.dtype)

    if kernel == "batched":
        y = _conv(x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1), weight.to(x.dtype), up=up, bias=None,
                  f=resample_filter)
        with full_precision(x.device):  # demodulation in fp32 under reduced precision (see hyperinverter.precision)
            scale = torch.full((batch, out_channels), gain, dtype=torch.float32, device=x.device)
            if demodulate:
                w_sq = weight.float().square().sum(dim=[2, 3])  # [O,I]
                scale = scale * (styles.float().square() @ w_sq.t() + 1e-8).rsqrt()
        scale = scale.to(y.dtype).reshape(batch, out_channels, 1, 1)
        if bias is None:
            return y.mul_(scale) if _inplace_ok(y) else y * scale
        return torch.addcmul(bias.reshape(-1 if per_sample_bias else 1, out_channels, 1, 1), y, scale)

    # Fused: fold styles, demodulation and gain into one weight per sample (in fp32: elementwise, no autocast).
    w = (weight if per_sample else weight.unsqueeze(0)).float() * styles.float().reshape(batch, 1, in_channels, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    w = (w * gain).to(x.dtype)
    if kernel == "grouped" and batch > 1:
        grouped_bias = None if bias is None else bias.reshape(-1) if per_sample_bias else bias.repeat(batch)
        y = _conv(x.reshape(1, batch * in_channels, *x.shape[2:]), w.reshape(batch * out_channels, in_channels, k, k),
                  up=up, bias=grouped_bias, groups=batch, f=resample_filter)
        return y.reshape(batch, out_channels, *y.shape[2:])
    outs = [_conv(x[j : j + 1], w[j], up=up, bias=bias[j] if per_sample_bias else bias, f=resample_filter)
            for j in range(batch)]
    return outs[0] if batch == 1 else torch.cat(outs)


# What a modulated layer takes per sample: keyword -> the parameter (or buffer) name under the layer.
TORGB_LAYER_OFFSETS = {"weight": "weight", "bias": "bias", "affine_weight": "affine.weight",
                       "affine_bias": "affine.bias"}
SYNTHESIS_LAYER_OFFSETS = {**TORGB_LAYER_OFFSETS, "noise_strength": "noise_strength", "noise_const": "noise_const"}


def _check_per_sample(per_sample: dict[str, torch.Tensor | None], known: dict[str, str]) -> dict[str, torch.Tensor]:
    unknown = sorted(set(per_sample) - set(known))
    if unknown:
        raise TypeError(f"unknown per-sample replacements {unknown}; known: {sorted(known)}")
    return {k: v for k, v in per_sample.items() if v is not None}


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
        noise_generator: torch.Generator | None = None,
        kernel: ConvKernel = "batched",
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        """``per_sample``: per-sample replacements ``[B, *shape]`` of ``weight``, ``bias``, ``affine_weight``,
        ``affine_bias``, ``noise_strength`` and the ``noise_const`` buffer (see ``SynthesisNetwork``)."""
        p = _check_per_sample(per_sample, SYNTHESIS_LAYER_OFFSETS)
        with full_precision(x.device):  # the styles scale every weight of the layer: fp32 (hyperinverter.precision)
            styles = self.affine(w.float(), p.get("affine_weight"), p.get("affine_bias"))
        # lrelu(g·v) = g·lrelu(v) for g > 0: the activation gain folds into the conv, the bias into its epilogue.
        x = modulated_conv2d(x, p.get("weight", self.weight), styles, up=self.up, resample_filter=self.resample_filter,
                             bias=p.get("bias", self.bias), gain=LRELU_GAIN, kernel=kernel)
        assert x.shape[2] == self.resolution, f"{x.shape[2]} != {self.resolution}"
        inplace = _inplace_ok(x)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":  # from ``noise_generator`` when given (reproducible), else the global RNG
                where = noise_generator.device if noise_generator is not None else x.device
                noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, generator=noise_generator,
                                    device=where, dtype=x.dtype).to(x.device)
            elif noise_mode == "const":
                noise = p["noise_const"].unsqueeze(1) if "noise_const" in p else self.noise_const
                noise = noise.to(x.dtype)
            else:
                raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
            strength = p["noise_strength"].reshape(-1, 1, 1, 1) if "noise_strength" in p else self.noise_strength
            noise = noise * (strength.to(x.dtype) * LRELU_GAIN)
            x = x.add_(noise) if inplace else x + noise
        x = F.leaky_relu(x, 0.2, inplace=inplace)
        if self.conv_clamp is not None:
            clamp = self.conv_clamp * LRELU_GAIN
            x = x.clamp_(-clamp, clamp) if inplace else x.clamp(-clamp, clamp)
        return x


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
        kernel: ConvKernel = "batched",
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        """``per_sample``: per-sample ``weight``, ``bias``, ``affine_weight``, ``affine_bias`` (``[B, *shape]``)."""
        p = _check_per_sample(per_sample, TORGB_LAYER_OFFSETS)
        with full_precision(x.device):
            styles = self.affine(w.float(), p.get("affine_weight"), p.get("affine_bias")) * self.weight_gain
        x = modulated_conv2d(x, p.get("weight", self.weight), styles, demodulate=False, bias=p.get("bias", self.bias),
                             kernel=kernel)
        if self.conv_clamp is not None:
            x = x.clamp_(-self.conv_clamp, self.conv_clamp) if _inplace_ok(x) else x.clamp(-self.conv_clamp,
                                                                                             self.conv_clamp)
        return x


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
