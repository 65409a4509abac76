"""Latent edits that reuse an image's generator offsets: InterFaceGAN, GANSpace."""

from .directions import Direction, GANSpaceDirection, LinearDirection, load_direction, save_direction
from .ganspace import GANSpaceBasis, compute_ganspace

__all__ = ["Direction", "GANSpaceBasis", "GANSpaceDirection", "LinearDirection", "compute_ganspace",
           "load_direction", "save_direction"]
