"""Latent edits that reuse an image's generator offsets: InterFaceGAN, GANSpace, SeFa."""

from .boundaries import TrainedBoundary, read_labels, save_boundary, train_boundary, train_from_labels
from .catalogue import CatalogueEntry, direction_catalogue, resolve_direction
from .directions import (
    Direction,
    GANSpaceDirection,
    LinearDirection,
    load_direction,
    principal_directions,
    save_direction,
)
from .ganspace import GANSpaceBasis, compute_ganspace
from .sefa import factorize_weight, sefa_directions

__all__ = ["CatalogueEntry", "Direction", "GANSpaceBasis", "GANSpaceDirection", "LinearDirection", "TrainedBoundary",
           "compute_ganspace", "direction_catalogue", "factorize_weight", "load_direction", "principal_directions",
           "read_labels", "resolve_direction", "save_boundary", "save_direction", "sefa_directions", "train_boundary",
           "train_from_labels"]
