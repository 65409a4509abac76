"""Face attributes measured from the 68 dlib landmarks, to label a generator's samples without a human.

InterFaceGAN needs one score per sample; for faces the 68 landmarks (iBUG order, 0-based) already give three
that matter for editing, each a ratio of distances, so it does not depend on the image's size:

- ``yaw``: the nose tip's (30) offset from the face's midline along the line through the outer eye corners
  (36 -> 45), divided by the distance between those corners. The midline point is the mean of the eye-corner
  midpoint and the jaw-end midpoint (0, 16). 0 for a frontal face; positive when the nose points to the image's
  right (the head turned towards the subject's left). A 2-D proxy, not an angle: it grows monotonically with
  the turn until the far side of the face leaves the view.
- ``mouth_open``: the inner-lip gap (mean of 61-67, 62-66, 63-65) over the mouth width (outer corners 48-54).
- ``eyes_open``: the mean eye aspect ratio of both eyes (Soukupová & Čech 2016):
  ``(|p2-p6| + |p3-p5|) / (2 |p1-p4|)`` on points 36-41 and 42-47.

:func:`label_samples` generates seeded samples, finds their landmarks (small images are upscaled first: the HOG
detector misses faces under ~80 px) and writes one row per detected face (see :mod:`.boundaries` for the CSV).
:func:`measure_edit_response` checks a direction: how much an edit changes each attribute per unit strength.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..generate import z_from_seeds
from ..io.images import tensor_to_pil
from ..io.work import WorkFolder, as_recorded, fingerprint_of
from ..models.stylegan2 import Generator

logger = logging.getLogger(__name__)

ATTRIBUTES = ("yaw", "mouth_open", "eyes_open")

# A landmark detector: PIL image -> list of [68, 2] (x, y) arrays, largest face first (Dlib68Detector).
Detector = Callable[..., list]


def _points(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected 68 (x, y) landmarks, got an array of shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("the landmarks hold NaN or infinite values")
    return points


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.hypot(*(a - b)))


def head_yaw(landmarks: np.ndarray) -> float:
    """Nose-tip offset from the midline along the eye line, over the outer eye-corner distance (see module)."""
    p = _points(landmarks)
    axis = p[45] - p[36]
    span = float(np.hypot(*axis))
    if span == 0:
        raise ValueError("degenerate landmarks: the outer eye corners coincide")
    midline = ((p[36] + p[45]) / 2 + (p[0] + p[16]) / 2) / 2
    return float((p[30] - midline) @ axis) / span**2


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap over mouth width: 0 closed, ~0.3-0.5 wide open."""
    p = _points(landmarks)
    width = _distance(p[48], p[54])
    if width == 0:
        raise ValueError("degenerate landmarks: the mouth corners coincide")
    gap = np.mean([_distance(p[61], p[67]), _distance(p[62], p[66]), _distance(p[63], p[65])])
    return float(gap) / width


def _eye_aspect_ratio(eye: np.ndarray) -> float:
    width = _distance(eye[0], eye[3])
    if width == 0:
        raise ValueError("degenerate landmarks: an eye's corners coincide")
    return (_distance(eye[1], eye[5]) + _distance(eye[2], eye[4])) / (2 * width)


def eye_opening(landmarks: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes: ~0.3 open, under ~0.15 closed."""
    p = _points(landmarks)
    return (_eye_aspect_ratio(p[36:42]) + _eye_aspect_ratio(p[42:48])) / 2


def landmark_attributes(landmarks: np.ndarray) -> dict[str, float]:
    """``{yaw, mouth_open, eyes_open}`` of one face's ``[68, 2]`` landmarks."""
    return {"yaw": head_yaw(landmarks), "mouth_open": mouth_opening(landmarks), "eyes_open": eye_opening(landmarks)}


def measure_images(images: torch.Tensor, detector: Detector, *, upscale: int = 4) -> list[dict[str, float] | None]:
    """The attributes of the largest face in each image ``[N, C, H, W]`` (in [-1, 1]), or None where no face
    is found. Images are upscaled (Lanczos) by ``upscale`` before detection."""
    from PIL import Image

    out: list[dict[str, float] | None] = []
    for picture in tensor_to_pil(images):
        big = picture.convert("RGB")
        if upscale > 1:
            big = big.resize((big.width * upscale, big.height * upscale), Image.LANCZOS)
        faces = detector(big)
        try:
            out.append(landmark_attributes(faces[0]) if faces else None)
        except ValueError:  # degenerate landmarks: as good as no face
            out.append(None)
    return out


@dataclass(frozen=True)
class LabelReport:
    """Rows (``seed``, ``trunc`` and one column per attribute) of the samples with a face, the seeds skipped
    because none was found, and the fingerprint of the generator that drew the samples (``generator_fingerprint``:
    its seeds draw other faces with any other generator)."""

    rows: list[dict[str, float]]
    skipped: list[int] = field(default_factory=list)
    truncation_psi: float = 1.0
    generator: str | None = None

    @property
    def samples(self) -> int:
        return len(self.rows) + len(self.skipped)


LABELLING_WORK_FORMAT = "hyperinverter-labelling-work-1"


def labelling_work(out: str | os.PathLike) -> WorkFolder:
    """``OUT.work``: the labels of each batch of samples until the CSV ``OUT`` is written (``label_samples(work=)``;
    the caller holds it, ``with labelling_work(out) as work:``, and removes it, ``work.remove()``, once the CSV is
    saved)."""
    out = Path(out)
    return WorkFolder(out.with_name(out.name + ".work"), format=LABELLING_WORK_FORMAT, what="labelling")


@torch.no_grad()
def label_samples(
    G: Generator,
    seeds: Sequence[int],
    detector: Detector,
    *,
    truncation_psi: float = 1.0,
    upscale: int = 4,
    batch_size: int = 32,
    progress: bool = False,
    work: WorkFolder | None = None,
) -> LabelReport:
    """Generate ``seeds`` (z as :func:`~hyperinverter.generate.z_from_seeds` draws it, as NVIDIA's ``generate.py``)
    and measure each sample's landmark attributes; samples without a face are skipped and listed.

    ``work`` (:func:`labelling_work`): each batch's labels are stored there as it finishes, so that an interrupted
    run resumes where it stopped; a run with another generator, seeds, truncation, upscale, batch size or detector
    settings (its public attributes) refuses the stored work.
    """
    from ..inversion.files import generator_fingerprint
    from ..progress import progress_bar

    if not math.isfinite(truncation_psi):
        raise ValueError(f"the truncation psi must be a finite number, got {truncation_psi}")
    device = G.w_avg.device
    rows: list[dict[str, float]] = []
    skipped: list[int] = []
    seeds = list(seeds)
    fingerprint = generator_fingerprint(G)
    if work is not None:
        settings = {k: as_recorded(v) for k, v in sorted(vars(detector).items()) if not k.startswith("_")}
        # (z: a run of before drew its seeds with torch; its stored labels are of other samples)
        work.claim({"generator": fingerprint, "seeds": fingerprint_of(seeds), "samples": len(seeds),
                    "truncation_psi": truncation_psi, "upscale": upscale, "batch_size": batch_size,
                    "detector": [type(detector).__qualname__, settings], "z": "nvidia"}, defaults={"z": "torch"})
    with progress_bar(total=len(seeds), desc="labelling", unit="sample", disable=not progress) as bar:
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            name = f"batch-{start // batch_size:06d}.json"
            stored = work.read_json(name) if work is not None else None
            if stored is None:
                z = z_from_seeds(chunk, G.z_dim).to(device)
                images = G(z, truncation_psi=truncation_psi, noise_mode="const")
                stored = {"seeds": chunk, "found": measure_images(images, detector, upscale=upscale)}
                if work is not None:
                    work.write_json(name, stored)
            elif stored.get("seeds") != chunk or len(stored.get("found", ())) != len(chunk):
                raise InputError(work.folder / name, "is not this run's labelling record; move it away to redo it")
            for seed, found in zip(chunk, stored["found"]):
                if found is None:
                    skipped.append(seed)
                else:
                    rows.append({"seed": seed, "trunc": truncation_psi, **found})
            bar.update(len(chunk))
            bar.set_postfix(no_face=len(skipped))
    logger.info("labelled %d of %d samples (%d without a face)", len(rows), len(seeds), len(skipped))
    return LabelReport(rows, skipped, truncation_psi, generator=fingerprint)


def labels_csv_bytes(report: LabelReport) -> bytes:
    """The labels CSV of a report: ``seed,trunc,z,generator,yaw,mouth_open,eyes_open``, one row per labelled sample
    (``generator``, the fingerprint of the generator that drew it, where the report knows it)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    generator = [] if report.generator is None else [report.generator]
    # (z: the draw of its seeds, NVIDIA's; tables of before, torch's, record none)
    writer.writerow(["seed", "trunc", "z", *(["generator"] if generator else []), *ATTRIBUTES])
    for row in report.rows:
        writer.writerow([int(row["seed"]), f"{row['trunc']:g}", "nvidia", *generator,
                         *(f"{row[a]:.6g}" for a in ATTRIBUTES)])
    return text.getvalue().encode()


def write_labels_csv(path: str | os.PathLike, report: LabelReport) -> Path:
    """Write the labels CSV atomically (a reader never sees half a file)."""
    from ..io.files import atomic_write_bytes

    return atomic_write_bytes(path, labels_csv_bytes(report), report=True)


@dataclass(frozen=True)
class Response:
    """How one attribute follows an edit's strength over ``samples`` faces (those found at every strength).

    ``slope``: the common slope of ``attribute = a_i + slope * strength`` (one intercept per face);
    ``r2``: the share of the within-face variation it explains; ``slope_std``: the spread of the per-face
    slopes; ``stderr``: the slope's standard error (``slope_std / sqrt(samples)``)."""

    attribute: str
    slope: float
    slope_std: float
    stderr: float
    r2: float
    samples: int
    means: tuple[float, ...]  # the attribute's mean at each strength


@torch.no_grad()
def measure_edit_response(
    G: Generator,
    direction,
    seeds: Sequence[int],
    strengths: Sequence[float],
    detector: Detector,
    *,
    truncation_psi: float = 1.0,
    upscale: int = 4,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Response]:
    """Edit each seed's sample with ``direction`` at each strength and fit every attribute against the
    strength (see :class:`Response`). Raises ``ValueError`` if no face is found at every strength."""
    from ..progress import progress_bar

    strengths = [float(s) for s in strengths]
    if len(strengths) < 2 or len(set(strengths)) < 2:
        raise ValueError(f"give at least two different strengths, got {strengths}")
    device = G.w_avg.device
    seeds = list(seeds)
    values = np.full((len(seeds), len(strengths), len(ATTRIBUTES)), np.nan)
    with progress_bar(total=len(seeds) * len(strengths), desc=f"edits ({direction.name})", unit="image",
                      disable=not progress) as bar:
        for start in range(0, len(seeds), batch_size):
            chunk = slice(start, start + batch_size)
            ws = G.mapping(z_from_seeds(seeds[chunk], G.z_dim).to(device), truncation_psi=truncation_psi)
            for j, strength in enumerate(strengths):
                images = G.synthesis(direction.apply(ws, strength), noise_mode="const")
                for i, found in enumerate(measure_images(images, detector, upscale=upscale), start=start):
                    if found is not None:
                        values[i, j] = [found[a] for a in ATTRIBUTES]
                bar.update(len(images))
    complete = np.isfinite(values).all(axis=(1, 2))
    if not complete.any():
        raise ValueError(f"{direction.name}: no face was found at every strength in any of {len(seeds)} samples")
    logger.info("%s: %d of %d samples have a face at every strength", direction.name, int(complete.sum()),
                len(seeds))
    s = np.asarray(strengths)
    sc = s - s.mean()
    out = {}
    for k, attribute in enumerate(ATTRIBUTES):
        y = values[complete, :, k]  # [n, strengths]
        yc = y - y.mean(axis=1, keepdims=True)
        per_face = yc @ sc / (sc @ sc)
        slope = float(per_face.mean())
        residual = yc - slope * sc[None]
        total = float((yc**2).sum())
        n = len(per_face)
        spread = float(per_face.std(ddof=1)) if n > 1 else 0.0
        out[attribute] = Response(attribute, slope, spread, spread / math.sqrt(n), 1 - float((residual**2).sum())
                                  / total if total > 0 else 0.0, n, tuple(float(v) for v in y.mean(axis=0)))
    return out
