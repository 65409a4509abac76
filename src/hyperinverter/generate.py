"""Sample images from a generator: seeds -> z -> (truncated) ws -> images, as one tensor or one file per seed."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .bounds import MAX_SEED
from .models.stylegan2 import Generator

logger = logging.getLogger(__name__)

MAX_SEEDS = 100_000


def parse_seeds(spec: str, *, what: str = "seed") -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``: each seed once, in the order given, at most ``MAX_SEEDS`` of them, each
    at most ``MAX_SEED``. ``what`` names the numbers in errors (``"component"``: GANSpace's sheet takes its
    components in the same form)."""
    seeds: dict[int, None] = {}  # ordered, without repeats
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad {what} range {part!r}: use forms like '0-15' or '1,4,9-12'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"bad {what} range {part!r}: end before start")
        if hi > MAX_SEED:
            raise ValueError(f"bad {what} range {part!r}: {what}s go from 0 to {MAX_SEED}")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise ValueError(f"{what} range {spec!r} asks for more than {MAX_SEEDS} {what}s")
        seeds.update(dict.fromkeys(range(lo, hi + 1)))
    return list(seeds)


SEED_DRAWS = ("nvidia", "torch")


def z_from_seeds(seeds: Sequence[int], z_dim: int, *, draw: str = "nvidia") -> torch.Tensor:
    """One z per seed, independent of batch composition. ``draw``: ``"nvidia"``, as NVIDIA's ``generate.py``
    (``np.random.RandomState(seed).randn``), so that a seed is the same sample here as there; ``"torch"``,
    ``torch.randn`` of the seed, as this package drew them before (labels tables its ``directions label`` wrote
    then, and the latents direction files record their probe with)."""
    if draw == "nvidia":
        return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()
    if draw == "torch":
        return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    raise ValueError(f"unknown seed draw {draw!r} (known: {', '.join(SEED_DRAWS)})")


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


def sample_path(out_dir: Path, seed: int) -> Path:
    """Where :func:`write_samples` puts a seed's image (NVIDIA's ``gen_images.py`` names)."""
    return out_dir / f"seed{seed:04d}.png"


@dataclass
class SampleReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # already there, made by the same generator and settings
    failed: list[Exception] = field(default_factory=list)  # a seed whose file name holds a file we did not write


@torch.no_grad()
def write_samples(
    G: Generator,
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
) -> SampleReport:
    """One PNG per seed in ``out_dir`` (:func:`sample_path`), a batch in memory at a time, each written atomically.

    Each PNG records what made it (the generator's fingerprint, the seed and its draw, truncation and noise mode), so
    that running it again skips the seeds it would make again: an interrupted run resumes. ``overwrite``: redo them
    all. Files are not flushed one by one (samples can be made again): after a crash, a file that does not read back
    is redone.
    """
    from .errors import OutputError
    from .inversion.files import generator_fingerprint
    from .io.files import atomic_write_bytes, check_file_replaceable, output_folder
    from .io.images import image_bytes, images_made_with
    from .io.work import fingerprint_of
    from .pipeline import ensure_finite
    from .progress import progress_bar

    out_dir = Path(out_dir)
    with output_folder(out_dir):  # (another run writing into it is refused)
        # (the draw: files written when seeds were drawn with torch, of other latents, were kept as done on a re-run)
        made_by = fingerprint_of([generator_fingerprint(G), truncation_psi, noise_mode, "z: nvidia"])
        made = {seed: fingerprint_of([made_by, seed]) for seed in seeds}
        report = SampleReport()
        todo = []
        for seed in seeds:
            if not overwrite and images_made_with([sample_path(out_dir, seed)], made[seed]):
                report.skipped.append(sample_path(out_dir, seed))
                continue
            try:
                check_file_replaceable(sample_path(out_dir, seed))
            except OutputError as e:
                report.failed.append(e)
                continue
            todo.append(seed)
        if report.skipped:
            logger.info("%d sample(s) already in %s (overwrite=True redoes them)", len(report.skipped), out_dir)
        with progress_bar(total=len(todo), desc="generate", unit="image", disable=not progress or not todo) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                images = generate_images(G, chunk, truncation_psi=truncation_psi, noise_mode=noise_mode,
                                         batch_size=batch_size)
                ensure_finite(images, f"the samples of seeds {chunk[0]}-{chunk[-1]}")
                for seed, image in zip(chunk, images.cpu()):
                    path = sample_path(out_dir, seed)
                    report.written.append(atomic_write_bytes(path, image_bytes(image, made_with=made[seed]),
                                                             durable=False))
                bar.update(len(chunk))
        return report
