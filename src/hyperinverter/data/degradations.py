"""The degradations of E2Style's restoration tasks (its ``datasets/augmentations.py`` and transforms), on batches
``[B,C,H,W]`` in [-1, 1]: the network learns to invert the degraded image to the clean one.

- ``inpainting``: a black filled triangle, vertices (x, y) at 256 px: a = (35 or 220, 35), b = (35 or 70, 220),
  c = (b.x + 150, 220), each choice uniform; scaled to the image size;
- ``sr{f}`` (super-resolution ×f): anti-aliased bicubic down-sampling by f (the a = −0.5 cubic stretched over 4·f
  taps, reflect padding, stride f), then bilinear up-sampling back to the size. ``sr{f},{g},...`` draws the factor
  per image among those listed, as the official ``BilinearResize(factors)``; ``sr`` is the official default
  ``--resize_factors``, ``sr1,2,4,8,16,32``;
- ``colorization``: grey replicated over the channels, with the official weights: the official code converts an RGB
  array with OpenCV's BGR-to-grey, so the weights are 0.114 R + 0.587 G + 0.299 B;
- ``denoising``: half of the samples Gaussian noise (variance 0.01 on [0, 1]), the others salt and pepper (5 % of
  the values, each channel on its own).

Every function takes a ``torch.Generator`` so that training batches are reproducible and resumable.
:func:`degrade_at` degrades at the encoder's input size, as the official code degrades its 256-px images.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

Degradation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
GREY_WEIGHTS_OFFICIAL = (0.114, 0.587, 0.299)  # R, G, B: cv2.COLOR_BGR2GRAY applied to RGB
SR_FACTORS = (2, 4, 8, 16, 32)  # one factor per task name: sr2 .. sr32
OFFICIAL_RESIZE_FACTORS = (1, 2, 4, 8, 16, 32)  # E2Style's and pSp's default --resize_factors


def _uniform_choice(gen: torch.Generator, options: tuple) -> object:
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def triangle_mask(size: int, gen: torch.Generator) -> torch.Tensor:
    """``[size, size]`` bool, True inside the official random triangle (defined at 256 px)."""
    a = (_uniform_choice(gen, (35, 220)), 35)
    bx = _uniform_choice(gen, (35, 70))
    b, c = (bx, 220), (bx + 150, 220)
    scale = size / 256
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / scale  # pixel centres in 256-px units
    y, x = torch.meshgrid(coords, coords, indexing="ij")

    def side(p, q):  # sign of the cross product: which side of the edge p->q
        return (x - p[0]) * (q[1] - p[1]) - (y - p[1]) * (q[0] - p[0])

    s1, s2, s3 = side(a, b), side(b, c), side(c, a)
    return ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))


def inpainting(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image with its own black triangle."""
    masks = torch.stack([triangle_mask(x.shape[-1], gen) for _ in range(x.shape[0])]).to(x.device)
    return x.masked_fill(masks[:, None], -1.0)


def cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = −0.5: bicubic)."""
    t = t.abs()
    return torch.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                       torch.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, torch.zeros_like(t)))


def bicubic_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Anti-aliased bicubic down-sampling by an integer ``factor``: the cubic stretched by ``factor`` (4·factor taps),
    reflect padding, stride ``factor``; separable."""
    if factor == 1:
        return x
    taps = 4 * factor
    offsets = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2  # output pixel centre between taps
    weights = cubic(offsets / factor)
    weights = (weights / weights.sum()).to(x.dtype).to(x.device)
    c = x.shape[1]
    pad = (taps - factor) // 2
    h = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h = F.conv2d(h, weights.reshape(1, 1, 1, taps).expand(c, 1, 1, taps), stride=(1, factor), groups=c)
    h = F.conv2d(h, weights.reshape(1, 1, taps, 1).expand(c, 1, taps, 1), stride=(factor, 1), groups=c)
    return h


def _down_and_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    low = bicubic_downsample(x, factor)
    return F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)


def super_resolution(*factors: int) -> Degradation:
    """Down-sampling by a factor, then bilinear up-sampling back: the low-resolution input at full size. With several
    ``factors`` each image draws its own, uniformly (the official training and inference transforms)."""
    if not factors or any(f < 1 or f > 32 or f & (f - 1) for f in factors):
        raise ValueError(f"super-resolution factors are powers of two from 1 to 32, got {list(factors)}")

    def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        check_super_resolution_fits(factors, x.shape[-1])  # (every factor, whatever the draw: fails at once)
        if len(factors) == 1:
            return _down_and_up(x, factors[0])
        drawn = torch.randint(len(factors), (x.shape[0],), generator=gen).to(x.device)
        out = torch.empty_like(x)
        for index, factor in enumerate(factors):
            rows = (drawn == index).nonzero().flatten()
            if len(rows):
                out[rows] = _down_and_up(x[rows], factor)
        return out

    return degrade


def check_super_resolution_fits(factors: tuple[int, ...], size: int) -> None:
    """A ``ValueError`` unless a ``size``-px image can be down-sampled by each of ``factors``: a divisor of the size,
    whose filter's reflect padding (1.5 factors) stays inside the image (sr32 at 32 px was torch's own error)."""
    for factor in factors:
        if size % factor or (3 * factor) // 2 >= size:
            raise ValueError(f"a {size}-px image cannot be down-sampled by {factor} (it takes a multiple of the "
                             f"factor larger than {(3 * factor) // 2} px)")


def check_task_fits(task: str, size: int) -> None:
    """A ``ValueError`` unless the restoration ``task`` can degrade ``size``-px images (its super-resolution
    factors; the other tasks take any size)."""
    get_degradation(task)
    check_super_resolution_fits(_super_resolution_factors(task) or (), size)


def _super_resolution_factors(name: str) -> tuple[int, ...] | None:
    """``sr4`` -> (4,), ``sr1,2,4`` -> (1, 2, 4), ``sr`` -> the official default; None for other names (and for a
    single factor that is no task: sr1, sr3)."""
    if name == "sr":
        return OFFICIAL_RESIZE_FACTORS
    if not re.fullmatch(r"sr\d+(,\d+)*", name):
        return None
    factors = tuple(int(f) for f in name[2:].split(","))
    if len(set(factors)) != len(factors) or (len(factors) == 1 and factors[0] not in SR_FACTORS):
        return None
    return factors


def colorization(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Grey (the official channel weights), replicated over the channels."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(GREY_WEIGHTS_OFFICIAL, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True).expand_as(x).contiguous()


def denoising(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise (σ² = 0.01 on [0, 1]) on a random half of the samples, salt and pepper (5 %) on the others."""
    unit = (x + 1) / 2
    gaussian = torch.rand(x.shape[0], generator=gen) < 0.5
    noisy = unit + torch.randn(unit.shape, generator=gen).to(x.device) * math.sqrt(0.01)
    # Per value, as skimage's random_noise(mode="s&p") on an H x W x 3 array: an impulse hits one channel.
    hit = torch.rand(unit.shape, generator=gen).to(x.device) < 0.05
    salt = (torch.rand(hit.shape, generator=gen) < 0.5).to(x.device)
    peppered = torch.where(hit, salt.to(x.dtype), unit)
    out = torch.where(gaussian.to(x.device).reshape(-1, 1, 1, 1), noisy.clamp(0, 1), peppered)
    return out * 2 - 1


DEGRADATIONS: dict[str, Degradation] = {
    "inpainting": inpainting,
    "colorization": colorization,
    "denoising": denoising,
    **{f"sr{f}": super_resolution(f) for f in SR_FACTORS},
}


def degrade_at(x: torch.Tensor, task: str, size: int, gen: torch.Generator, *, antialias: bool = True
               ) -> torch.Tensor:
    """``x`` brought to ``size`` px as the encoder reads it (bilinear; ``antialias``: E2Style's ``Resize(256)``, the
    default), then degraded by ``task``. The official code degrades 256-px images, so a factor or a noise level means
    the same whatever the generator's resolution: at 1024 px, sr4 degraded first would leave 256 px of detail, and
    4x reduction would average the noise away."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return get_degradation(task)(x, gen)


def get_degradation(name: str) -> Degradation:
    """A degradation by task name (``inpainting``, ``colorization``, ``denoising``, ``sr2`` .. ``sr32``, or
    super-resolution at a factor drawn per image: ``sr1,2,4,8,16,32``, ``sr`` for those official factors)."""
    if name in DEGRADATIONS:
        return DEGRADATIONS[name]
    factors = _super_resolution_factors(name) if isinstance(name, str) else None
    if factors is None:
        raise ValueError(f"unknown restoration task {name!r}; known: {sorted(DEGRADATIONS)}, or super-resolution at "
                         "a factor drawn per image among distinct powers of two up to 32: sr1,2,4,8,16,32 (sr for "
                         "those, the official default)")
    return super_resolution(*factors)
