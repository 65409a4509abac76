"""Invert a set of image files (or every face in them) and write the results, one batch in memory at a time.

For each picture, named after its file (``photo``, or ``photo-face1`` when a photo has several faces), it writes:

* ``NAME.png``: the reconstruction;
* ``NAME_compare.png``: input | the method's first pass (if it has one) | final;
* ``NAME.safetensors``: ``ws`` and Δθ (see :mod:`hyperinverter.inversion.files`), with the face placement
  when the input was aligned, so that a later edit can be pasted back into the photo.

The three files appear together (written unnamed and flushed, then named, the inversion file last), so a run
killed at any moment leaves only complete pictures. Re-running the same command skips every input whose pictures
are all there, made from the same photo (its bytes) by the same generator and method weights with the same
options, alignment and precision (which the inversion file records); ``overwrite=True`` redoes them.

A bad input (unreadable, no face when aligning, non-finite result, an output that would overwrite an input) is
reported once with its cause, and the run goes on. Under ``torchrun`` every rank takes every ``WORLD_SIZE``-th
file, so the ranks' outputs are disjoint and complete.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image

from ..errors import CheckpointError, InputError, NonFiniteError, OutputError, SchemaError, naming
from ..io.checkpoints import read_metadata_json, read_safetensors_metadata
from ..io.files import InputFiles, atomic_write_group, output_folder, sha256_if_readable, written_by_us
from ..io.images import (
    fit_to_canvas,
    image_bytes,
    images_made_with,
    make_grid,
    photo_tensors,
    pil_to_tensor,
    read_image,
)
from ..io.work import fingerprint_of
from ..methods import InversionResult
from ..methods.base import check_batch_size
from ..precision import dtype_name
from ..progress import progress_bar
from .files import inversion_bytes, made_with_digest

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Picture:
    """One image to invert: ``image [1,C,R,R]`` in [-1,1]; ``placement`` where the face sits in its photo;
    ``index`` of ``count`` pictures taken from the same photo; ``original``: the photo ``image`` was enlarged
    from, where it was (``InversionPipeline.invert``'s ``originals``)."""

    name: str
    source: Path
    image: torch.Tensor
    placement: dict | None = None
    index: int = 0
    count: int = 1
    original: torch.Tensor | None = None


@dataclass
class BatchInversionReport:
    """What a batch inversion did: the inversion files it ``written``, the inputs it ``skipped`` because their
    pictures were already complete, and the inputs that ``failed`` (each an error naming the file and cause)."""

    out_dir: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[InputError] = field(default_factory=list)
    seconds_per_image: float = 0.0
    rank: int = 0
    world_size: int = 1

    @property
    def ok(self) -> bool:
        return not self.failed


def rank_shard(items: Sequence[T], env: Mapping[str, str] | None = None) -> tuple[list[T], int, int]:
    """This torchrun rank's share of ``items`` (every ``WORLD_SIZE``-th from ``RANK``) -> (share, rank, world)."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return list(items[rank::world]), rank, world


def torchrun_job(env: Mapping[str, str] | None = None) -> str:
    """The name the ranks of one torchrun job share and two jobs at once do not: its rendezvous (``MASTER_ADDR``,
    ``MASTER_PORT``, ``TORCHELASTIC_RUN_ID``) and ``WORLD_SIZE``, and under SLURM its job and step
    (``SLURM_JOB_ID``, ``SLURM_STEP_ID``: ranks started by ``srun`` with ``RANK`` and ``WORLD_SIZE`` alone, which
    the rest does not tell apart). Jobs started otherwise by hand, of one size, are not told apart."""
    env = os.environ if env is None else env
    name = ":".join(env.get(key, "") for key in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"))
    slurm = ".".join(env[key] for key in ("SLURM_JOB_ID", "SLURM_STEP_ID") if key in env)
    return f"{name} slurm {slurm}" if slurm else name


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names after the inputs, one per input and all different: inputs sharing a stem get their parent
    folder prefixed, and a name still taken (``x/p.png`` beside ``x_p.png``) gets ``_2``, ``_3``, ..."""
    counts = Counter(p.stem for p in paths)
    names, taken = [], set()
    for p in paths:
        folder = p.absolute().parent.name  # (a name in the current folder has none: "_p", then "_p_2")
        name = f"{folder}_{p.stem}" if counts[p.stem] > 1 and folder else p.stem
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{name}_{k}"
        taken.add(candidate)
        names.append(candidate)
    return names


# What a batch adds to an input's name for its files: a face's number (``picture_name``), then one of these.
PICTURE_ENDINGS = ("_compare", "_adapted", "_photo")
FACE_NUMBER = re.compile(r"-face\d+$")  # what picture_name adds for one of several faces


def _names_it_could_extend(name: str) -> set[str]:
    """The names whose pictures' files could have ``name``'s names: ``name`` without a face's number and an
    ending of ``PICTURE_ENDINGS`` (``p`` for ``p_compare`` or ``p-face1``)."""
    heads = {name} | {name[: -len(e)] for e in PICTURE_ENDINGS if name.endswith(e)}
    heads |= {FACE_NUMBER.sub("", head) for head in heads}
    heads.discard(name)
    return heads


def output_stems(paths: Sequence[Path]) -> list[str]:
    """:func:`unique_stems`, where no input's files can be another's: a name that is another with a face's number
    or a file's ending (an input ``p_compare.png`` beside ``p.png``, whose strip is ``p_compare.png``: one was
    written over the other, and a re-run took the survivor for both) gets ``_2``, ``_3``, ..."""
    names = unique_stems(paths)
    taken = set(names)
    extended = {head for name in names for head in _names_it_could_extend(name)}
    result = []
    for name in names:
        if taken & _names_it_could_extend(name):
            k, candidate = 2, f"{name}_2"
            while candidate in taken or candidate in extended or taken & _names_it_could_extend(candidate):
                k += 1
                candidate = f"{name}_{k}"
            taken.add(candidate)
            name = candidate
        result.append(name)
    return result


def picture_name(name: str, index: int, count: int) -> str:
    """``photo`` for the only picture of a photo, ``photo-faceI`` for one of several faces."""
    return name if count == 1 else f"{name}-face{index}"


def output_paths(out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    """A picture's reconstruction, comparison strip and inversion file, in the order they are made visible."""
    return out_dir / f"{name}.png", out_dir / f"{name}_compare.png", out_dir / f"{name}.safetensors"


def photo_pictures(photo: Image.Image, name: str, source: Path, *, resolution: int, channels: int, detector=None,
                   align_scale: float = 1.0, content_rows: tuple[float, float] | None = None) -> list[Picture]:
    """One photo -> what gets inverted: with a ``detector`` every face, FFHQ-aligned at ``align_scale`` (named
    ``name`` or ``name-faceI``); without one, the photo fitted to the generator's square (``fit_to_canvas``: its
    centred square, or squashed into the domain's ``content_rows``). Raises ``NoFaceFoundError``.

    Aligned crops are warped at 4x the model's resolution, then reduced, as FFHQ's script does, so the warp does not
    alias.
    """
    if detector is None:
        canvas = fit_to_canvas(photo, content_rows, side=resolution)
        image, original = photo_tensors(canvas, size=resolution, channels=channels)
        return [Picture(name, source, image, original=original)]
    from ..align import align_faces

    faces = align_faces(photo, detector, size=resolution, scale=align_scale, source=os.fsdecode(source),
                        supersample=4)
    return [Picture(picture_name(name, i, len(faces)), source,
                    pil_to_tensor(face.image, size=resolution, channels=channels), face.placement(), i, len(faces))
            for i, face in enumerate(faces)]


def read_pictures(paths: Sequence[Path], names: Sequence[str], *, resolution: int, channels: int,
                  detector=None, align_scale: float = 1.0, content_rows: tuple[float, float] | None = None
                  ) -> tuple[list[Picture], list[InputError]]:
    """Read ``paths`` into pictures (see :func:`photo_pictures`) -> (pictures, an error for each failed file)."""
    pictures, failed = [], []
    for path, name in zip(paths, names):
        try:
            pictures += photo_pictures(read_image(path), name, path, resolution=resolution, channels=channels,
                                       detector=detector, align_scale=align_scale, content_rows=content_rows)
        except InputError as e:
            failed.append(naming(e, path))
        except Exception as e:  # noqa: BLE001 - one file must not end a batch of thousands; the cause is reported
            logger.debug("reading %s failed", path, exc_info=True)
            failed.append(InputError(path, f"could not be prepared ({type(e).__name__}: {e})"))
    return pictures, failed


def adapted_path(out_dir: Path, name: str) -> Path:
    """A picture's rendering by another generator (domain adaptation), when one is asked for."""
    return out_dir / f"{name}_adapted.png"


def _is_done(out_dir: Path, name: str, *, fingerprint: str, aligned: bool, method: str, made: str,
             adapted_made: str | None, dtype: str, source_sha256: str | None) -> bool:
    """Whether a previous run left every picture of the input ``name``, made by this model and method (``made``:
    its weights and options, :func:`~hyperinverter.inversion.files.made_with_digest`), aligned or not, in this
    precision, from the same photo (``source_sha256``: its file's bytes now; None when it cannot be read), with
    its rendering by another generator made as this run makes it (``adapted_made``), or, for None, with none of
    ours beside it (its comparison strip showed it)."""

    def record(picture: str) -> dict | None:
        path = output_paths(out_dir, picture)[2]
        if not path.is_file():
            return None
        try:
            meta = read_metadata_json(path, read_safetensors_metadata(path), "inversion", "an inversion file")
        except (CheckpointError, SchemaError, OSError):
            return None
        return meta

    def matches(meta: dict | None) -> bool:
        return (meta is not None and meta.get("generator") == fingerprint and meta.get("method") == method
                and meta.get("made_with") == made and source_sha256 is not None
                and meta.get("source_sha256") == source_sha256
                and (meta.get("placement") is not None) == aligned and meta.get("dtype", "fp32") == dtype)

    first = record(name) or record(picture_name(name, 0, 2))
    if not matches(first):
        return False
    picture = first.get("picture")
    count = picture["count"] if isinstance(picture, dict) and isinstance(picture.get("count"), int) else 1
    names = [picture_name(name, i, count) for i in range(count)]
    return all(matches(record(n)) and all(p.is_file() for p in output_paths(out_dir, n))
               and (images_made_with([adapted_path(out_dir, n)], adapted_made) if adapted_made is not None
                    else not written_by_us(adapted_path(out_dir, n))) for n in names)


def invert_files(pipe, inputs: Sequence[Path], out_dir: str | Path, *, method: str | None = None,
                 options: Mapping[str, object] | None = None, batch_size: int = 4, detector=None,
                 model_name: str = "", shard: bool = True, progress: bool = True,
                 overwrite: bool = False, adapt: Callable[[InversionResult], torch.Tensor] | None = None,
                 adapt_digest: str | None = None) -> BatchInversionReport:
    """Invert every file of ``inputs`` (already expanded, see :func:`hyperinverter.io.images.find_images`) with
    ``method`` (default: the pipeline's) and its ``options``, in the pipeline's precision (``pipe.dtype``).

    ``detector``: a face detector (e.g. :class:`hyperinverter.align.Dlib68Detector`) to align every face at the
    pipeline's ``align_scale``; None feeds whole images. ``shard``: split the files across torchrun ranks.
    ``overwrite``: redo inputs whose pictures a previous run already wrote. ``adapt``: also render each inversion
    another way (e.g. :meth:`InversionPipeline.adapt` with a fine-tuned generator), written as ``NAME_adapted.png``
    and shown last in the comparison strip; ``adapt_digest``: what that rendering depends on besides the inversion
    (the generator and its settings, e.g. a :func:`~hyperinverter.io.work.fingerprint_of` them), so that a re-run
    with another is not skipped. A run without ``adapt`` removes the ``NAME_adapted.png`` of ours an earlier run
    left beside a picture it makes again.
    """
    batch_size = check_batch_size(batch_size)
    paths = list(inputs)
    names = output_stems(paths)  # over all files, so that every rank names a file the same way
    pairs, rank, world = rank_shard(list(zip(paths, names))) if shard else (list(zip(paths, names)), 0, 1)
    out_dir = Path(out_dir)
    inverter = pipe.inverter(method)
    inverter.check_options(options or {})  # a bad option fails now: before the first batch, and --out is made
    method = inverter.name
    with output_folder(out_dir, job=torchrun_job() if world > 1 else None):  # (a job's ranks share it)
        report = BatchInversionReport(out_dir=out_dir, rank=rank, world_size=world)
        aligned = detector is not None
        dtype = dtype_name(pipe.dtype)
        made = made_with_digest(inverter, options)
        adapted_made = fingerprint_of([made, adapt_digest]) if adapt is not None else None
        todo, source_sha256 = [], {}
        for path, name in pairs:
            source_sha256[path] = sha256_if_readable(path)
            if not overwrite and _is_done(out_dir, name, fingerprint=pipe.fingerprint, aligned=aligned, method=method,
                                          made=made, adapted_made=adapted_made, dtype=dtype,
                                          source_sha256=source_sha256[path]):
                report.skipped.append(path)
            else:
                todo.append((path, name))
        if report.skipped:
            logger.info("%d input(s) already inverted in %s (overwrite=True redoes them)", len(report.skipped), out_dir)
        inputs_on_disk = InputFiles(paths)
        G = pipe.generator
        seconds, count = 0.0, 0
        # Files are read one batch at a time, so a large folder never sits in memory. The bar closes on an error too,
        # so that the error starts a line of its own.
        with progress_bar(total=len(todo), desc="invert", unit="file", disable=not progress or not todo) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                pictures, failed = read_pictures([p for p, _ in chunk], [n for _, n in chunk], resolution=G.resolution,
                                                 channels=G.config.img_channels, detector=detector,
                                                 align_scale=pipe.align_scale, content_rows=pipe.content_rows)
                report.failed += failed
                if not pictures:
                    bar.update(len(chunk))
                    continue
                x = torch.cat([p.image for p in pictures])
                t0 = time.perf_counter()
                result = pipe.invert(x, method=method, batch_size=batch_size, check_finite=False,
                                     warn_unsigned=False, originals=[p.original for p in pictures],
                                     **(options or {})).to("cpu")  # (read from the files)
                seconds += time.perf_counter() - t0
                count += len(pictures)
                # An input is written whole or not at all: one bad picture (a face) fails its whole photo.
                bad_sources = {pictures[i].source for i in range(len(pictures))
                               if not bool(torch.isfinite(result.image[i]).all())}
                for source in sorted(bad_sources):
                    report.failed.append(NonFiniteError(source, "the model gave NaN or infinite values for it"))
                for i, picture in enumerate(pictures):
                    if picture.source in bad_sources:
                        continue
                    targets = output_paths(out_dir, picture.name)
                    try:
                        inputs_on_disk.check_outputs([*targets,
                                                      *([adapted_path(out_dir, picture.name)] if adapt else [])])
                    except OutputError as e:
                        report.failed.append(e)
                        continue
                    one = result.select(i)
                    adapted = pipe.content(adapt(one).cpu()) if adapt is not None else None
                    first = [one.initial_image] if one.initial_image is not None else []
                    panels = torch.cat([pipe.content(p) for p in (x[i : i + 1], *first, one.image)]
                                       + ([adapted] if adapted is not None else []))
                    record = inversion_bytes(one, source=picture.source.absolute(), model=model_name, method=method,
                                             generator=pipe.fingerprint,
                                             placement=picture.placement,
                                             picture={"index": picture.index, "count": picture.count}, dtype=dtype,
                                             made_with=made, source_sha256=source_sha256[picture.source])
                    extra = ([(adapted_path(out_dir, picture.name), image_bytes(adapted, made_with=adapted_made))]
                             if adapted is not None else [])
                    atomic_write_group([(targets[0], image_bytes(pipe.content(one.image))), *extra,
                                        (targets[1], image_bytes(make_grid(panels, nrow=len(panels)))),
                                        (targets[2], record)])
                    stale = adapted_path(out_dir, picture.name)
                    if adapted is None and written_by_us(stale):  # (an earlier run's, beside a picture it no longer is)
                        stale.unlink(missing_ok=True)
                    report.written.append(targets[2])
                bar.update(len(chunk))  # once written: the bar (and its estimate) counts finished files
        report.seconds_per_image = seconds / max(count, 1)
        logger.info("rank %d/%d: inverted %d picture(s) into %s; %d input(s) already done, %d failed", rank, world,
                    len(report.written), out_dir, len(report.skipped), len(report.failed))
        return report
