"""Image encoders: ``WEncoder`` (E1: image -> w), ``FeatureEncoder`` (image -> per-layer feature maps),
``StyleCodeEncoder`` (pSp / e4e: image -> one code row per layer) and ``E2StyleEncoders`` (E2Style's stages).

Presets: ``ENCODER_PRESETS["ffhq"]`` (IR-SE50, 18 styles), ``["church"]`` (ResNet-34, 14 styles), ``["tiny"]``
and ``["tiny_resnet"]`` (4 one-unit stages of widths 8..64, 64 px input, 8 styles: tests and demo models).
Building a model never loads weights; foreign weights go through ``hyperinverter.convert.backbones``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .backbones import (
    IR_UNITS,
    RESNET_BLOCKS,
    Backbone,
    BackboneFeatures,
    BackboneKind,
    BasicBlock,
    IRSEBackbone,
    IRUnit,
    ResNetBackbone,
    SEModule,
    TrunkConfig,
    build_backbone,
)
from .e2style import E2StyleConfig, E2StyleEncoder, E2StyleEncoderConfig, E2StyleEncoders
from .feature_encoder import FeatureEncoder, FeatureEncoderConfig, StyleBlock
from .style_code_encoder import StyleCodeEncoder, StyleCodeEncoderConfig, StyleCodeMode
from .w_encoder import WEncoder, WEncoderConfig


@dataclass(frozen=True)
class EncoderPreset:
    """Everything needed to build a matching W encoder and feature encoder: their trunk and sizes."""

    trunk: TrunkConfig
    in_channels: int = 3
    input_size: int = 256
    w_dim: int = 512
    n_styles: int = 18
    feature_channels: int = 512
    feature_size: int = 8
    coarse_end: int = 3
    middle_end: int = 7

    def w_encoder_config(self) -> WEncoderConfig:
        return WEncoderConfig(trunk=self.trunk, in_channels=self.in_channels, w_dim=self.w_dim)

    def feature_encoder_config(self) -> FeatureEncoderConfig:
        return FeatureEncoderConfig(trunk=self.trunk, in_channels=self.in_channels, input_size=self.input_size,
                                    n_styles=self.n_styles, feature_channels=self.feature_channels,
                                    feature_size=self.feature_size, coarse_end=self.coarse_end,
                                    middle_end=self.middle_end)

    def style_code_encoder_config(self, mode: StyleCodeMode) -> StyleCodeEncoderConfig:
        return StyleCodeEncoderConfig(trunk=self.trunk, in_channels=self.in_channels, input_size=self.input_size,
                                      n_styles=self.n_styles, feature_channels=self.feature_channels,
                                      coarse_end=self.coarse_end, middle_end=self.middle_end, w_dim=self.w_dim,
                                      mode=mode)

    def build_w_encoder(self) -> WEncoder:
        """E1 with random weights."""
        return WEncoder(self.w_encoder_config())

    def build_feature_encoder(self) -> FeatureEncoder:
        """The feature encoder with random weights."""
        return FeatureEncoder(self.feature_encoder_config())

    def build_style_code_encoder(self, mode: StyleCodeMode) -> StyleCodeEncoder:
        """A pSp (``mode="psp"``) or e4e (``"e4e"``) W+ encoder with random weights."""
        return StyleCodeEncoder(self.style_code_encoder_config(mode))

    def e2style_config(self, stages: int = 3) -> E2StyleConfig:
        return E2StyleConfig(encoder=E2StyleEncoderConfig(trunk=self.trunk, in_channels=self.in_channels,
                                                          input_size=self.input_size, n_styles=self.n_styles,
                                                          w_dim=self.w_dim), stages=stages)

    def build_e2style_encoders(self, stages: int = 3) -> E2StyleEncoders:
        """E2Style's stage encoders with random weights (and a zero ``latent_avg``)."""
        return E2StyleEncoders(self.e2style_config(stages))


def _tiny(preset: EncoderPreset) -> EncoderPreset:
    # The official topology (1/2/3 convs per head) scaled down; fits a 32 px, w_dim 16 generator.
    return dataclasses.replace(
        preset,
        trunk=dataclasses.replace(preset.trunk, units=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
        input_size=64,
        w_dim=16,
        n_styles=8,
        feature_channels=16,
        feature_size=2,
    )


# Official HyperInverter faces (FFHQ 1024: 18 styles) and churches (LSUN 256: 14 styles), and tiny versions.
_FFHQ = EncoderPreset(trunk=TrunkConfig("ir_se", 50), n_styles=18)
_CHURCH = EncoderPreset(trunk=TrunkConfig("resnet", 34), n_styles=14)
ENCODER_PRESETS: dict[str, EncoderPreset] = {
    "ffhq": _FFHQ,
    "church": _CHURCH,
    "tiny": _tiny(_FFHQ),
    "tiny_resnet": _tiny(_CHURCH),
}


def encoder_preset(name: str, **overrides: object) -> EncoderPreset:
    """A preset by name, with fields replaced, e.g. ``encoder_preset("tiny", in_channels=1, n_styles=10)``."""
    if name not in ENCODER_PRESETS:
        raise KeyError(f"unknown encoder preset {name!r}; known: {sorted(ENCODER_PRESETS)}")
    return dataclasses.replace(ENCODER_PRESETS[name], **overrides)  # type: ignore[arg-type]


__all__ = [
    "ENCODER_PRESETS",
    "IR_UNITS",
    "RESNET_BLOCKS",
    "Backbone",
    "BackboneFeatures",
    "BackboneKind",
    "BasicBlock",
    "E2StyleConfig",
    "E2StyleEncoder",
    "E2StyleEncoderConfig",
    "E2StyleEncoders",
    "EncoderPreset",
    "IRSEBackbone",
    "IRUnit",
    "FeatureEncoder",
    "FeatureEncoderConfig",
    "ResNetBackbone",
    "SEModule",
    "StyleBlock",
    "StyleCodeEncoder",
    "StyleCodeEncoderConfig",
    "StyleCodeMode",
    "TrunkConfig",
    "WEncoder",
    "WEncoderConfig",
    "build_backbone",
    "encoder_preset",
]
