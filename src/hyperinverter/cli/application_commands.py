"""``restore`` and ``swap``: E2Style's applications (restoration of degraded images, face swapping)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import add_dtype, add_min_face_score, face_detector, face_options, file_path
from .inversion_commands import _add_method, _add_model, _load_pipeline, _report_failures


def register(sub) -> None:
    p = sub.add_parser("restore", help="restore degraded images with a model trained for a restoration task",
                       description="Each input NAME gives NAME.png (the restored image) and NAME_compare.png (what "
                       "the model read | restored | with --simulate, the clean input). The model's method must have "
                       "been trained for a task (`hyperinverter train e2style` with task: sr4, inpainting, "
                       "colorization, denoising, sr2..sr32, or sr1,2,4,8,16,32: a factor drawn per image). With "
                       "--align the inputs are photos: every face is FFHQ-aligned and restored (NAME.png, or "
                       "NAME-faceI.png for several, each with its _compare.png), and NAME_photo.png is the photo "
                       "with the restored faces pasted back. A bad input (unreadable, no face under --align) is "
                       "reported and the run goes on; the exit status is 1 if any input failed. Running the same "
                       "command again skips the inputs whose results are there, made from the same file by the same "
                       "model and settings (the PNGs record it), so an interrupted run resumes.")
    p.add_argument("inputs", nargs="+", type=Path)
    _add_model(p)
    add_dtype(p)
    _add_method(p)
    p.add_argument("--simulate", action="store_true",
                   help="the inputs are clean: degrade them first with the model's task (seeded), to compare")
    p.add_argument("--align", action="store_true",
                   help="the inputs are photos: restore every face (dlib 68 landmarks, FFHQ-aligned at the model's "
                   "crop scale) and paste the restored faces back into the photo")
    add_min_face_score(p)
    p.add_argument("--out", required=True, type=Path, help="the folder for the results")
    p.add_argument("--overwrite", action="store_true",
                   help="restore again the inputs whose results are already in --out (default: skip them)")
    p.set_defaults(func=run_restore)

    p = sub.add_parser("swap", help="put the face of one photo or aligned image onto another and reconstruct the "
                       "composite",
                       description="Both images are aligned faces in the model's framing, or photos with --align. The "
                       "source's face region (an ellipse in the model's face box, feathered) is pasted into the "
                       "target; the composite is inverted, so the generator blends the seams. Writes OUT (the "
                       "result) and OUT_compare.png (source | target | composite | result); with --align also "
                       "OUT_photo.png, the target photo with the result pasted back.")
    p.add_argument("source", type=Path)
    p.add_argument("target", type=Path)
    _add_model(p)
    add_dtype(p)
    _add_method(p)
    p.add_argument("--align", action="store_true",
                   help="the inputs are photos: find the face in each (dlib 68 landmarks; the largest where there are "
                   "several) and FFHQ-align it at the model's crop scale, as invert --align does")
    add_min_face_score(p)
    p.add_argument("--out", required=True, type=file_path, help="the result image (.png)")
    p.set_defaults(func=run_swap)


def run_restore(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from ..errors import InputError, naming
    from ..inversion.batch import output_stems
    from ..inversion.files import made_with_digest
    from ..io.files import (
        InputFiles,
        atomic_write_group,
        check_output_folder,
        output_folder,
        sha256_if_readable,
    )
    from ..io.images import (
        find_images,
        image_bytes,
        images_made_with,
        make_grid,
        no_images_error,
        read_image,
    )
    from ..io.work import fingerprint_of
    from ..precision import dtype_name
    from ..progress import progress_bar
    from ..restoration import restoration_task, restore_photo

    face = face_options(args)  # (given without --align: refused before any work)
    found = find_images(args.inputs, skip=[args.out])  # (not our own results, on a re-run)
    if not found.paths and not found.problems:
        raise no_images_error(args.inputs)
    check_output_folder(args.out, inputs=args.inputs)  # (made once the model has loaded)
    failures = list(found.problems)
    pipe = _load_pipeline(args)
    task = restoration_task(pipe)
    if task is None:
        print(f"error: {args.model}: its {pipe.default_method} was not trained for a restoration task "
              "(train one with `hyperinverter train e2style` and task: sr4, ...)", file=sys.stderr)
        return 2
    # What makes a result, besides its input file's bytes: a re-run skips only what it would make again.
    options = dict(args.option)
    inverter = pipe.inverter()
    inverter.check_options(options)  # a bad option fails now, not after the first image
    alignment = [args.align, *face, pipe.align_scale] if args.align else []
    made_by = fingerprint_of([made_with_digest(inverter, options), task, args.simulate, dtype_name(pipe.dtype),
                              *alignment])
    detector = None
    if args.align:
        detector = face_detector(args)
    with output_folder(args.out) as out_dir:  # (another run writing into it is refused)
        inputs, written, skipped = InputFiles(found.paths), 0, 0
        named = list(zip(found.paths, output_stems(found.paths)))
        for path, name in progress_bar(named, desc="restore", unit="file", disable=not found.paths):
            # With --align the photo is written last of its group, which appears whole: it tells that the input is done.
            endings = ["_photo"] if args.align else ["", "_compare"]
            done = [out_dir / f"{name}{ending}.png" for ending in endings]
            try:
                inputs.check_outputs(done)
                # (None for a named pipe or an unreadable file, which reading then names: hashing a pipe waited forever)
                digest = sha256_if_readable(path)
                made = fingerprint_of([made_by, digest])
                if digest is not None and not args.overwrite and images_made_with(done, made):
                    skipped += 1
                    continue
                photo_result = restore_photo(pipe, read_image(path), name=name, source=path, detector=detector,
                                           simulate=args.simulate, **options)
                group = []
                for picture, degraded, restored in zip(photo_result.pictures, photo_result.restoration.degraded.cpu(),
                                                       photo_result.restoration.result.image.cpu()):
                    if degraded.shape != restored.shape:  # (a simulated input is degraded at the encoder's size)
                        degraded = F.interpolate(degraded[None], size=restored.shape[-2:], mode="nearest")[0]
                    panels = [degraded, restored] + ([picture.image[0]] if args.simulate else [])
                    group += [(out_dir / f"{picture.name}.png", image_bytes(restored, made_with=made)),
                              (out_dir / f"{picture.name}_compare.png",
                               image_bytes(make_grid(torch.stack(panels), nrow=len(panels)), made_with=made))]
                if photo_result.photo is not None:
                    group.append((done[0], image_bytes(photo_result.photo, made_with=made)))
                inputs.check_outputs([path for path, _ in group])
            except InputError as e:  # unreadable, no face, an output that would replace an input: the run goes on
                failures.append(naming(e, path))
                continue
            except OSError as e:
                failures.append(InputError(path, e.strerror or str(e)))
                continue
            atomic_write_group(group)
            written += 1
    _report_failures(failures)
    print(f"restored {written} image(s) ({task}) into {args.out}; {skipped} already done, {len(failures)} failed")
    return 1 if failures else 0


def run_swap(args: argparse.Namespace) -> int:
    import torch

    from ..io.files import InputFiles, atomic_write_group
    from ..io.images import image_bytes, image_output_path, make_grid
    from ..restoration import face_swap

    out = image_output_path(args.out)
    compare = out.with_name(out.stem + "_compare.png")
    photo_out = out.with_name(out.stem + "_photo.png")
    face_options(args)  # (given without --align: refused before any work)
    outputs = [out, compare, photo_out] if args.align else [out, compare]
    InputFiles([args.source, args.target]).check_outputs(outputs)
    pipe = _load_pipeline(args)
    if args.align:
        detector = face_detector(args)
        (source, _), (target, target_face) = (_largest_face(pipe, path, detector)
                                              for path in (args.source, args.target))
    else:
        source, target = pipe.prepare([args.source]), pipe.prepare([args.target])
    swap = face_swap(pipe, source, target, warn_unsigned=False, **dict(args.option))  # (both read from files)
    panels = torch.cat([source, target, swap.composite, swap.result.image])
    files = [(out, image_bytes(swap.result.image[0], out.suffix)), (compare, image_bytes(make_grid(panels, nrow=4)))]
    if args.align:
        files.append((photo_out, image_bytes(swap.pasted(*target_face), photo_out.suffix)))
    atomic_write_group(files)
    print(f"wrote {', '.join(str(path) for path, _ in files[:-1])} and {files[-1][0]}")
    return 0


def _largest_face(pipe, path: Path, detector):
    """The largest face of the photo at ``path``, aligned in ``pipe``'s framing -> (``[1,C,R,R]``, (the photo, the
    face's placement)); a photo without a face is an ``InputError`` that names it."""
    from ..inversion.batch import photo_pictures
    from ..io.images import read_image

    photo = read_image(path)
    G = pipe.generator
    faces = photo_pictures(photo, path.stem, path, resolution=G.resolution, channels=G.config.img_channels,
                           detector=detector, align_scale=pipe.align_scale)
    if len(faces) > 1:  # the detector lists faces largest first
        print(f"{path}: {len(faces)} faces found; swapping the largest")
    return faces[0].image.to(pipe.device), (photo, faces[0].placement)
