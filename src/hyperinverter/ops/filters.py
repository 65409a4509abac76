"""FIR resampling in pure PyTorch: the reference ``upfirdn2d`` used by StyleGAN2.

No compiled ops: everything here is ``conv2d`` and reshapes, so it runs on any device and is
differentiable. Filters are stored normalised to sum 1 (NVIDIA's convention); the up-sampling
gain is applied at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def filter_taps(taps: Sequence[float]) -> tuple[float, ...]:
    """A config's separable taps, checked: a non-empty sequence of finite numbers with a non-zero sum (the filter
    is normalised by it). ``ValueError`` otherwise, before any layer is built."""
    try:
        values = tuple(float(t) for t in taps)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(math.isfinite(v) for v in values) or sum(values) == 0:
        raise ValueError(f"resample_filter must be a non-empty list of finite numbers with a non-zero sum, got "
                         f"{taps!r}")
    return values


def setup_filter(taps: Sequence[float], device: torch.device | None = None) -> torch.Tensor:
    """Separable 1-D taps -> normalised 2-D filter ``[fh, fw]`` (sum 1)."""
    f = torch.as_tensor(taps, dtype=torch.float32, device=device)
    assert f.ndim == 1 and f.numel() > 0, "filter taps must be a non-empty 1-D sequence"
    if f.is_meta:  # a module built to be loaded: its buffer's values come from the file (see models.init)
        return f.new_empty(f.numel(), f.numel())
    f = torch.outer(f, f)
    return f / f.sum()


def _parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    px0, px1, py0, py1 = padding
    return px0, px1, py0, py1


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    *,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter (true convolution) and downsample ``x: [N,C,H,W]``.

    ``padding`` is ``(x0, x1, y0, y1)``; negative values crop. The filter ``f: [fh,fw]`` is applied per
    channel with gain ``gain``. The output keeps ``x``'s memory format (it is a view where the padding crops).

    Computed without the zero-inserted map: up-sampling is a depthwise transposed conv with stride ``up`` (it
    scatters each input pixel through the filter, which is the full convolution of the zero-inserted map), and
    down-sampling is the filter's stride. On CPUs the zero-insert-pad-filter sequence held about ten times its
    output in temporaries (140 MB for a 1024-px RGB skip image) and was up to 20 times slower.
    """
    assert x.ndim == 4, f"expected [N,C,H,W], got {tuple(x.shape)}"
    assert f.ndim == 2, f"expected a 2-D filter, got {tuple(f.shape)}"
    _, c, h, w = x.shape
    fh, fw = f.shape
    px0, px1, py0, py1 = _parse_padding(padding)
    out_h, out_w = up * h + py0 + py1 - fh + 1, up * w + px0 + px1 - fw + 1
    assert out_h > 0 and out_w > 0, f"padding {padding} leaves no output for {tuple(x.shape)} and a {fh}x{fw} filter"
    kernel = (f * gain).to(x.dtype)
    if up > 1:
        # The full convolution of the zero-inserted map, rows [0, up·(H-1)+fh); the padded output starts fh-1-py0
        # rows in.
        y = F.conv_transpose2d(x, kernel[None, None].expand(c, 1, fh, fw), stride=up, groups=c)
        top, left = fh - 1 - py0, fw - 1 - px0
        y = pad_or_crop(y, -left, left + out_w - y.shape[3], -top, top + out_h - y.shape[2])
        return y[:, :, ::down, ::down] if down > 1 else y
    x = pad_or_crop(x, px0, px1, py0, py1)
    # conv2d correlates; flip to convolve (the usual filters are symmetric, but be exact).
    return F.conv2d(x, kernel.flip([0, 1])[None, None].expand(c, 1, fh, fw), stride=down, groups=c)


def pad_or_crop(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Zero padding where an amount is positive, cropping (a view, no copy) where it is negative."""
    x = x[:, :, max(-top, 0) : x.shape[2] - max(-bottom, 0), max(-left, 0) : x.shape[3] - max(-right, 0)]
    pads = [max(left, 0), max(right, 0), max(top, 0), max(bottom, 0)]
    return F.pad(x, pads) if any(pads) else x


def upsample2d(x: torch.Tensor, f: torch.Tensor, *, up: int = 2) -> torch.Tensor:
    """2x FIR up-sampling that keeps the image centred (StyleGAN2's skip path)."""
    fw = f.shape[-1]
    p0 = (fw + up - 1) // 2
    p1 = (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, *, down: int = 2) -> torch.Tensor:
    """2x FIR down-sampling that keeps the image centred."""
    fw = f.shape[-1]
    p0 = (fw - down + 1) // 2
    p1 = (fw - down) // 2
    return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))
