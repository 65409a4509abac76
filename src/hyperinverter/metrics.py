"""Reconstruction metrics, per image: MSE, PSNR, SSIM, MS-SSIM (and LPIPS / identity through their modules).

Images are ``[B,C,H,W]`` in [-1,1] (pixels beyond are clipped, as in the saved files the papers score). MSE is
computed in that range on images of at most 256 px (the L2 of the papers, which resize to 256; larger images are
resized as torchvision's ``Resize``); PSNR, SSIM and MS-SSIM on [0,1] at full resolution, with the standard
Gaussian window (11 taps, sigma 1.5) and constants of Wang et al. They are ``piq``'s definitions (``piq.psnr``;
``piq.ssim`` with ``downsample=False``; ``piq.multi_scale_ssim``), tested against ``piq`` itself. Where ``piq``
refuses an image as too small, ours still answers: SSIM shrinks its window, MS-SSIM uses the scales that fit (their
weights renormalised, as ``piq`` does for given ``scale_weights``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

PAPER_RESOLUTION = 256  # the papers' L2 and LPIPS compare 256-px images


def pooled_to_width(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` average-pooled to ``width`` columns and the rows that keep its shape (square images to ``width``²; a
    domain's 3:4 content rows to 192x256 at 256, as the official cars codes compare them); as it is where it is
    no wider."""
    return x if x.shape[-1] <= width else F.adaptive_avg_pool2d(x, _at_width(x, width))


def _at_width(x: torch.Tensor, width: int) -> tuple[int, int]:
    """The size of ``x`` scaled to ``width`` columns, its shape kept."""
    return round(x.shape[-2] * width / x.shape[-1]), width


def resized_to_width(x: torch.Tensor, width: int, *, enlarge: bool = False) -> torch.Tensor:
    """``x`` resized as the papers' metric scripts resize it (``transforms.Resize(256)``: bilinear with
    antialiasing) to ``width`` columns and the rows that keep its shape; as it is where it is no wider, unless
    ``enlarge`` (a network metric: the scripts enlarge small images too). Training
    pools its outputs (:func:`pooled_to_width`, the official ``face_pool``; the pSp family's targets are resized
    this way, as its data transforms do); the metrics pooled too, which scored a reconstruction that lacks fine
    detail up to 5.8 times the papers' MSE at 1024 px."""
    if x.shape[-1] == width or (x.shape[-1] < width and not enlarge):
        return x
    return F.interpolate(x, size=_at_width(x, width), mode="bilinear", antialias=True, align_corners=False)


def saved_range(x: torch.Tensor) -> torch.Tensor:
    """``x`` clipped to [-1,1], as a saved 8-bit image is: the papers score their files, and a generator's pixels
    overshoot the range (a third of fashion-32's), which counted against MSE and the network metrics."""
    return x.clamp(-1, 1)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = (resized_to_width(saved_range(t), PAPER_RESOLUTION) for t in (x, y))
    return (x - y).square().flatten(1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    err = (((x + 1) / 2).clamp(0, 1) - ((y + 1) / 2).clamp(0, 1)).square().flatten(1).mean(dim=1)
    return -10 * torch.log10(err + 1e-8)  # piq's epsilon: identical images score 80 dB


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, size, size)


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure per image and channel (``[B,C]``), over the valid windows."""
    c = x.shape[1]
    c1, c2 = 0.01**2, 0.03**2
    mu_x = F.conv2d(x, window, groups=c)
    mu_y = F.conv2d(y, window, groups=c)
    sxx = F.conv2d(x * x, window, groups=c) - mu_x.square()
    syy = F.conv2d(y * y, window, groups=c) - mu_y.square()
    sxy = F.conv2d(x * y, window, groups=c) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x.square() + mu_y.square() + c1)
    return (luminance * cs).mean(dim=(-2, -1)), cs.mean(dim=(-2, -1))


def ssim(x: torch.Tensor, y: torch.Tensor, *, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image (valid windows only); the window shrinks for images smaller than it."""
    x, y = ((x + 1) / 2).clamp(0, 1).double(), ((y + 1) / 2).clamp(0, 1).double()
    size = min(window_size, x.shape[-1], x.shape[-2])
    window = _gaussian_window(size, sigma * size / window_size, x.shape[1], x.device, x.dtype)
    return _ssim_parts(x, y, window)[0].mean(dim=1).float()


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(height: int, width: int, *, window_size: int = 11) -> int:
    """How many of MS-SSIM's 5 scales an image of this size has room for (all 5 from 161 px with 11 taps)."""
    size = min(window_size, height, width)
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(height, width) >= (size - 1) * 2**scales + 1:
        scales += 1
    return scales


def ms_ssim(x: torch.Tensor, y: torch.Tensor, *, window_size: int = 11) -> torch.Tensor:
    """Multi-scale SSIM per image: per channel, the product over scales of contrast-structure (SSIM at the
    coarsest scale) to the scale's weight, then the mean over channels. An odd side is padded by replicating its
    first row or column before each 2x2 average. Uses as many of the 5 scales as the image size allows."""
    x, y = ((x + 1) / 2).clamp(0, 1).double(), ((y + 1) / 2).clamp(0, 1).double()
    size = min(window_size, *x.shape[-2:])
    scales = ms_ssim_scales(*x.shape[-2:], window_size=window_size)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    if scales < len(MS_SSIM_WEIGHTS):  # (piq renormalises the weights it is given; its own five sum to 1.0001)
        weights = weights / weights.sum()
    window = _gaussian_window(size, 1.5 * size / window_size, x.shape[1], x.device, x.dtype)
    values = []
    for s in range(scales):
        if s > 0:
            pad = max(x.shape[-2] % 2, x.shape[-1] % 2)
            x = F.avg_pool2d(F.pad(x, [pad, 0, pad, 0], mode="replicate"), 2)
            y = F.avg_pool2d(F.pad(y, [pad, 0, pad, 0], mode="replicate"), 2)
        full, cs = _ssim_parts(x, y, window)
        values.append(full if s == scales - 1 else cs)
    stacked = torch.stack(values).relu()  # [scales, B, C]
    return torch.prod(stacked ** weights[:, None, None], dim=0).mean(dim=1).float()


PIXEL_METRICS = {"mse": mse, "psnr": psnr, "ssim": ssim, "ms_ssim": ms_ssim}


Features = torch.Tensor | list[torch.Tensor]  # a network's per-image features: batch-first, one tensor or a list


class FeatureMetric:
    """A network metric (Inception distance, LPIPS, identity) as a pair metric: ``compare(features(a),
    features(b)) -> [B]``, run on at most ``chunk`` pairs at a time, so that the network's activations stay bounded
    whatever the caller's batch (Inception's at 299 px are about 40 MB per image). Images are clipped to [-1,1]
    first (:func:`saved_range`).

    Inside :func:`same_targets`, the features of each chunk of targets are kept, up to a memory budget, and reused
    when other outputs are scored against the same targets (every method's reconstruction of one batch): the
    network then runs on the outputs alone."""

    def __init__(self, features: Callable[[torch.Tensor], Features], compare: Callable[[Features, Features],
                 torch.Tensor], *, chunk: int = 16) -> None:
        self.features, self.compare, self.chunk = features, compare, chunk

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"a metric compares images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        memo = _TARGETS.get()
        values = []
        for x, y in zip(a.split(self.chunk), b.split(self.chunk)):
            target = memo.get(self, y) if memo is not None else None
            if target is None:  # one pass over both, as the networks run fastest on the larger batch
                output, target = _split(self.features(saved_range(torch.cat([x, y]))), x.shape[0])
                if memo is not None:
                    memo.put(self, y, target)
            else:
                output = self.features(saved_range(x))
            values.append(self.compare(output, target))
        return torch.cat(values)


def _split(features: Features, n: int) -> tuple[Features, Features]:
    if isinstance(features, torch.Tensor):
        return features[:n], features[n:].clone()  # a clone: the kept half must not hold the other half's memory
    return [f[:n] for f in features], [f[n:].clone() for f in features]


class _TargetMemo:
    """Targets' features by the target tensor's identity (its storage, offset, shape, strides and version: an
    in-place change is a new target), each entry holding the target, so that its memory cannot be reused by another
    tensor while the entry lives."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget, self.used = budget_bytes, 0
        self._entries: dict[tuple, tuple[FeatureMetric, torch.Tensor, Features]] = {}

    @staticmethod
    def _key(metric: FeatureMetric, y: torch.Tensor) -> tuple:
        return (id(metric), y.device, y.dtype, y.untyped_storage().data_ptr(), y.storage_offset(), tuple(y.shape),
                y.stride(), y._version)

    def get(self, metric: FeatureMetric, y: torch.Tensor) -> Features | None:
        entry = self._entries.get(self._key(metric, y))
        return None if entry is None else entry[2]

    def put(self, metric: FeatureMetric, y: torch.Tensor, features: Features) -> None:
        size = sum(f.numel() * f.element_size() for f in ([features] if isinstance(features, torch.Tensor)
                                                          else features))
        if self.used + size <= self.budget:  # beyond it the features are computed again, as without the memo
            self._entries[self._key(metric, y)] = (metric, y, features)
            self.used += size


_TARGETS: contextvars.ContextVar[_TargetMemo | None] = contextvars.ContextVar("same_targets", default=None)


@contextlib.contextmanager
def same_targets(budget_bytes: int = 512 << 20) -> Iterator[None]:
    """Within the block, :class:`FeatureMetric` keeps its targets' features (up to ``budget_bytes``: the default
    holds 32 images' Inception taps, 12 MB each, and their LPIPS features) for outputs scored against the same
    target tensors; they are freed at its end. For a scorer that compares several methods' outputs with one batch
    of targets."""
    token = _TARGETS.set(_TargetMemo(budget_bytes))
    try:
        yield
    finally:
        _TARGETS.reset(token)


def protocol_note(resolution: int | None = None) -> str:
    """How the pixel metrics compare images, for a report (``resolution``: the images', if they share one)."""
    size = f"{resolution} px" if resolution else "the ground truth's size"
    note = (f"protocol: images in [-1, 1] at {size}; MSE in that range on images resized (bilinear, antialiased, "
            f"as torchvision's Resize) to at most {PAPER_RESOLUTION} px (the papers' L2); PSNR, SSIM and MS-SSIM "
            "on [0, 1] at full size (piq's definitions)")
    scales = ms_ssim_scales(resolution, resolution) if resolution else len(MS_SSIM_WEIGHTS)
    if scales < len(MS_SSIM_WEIGHTS):
        note += (f". At {resolution} px MS-SSIM has room for {scales} of its {len(MS_SSIM_WEIGHTS)} scales (their "
                 "weights renormalised), so it is not comparable with MS-SSIM published at 256 px and up")
    return note
