"""FIR resampling in pure PyTorch: the reference ``upfirdn2d`` used by StyleGAN2.

No compiled ops: everything here is ``conv2d`` and reshapes, so it runs on any device and is
differentiable. Filters are stored normalised to sum 1 (NVIDIA's convention); the up-sampling
gain is applied at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def setup_filter(taps: Sequence[float], device: torch.device | None = None) -> torch.Tensor:
    """Separable 1-D taps -> normalised 2-D filter ``[fh, fw]`` (sum 1)."""
    f = torch.as_tensor(taps, dtype=torch.float32, device=device)
    assert f.ndim == 1 and f.numel() > 0, "filter taps must be a non-empty 1-D sequence"
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
    channel with gain ``gain``.
    """
    assert x.ndim == 4, f"expected [N,C,H,W], got {tuple(x.shape)}"
    assert f.ndim == 2, f"expected a 2-D filter, got {tuple(f.shape)}"
    n, c, h, w = x.shape
    px0, px1, py0, py1 = _parse_padding(padding)

    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)

    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    # conv2d correlates; flip to convolve (the usual filters are symmetric, but be exact).
    kernel = (f * gain).flip([0, 1]).to(x.dtype)
    kernel = kernel[None, None].expand(c, 1, *f.shape)
    x = F.conv2d(x, kernel, groups=c)

    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


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
