"""Datasets: any image folder, and the two demo domains that install offline."""

from .folder import ImageFolderDataset

__all__ = ["ImageFolderDataset"]
