"""HyperInverter's two training phases, on the shared loop (see :mod:`.encoders`).

Phase I (``train_w_encoder``): E1 with the reconstruction loss on real images, optionally mixed with synthetic
pairs ``(w, G(w))`` and a latent loss, since G is known.
Phase II (``train_hypernetwork``): E1 and G frozen; the feature encoder and the hypernetworks learn with the
reconstruction loss, then (from ``adv_start``) a non-saturating adversarial loss against the generator's own
discriminator, fine-tuned with lazy R1, as in the official schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..methods.hyperinverter import HyperInverter
from ..methods.phase1 import Phase1, encoder_input_height
from ..models.encoders import FeatureEncoder, FeatureEncoderConfig, WEncoder, WEncoderConfig
from ..models.hypernetwork import HyperNetwork
from .distributed import DistributedContext
from .encoders import EncoderTask, EncoderTrainingConfig, frozen_phase1
from .loop import TrainingResult, fit


@dataclass(kw_only=True)
class InversionTrainingConfig(EncoderTrainingConfig):
    """Either phase of HyperInverter. Phase II adds the Phase I model and the sizes of its own networks."""

    w_encoder: str | None = None  # the Phase I pipeline folder (required for Phase II)
    feature_channels: int = 512
    feature_size: int = 8
    hidden_dim: int = 128
    regressor_width: int = 64
    targets: str = "conv_without_bias"


def phase1_task(cfg: InversionTrainingConfig, device: torch.device, ctx: DistributedContext) -> EncoderTask:
    gan = cfg.load_generator(device, adversarial=False)
    G = gan.generator
    w_encoder = WEncoder(WEncoderConfig(trunk=cfg.trunk, in_channels=G.config.img_channels, w_dim=G.w_dim))
    cfg.init_trunk(w_encoder)
    method = Phase1(G, w_encoder=w_encoder, encoder_resolution=cfg.encoder_resolution, content_rows=cfg.content_rows)
    return EncoderTask(cfg, device, method=method, trainable=w_encoder, gan=gan, bundle={"phase1": method})


def phase2_task(cfg: InversionTrainingConfig, device: torch.device, ctx: DistributedContext) -> EncoderTask:
    if cfg.w_encoder is None:
        raise ConfigError(None, "w_encoder: Phase II needs the folder of a trained Phase I model (train w-encoder "
                                "makes one)")
    gan = cfg.load_generator(device, adversarial=cfg.adversarial)
    G = gan.generator
    phase1 = frozen_phase1(cfg.w_encoder, G, device, generator_name=cfg.generator, content_rows=cfg.content_rows)
    w_encoder, rows = phase1.w_encoder, phase1.content_rows  # frozen, in eval mode
    height = encoder_input_height(phase1.encoder_resolution, rows)
    feature_encoder = FeatureEncoder(FeatureEncoderConfig(
        trunk=cfg.trunk, in_channels=G.config.img_channels, input_size=phase1.encoder_resolution, n_styles=G.num_ws,
        feature_channels=cfg.feature_channels, feature_size=cfg.feature_size, input_height=height))
    cfg.init_trunk(feature_encoder)
    hypernetwork = HyperNetwork.from_generator(G, targets=cfg.targets, feature_channels=cfg.feature_channels,
                                               feature_size=cfg.feature_size, hidden_dim=cfg.hidden_dim,
                                               inner_channels=cfg.regressor_width)
    method = HyperInverter(G, w_encoder=w_encoder, feature_encoder=feature_encoder, hypernetwork=hypernetwork,
                           encoder_resolution=phase1.encoder_resolution, content_rows=rows)
    bundle = {"phase1": Phase1(G, w_encoder=w_encoder, encoder_resolution=phase1.encoder_resolution, content_rows=rows),
              "hyperinverter": method}
    trainable = nn.ModuleDict({"feature_encoder": feature_encoder, "hypernetwork": hypernetwork})
    return EncoderTask(cfg, device, method=method, trainable=trainable, gan=gan, bundle=bundle, synthetic=False)


def train_w_encoder(cfg: InversionTrainingConfig, *, images: torch.Tensor | None = None,
                    val_images: torch.Tensor | None = None) -> TrainingResult:
    """Phase I: train E1. ``images``/``val_images`` (uint8 ``[N,C,R,R]``) bypass ``cfg.data``."""
    if cfg.w_encoder is not None:  # (the config is both phases': Phase I ignored it, and trained E1 from scratch)
        raise ConfigError(None, "w_encoder: is Phase II's frozen Phase I model; Phase I trains its own W encoder "
                                "(train hypernetwork takes w_encoder)")
    return fit(cfg, lambda device, ctx: phase1_task(cfg, device, ctx), images=images, val_images=val_images)


def train_hypernetwork(cfg: InversionTrainingConfig, *, images: torch.Tensor | None = None,
                       val_images: torch.Tensor | None = None) -> TrainingResult:
    """Phase II: train the feature encoder and the hypernetworks with E1 and G frozen."""
    return fit(cfg, lambda device, ctx: phase2_task(cfg, device, ctx), images=images, val_images=val_images)
