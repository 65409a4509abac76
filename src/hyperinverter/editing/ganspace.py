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


@torch.no_grad()
def compute_ganspace(
    G: Generator, *, num_samples: int = 100_000, num_components: int = 80, seed: int = 0, batch_size: int = 10_000
) -> GANSpaceBasis:
    """PCA of ``w = mapping(z)`` over seeded samples (no truncation), as GANSpace does for StyleGAN2."""
    if num_samples <= num_components:
        raise ValueError(f"a PCA of {num_components} components needs more than {num_components} samples, got "
                         f"{num_samples}")
    device = G.w_avg.device
    gen = torch.Generator().manual_seed(seed)
    ws = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        ws.append(G.mapping(torch.randn(n, G.z_dim, generator=gen).to(device))[:, 0].double().cpu())
    w = torch.cat(ws)
    mean = w.mean(dim=0)
    centred = w - mean
    cov = centred.T @ centred / (len(w) - 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    order = eigvals.flip(0)[:num_components]
    comp = eigvecs.flip(1)[:, :num_components].T
    # Fix each component's sign so results do not depend on the eigensolver.
    comp = comp * torch.sign(comp[:, comp.abs().argmax(dim=1)].diagonal())[:, None]
    return GANSpaceBasis(comp=comp.float(), mean=mean.float(), std=order.clamp_min(0).sqrt().float())
