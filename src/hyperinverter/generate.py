"""Sample images from a generator: seeds -> z -> (truncated) ws -> images."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from .models.stylegan2 import Generator

MAX_SEEDS = 100_000


def parse_seeds(spec: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (at most ``MAX_SEEDS`` of them)."""
    seeds: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seed range {part!r}: use forms like '0-15' or '1,4,9-12'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: end before start")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise ValueError(f"seed range {spec!r} asks for more than {MAX_SEEDS} seeds")
        seeds.extend(range(lo, hi + 1))
    return seeds


def z_from_seeds(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """One z per seed, independent of batch composition (``np.random.RandomState(seed)``-free, torch only)."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def generate_images(
    G: Generator,
    seeds: Sequence[int],
    *,
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    batch_size: int = 16,
) -> torch.Tensor:
    """Images ``[N, C, R, R]`` in [-1, 1] for ``seeds``, on the generator's device."""
    device = G.w_avg.device
    z = z_from_seeds(seeds, G.z_dim).to(device)
    out = [G(z[i : i + batch_size], truncation_psi=truncation_psi, noise_mode=noise_mode)
           for i in range(0, len(seeds), batch_size)]
    return torch.cat(out)
