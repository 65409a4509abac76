"""Invert a set of image files (or every face in them) and write the results, one batch in memory at a time.

For each picture, named after its file (``photo`` or ``photo-face1`` when aligned), it writes:

* ``NAME.png``: the reconstruction;
* ``NAME_compare.png``: input | Phase I | final;
* ``NAME.safetensors``: ``ws`` and Δθ (see :mod:`hyperinverter.inversion.files`), with the face placement
  when the input was aligned, so that a later edit can be pasted back into the photo.

A file that cannot be read, or has no face when aligning, is reported and skipped; the run goes on. Under
``torchrun`` every rank takes every ``WORLD_SIZE``-th file, so the ranks' outputs are disjoint and complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..io.images import ImageReadError, center_square, make_grid, pil_to_tensor, read_image, save_image
from .files import save_inversion

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Picture:
    """One image to invert: ``image [1,C,R,R]`` in [-1,1]; ``placement`` where the face sits in its photo."""

    name: str
    source: Path
    image: torch.Tensor
    placement: dict | None = None


@dataclass
class BatchInversionReport:
    out_dir: Path
    written: list[Path] = field(default_factory=list)  # the inversion files, one per picture
    skipped: list[str] = field(default_factory=list)  # "file: reason"
    seconds_per_image: float = 0.0
    rank: int = 0
    world_size: int = 1


def rank_shard(items: Sequence[T], env: Mapping[str, str] | None = None) -> tuple[list[T], int, int]:
    """This torchrun rank's share of ``items`` (every ``WORLD_SIZE``-th from ``RANK``) -> (share, rank, world)."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return list(items[rank::world]), rank, world


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names after the inputs; inputs sharing a stem get their parent folder prefixed."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def photo_pictures(photo: Image.Image, name: str, source: Path, *, resolution: int, channels: int, detector=None,
                   align_scale: float = 1.0) -> list[Picture]:
    """One photo -> what gets inverted: with a ``detector`` every face, FFHQ-aligned at ``align_scale`` (named
    ``name`` or ``name-faceI``); without one, its centred square. Raises ``NoFaceFoundError``.

    Aligned crops are made at 4x the model's resolution, then downsampled, so the warp does not alias.
    """
    if detector is None:
        return [Picture(name, source, pil_to_tensor(center_square(photo), size=resolution, channels=channels))]
    from ..align import align_faces

    faces = align_faces(photo, detector, size=4 * resolution, scale=align_scale, source=str(source))
    return [Picture(name if len(faces) == 1 else f"{name}-face{i}", source,
                    pil_to_tensor(face.image, size=resolution, channels=channels), face.placement())
            for i, face in enumerate(faces)]


def read_pictures(paths: Sequence[Path], names: Sequence[str], *, resolution: int, channels: int,
                  detector=None, align_scale: float = 1.0) -> tuple[list[Picture], list[str]]:
    """Read ``paths`` into pictures (see :func:`photo_pictures`) -> (pictures, reasons for skipped files)."""
    from ..align import NoFaceFoundError

    pictures, skipped = [], []
    for path, name in zip(paths, names):
        try:
            pictures += photo_pictures(read_image(path), name, path, resolution=resolution, channels=channels,
                                       detector=detector, align_scale=align_scale)
        except (ImageReadError, NoFaceFoundError) as e:
            logger.warning("skipped %s", e)
            skipped.append(str(e))
    return pictures, skipped


def invert_files(pipe, inputs: Sequence[Path], out_dir: str | Path, *, batch_size: int = 4, phase2: bool = True,
                 detector=None, model_name: str = "", shard: bool = True,
                 progress: bool = True) -> BatchInversionReport:
    """Invert every file of ``inputs`` (already expanded, see :func:`hyperinverter.io.images.find_images`).

    ``detector``: a face detector (e.g. :class:`hyperinverter.align.Dlib68Detector`) to align every face at the
    pipeline's ``align_scale``; None feeds whole images. ``shard``: split the files across torchrun ranks.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = list(inputs)
    names = unique_stems(paths)  # over all files, so that every rank names a file the same way
    pairs, rank, world = rank_shard(list(zip(paths, names))) if shard else (list(zip(paths, names)), 0, 1)
    report = BatchInversionReport(out_dir=out_dir, rank=rank, world_size=world)
    G = pipe.generator
    seconds, count = 0.0, 0
    bar = tqdm(total=len(pairs), desc="invert", unit="file", disable=not progress or not pairs)
    # Files are read one batch at a time, so a large folder never sits in memory.
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        pictures, skipped = read_pictures([p for p, _ in chunk], [n for _, n in chunk], resolution=G.resolution,
                                          channels=G.config.img_channels, detector=detector,
                                          align_scale=pipe.align_scale)
        report.skipped += skipped
        bar.update(len(chunk))
        if not pictures:
            continue
        x = torch.cat([p.image for p in pictures])
        t0 = time.perf_counter()
        result = pipe.invert(x, batch_size=batch_size, phase2=phase2).to("cpu")
        seconds += time.perf_counter() - t0
        count += len(pictures)
        for i, picture in enumerate(pictures):
            one = result.select(i)
            save_image(one.image, out_dir / f"{picture.name}.png")
            panels = torch.cat([x[i : i + 1], one.w_image, one.image])
            save_image(make_grid(panels, nrow=3), out_dir / f"{picture.name}_compare.png")
            report.written.append(save_inversion(out_dir / f"{picture.name}.safetensors", one,
                                                 source=str(picture.source), model=model_name,
                                                 placement=picture.placement))
    bar.close()
    report.seconds_per_image = seconds / max(count, 1)
    logger.info("rank %d/%d: inverted %d picture(s) into %s, skipped %d", rank, world, count, out_dir,
                len(report.skipped))
    return report
