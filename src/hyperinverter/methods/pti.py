"""PTI, pivotal tuning (Roich et al. 2022): a W pivot by projection, then the generator tuned on the image.

The official recipe (``../shared/reference/methods_baselines.md`` §4):

1. **Pivot**: the projector in W with PTI's settings: 450 steps, lr 0.01, w statistics from 600 samples, and the
   projector's LPIPS-VGG (``pivot_perceptual``; no L2 term with LPIPS, ``pivot_l2_weight``). Its optimised noise
   maps are thrown away: tuning and rendering use the generator's own noise buffers.
2. **Tuning**: every synthesis parameter, Adam lr 3e-4, up to 350 steps, loss L2 + LPIPS-alex between
   G(w_p) and the image at full resolution (the pivot's projector compares 256-px copies; tuning does not); an
   image stops (before its update) once its LPIPS is ≤ 0.06.
3. **Locality regulariser** (the paper's §3.3): each step one z is mapped with ψ = 0.5, the code moved to
   distance α = 30 from the pivot along it, ``w_r = w_p + α·(w_z − w_p)/‖w_z − w_p‖``, and the tuned generator
   must keep the original's image there (0.1·L2 + 0.1·LPIPS, noise off). The official repository ships it
   switched off (``use_locality_regularization=False``); here it is on, as in the paper, and an option.

The tuned generator is stored as what it is relative to the original: an additive :class:`WeightDelta` on every
synthesis parameter, one per image. Several images tune in one batched synthesis call with their own offsets and
their own Adam state (Adam is element-wise and the loss a sum of per-image terms, so tuning Δθ from zero is exactly
tuning θ), and a PTI result is edited, interpolated, saved and exported like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..models.weight_delta import WeightDelta
from .base import InversionResult, Stopwatch
from .projector import (
    OptimizationMethod,
    PerImageRandom,
    ProjectorSettings,
    check_number,
    check_perceptual,
    project,
    step_progress,
)
from .registry import register_method


@register_method
class PTI(OptimizationMethod):
    """Pivotal tuning: a W pivot, then per-image generator offsets Δθ on every synthesis parameter."""

    name = "pti"
    label = "PTI"
    summary = ("pivotal tuning: W projection (450 steps) then the generator tuned per image (350 steps, "
               "lr 3e-4), kept as an additive Δθ; the best reconstruction, and the slowest")
    lpips_net: ClassVar[str] = "alex"
    tiny_options: ClassVar[Mapping[str, Any]] = {"pivot_steps": 3, "pivot_w_avg_samples": 64, "steps": 3}
    options: ClassVar[Mapping[str, Any]] = {
        "pivot_steps": 450, "pivot_learning_rate": 0.01, "pivot_w_avg_samples": 600, "pivot_perceptual": "auto",
        "pivot_l2_weight": None,
        "steps": 350, "learning_rate": 3e-4, "l2_weight": 1.0, "perceptual_weight": 1.0,
        "early_stop_lpips": 0.06, "locality_regularization": True, "locality_alpha": 30.0, "locality_psi": 0.5,
        "locality_l2_weight": 0.1, "locality_perceptual_weight": 0.1, "perceptual": "auto", "seed": 303,
        "progress": True,
    }

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        check_perceptual(options["pivot_perceptual"])
        try:
            self.pivot_settings(options)
        except ValueError as e:
            raise ValueError(f"the pivot's projection: {e} (PTI's pivot_* options)") from None
        steps = options["steps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"steps must be a whole number of tuning steps (0 or more), got {steps!r}")
        for name in ("learning_rate", "locality_alpha"):
            check_number(name, options[name], positive=True)
        for name in ("l2_weight", "perceptual_weight", "early_stop_lpips", "locality_l2_weight",
                     "locality_perceptual_weight"):
            check_number(name, options[name], positive=False)
        if not 0 <= options["locality_psi"] <= 1:
            raise ValueError(f"locality_psi (the truncation of the locality samples) must be in [0, 1], got "
                             f"{options['locality_psi']!r}")
        return options

    @staticmethod
    def pivot_settings(o: Mapping[str, Any]) -> ProjectorSettings:
        """The W projection that finds the pivot, from checked options (``ProjectorSettings`` checks them). Its
        distance has weight 1, as the official projector's: ``perceptual_weight`` is the tuning's."""
        return ProjectorSettings(space="w", steps=o["pivot_steps"], learning_rate=o["pivot_learning_rate"],
                                 w_avg_samples=o["pivot_w_avg_samples"], l2_weight=o["pivot_l2_weight"],
                                 perceptual_weight=1.0, seed=o["seed"])

    def forward(self, images: torch.Tensor, *, stopwatch: Stopwatch | None = None, **options) -> InversionResult:
        o = self.check_options(options)
        G, device, _batch = self.generator, images.device, images.shape[0]
        distance_name, distance = self.distance(o["perceptual"], device)
        # The pivot is NVIDIA's projector, with its LPIPS-VGG; the tuning compares with LPIPS-AlexNet.
        _, pivot_distance = self.distance(o["pivot_perceptual"], device, lpips_net="vgg")
        pivot_settings = self.pivot_settings(o)
        w_stats = self.w_statistics(pivot_settings.w_avg_samples)
        if stopwatch is not None:
            stopwatch.lap("setup")
        pivot, _ = project(G, images, pivot_settings, distance=pivot_distance, progress=o["progress"],
                           w_stats=w_stats)
        if stopwatch is not None:
            stopwatch.lap("pivot")
        delta = self.tune(images, pivot, o, distance, early_stop=distance_name.startswith("lpips"))
        if stopwatch is not None:
            stopwatch.lap("tune")
        with torch.no_grad():
            image = G.synthesis(pivot, weight_delta=delta, noise_mode="const")
        if stopwatch is not None:
            stopwatch.lap("render")
        return InversionResult(ws=pivot, image=image, weight_delta=delta)

    def tune(self, images: torch.Tensor, pivot: torch.Tensor, o: Mapping[str, Any],
             distance: torch.nn.Module | None, *, early_stop: bool) -> WeightDelta:
        """Per-image offsets on every synthesis parameter, tuned so that ``G(pivot; θ+Δθ)`` matches ``images``.

        ``early_stop``: stop an image once its perceptual distance is ≤ ``early_stop_lpips`` (only meaningful for
        LPIPS, the official distance).
        """
        G, batch, device = self.generator, images.shape[0], images.device
        params = dict(G.synthesis.named_parameters())
        delta = {name: torch.zeros(batch, *p.shape, device=device, requires_grad=True) for name, p in params.items()}
        optimizer = torch.optim.Adam(delta.values(), lr=o["learning_rate"])
        rng = PerImageRandom(images, o["seed"] + 1)
        active = torch.ones(batch, dtype=torch.bool, device=device)
        bar, advance = step_progress(o["progress"], o["steps"], "PTI tuning")
        with torch.enable_grad(), bar:
            for step in range(o["steps"]):
                tuned = WeightDelta(delta)
                out = G.synthesis(pivot, weight_delta=tuned, noise_mode="const")
                per_image = o["l2_weight"] * (out - images).square().mean(dim=(1, 2, 3))
                if distance is not None:
                    perceptual = distance(out, images)  # official: full resolution, no resize
                    per_image = per_image + o["perceptual_weight"] * perceptual
                    if early_stop:  # official: measured before the update, and the update is skipped
                        active &= perceptual.detach() > o["early_stop_lpips"]
                        if not bool(active.any()):
                            break
                if o["locality_regularization"]:
                    per_image = per_image + self.locality_loss(pivot, tuned, o, distance, rng)
                optimizer.zero_grad(set_to_none=True)
                (per_image * active).sum().backward()
                frozen = {n: t.detach().clone() for n, t in delta.items()} if not bool(active.all()) else None
                optimizer.step()
                if frozen is not None:  # Adam's momentum would move a stopped image: put it back
                    with torch.no_grad():
                        for n, t in delta.items():
                            t.copy_(torch.where(active.reshape(-1, *[1] * (t.ndim - 1)), t, frozen[n]))
                advance(step + 1)
        return WeightDelta({n: t.detach() for n, t in delta.items()})

    def locality_loss(self, pivot: torch.Tensor, tuned: WeightDelta, o: Mapping[str, Any],
                      distance: torch.nn.Module | None, rng: PerImageRandom) -> torch.Tensor:
        """``[B]``: how much the tuned generator changes the original's images at one random code per image,
        ``α`` away from the pivot towards a truncated sample."""
        G = self.generator
        z = rng.randn(G.z_dim)
        with torch.no_grad():
            w_z = G.mapping(z, truncation_psi=o["locality_psi"])
            direction = w_z - pivot
            w_r = pivot + o["locality_alpha"] * direction / direction.flatten(1).norm(dim=1).reshape(-1, 1, 1)
            original = G.synthesis(w_r, noise_mode="none")
        changed = G.synthesis(w_r, weight_delta=tuned, noise_mode="none")
        loss = o["locality_l2_weight"] * F.mse_loss(changed, original, reduction="none").mean(dim=(1, 2, 3))
        if distance is not None:
            loss = loss + o["locality_perceptual_weight"] * distance(changed, original)
        return loss
