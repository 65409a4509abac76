"""GANSpace: principal directions of W, computed from the generator itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.stylegan2 import Generator


@dataclass(frozen=True)
class GANSpaceBasis:
    """``comp: [n, w_dim]`` orthonormal rows (by decreasing variance), ``mean: [w_dim]``, ``std: [n]``."""

    comp: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __post_init__(self) -> None:
        n, w_dim = self.comp.shape
        assert self.mean.shape == (w_dim,), f"mean must be [{w_dim}], got {tuple(self.mean.shape)}"
        assert self.std.shape == (n,), f"std must be [{n}], got {tuple(self.std.shape)}"

    @property
    def num_components(self) -> int:
        return self.comp.shape[0]


def samples_problem(num_samples: int, num_components: int) -> str | None:
    """Why a PCA of ``num_components`` cannot be taken of ``num_samples`` samples, or None if it can."""
    if num_samples <= num_components:
        return f"a PCA of {num_components} components needs more than {num_components} samples, got {num_samples}"
    return None


@torch.no_grad()
def compute_ganspace(
    G: Generator, *, num_samples: int = 100_000, num_components: int = 80, seed: int = 0, batch_size: int = 10_000
) -> GANSpaceBasis:
    """PCA of ``w = mapping(z)`` over seeded samples (no truncation), as GANSpace does for StyleGAN2.

    The samples are summed batch by batch (their sum and their products, in float64, shifted by the first batch's
    mean so that the sums do not cancel), so memory stays at one batch and a ``w_dim``² matrix however many there
    are."""
    problem = samples_problem(num_samples, num_components)
    if problem is not None:
        raise ValueError(problem)
    device = G.w_avg.device
    gen = torch.Generator().manual_seed(seed)
    shift = total = products = None
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        w = G.mapping(torch.randn(n, G.z_dim, generator=gen).to(device))[:, 0].double().cpu()
        if shift is None:
            shift = w.mean(dim=0)
            total, products = torch.zeros_like(shift), torch.zeros(len(shift), len(shift), dtype=torch.float64)
        w -= shift
        total += w.sum(dim=0)
        products += w.T @ w
    offset = total / num_samples
    mean = shift + offset
    cov = (products - num_samples * torch.outer(offset, offset)) / (num_samples - 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    order = eigvals.flip(0)[:num_components]
    comp = eigvecs.flip(1)[:, :num_components].T
    # Fix each component's sign so results do not depend on the eigensolver.
    comp = comp * torch.sign(comp[:, comp.abs().argmax(dim=1)].diagonal())[:, None]
    return GANSpaceBasis(comp=comp.float(), mean=mean.float(), std=order.clamp_min(0).sqrt().float())
