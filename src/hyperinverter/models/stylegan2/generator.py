"""StyleGAN2 generator (config-f ``skip`` architecture) with per-sample weight offsets.

Parameter names are NVIDIA's (``mapping.fc0``, ``synthesis.b64.conv0.affine``, ``torgb``,
``noise_strength``, ``w_avg``), so stylegan2-ada / stylegan3-repo StyleGAN2 checkpoints load with an
identity key map, and rosinality checkpoints through ``hyperinverter.convert.rosinality``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from ...config_base import MAX_LAYERS, SerializableConfig, check_count
from ...ops.filters import filter_taps, setup_filter, upsample2d
from ...precision import at_least_fp32, compute_dtype, full_dtype, full_precision
from .. import init
from ..weight_delta import WeightDelta
from .layers import (
    SYNTHESIS_LAYER_OFFSETS,
    TORGB_LAYER_OFFSETS,
    BatchNoise,
    ConvKernel,
    FoldedLayer,
    FullyConnectedLayer,
    SynthesisLayer,
    ToRGBLayer,
)

NoiseMode = Literal["const", "random", "none"]
# Under bf16/fp16 autocast, blocks up to this resolution run in fp32 (benchmarks/results/precision-*.md).
FP32_UP_TO_RESOLUTION = 128
# On CPUs, from this resolution up the per-sample fused kernel beats the batched one (benchmarks/bench_kernels.py).
LOOP_FROM_RESOLUTION = 64
# A single image with shared weights takes the batched kernel too, up to this resolution, where autograd is off: its
# demodulation sums are then kept (``layers.demodulation_sums``), so no modulated weight is made per layer. The
# full-size W-image pass took 11 ms less than with fused weights (alternating in one process, faster in 33 of 40
# pairs; up to 32 px only: 5 ms, 27 of 40). With autograd on, a single image runs fused, as before.
SINGLE_BATCHED_UP_TO_RESOLUTION = 64
# On CPUs, a batch continues sample by sample from the first block whose activations per sample reach this many
# elements: there, concatenating per-sample outputs after every layer costs more than the per-sample loop.
SPLIT_FROM_ELEMENTS = 2**20
# On CPUs, inference runs the blocks whose feature maps per sample reach BAND_FROM_BYTES band by band, as one chain
# (``BlockRows``), in bands of about BAND_BYTES per map: the last block's bands pull the rows they read through the
# blocks before it, so no whole high-resolution map (the 512- and 1024-px features, the transposed conv's output,
# the blurred map) is ever held. Full-size HyperInverter, batch 1, fp32: peak 1.92-1.94 GB chained against
# 2.21-2.24 GB with whole maps (over the 2 GB target); in the last six runs of make bench, bands took 1.82-1.92 s per
# image and whole maps 1.75-1.92, faster in five of them by up to 0.12 s (benchmarks/results/fullsize-ffhq1024-cpu.md).
# Bands of 2 and 8 MB were no faster than 4 MB, before and after UpsampledRows (16 MB: slower than 8), and 8 MB ones
# peaked 30 MB higher.
BAND_FROM_BYTES = 2**25
BAND_BYTES = 2**22
KernelChoice = Literal["auto", "batched", "grouped", "loop"]


@dataclass(frozen=True)
class GeneratorConfig(SerializableConfig):
    """Everything needed to build a ``Generator``; saved as JSON next to the weights."""

    resolution: int
    img_channels: int = 3
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    use_noise: bool = True
    resample_filter: tuple[float, ...] = (1, 3, 3, 1)

    def __post_init__(self) -> None:
        res = self.resolution
        if not (isinstance(res, int) and 8 <= res <= 2048 and res & (res - 1) == 0):
            raise ValueError(f"resolution must be a power of two in [8, 2048], got {res!r}")
        for name in ("img_channels", "z_dim", "w_dim", "channel_base", "channel_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_count("mapping_layers", self.mapping_layers, MAX_LAYERS)
        if min(self.channels(r) for r in self.block_resolutions) < 1:
            raise ValueError(f"channel_base {self.channel_base} is too small for resolution {res}")
        object.__setattr__(self, "resample_filter", filter_taps(self.resample_filter))
        if self.conv_clamp is not None and not (math.isfinite(self.conv_clamp) and self.conv_clamp > 0):
            raise ValueError(f"conv_clamp must be a positive number or null, got {self.conv_clamp}")  # (-1 flipped)

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)


@dataclass(frozen=True)
class SynthesisLayerInfo:
    """One modulated layer of the synthesis network, in forward order."""

    name: str  # "b8.conv0", "b8.torgb"
    kind: Literal["conv", "torgb"]
    resolution: int
    in_channels: int
    out_channels: int
    kernel_size: int
    w_index: int  # the row of ws that styles it
    weight_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        object.__setattr__(self, "weight_shape", shape)


class MappingNetwork(nn.Module):
    """z -> w: 2nd-moment normalisation, then ``mapping_layers`` lrelu FC layers at reduced lr."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        features = [config.z_dim] + [config.w_dim] * config.mapping_layers
        for i in range(config.mapping_layers):
            layer = FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                        lr_multiplier=config.mapping_lr_multiplier)
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    def forward(
        self,
        z: torch.Tensor,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        """``z: [B, z_dim]`` -> ``ws: [B, num_ws, w_dim]`` (one w broadcast to every layer)."""
        c = self.config
        assert z.ndim == 2 and z.shape[1] == c.z_dim, f"z must be [B,{c.z_dim}], got {tuple(z.shape)}"
        with full_precision(z.device):  # small, and every code comes from it: fp32 under reduced precision
            z = at_least_fp32(z, like=self.fc0.weight)
            x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
            for i in range(c.mapping_layers):
                x = getattr(self, f"fc{i}")(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, c.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, c.num_ws, 1)
        return truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)


# Beyond this, codes leave any range the synthesis was trained on by orders of magnitude (and past fp32's range,
# the conversion fails): only NaN or saturated images come out.
MAX_TRUNCATION = 100.0


def truncate(
    ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None = None
) -> torch.Tensor:
    """The truncation trick ``w_avg + psi·(w - w_avg)`` on the first ``cutoff`` layers (all if None)."""
    if psi == 1:
        return ws
    if not math.isfinite(psi) or abs(psi) > MAX_TRUNCATION:
        raise ValueError(f"the truncation psi must be a finite number from -{MAX_TRUNCATION} to {MAX_TRUNCATION}, "
                         f"got {psi}")
    cutoff = ws.shape[1] if cutoff is None else cutoff
    out = ws.clone()
    out[:, :cutoff] = w_avg.to(ws.dtype).lerp(ws[:, :cutoff], psi)  # ws may be bf16 under autocast
    return out


class SynthesisBlock(nn.Module):
    """One resolution: [const |] conv0 (up 2) -> conv1 -> torgb, skip architecture."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        resolution: int,
        img_channels: int,
        use_noise: bool,
        conv_clamp: float | None,
        resample_filter: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        common = {"w_dim": w_dim, "resolution": resolution, "use_noise": use_noise, "conv_clamp": conv_clamp,
                      "resample_filter": resample_filter}
        if resolution == 4:
            self.const = nn.Parameter(init.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **common)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **common)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if resolution == 4 else 2
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        *,
        prefix: str,
        weight_delta: WeightDelta | None,
        noise_mode: NoiseMode,
        noise_generator: torch.Generator | None,
        choose_kernel,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w_iter = iter(ws.unbind(dim=1))
        if self.conv0 is None:
            const = None if weight_delta is None else weight_delta.apply(f"{prefix}.const", self.const)
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1) if const is None else const
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            kw = self.layer_offsets("conv0", prefix, weight_delta)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, noise_generator=noise_generator, **kw,
                           kernel=choose_kernel(kw.get("weight"), self.resolution, x))
        kw = self.layer_offsets("conv1", prefix, weight_delta)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode, noise_generator=noise_generator, **kw,
                       kernel=choose_kernel(kw.get("weight"), self.resolution, x))
        kw = self.layer_offsets("torgb", prefix, weight_delta)
        y = self.torgb(x, next(w_iter), **kw, kernel=choose_kernel(kw.get("weight"), self.resolution, x))
        with full_precision(y.device):  # the RGB skip sum accumulates every block's output: fp32
            img = at_least_fp32(y) if img is None else upsample2d(img, self.resample_filter) + at_least_fp32(y)
        return x, img

    def layer_offsets(self, name: str, prefix: str, weight_delta: WeightDelta | None) -> dict[str, torch.Tensor]:
        """The per-sample replacements ``weight_delta`` gives layer ``name``'s parameters (θ+Δθ, ...), made when
        the layer is about to run; empty without a WeightDelta."""
        if weight_delta is None:
            return {}
        layer = getattr(self, name)
        kinds = SYNTHESIS_LAYER_OFFSETS if isinstance(layer, SynthesisLayer) else TORGB_LAYER_OFFSETS
        key = f"{prefix}.{name}"
        return {kw: weight_delta.apply(f"{key}.{param}", layer.get_parameter(param)
                                       if param != "noise_const" else layer.noise_const)
                for kw, param in kinds.items() if f"{key}.{param}" in weight_delta}

    def rows_source(self, source: RowSource, ws: torch.Tensor, *, prefix: str, weight_delta: WeightDelta | None,
                    noise_mode: NoiseMode, noise_generator: torch.Generator | None, band_rows: int) -> BlockRows:
        """This block for one sample as a source of its output rows, computed band by band from ``source``'s
        (see ``BlockRows``; no autograd)."""
        assert self.conv0 is not None and ws.shape[0] == 1, "bands: one sample, after b4"
        assert not (torch.is_grad_enabled() and ws.requires_grad), "bands record no autograd"
        w0, w1, w2 = ws.unbind(dim=1)
        like = source.like  # the input's dtype and device

        def fold(name: str, w: torch.Tensor, **noise) -> FoldedLayer:
            return getattr(self, name).fold(w, like, **noise, **self.layer_offsets(name, prefix, weight_delta))
        return BlockRows(
            fold("conv0", w0, noise_mode=noise_mode, noise_generator=noise_generator),
            fold("conv1", w1, noise_mode=noise_mode, noise_generator=noise_generator),
            fold("torgb", w2), source, height=self.resolution, img_channels=self.torgb.out_channels, band_rows=band_rows)


class RowSource(Protocol):
    """Rows ``[start, stop)`` of a one-sample feature map ``[1, C, H, W]``, asked for in non-decreasing order."""

    height: int
    like: torch.Tensor  # an empty tensor of the map's dtype and device

    def rows(self, start: int, stop: int) -> torch.Tensor: ...


class WholeRows:
    """A map already held whole."""

    def __init__(self, x: torch.Tensor) -> None:
        assert x.ndim == 4 and x.shape[0] == 1, f"one sample's map [1, C, H, W], got {tuple(x.shape)}"
        self.x, self.height, self.like = x, x.shape[2], x[:, :, :0]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.x[:, :, start:stop]


class KeptRows:
    """Rows of a one-sample map computed on demand from ``source``, top to bottom (``_compute``): a request computes
    the rows past those computed so far, a band at least, and rows are kept only until a later request has passed
    them. So each row is computed once, while the rows a consumer reads across a band's edge (its halo) are
    there for the next band."""

    def __init__(self, source: RowSource, *, height: int, band_rows: int) -> None:
        self.source, self.height, self.band_rows = source, height, band_rows
        self.like = source.like.new_empty(0, dtype=compute_dtype(source.like))
        self._kept, self._kept_from = None, 0  # the rows computed and still needed, from row _kept_from on
        self._asked_from = 0

    @property
    def computed(self) -> int:
        """How many rows (from the top) have been computed."""
        return self._kept_from + (0 if self._kept is None else self._kept.shape[2])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        assert self._asked_from <= start < stop <= self.height, (
            f"rows [{start}, {stop}) asked for after rows from {self._asked_from} on (bands run top to bottom)")
        self._asked_from = start
        done = self.computed
        if stop > done:
            new = self._compute(done, min(max(stop, done + self.band_rows), self.height))
            if self._kept is not None and start < done:  # rows asked for again (the consumer's halo)
                new = torch.cat([self._kept[:, :, start - self._kept_from :], new], dim=2)
            self._kept, self._kept_from = new, min(start, done)
        return self._kept[:, :, start - self._kept_from : stop - self._kept_from]

    def _compute(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError


class UpsampledRows(KeptRows):
    """An up-sampling layer's transposed-conv rows (``FoldedLayer.upsampled_rows``), each computed once.

    The FIR filter after the transposed conv reads a few rows past each band's edges. Recomputed, they made a
    band's transposed conv read 20 input rows for 16 new ones; kept, it reads 17. Full-size synthesis, batch 1,
    on a CPU: 8 ms less per pass (12 passes each way, alternating in one process), the same image to the bit.
    """

    def __init__(self, layer: FoldedLayer, source: RowSource, *, band_rows: int) -> None:
        super().__init__(source, height=layer.upsampled_height(source.height), band_rows=band_rows)
        self.layer = layer

    def _compute(self, start: int, stop: int) -> torch.Tensor:
        i0, i1 = self.layer.upsampled_inputs(start, stop, self.source.height)
        return self.layer.upsampled_rows(self.source.rows(i0, i1), start, stop, first_row=i0,
                                         input_height=self.source.height)


class BlockRows(KeptRows):
    """One synthesis block of one sample, band by band: conv0's transposed conv computes the rows its filter reads
    (``UpsampledRows``), the filter the rows conv1 reads, conv1 and torgb the band's rows. Chained (a block's
    source is the previous block's ``BlockRows``), the high-resolution blocks never hold a whole feature map: each
    computes rows when the next first asks for them, a band at least, and keeps them only until a later request
    has passed them.

    What bands recompute at their edges: conv0's filtered rows under conv1's halo (two per band). The block's RGB
    output is written to ``rgb`` as its rows are computed; the skip image is summed once every row is there
    (``finish``), as ``upsample2d(img) + rgb``, the whole-map block's expression.
    """

    def __init__(self, conv0: FoldedLayer, conv1: FoldedLayer, torgb: FoldedLayer, source: RowSource, *,
                 height: int, img_channels: int, band_rows: int) -> None:
        assert conv0.output_height(source.height) == height, f"{source.height} rows do not make {height}"
        super().__init__(UpsampledRows(conv0, source, band_rows=band_rows), height=height, band_rows=band_rows)
        self.conv0, self.conv1, self.torgb = conv0, conv1, torgb
        self.rgb = torch.empty((1, img_channels, height, height), device=source.like.device,
                               dtype=full_dtype(source.like),
                               memory_format=torch.channels_last)  # as the skip image (a torgb output)

    def _compute(self, start: int, stop: int) -> torch.Tensor:
        upsampled, input_height = self.source, self.source.source.height  # conv0's transposed-conv rows; its input's
        first, last = self.conv1.input_rows(start, stop, self.height)
        lo, hi = self.conv0.filter_inputs(first, last, input_height)
        h = self.conv0.filtered_rows(upsampled.rows(lo, hi), first, last, first_row=lo, input_height=input_height)
        h = self.conv1.rows(h, start, stop, first_row=first, input_height=self.height)
        y = self.torgb.rows(h, 0, stop - start)
        with full_precision(y.device):
            self.rgb[:, :, start:stop] = y
        return h

    def finish(self, img: torch.Tensor, resample_filter: torch.Tensor) -> torch.Tensor:
        """The skip image after this block, from the image before it (once every row has been computed)."""
        assert self.computed == self.height, f"rows from {self.computed} on were never computed"
        self._kept = None
        with full_precision(img.device):
            return upsample2d(img, resample_filter) + self.rgb


class SynthesisNetwork(nn.Module):
    """ws ``[B, num_ws, w_dim]`` (+ optional per-sample ``WeightDelta``) -> image ``[B, C, R, R]``."""

    def __init__(self, config: GeneratorConfig, *, kernel: KernelChoice = "auto") -> None:
        super().__init__()
        self.config = c = config
        self.kernel = kernel
        self.bands = True  # CPU inference runs the high-resolution blocks in bands (``band_rows``); False: whole maps
        for res in c.block_resolutions:
            block = SynthesisBlock(
                c.channels(max(res // 2, 4)) if res > 4 else 0,
                c.channels(res),
                w_dim=c.w_dim,
                resolution=res,
                img_channels=c.img_channels,
                use_noise=c.use_noise,
                conv_clamp=c.conv_clamp,
                resample_filter=c.resample_filter,
            )
            setattr(self, f"b{res}", block)
        self._layers = self._enumerate_layers()
        # Every parameter of the synthesis network, and its noise buffers, accept per-sample offsets.
        self._offsettable = {name: tuple(p.shape) for name, p in self.named_parameters()}
        self._offsettable.update({name: tuple(b.shape) for name, b in self.named_buffers()
                                  if name.endswith(".noise_const")})

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    def blocks(self) -> Iterator[tuple[int, SynthesisBlock]]:
        for res in self.config.block_resolutions:
            yield res, getattr(self, f"b{res}")

    def _enumerate_layers(self) -> list[SynthesisLayerInfo]:
        infos, w_idx = [], 0
        for res, block in self.blocks():
            names = (["conv0"] if block.conv0 is not None else []) + ["conv1", "torgb"]
            for j, name in enumerate(names):
                layer = getattr(block, name)
                infos.append(SynthesisLayerInfo(
                    name=f"b{res}.{name}",
                    kind="torgb" if name == "torgb" else "conv",
                    resolution=res,
                    in_channels=layer.weight.shape[1],
                    out_channels=layer.weight.shape[0],
                    kernel_size=layer.weight.shape[-1],
                    w_index=w_idx + j,
                ))
            w_idx += block.num_conv
        return infos

    def layers(self) -> list[SynthesisLayerInfo]:
        """Every modulated layer (convs and toRGBs) in forward order."""
        return list(self._layers)

    def offsettable_parameters(self) -> dict[str, tuple[int, ...]]:
        """What accepts per-sample offsets, ``name -> shape``, read from the modules: every parameter (modulated
        weights and biases, affine weights and biases, noise strengths, the const input) and the ``noise_const``
        buffers (projection optimises them per image)."""
        return dict(self._offsettable)

    def _check_delta(self, delta: WeightDelta, batch: int) -> None:
        for name, t in delta.items():
            shape = self._offsettable.get(name)
            if shape is None:
                raise KeyError(
                    f"WeightDelta names {name!r}, which is not an offsettable synthesis parameter "
                    f"(valid names look like {next(iter(self._offsettable))!r})"
                )
            if tuple(t.shape) != (batch, *shape):
                raise ValueError(f"WeightDelta[{name!r}] has shape {tuple(t.shape)}, expected {(batch, *shape)}")

    def choose_kernel(self, per_sample_weight: torch.Tensor | None, resolution: int, x: torch.Tensor) -> ConvKernel:
        """The modulated-conv kernel for one layer. ``"auto"`` follows benchmarks/results/kernels-*.md:
        on GPUs the fused grouped conv; on CPUs one conv per sample for per-sample weights and high resolutions,
        and the batched non-fused conv for shared weights at low resolution (for a single image: without
        autograd, see ``SINGLE_BATCHED_UP_TO_RESOLUTION``)."""
        if self.kernel != "auto":
            if self.kernel == "batched" and per_sample_weight is not None:
                return "loop"
            return self.kernel
        if x.device.type == "cuda":
            return "grouped"
        if per_sample_weight is not None:
            return "loop"
        if x.shape[0] == 1:
            single_batched = not torch.is_grad_enabled() and resolution <= SINGLE_BATCHED_UP_TO_RESOLUTION
            return "batched" if single_batched else "loop"
        return "loop" if resolution >= LOOP_FROM_RESOLUTION else "batched"

    def forward(
        self,
        ws: torch.Tensor,
        *,
        weight_delta: WeightDelta | None = None,
        noise_mode: NoiseMode = "const",
        noise_generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``noise_generator``: where ``noise_mode="random"`` draws from (default: the global RNG), each layer's
        ``[B, 1, R, R]`` maps in turn, as NVIDIA's code draws them: a seed gives the maps it gives there, also where
        a CPU batch continues sample by sample (``_split_resolution``; ``BatchNoise``)."""
        c = self.config
        assert ws.ndim == 3 and ws.shape[1:] == (c.num_ws, c.w_dim), (
            f"ws must be [B,{c.num_ws},{c.w_dim}], got {tuple(ws.shape)}"
        )
        if weight_delta is not None:
            self._check_delta(weight_delta, ws.shape[0])
        return self._synthesize(ws, weight_delta, noise_mode, noise_generator)

    def _split_resolution(self, ws: torch.Tensor, weight_delta: WeightDelta | None) -> int | None:
        """From which block on a CPU batch continues sample by sample (None: never).

        Below that block layers run batched (shared weights) or as a per-layer loop of fused convs (per-sample
        weights). From the first block whose per-sample activations reach ``SPLIT_FROM_ELEMENTS``, running the
        rest of the network per sample avoids concatenating large activations after every layer
        (benchmarks/results/: batch 4 then costs no more per image than batch 1 at 1024 px). Small generators
        never split: for them the Python overhead of a per-sample network pass dominates.
        """
        if self.kernel != "auto" or ws.device.type == "cuda" or ws.shape[0] == 1:
            return None
        for res, block in self.blocks():
            if block.conv1.out_channels * res * res >= SPLIT_FROM_ELEMENTS:
                return res
        return None

    def band_rows(self, block: SynthesisBlock, x: torch.Tensor | None) -> int | None:
        """How many output rows per band ``block`` runs in (None: whole maps), for input like ``x``. Bands are for
        CPU inference of one sample (``_split_resolution`` gives large batches that shape) at the resolutions
        where maps are large; with autograd on (training, projection) the whole-map path runs."""
        if (not self.bands or self.kernel != "auto" or x is None or x.device.type != "cpu" or x.shape[0] != 1
                or block.conv0 is None or torch.is_grad_enabled()):
            return None
        row_bytes = block.conv1.out_channels * block.resolution * x.element_size()
        if row_bytes * block.resolution < BAND_FROM_BYTES:
            return None
        return min(max(BAND_BYTES // row_bytes, 4), block.resolution)

    def _synthesize(self, ws: torch.Tensor, weight_delta: WeightDelta | None, noise_mode: NoiseMode,
                    noise_generator: torch.Generator | None, x: torch.Tensor | None = None,
                    img: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        split = self._split_resolution(ws, weight_delta)
        blocks = list(self.blocks())
        first_ws = [0]
        for _, block in blocks:
            first_ws.append(first_ws[-1] + block.num_conv)
        noise = {"noise_mode": noise_mode, "noise_generator": noise_generator}
        i = start
        while i < len(blocks):
            res, block = blocks[i]
            if split is not None and res >= split:
                # (drawn sample by sample, the random maps were other than NVIDIA's for a seed)
                batch_noise = BatchNoise(ws.shape[0], noise_generator) if noise_mode == "random" else None
                return torch.cat([
                    self._synthesize(ws[j : j + 1], None if weight_delta is None else weight_delta.select(j),
                                     noise_mode, noise_generator if batch_noise is None else batch_noise.sample(j),
                                     None if x is None else x[j : j + 1], None if img is None else img[j : j + 1],
                                     start=i)
                    for j in range(ws.shape[0])
                ])
            # Under reduced precision the coarse blocks stay fp32: their rounding errors grow through every block
            # above them, and they hold a tenth of the work (hyperinverter.precision).
            coarse = res <= FP32_UP_TO_RESOLUTION
            with full_precision(ws.device) if coarse else contextlib.nullcontext():
                x = at_least_fp32(x) if coarse and x is not None else x
                chain = self._band_chain(blocks, i, x, coarse)
                if chain:
                    x, img = self._synthesize_in_bands(chain, x, img, ws, first_ws, weight_delta, noise,
                                                       keep_features=i + len(chain) < len(blocks))
                    i += len(chain)
                    continue
                x, img = block(x, img, ws.narrow(1, first_ws[i], block.num_conv + block.num_torgb),
                               prefix=f"b{res}", weight_delta=weight_delta, choose_kernel=self.choose_kernel, **noise)
            i += 1
        return img

    def _band_chain(self, blocks: list[tuple[int, SynthesisBlock]], i: int, x: torch.Tensor | None,
                    coarse: bool) -> list[tuple[int, int, SynthesisBlock]]:
        """The blocks from ``i`` on that run in bands as one chain, ``(index, band rows, block)``: those with a
        band size, as many as follow each other at the same precision."""
        chain = []
        for j in range(i, len(blocks)):
            res, block = blocks[j]
            rows = self.band_rows(block, x)
            if rows is None or (res <= FP32_UP_TO_RESOLUTION) != coarse:
                break
            chain.append((j, rows, block))
        return chain

    def _synthesize_in_bands(self, chain: list[tuple[int, int, SynthesisBlock]], x: torch.Tensor,
                             img: torch.Tensor, ws: torch.Tensor, first_ws: list[int],
                             weight_delta: WeightDelta | None, noise: dict,
                             keep_features: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A chain of blocks, band by band (``BlockRows``): the last block's bands pull the rows they read through
        the blocks before it. ``keep_features``: the last block's features are needed whole (the chain does not
        end the network); otherwise they are never held whole, and None is returned for them."""
        stages: list[BlockRows] = []
        source: RowSource = WholeRows(x)
        for j, rows, block in chain:
            block_ws = ws.narrow(1, first_ws[j], block.num_conv + block.num_torgb)
            source = block.rows_source(source, block_ws, prefix=f"b{block.resolution}", weight_delta=weight_delta,
                                       band_rows=rows, **noise)
            stages.append(source)
        last, size = stages[-1], stages[-1].height
        features = None
        for start in range(0, size, last.band_rows):
            h = last.rows(start, min(start + last.band_rows, size))
            if keep_features:
                if features is None:
                    features = torch.empty((1, h.shape[1], size, size), dtype=h.dtype, device=h.device,
                                           memory_format=torch.channels_last)
                features[:, :, start : start + h.shape[2]] = h
        for stage, (_, _, block) in zip(stages, chain, strict=True):
            img = stage.finish(img, block.resample_filter)
        return features, img


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z -> ws) and ``synthesis`` (ws -> image). Built from its config, which it
    keeps; building never loads weights (``hyperinverter.convert.gan_files.load_generator`` reads files)."""

    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.synthesis = SynthesisNetwork(config)
        self.mapping = MappingNetwork(config)

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    @property
    def w_dim(self) -> int:
        return self.config.w_dim

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "const",
        weight_delta: WeightDelta | None = None,
    ) -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, weight_delta=weight_delta, noise_mode=noise_mode)

    @torch.no_grad()
    def compute_w_avg(self, num_samples: int = 10_000, *, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
        """Mean of mapping(z) over seeded samples, for checkpoints that lack ``w_avg``."""
        gen = torch.Generator().manual_seed(seed)
        device = self.w_avg.device
        total = torch.zeros(self.w_dim, dtype=torch.float64, device=device)
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            z = torch.randn(n, self.z_dim, generator=gen).to(device)
            total += self.mapping(z)[:, 0].double().sum(dim=0)
        return (total / num_samples).float()
