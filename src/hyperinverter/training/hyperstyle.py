"""HyperStyle's trainer, on the shared loop: the hypernetwork learns with the W encoder and G frozen.

As the official coach: every batch runs ``n_iters_per_batch`` iterations from the W encoder's image; iteration t
predicts from ``cat(x, ŷ_{t-1})`` with ``ŷ_{t-1}`` and ``Δ_{t-1}`` detached, and its loss is back-propagated (here
the iterations' losses are summed, which gives the same gradients); one optimiser step per batch. The official
settings for faces are Ranger at lr 1e-4, batch 8, 5 iterations, and L2 1.0 + LPIPS 0.8 + ArcFace identity 0.1 on
images pooled to 256 px. The defaults here are the first four (L2 1.0, at full resolution); LPIPS, the identity
term and ``loss_resolution`` are off by default because their networks cannot be downloaded offline: set
``lpips_weight: 0.8``, ``id_weight: 0.1``, ``id_model: arcface`` and ``loss_resolution: 256`` for the official
recipe (the configs use the offline substitutes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..methods import InversionResult
from ..methods.hyperstyle import MAX_ITERATIONS, HyperStyle
from ..methods.phase1 import Phase1, encoder_input_height, encoder_input_shape
from ..models.encoders import TrunkConfig
from ..models.hyperstyle import (
    HyperStyleNet,
    hyperstyle_targets,
    input_height_problem,
    trunk_reads_input_size,
)
from ..pipeline import MAX_ENCODER_RESOLUTION
from .distributed import DistributedContext
from .encoders import EncoderTask, EncoderTrainingConfig, frozen_phase1
from .loop import TrainingResult, fit


@dataclass(kw_only=True)
class HyperStyleTrainingConfig(EncoderTrainingConfig):
    """HyperStyle on a frozen W encoder (``w_encoder``: a bundle holding the ``phase1`` method, e.g. a Phase I run
    or an imported W encoder). ``trunk`` is the hypernetwork's ResNet (6 input channels); ``input_size`` its input
    side (default: the W encoder's); ``layers_to_tune`` official indices (None: the official default, ``[]``: every
    layer, ToRGB included)."""

    w_encoder: str
    trunk: TrunkConfig = TrunkConfig("resnet", 34)
    input_size: int | None = None
    layers_to_tune: tuple[int, ...] | None = None
    separable: bool = False
    code_dim: int | None = None  # default: the trunk's width
    hyper_inner: int = 128
    refine_inner: int = 256
    n_iters_per_batch: int = 5
    optimizer: str = "ranger"
    l2_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        size = self.input_size
        # (0 took the W encoder's without a word; -1 failed after the models were built, naming no file)
        if size is not None and not (trunk_reads_input_size(size) and size <= MAX_ENCODER_RESOLUTION):
            raise ValueError(f"input_size must be 16 x a power of two >= 2, at most {MAX_ENCODER_RESOLUTION} (32, 64, "
                             f"..., 256 officially), or null for the W encoder's, got {size}")
        if not self.n_iters_per_batch <= MAX_ITERATIONS:  # (found once the models were built, naming no file)
            raise ValueError(f"n_iters_per_batch must be at most {MAX_ITERATIONS}, got {self.n_iters_per_batch}")
        if self.layers_to_tune is not None and min(self.layers_to_tune, default=0) < 0:
            raise ValueError(f"layers_to_tune are layer indices (0 or more), got {list(self.layers_to_tune)}")
        if self.content_rows is not None and self.input_size is not None:
            height = encoder_input_shape(self.input_size, self.content_rows)[0]
            problem = input_height_problem(self.input_size, height)
            if problem is not None:
                raise ValueError(f"input_size {self.input_size} reads content_rows {list(self.content_rows)} at "
                                 f"{height}x{self.input_size}: {problem}")


class HyperStyleTask(EncoderTask):
    """The official iterative scheme (see the module docstring) on :class:`EncoderTask`'s loop plumbing."""

    def reconstruction(self, x: torch.Tensor, *, gen: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, dict[str, float], InversionResult]:
        method, iterations = self.method, self.cfg.n_iters_per_batch  # (fixed noise, as the official coach)
        with torch.no_grad():
            ws = method.encode_w(x)
            start = method.generator.synthesis(ws, noise_mode="const")
        out = method.refine(x, ws, start, iterations=iterations, detach=True)
        total, stats = 0.0, {}
        for t, image in enumerate(out.steps, start=1):
            loss, parts = self.compare(image, x)
            total = total + loss
            stats[f"loss/iteration_{t}"] = float(loss.detach())
        stats.update(parts)  # the parts of the last iteration
        return total, stats, out


def hyperstyle_task(cfg: HyperStyleTrainingConfig, device: torch.device, ctx: DistributedContext) -> HyperStyleTask:
    gan = cfg.load_generator(device, adversarial=cfg.adversarial)
    G = gan.generator
    try:  # (the layers this generator has: its error named neither the key nor the file)
        hyperstyle_targets(G, cfg.layers_to_tune)
    except ValueError as e:
        raise ConfigError(None, f"layers_to_tune: {e}") from None
    phase1 = frozen_phase1(cfg.w_encoder, G, device, generator_name=cfg.generator, content_rows=cfg.content_rows)
    rows, input_size = phase1.content_rows, cfg.input_size or phase1.encoder_resolution
    hypernetwork = HyperStyleNet.from_generator(
        G, layers=cfg.layers_to_tune, trunk=cfg.trunk, input_size=input_size, code_dim=cfg.code_dim,
        hyper_inner=cfg.hyper_inner, refine_inner=cfg.refine_inner, separable=cfg.separable,
        input_height=encoder_input_height(input_size, rows))
    cfg.init_trunk(hypernetwork)
    # The W encoder reads as it was trained (a HyperInverter Phase I: without antialiasing).
    method = HyperStyle(G, w_encoder=phase1.w_encoder, hypernetwork=hypernetwork,
                        encoder_resolution=phase1.encoder_resolution, content_rows=rows,
                        encoder_antialias=phase1.encoder_antialias)
    bundle = {"phase1": Phase1(G, w_encoder=phase1.w_encoder, encoder_resolution=phase1.encoder_resolution,
                               content_rows=rows, encoder_antialias=phase1.encoder_antialias),
              "hyperstyle": method}
    return HyperStyleTask(cfg, device, method=method, trainable=hypernetwork, gan=gan, bundle=bundle, synthetic=False,
                          options={"iterations": cfg.n_iters_per_batch})


def train_hyperstyle(cfg: HyperStyleTrainingConfig, *, images: torch.Tensor | None = None,
                     val_images: torch.Tensor | None = None) -> TrainingResult:
    """Train (or resume) HyperStyle's hypernetwork per ``cfg``."""
    return fit(cfg, lambda device, ctx: hyperstyle_task(cfg, device, ctx), images=images, val_images=val_images)
