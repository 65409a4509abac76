"""hyperinverter: HyperInverter (CVPR 2022) and its peers for StyleGAN2 inversion and editing."""

__version__ = "0.1.0"
