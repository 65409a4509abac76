"""W and W+ optimisation: NVIDIA's StyleGAN2-ADA projector, batched over images.

The recipe of ``projector.py`` (reference: ``../shared/reference/methods_baselines.md`` §5):

* w statistics from 10,000 mapped samples of ``np.random.RandomState(123)``: start at their mean, and
  ``w_std`` is the RMS distance to it (one scalar);
* Gaussian noise on w of ``0.05·w_std·max(0, 1 − t/0.75)²`` (t: fraction of the run), gone after 75 %;
* the learning rate ramps up linearly over the first 5 % and down by a half cosine over the last 25 %;
* every noise buffer of the synthesis network is re-drawn N(0, 1) per image and optimised, with the multi-scale
  auto-correlation regulariser (weight 1e5) and re-normalised to zero mean and unit RMS after every step.

Each image has its own codes, noise maps and Adam state: Adam is element-wise and the loss is a sum of per-image
terms, so one optimiser over ``[B, ...]`` tensors is B independent runs (up to float rounding, which Adam can
carry to about 1e-2 in an image over hundreds of steps). The optimised noise maps are
returned as an additive :class:`WeightDelta` on the ``noise_const`` buffers, so re-rendering a result (edits,
files, exports) gives exactly the optimised image.

Defaults: W follows NVIDIA's projector (1000 steps, lr 0.1); W+ follows the "SG2 W+" baseline of the
HyperInverter paper (2000 steps, lr 0.01; PTI's copy of the projector). The loss is LPIPS-VGG (the official
distance) alone, as the official code's; offline, the distance is a substitute (see :func:`perceptual_distance`) and
an L2 term (weight 1) anchors the pixels; ``l2_weight`` sets it either way.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.stylegan2 import Discriminator, Generator
from ..models.weight_delta import WeightDelta
from .base import InversionResult, Inverter, Stopwatch
from .registry import register_method

logger = logging.getLogger(__name__)

Space = Literal["w", "w+"]
Progress = bool | Callable[[int, int], None]
PerceptualChoice = Literal["auto", "lpips-vgg", "lpips-alex", "dfeat", "none"]


# --- the perceptual distance ----------------------------------------------------------------------------


def perceptual_distance(choice: PerceptualChoice, *, lpips_net: str, discriminator: Discriminator | None,
                        device: torch.device) -> tuple[str, nn.Module | None]:
    """The distance an optimisation method compares images with, and its name.

    ``"auto"``: LPIPS (``lpips_net``, the official distance) when its files are present; else the features of the
    domain's discriminator (the package's offline perceptual loss, docs/losses.md) when the model ships one; else
    none (the L2 term alone), which is logged.
    """
    from ..losses.lpips import LPIPS

    if choice in ("lpips-vgg", "lpips-alex"):
        return choice, LPIPS.from_files(choice.removeprefix("lpips-")).to(device)
    if choice == "dfeat":
        if discriminator is None:
            raise ValueError("perceptual='dfeat' needs a model that ships its discriminator")
        from ..losses.discriminator_features import DiscriminatorFeatureLoss

        return "dfeat", DiscriminatorFeatureLoss(discriminator).to(device)
    if choice == "none":
        return "none", None
    check_perceptual(choice)
    try:
        return f"lpips-{lpips_net}", LPIPS.from_files(lpips_net).to(device)
    except FileNotFoundError as e:
        if discriminator is not None:
            logger.info("LPIPS-%s is not installed (%s); comparing discriminator features instead", lpips_net, e)
            return perceptual_distance("dfeat", lpips_net=lpips_net, discriminator=discriminator, device=device)
        logger.warning("LPIPS-%s is not installed and the model ships no discriminator: optimising L2 alone", lpips_net)
        return "none", None


def default_l2_weight(distance: nn.Module | None) -> float:
    """The L2 term's weight where none is given: 0 beside LPIPS (the official loss has no pixel term), 1 beside a
    substitute distance or none (the pixels then anchor the image)."""
    from ..losses.lpips import LPIPS

    return 0.0 if isinstance(distance, LPIPS) else 1.0


def check_perceptual(choice: str) -> None:
    if choice not in get_args(PerceptualChoice):
        *others, last = get_args(PerceptualChoice)
        raise ValueError(f"perceptual must be {', '.join(others)} or {last}, got {choice!r}")


def pooled_for_distance(images: torch.Tensor, size: int = 256) -> torch.Tensor:
    """The official projectors compare images area-downsampled to 256 px when they are larger."""
    return F.interpolate(images, size=(size, size), mode="area") if images.shape[-1] > size else images


# --- the projector ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectorSettings:
    """One projection run; the defaults are NVIDIA's ``projector.py``."""

    space: Space = "w"
    steps: int = 1000
    learning_rate: float = 0.1
    w_avg_samples: int = 10_000
    initial_noise_factor: float = 0.05
    noise_ramp_length: float = 0.75
    lr_rampup_length: float = 0.05
    lr_rampdown_length: float = 0.25
    noise_regularize_weight: float = 1e5
    optimize_noise: bool = True
    # None: 0 with LPIPS (NVIDIA's loss is the distance and the noise penalty alone), 1 with an offline substitute
    # or no distance, where the pixels are what anchors the image (see ``default_l2_weight``).
    l2_weight: float | None = None
    perceptual_weight: float = 1.0
    seed: int = 303

    def __post_init__(self) -> None:
        if self.space not in ("w", "w+"):
            raise ValueError(f"space must be 'w' or 'w+', got {self.space!r}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        # (10**12 asked numpy for 728 TiB; a million mapped codes is 100x NVIDIA's 10,000)
        if not (isinstance(self.w_avg_samples, int) and 2 <= self.w_avg_samples <= 1_000_000):
            raise ValueError(f"w_avg_samples must be a whole number from 2 to 1,000,000, got {self.w_avg_samples!r}")
        # The ramps divide by their lengths; a rate of 0 never moves; a negative weight rewards the error.
        for name in ("learning_rate", "noise_ramp_length", "lr_rampup_length", "lr_rampdown_length"):
            check_number(name, getattr(self, name), positive=True)
        for name in ("initial_noise_factor", "noise_regularize_weight", "l2_weight", "perceptual_weight"):
            if name != "l2_weight" or self.l2_weight is not None:
                check_number(name, getattr(self, name), positive=False)
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")

    def learning_rate_at(self, step: int) -> float:
        t = step / self.steps
        ramp = min(1.0, (1.0 - t) / self.lr_rampdown_length)
        ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
        return self.learning_rate * ramp * min(1.0, t / self.lr_rampup_length)

    def w_noise_factor_at(self, step: int) -> float:
        t = step / self.steps
        return self.initial_noise_factor * max(0.0, 1.0 - t / self.noise_ramp_length) ** 2


def check_number(name: str, value: object, *, positive: bool) -> None:
    """``value`` must be a finite number above 0 (``positive``) or of at least 0."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'above 0' if positive else 'of 0 or more'}, got {value!r}")


@torch.no_grad()
def w_statistics(generator: Generator, num_samples: int, *, seed: int = 123) -> tuple[torch.Tensor, float]:
    """``(w_avg [w_dim], w_std)`` over ``num_samples`` mapped z of ``np.random.RandomState(seed)`` (the official
    sampling, so the start point matches for the same generator)."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(num_samples, generator.z_dim)).float()
    device = generator.w_avg.device
    ws = torch.cat([generator.mapping(chunk.to(device))[:, 0] for chunk in z.split(1000)])
    w_avg = ws.mean(dim=0)
    w_std = float(((ws - w_avg).square().sum() / num_samples).sqrt())
    return w_avg, w_std


def noise_buffer_names(generator: Generator) -> list[str]:
    """The synthesis network's noise buffers, as ``WeightDelta`` names (``b8.conv0.noise_const``)."""
    return [name for name in generator.synthesis.offsettable_parameters() if name.endswith(".noise_const")]


def noise_regularizer(noise: torch.Tensor) -> torch.Tensor:
    """NVIDIA's multi-scale auto-correlation penalty of noise maps ``[B, H, W]`` -> ``[B]``."""
    n = noise.unsqueeze(1)
    total = noise.new_zeros(noise.shape[0])
    while True:
        total = total + (n * n.roll(1, dims=3)).mean(dim=(1, 2, 3)).square()
        total = total + (n * n.roll(1, dims=2)).mean(dim=(1, 2, 3)).square()
        if n.shape[-1] <= 8:
            return total
        n = F.avg_pool2d(n, 2)


@torch.no_grad()
def renormalize_noise(noise: torch.Tensor) -> None:
    """Zero mean and unit RMS per image, in place (the official step after every update)."""
    noise.sub_(noise.mean(dim=(1, 2), keepdim=True))
    noise.mul_(noise.square().mean(dim=(1, 2), keepdim=True).rsqrt())


class PerImageRandom:
    """Random draws ``[B, *shape]`` where image b's numbers depend only on its own pixels and the seed: a result then
    does not depend on which other images share its batch (the pipeline's ``batch_size`` changes nothing)."""

    def __init__(self, images: torch.Tensor, seed: int) -> None:
        self.device = images.device
        self.generators = []
        for image in images.detach().to("cpu", torch.float32):
            digest = hashlib.sha256(image.contiguous().numpy().tobytes()).digest()
            self.generators.append(torch.Generator().manual_seed(seed ^ int.from_bytes(digest[:7], "little")))

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(self.device)


def step_progress(progress: Progress, total: int, label: str):
    """``progress``: True for a tqdm bar, False for none, or a callable ``(step, total)`` (the web page's bar)."""
    from ..progress import progress_bar

    bar = progress_bar(total=total, desc=label, leave=False, disable=progress is not True)
    callback = progress if callable(progress) else None

    def advance(step: int) -> None:
        bar.update(1)
        if callback is not None:
            callback(step, total)

    return bar, advance


def project(generator: Generator, targets: torch.Tensor, settings: ProjectorSettings, *,
            distance: nn.Module | None, progress: Progress = False,
            w_stats: tuple[torch.Tensor, float] | None = None,
            history: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, WeightDelta | None]:
    """Optimise codes (and noise maps) for ``targets`` ``[B,C,R,R]`` in [-1, 1].

    Returns ``ws [B, num_ws, w_dim]`` and the optimised noise as an additive ``WeightDelta`` on the noise buffers
    (None with ``optimize_noise=False``). ``distance``: a perceptual distance ``(x, y) -> [B]`` or None.
    ``history``: if given, each step's per-image losses ``[B]`` are appended to it.
    """
    G, s = generator, settings
    l2_weight = s.l2_weight if s.l2_weight is not None else default_l2_weight(distance)
    batch, device = targets.shape[0], targets.device
    w_avg, w_std = w_stats if w_stats is not None else w_statistics(G, s.w_avg_samples)
    rows = 1 if s.space == "w" else G.num_ws
    w_opt = w_avg.to(device).reshape(1, 1, -1).repeat(batch, rows, 1).requires_grad_(True)
    rng = PerImageRandom(targets, s.seed)
    buffers = dict(G.synthesis.named_buffers())
    names = noise_buffer_names(G) if s.optimize_noise else []
    noise = {n: rng.randn(*buffers[n].shape).requires_grad_(True) for n in names}
    optimizer = torch.optim.Adam([w_opt, *noise.values()], betas=(0.9, 0.999), lr=s.learning_rate)

    def noise_delta() -> WeightDelta | None:
        return WeightDelta({n: v - buffers[n] for n, v in noise.items()}) if noise else None

    target_small = pooled_for_distance(targets)
    bar, advance = step_progress(progress, s.steps, f"{s.space} projection")
    with torch.enable_grad(), bar:
        for step in range(s.steps):
            lr = s.learning_rate_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            w_noise = rng.randn(*w_opt.shape[1:]) * (w_std * s.w_noise_factor_at(step))
            ws = (w_opt + w_noise).expand(-1, G.num_ws, -1) if rows == 1 else w_opt + w_noise
            images = G.synthesis(ws, weight_delta=noise_delta(), noise_mode="const")
            per_image = l2_weight * (images - targets).square().mean(dim=(1, 2, 3))
            if distance is not None and s.perceptual_weight:
                per_image = per_image + s.perceptual_weight * distance(pooled_for_distance(images), target_small)
            for v in noise.values():
                per_image = per_image + s.noise_regularize_weight * noise_regularizer(v)
            optimizer.zero_grad(set_to_none=True)
            per_image.sum().backward()  # a sum: every image's gradient is its own loss's
            if history is not None:
                history.append(per_image.detach().cpu())
            optimizer.step()
            for v in noise.values():
                renormalize_noise(v)
            advance(step + 1)
    ws = w_opt.detach().expand(-1, G.num_ws, -1).clone() if rows == 1 else w_opt.detach().clone()
    delta = noise_delta()
    return ws, None if delta is None else delta.detach()


# --- the methods --------------------------------------------------------------------------------------


class OptimizationMethod(Inverter):
    """A method with no trained parts: it runs on any generator, optionally with the domain's discriminator as
    its offline perceptual distance."""

    accepts_discriminator = True
    lpips_net: ClassVar[str] = "vgg"
    # ``create(preset="tiny")``: a few steps and samples, for tests and quick looks.
    tiny_options: ClassVar[Mapping[str, Any]] = {"steps": 3, "w_avg_samples": 64}

    def __init__(self, generator: Generator, *, discriminator: Discriminator | None = None,
                 defaults: Mapping[str, Any] | None = None) -> None:
        """``defaults``: this instance's own defaults for some options (checked like options)."""
        super().__init__(generator)
        self.discriminator = None if discriminator is None else discriminator.eval().requires_grad_(False)
        if defaults:
            self.options = self.check_options(defaults)
        self._distances: dict[tuple[str, str], tuple[str, nn.Module | None]] = {}
        self._forced_distance: tuple[str, nn.Module | None] | None = None
        self._w_stats: dict[int, tuple[torch.Tensor, float]] = {}

    @classmethod
    def create(cls, generator: Generator, *, preset: str = "tiny") -> OptimizationMethod:
        """Nothing to build: ``preset="tiny"`` only shortens the run (``tiny_options``); any other preset keeps the
        official settings."""
        return cls(generator, defaults=cls.tiny_options if preset == "tiny" else None)

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        check_perceptual(options["perceptual"])
        return options

    def use_distance(self, name: str, module: nn.Module | None) -> None:
        """Compare images with ``module`` (``(x, y) -> [B]``) from now on, whatever the ``perceptual`` option."""
        self._forced_distance = name, module

    def distance(self, choice: PerceptualChoice, device: torch.device, *,
                 lpips_net: str | None = None) -> tuple[str, nn.Module | None]:
        """The perceptual distance for ``choice``, built once. ``lpips_net``: the network ``"auto"`` means where
        LPIPS is installed (default: the method's official one, ``lpips_net``)."""
        net = lpips_net or self.lpips_net
        if self._forced_distance is not None:
            name, module = self._forced_distance
        else:
            if (choice, net) not in self._distances:
                self._distances[choice, net] = perceptual_distance(choice, lpips_net=net,
                                                                   discriminator=self.discriminator, device=device)
            name, module = self._distances[choice, net]
        return name, None if module is None else module.to(device)

    def w_statistics(self, num_samples: int) -> tuple[torch.Tensor, float]:
        """w_avg and w_std of the generator, computed once per sample count."""
        if num_samples not in self._w_stats:
            self._w_stats[num_samples] = w_statistics(self.generator, num_samples)
        return self._w_stats[num_samples]


_PROJECTOR_OPTIONS = {
    "learning_rate": 0.1, "w_avg_samples": 10_000, "initial_noise_factor": 0.05, "noise_ramp_length": 0.75,
    "lr_rampup_length": 0.05, "lr_rampdown_length": 0.25, "noise_regularize_weight": 1e5, "optimize_noise": True,
    "l2_weight": None, "perceptual_weight": 1.0, "perceptual": "auto", "seed": 303, "progress": True,
}


@register_method
class WProjection(OptimizationMethod):
    """NVIDIA's projector in W: one w per image, repeated over the layers; noise maps optimised too."""

    name = "w-opt"
    label = "W optimisation"
    summary = ("NVIDIA's StyleGAN2-ADA projector in W (1000 steps, lr 0.1): optimises one w and the noise maps "
               "per image; slow, nothing to train")
    space: ClassVar[Space] = "w"
    options: ClassVar[Mapping[str, Any]] = {"steps": 1000, **_PROJECTOR_OPTIONS}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        self.settings_of(options)
        return options

    def settings_of(self, options: Mapping[str, Any]) -> ProjectorSettings:
        """The projector's settings from checked options (``ProjectorSettings`` checks their values)."""
        return ProjectorSettings(space=self.space, **{k: v for k, v in options.items()
                                                      if k not in ("progress", "perceptual")})

    def forward(self, images: torch.Tensor, *, stopwatch: Stopwatch | None = None, **options) -> InversionResult:
        options = self.check_options(options)
        progress, choice = options["progress"], options["perceptual"]
        settings = self.settings_of(options)
        _, distance = self.distance(choice, images.device)
        w_stats = self.w_statistics(settings.w_avg_samples)
        if stopwatch is not None:
            stopwatch.lap("setup")
        ws, noise = project(self.generator, images, settings, distance=distance, progress=progress,
                            w_stats=w_stats)
        if stopwatch is not None:
            stopwatch.lap("optimise")
        with torch.no_grad():
            image = self.generator.synthesis(ws, weight_delta=noise, noise_mode="const")
        if stopwatch is not None:
            stopwatch.lap("render")
        return InversionResult(ws=ws, image=image, weight_delta=noise)


@register_method
class WPlusProjection(WProjection):
    """The projector in W+ (every row its own code), the HyperInverter paper's "SG2 W+" baseline."""

    name = "wplus-opt"
    label = "W+ optimisation"
    summary = ("the projector in W+, as the HyperInverter paper's SG2 W+ baseline (2000 steps, lr 0.01); "
               "best reconstruction of the encoder-free methods, weakest edits")
    space: ClassVar[Space] = "w+"
    options: ClassVar[Mapping[str, Any]] = {"steps": 2000, **_PROJECTOR_OPTIONS, "learning_rate": 0.01}
