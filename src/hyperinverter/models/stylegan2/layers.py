"""StyleGAN2 building blocks in pure PyTorch, with NVIDIA's parameter names.

Parameters are stored raw (``randn`` scale) and the equalised-learning-rate gains are applied at run
time, exactly as in both official implementations, so checkpoints map 1:1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ...ops.filters import pad_or_crop, setup_filter, upfirdn2d
from ...precision import at_least_fp32, compute_dtype, full_dtype, full_precision
from .. import init

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
        self.weight = nn.Parameter(init.randn(out_features, in_features, over=lr_multiplier))
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


def transposed_conv_layout(weight: torch.Tensor) -> torch.Tensor:
    """``weight: [O, I, k, k]`` (same values) stored so that its transposed-conv view ``[I, O, k, k]`` is channels-last.

    θ's layout carries through θ+Δθ and the modulation, so oneDNN gets the transposed conv's weight in a layout
    it reads directly: on CPUs a 512-channel up-sampling layer at 4-32 px took 4 ms less per call (1.3-12 ms against
    5.4-16), and the W-image pass about 25 ms less at full size (alternating A/B in one process).
    """
    return weight.transpose(0, 1).contiguous(memory_format=torch.channels_last).transpose(0, 1)


def _inplace_ok(x: torch.Tensor) -> bool:
    """In-place epilogues save whole passes over large activations, but only when autograd is not recording."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def _blur_padding(f: torch.Tensor, *, up: int, kernel_size: int) -> tuple[int, int]:
    """The filter's padding (before, after) that maps a transposed conv's ``up·(H-1)+k`` rows to ``up·H``."""
    p = (f.shape[-1] - up) - (kernel_size - 1)
    return (p + 1) // 2 + up - 1, p // 2 + up - 1


def _blur_taps(f: torch.Tensor, *, up: int, channels: int) -> torch.Tensor:
    """The filter as depthwise conv2d weights ``[C, 1, fw, fw]`` (flipped: conv2d correlates), with the up gain."""
    fw = f.shape[-1]
    return (f * (up * up)).flip([0, 1])[None, None].expand(channels, 1, fw, fw)


def _blur_after_transpose(x: torch.Tensor, f: torch.Tensor, *, up: int, kernel_size: int,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """The FIR filter that follows a stride-``up`` transposed conv (2H+k-2 -> 2H), with an optional bias ``[C]``.

    A depthwise conv with symmetric padding: on CPUs it is several times faster in channels-last layout.
    """
    pad0, pad1 = _blur_padding(f, up=up, kernel_size=kernel_size)
    c = x.shape[1]
    taps = _blur_taps(f, up=up, channels=c).to(x.dtype)
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


def fused_weight(weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool, gain: float,
                 dtype: torch.dtype) -> torch.Tensor:
    """Styles, demodulation and gain folded into one weight per sample: ``[B,O,I,k,k]`` (computed in fp32: it is
    elementwise, outside autocast's reach, and cheap).

    One new tensor, scaled in place where autograd allows: a 512-channel 3x3 layer's took 0.64 ms on a CPU
    against 1.21 with a new tensor per step (channels-last weight), 1.19 against 1.87 (``transposed_conv_layout``).
    """
    batch, in_channels = styles.shape
    w = at_least_fp32(weight if weight.ndim == 5 else weight.unsqueeze(0)) * \
        at_least_fp32(styles, like=weight).reshape(batch, 1, in_channels, 1, 1)
    if not demodulate and gain == 1:
        return w.to(dtype)
    scale = (_sum_of_squares(w, dim=(2, 3, 4)).add_(1e-8).rsqrt_() * gain) if demodulate else gain
    w = w.mul_(scale) if _inplace_ok(w) else w * scale
    return w.to(dtype)


def _sum_of_squares(w: torch.Tensor, dim: tuple[int, ...]) -> torch.Tensor:
    """``Σ w²`` over ``dim`` (kept). Without autograd, ``vector_norm`` reads ``w`` once and writes no temporary, but
    only where each sum's elements lie together: where the kept dim is the innermost one (the transposed-conv
    layout) it took 3.9 ms for a 512-channel 3x3 weight against 0.84 squaring first."""
    if w.requires_grad or w.stride(1) == 1:  # (the norm's gradient is undefined at zero)
        return w.square().sum(dim=dim, keepdim=True)
    return torch.linalg.vector_norm(w, dim=dim, keepdim=True).square_()


# weight -> (its version and storage, its demodulation sums); see demodulation_sums.
_demodulation_sums: WeakIdKeyDictionary = WeakIdKeyDictionary()


def demodulation_sums(weight: torch.Tensor) -> torch.Tensor:
    """``Σ weight²`` over the kernel taps, ``[O, I]`` in fp32: with styles ``s``, the modulated weight's
    demodulation is ``rsqrt(sums @ s² + 1e-8)``.

    For a weight that autograd does not track (inference), computed once per version of its values and kept: a
    pass over a 512-channel 3x3 weight takes about 1 ms on a CPU, as long as the conv itself at 8 px. Writes that
    bypass the version counter (through ``.data``, a collective such as ``dist.broadcast``) are not seen: call
    :func:`forget_demodulation_sums` after them.
    """
    # Not kept: a compiled graph computes the sums once per call (no Python state in the graph; checked first, as
    # Dynamo cannot trace is_inference), training changes the weight every step, and inference tensors have no
    # version counter.
    if torch.compiler.is_compiling() or weight.requires_grad or weight.is_inference():
        return at_least_fp32(weight).square().sum(dim=[2, 3])
    key = (weight._version, weight.data_ptr(), weight.device, weight.dtype, weight.shape)
    kept = _demodulation_sums.get(weight)
    if kept is None or kept[0] != key:
        kept = key, at_least_fp32(weight).square().sum(dim=[2, 3])
        _demodulation_sums[weight] = kept
    return kept[1]


def forget_demodulation_sums() -> None:
    """Drop every kept :func:`demodulation_sums`, after weights were written where autograd's version counter does
    not see it (a frozen generator's weights changed through ``.data`` kept rendering with the old sums)."""
    _demodulation_sums.clear()


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
      for modulation at all, so it wins on CPUs at high resolution and for per-sample weights (a single image's
      shared low-resolution layers run batched where autograd is off: ``generator.SINGLE_BATCHED_UP_TO_RESOLUTION``).
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
        if demodulate and compute_dtype(x) == torch.float16:
            # NVIDIA's pre-normalisation: the activations scaled by raw styles and weights leave fp16's range. Per
            # sample and per output channel, the scales cancel in the demodulation.
            with torch.no_grad():  # (in fp32: 1e-30 is 0 in fp16, and an all-zero channel was 0/0)
                weight_scale = weight.detach().float().abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
                style_scale = styles.detach().float().abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
            weight = weight / (weight_scale * math.sqrt(weight[0].numel()))
            styles = styles / style_scale
        y = _conv(x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1), weight.to(x.dtype), up=up, bias=None,
                  f=resample_filter)
        with full_precision(x.device):  # demodulation in fp32 under reduced precision (see hyperinverter.precision)
            scale = torch.full((batch, out_channels), gain, dtype=full_dtype(weight), device=x.device)
            if demodulate:
                scale = scale * (at_least_fp32(styles, like=weight).square() @ demodulation_sums(weight).t()
                                 + 1e-8).rsqrt()
        scale = scale.to(y.dtype).reshape(batch, out_channels, 1, 1)
        if bias is None:
            return y.mul_(scale) if _inplace_ok(y) else y * scale
        return torch.addcmul(bias.reshape(-1 if per_sample_bias else 1, out_channels, 1, 1), y, scale)

    w = fused_weight(weight, styles, demodulate=demodulate, gain=gain, dtype=x.dtype)
    if kernel == "grouped" and batch > 1:
        grouped_bias = None if bias is None else bias.reshape(-1) if per_sample_bias else bias.repeat(batch)
        y = _conv(x.reshape(1, batch * in_channels, *x.shape[2:]), w.reshape(batch * out_channels, in_channels, k, k),
                  up=up, bias=grouped_bias, groups=batch, f=resample_filter)
        return y.reshape(batch, out_channels, *y.shape[2:])
    outs = [_conv(x[j : j + 1], w[j], up=up, bias=bias[j] if per_sample_bias else bias, f=resample_filter)
            for j in range(batch)]
    return outs[0] if batch == 1 else torch.cat(outs)


class FoldedLayer:
    """One sample's modulated layer with its styles folded into the weight, computed a band of rows at a time.

    A band never holds a whole high-resolution intermediate (the transposed conv's output, the blurred map, the
    next conv's output); see ``SynthesisNetwork.band_rows``. A band is exact: it reads every input row its outputs
    depend on and pads only at the image's own edges, as the whole-map path does.

    An up-sampling layer is two steps that also run on their own: the transposed conv (``upsampled_rows``) and the
    FIR filter with bias and epilogue (``filtered_rows``). A chain keeps the transposed conv's rows between bands
    (``generator.BlockRows``), so that the rows the filter reads across a band's edge are computed once.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, up: int = 1,
                 resample_filter: torch.Tensor | None = None,
                 epilogue: Callable[[torch.Tensor, slice], torch.Tensor] = lambda y, rows: y) -> None:
        out_channels, _, k, k2 = weight.shape
        assert k == k2 and k % 2 == 1, f"square odd kernels only, got {tuple(weight.shape)}"
        assert bias is None or bias.shape == (out_channels,), f"bias {tuple(bias.shape)} != ({out_channels},)"
        assert (up > 1) == (resample_filter is not None), "an up-sampling layer needs its filter, and only it"
        self.weight, self.bias, self.up, self.epilogue = weight, bias, up, epilogue
        self.kernel_size = k
        if up > 1:
            # The transposed conv's weight, and the filter after it (as ``_conv`` / ``_blur_after_transpose``).
            self.transposed_weight = weight.transpose(0, 1)
            self.blur_pad = _blur_padding(resample_filter, up=up, kernel_size=k)
            self.blur_taps = _blur_taps(resample_filter, up=up, channels=out_channels)

    def output_height(self, input_height: int) -> int:
        return input_height * self.up

    def input_rows(self, start: int, stop: int, input_height: int) -> tuple[int, int]:
        """The input rows that output rows ``[start, stop)`` read (clipped to the image)."""
        if self.up == 1:
            pad = self.kernel_size // 2
            return max(start - pad, 0), min(stop + pad, input_height)
        return self.upsampled_inputs(*self.filter_inputs(start, stop, input_height), input_height)

    def rows(self, x: torch.Tensor, start: int, stop: int, *, first_row: int = 0,
             input_height: int | None = None) -> torch.Tensor:
        """Output rows ``[start, stop)`` from ``x``, which holds the input's rows ``[first_row, first_row + x.shape[2])``
        of an input ``input_height`` rows tall (default: ``x`` is the whole input)."""
        height = x.shape[2] if input_height is None else input_height
        if self.up > 1:
            lo, hi = self.filter_inputs(start, stop, height)
            u = self.upsampled_rows(x, lo, hi, first_row=first_row, input_height=height)
            return self.filtered_rows(u, start, stop, first_row=lo, input_height=height)
        i0, i1 = self.input_rows(start, stop, height)
        x = _held_rows(x, first_row, (i0, i1), start, stop)
        pad = self.kernel_size // 2
        x = pad_or_crop(x, 0, 0, pad - (start - i0), stop + pad - i1)  # zeros at the image's edges
        y = F.conv2d(x, self.weight.to(x.dtype), bias=self.bias, padding=(0, pad))
        assert y.shape[2] == stop - start, f"{y.shape[2]} rows for [{start}, {stop})"
        return self.epilogue(y, slice(start, stop))

    # The two steps of an up-sampling layer -------------------------------------------------------------------
    def upsampled_height(self, input_height: int) -> int:
        """Rows of the transposed conv's output: ``up·(H-1)+k``."""
        return self.up * (input_height - 1) + self.kernel_size

    def upsampled_inputs(self, start: int, stop: int, input_height: int) -> tuple[int, int]:
        """The input rows that transposed-conv rows ``[start, stop)`` read: row y reads inputs i with
        ``up·i <= y < up·i + k``."""
        return max(-((self.kernel_size - 1 - start) // self.up), 0), min((stop - 1) // self.up + 1, input_height)

    def upsampled_rows(self, x: torch.Tensor, start: int, stop: int, *, first_row: int,
                       input_height: int) -> torch.Tensor:
        """Transposed-conv rows ``[start, stop)`` (within ``[0, upsampled_height)``) from the input rows in ``x``."""
        assert 0 <= start < stop <= self.upsampled_height(input_height), f"rows [{start}, {stop})"
        i0, _ = bounds = self.upsampled_inputs(start, stop, input_height)
        x = _held_rows(x, first_row, bounds, start, stop)
        u = F.conv_transpose2d(x, self.transposed_weight.to(x.dtype), stride=self.up)  # rows up·i0 onwards
        return u[:, :, start - self.up * i0 : stop - self.up * i0]

    def filter_inputs(self, start: int, stop: int, input_height: int) -> tuple[int, int]:
        """The transposed conv's rows that the filter reads for output rows ``[start, stop)``, clipped to the rows
        it has (the filter pads with zeros beyond them)."""
        fw = self.blur_taps.shape[-1]
        return max(start - self.blur_pad[0], 0), min(stop - self.blur_pad[0] + fw - 1,
                                                     self.upsampled_height(input_height))

    def filtered_rows(self, u: torch.Tensor, start: int, stop: int, *, first_row: int,
                      input_height: int) -> torch.Tensor:
        """Output rows ``[start, stop)``: the FIR filter, bias and epilogue over the transposed conv's rows held in
        ``u`` (from row ``first_row`` on) of an input ``input_height`` rows tall."""
        lo, hi = self.filter_inputs(start, stop, input_height)
        u = _held_rows(u, first_row, (lo, hi), start, stop)
        fw, (pad0, pad1) = self.blur_taps.shape[-1], self.blur_pad
        u = pad_or_crop(u, 0, 0, lo - (start - pad0), (stop - pad0 + fw - 1) - hi)
        taps = self.blur_taps.to(u.dtype)
        if pad0 == pad1:
            y = F.conv2d(u, taps, bias=self.bias, padding=(0, pad0), groups=u.shape[1])
        else:
            y = F.conv2d(F.pad(u, (pad0, pad1, 0, 0)), taps, bias=self.bias, groups=u.shape[1])
        assert y.shape[2] == stop - start, f"{y.shape[2]} rows for [{start}, {stop})"
        return self.epilogue(y, slice(start, stop))


def _held_rows(x: torch.Tensor, first_row: int, rows: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """Rows ``[i0, i1)`` of a map of which ``x`` holds the rows from ``first_row`` on (a view); they are what output
    rows ``[start, stop)`` read."""
    i0, i1 = rows
    assert first_row <= i0 and i1 <= first_row + x.shape[2], (
        f"rows [{start}, {stop}) need input rows [{i0}, {i1}), x holds [{first_row}, {first_row + x.shape[2]})")
    return x[:, :, i0 - first_row : i1 - first_row]


# What a modulated layer takes per sample: keyword -> the parameter (or buffer) name under the layer.
TORGB_LAYER_OFFSETS = {"weight": "weight", "bias": "bias", "affine_weight": "affine.weight",
                       "affine_bias": "affine.bias"}
SYNTHESIS_LAYER_OFFSETS = {**TORGB_LAYER_OFFSETS, "noise_strength": "noise_strength", "noise_const": "noise_const"}


def _check_per_sample(per_sample: dict[str, torch.Tensor | None], known: dict[str, str]) -> dict[str, torch.Tensor]:
    unknown = sorted(set(per_sample) - set(known))
    if unknown:
        raise TypeError(f"unknown per-sample replacements {unknown}; known: {sorted(known)}")
    return {k: v for k, v in per_sample.items() if v is not None}


def _random_maps(count: int, resolution: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``[count, 1, R, R]`` noise maps in ``like``'s dtype, on its device: from ``generator`` when given
    (reproducible; drawn on its device), else the global RNG."""
    where = generator.device if generator is not None else like.device
    return torch.randn(count, 1, resolution, resolution, generator=generator, device=where,
                       dtype=like.dtype).to(like.device)


class BatchNoise:
    """``noise_mode="random"`` for one sample of a batch that runs sample by sample: each layer's maps are drawn
    for the whole batch (``[B, 1, R, R]``, as NVIDIA's layer draws them) when the batch's first sample reaches it,
    and every sample takes its own. The first sample runs the layers in order, so the draws come in NVIDIA's order,
    and a seed gives the batch the maps it gives NVIDIA's code (the batch in one pass would draw them the same).
    Pass ``sample(j)`` as a layer's ``noise_generator``."""

    def __init__(self, batch_size: int, generator: torch.Generator | None) -> None:
        self.batch_size, self.generator = batch_size, generator
        self.maps: WeakIdKeyDictionary = WeakIdKeyDictionary()  # layer -> its batch's maps

    def sample(self, index: int) -> SampleNoise:
        return SampleNoise(self, index)


class SampleNoise:
    """Sample ``index``'s share of a :class:`BatchNoise`."""

    def __init__(self, batch: BatchNoise, index: int) -> None:
        self.batch, self.index = batch, index

    def draw(self, layer: nn.Module, resolution: int, like: torch.Tensor) -> torch.Tensor:
        """This sample's ``[1, 1, R, R]`` map of ``layer`` (drawn in ``like``'s dtype, onto its device)."""
        maps = self.batch.maps.get(layer)
        if maps is None:
            maps = _random_maps(self.batch.batch_size, resolution, self.batch.generator, like)
            self.batch.maps[layer] = maps
        return maps[self.index : self.index + 1]


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
        self.weight = nn.Parameter(init.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", init.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def _apply(self, fn, recurse: bool = True):
        """Module conversions (``.to(device, memory_format=...)``, which an InversionPipeline makes) store an
        up-sampling layer's weight in ``transposed_conv_layout``. Not at construction: an early copy of a large
        mapped block moves glibc's mmap threshold, and every later weight then lands in the heap."""
        super()._apply(fn, recurse)
        if self.up > 1:
            self.weight.data = transposed_conv_layout(self.weight.data)
        return self

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
        x = modulated_conv2d(x, p.get("weight", self.weight), self._styles(w, p), up=self.up,
                             resample_filter=self.resample_filter, bias=p.get("bias", self.bias), gain=LRELU_GAIN,
                             kernel=kernel)
        assert x.shape[2] == self.resolution, f"{x.shape[2]} != {self.resolution}"
        return self._epilogue(x, self._noise(x, noise_mode, noise_generator, p))

    def fold(self, w: torch.Tensor, x: torch.Tensor, *, noise_mode: str = "const",
             noise_generator: torch.Generator | None = None, **per_sample: torch.Tensor) -> FoldedLayer:
        """This layer for the one sample of ``w: [1, w_dim]``, styles folded into its weight, to be run band by band
        on ``x`` (its input, or a band of it: only its dtype and device are read). Same arguments as ``forward``."""
        p = _check_per_sample(per_sample, SYNTHESIS_LAYER_OFFSETS)
        assert w.shape[0] == 1, f"fold takes one sample, got {w.shape[0]}"
        weight = fused_weight(p.get("weight", self.weight), self._styles(w, p), demodulate=True, gain=LRELU_GAIN,
                              dtype=x.dtype)[0]
        bias = (p.get("bias", self.bias).reshape(-1) * LRELU_GAIN).to(x.dtype)
        # Drawn (or read) whole, once, in the dtype of the conv's output, as ``forward`` does; bands slice it.
        out = x.new_empty(1, 0, self.resolution, self.resolution, dtype=compute_dtype(x))
        noise = self._noise(out, noise_mode, noise_generator, p)
        noise = None if noise is None else noise.reshape(1, 1, self.resolution, self.resolution)
        return FoldedLayer(weight, bias, up=self.up, resample_filter=self.resample_filter if self.up > 1 else None,
                           epilogue=lambda y, rows: self._epilogue(y, None if noise is None else noise[:, :, rows]))

    def _styles(self, w: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        with full_precision(w.device):  # the styles scale every weight of the layer: fp32 (hyperinverter.precision)
            return self.affine(at_least_fp32(w, like=self.affine.weight), p.get("affine_weight"), p.get("affine_bias"))

    def _noise(self, x: torch.Tensor, noise_mode: str, noise_generator: torch.Generator | None,
               p: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The noise this layer adds to its output ``x`` (``[B|1, 1, R, R]``, scaled), or None."""
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "random" and isinstance(noise_generator, SampleNoise):  # (a batch run sample by sample)
            noise = noise_generator.draw(self, self.resolution, x)
        elif noise_mode == "random":
            noise = _random_maps(x.shape[0], self.resolution, noise_generator, x)
        elif noise_mode == "const":
            noise = p["noise_const"].unsqueeze(1) if "noise_const" in p else self.noise_const
            noise = noise.to(x.dtype)
        else:
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        strength = p["noise_strength"].reshape(-1, 1, 1, 1) if "noise_strength" in p else self.noise_strength
        return noise * (strength.to(x.dtype) * LRELU_GAIN)

    def _epilogue(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Noise, activation (its gain is folded into the conv) and clamp, in place when autograd allows. The clamp
        is NVIDIA's ``conv_clamp * gain`` after the activation's gain, where ``gain`` is the layer's call argument
        (1 in the skip architecture), not the activation's √2."""
        inplace = _inplace_ok(x)
        if noise is not None:
            x = x.add_(noise) if inplace else x + noise
        x = F.leaky_relu(x, 0.2, inplace=inplace)
        if self.conv_clamp is not None:
            clamp = self.conv_clamp
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
        self.weight = nn.Parameter(init.randn(out_channels, in_channels, 1, 1))
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
        x = modulated_conv2d(x, p.get("weight", self.weight), self._styles(w, p), demodulate=False,
                             bias=p.get("bias", self.bias), kernel=kernel)
        return self._clamp(x)

    def fold(self, w: torch.Tensor, x: torch.Tensor, **per_sample: torch.Tensor) -> FoldedLayer:
        """This layer for the one sample of ``w: [1, w_dim]``, to be run band by band (see ``SynthesisLayer.fold``)."""
        p = _check_per_sample(per_sample, TORGB_LAYER_OFFSETS)
        assert w.shape[0] == 1, f"fold takes one sample, got {w.shape[0]}"
        weight = fused_weight(p.get("weight", self.weight), self._styles(w, p), demodulate=False, gain=1.0,
                              dtype=x.dtype)[0]
        return FoldedLayer(weight, p.get("bias", self.bias).reshape(-1).to(x.dtype),
                           epilogue=lambda y, rows: self._clamp(y))

    def _styles(self, w: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        with full_precision(w.device):
            return self.affine(at_least_fp32(w, like=self.affine.weight), p.get("affine_weight"),
                               p.get("affine_bias")) * self.weight_gain

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_clamp is None:
            return x
        return x.clamp_(-self.conv_clamp, self.conv_clamp) if _inplace_ok(x) else x.clamp(-self.conv_clamp,
                                                                                            self.conv_clamp)


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
        self.weight = nn.Parameter(init.randn(out_channels, in_channels, kernel_size, kernel_size))
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
