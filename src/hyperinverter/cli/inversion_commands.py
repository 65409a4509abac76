"""``invert``, ``edit``, ``interpolate``, ``export-generator``, ``import-official``, ``import-pti``, ``models``,
``download``, ``evaluate``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..bounds import MAX_FPS
from .arguments import (
    add_device,
    add_dtype,
    add_min_face_score,
    at_most,
    face_detector,
    face_options,
    file_path,
    finite_float,
    layer_range,
    name_list,
    positive_int,
)

logger = logging.getLogger(__name__)


def _add_model(p: argparse.ArgumentParser, *, required: bool = True, photos: bool = True) -> None:
    """``--model`` and ``--device``; ``photos``: the command fits photos to the model (``--content-rows``)."""
    p.add_argument("--model", required=required,
                   help="a catalogue name (see `hyperinverter models`) or a pipeline folder (./name for a folder "
                   "in the current directory)")
    if photos:
        p.add_argument("--content-rows", nargs=2, type=finite_float, metavar=("TOP", "BOTTOM"), default=None,
                       help="for a generator alone whose domain fills only some rows of its square (NVIDIA's "
                       "cars: 0.125 0.875): those rows, as fractions of the side; photos are fitted into them and "
                       "scored on them (a bundle records its own)")
    add_device(p)


def _option(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. iterations=3")
    return key.strip(), yaml.safe_load(value)


def _add_method(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=None,
                   help="the inversion method (default: the model's own; see `hyperinverter methods`)")
    p.add_argument("--option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                   help="an option of the method, e.g. iterations=3 (repeatable; see `hyperinverter methods`)")


def _steps(text: str) -> int:
    from ..pipeline import MAX_INTERPOLATION_STEPS

    value = positive_int(text)
    if not 2 <= value <= MAX_INTERPOLATION_STEPS:
        raise argparse.ArgumentTypeError(f"an interpolation takes 2 to {MAX_INTERPOLATION_STEPS} steps, got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser("invert", help="invert photos: reconstruction, comparison strip and w/Δθ per image",
                       description="Invert images (files or folders). Per input NAME, writes NAME.png (the result), "
                       "NAME_compare.png (input | the method's first pass, if any | result) and NAME.safetensors "
                       "(w and Δθ); the three appear together. A bad input (unreadable, no face under --align) is "
                       "reported and the run goes on; the exit status is 1 if any input failed. Running the same "
                       "command again skips the inputs already done (an interrupted run resumes). Under torchrun each "
                       "rank inverts every WORLD_SIZE-th file.")
    p.add_argument("inputs", nargs="+", type=Path)
    _add_model(p)
    add_dtype(p)
    p.add_argument("--out", required=True, type=Path, help="the folder for the results")
    p.add_argument("--batch-size", type=positive_int, default=4, help="pictures per call (default %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="run the method through torch.compile: the first batch then takes seconds to minutes. On a "
                   "CPU later batches of the bundled models take about 1.5x less, so it pays off from about 70 "
                   "batches once inductor's cache holds the model's kernels, 800 the first time "
                   "(benchmarks/results/compile-cpu.md); at full size (ffhq-1024) only about 3%% less, with "
                   "0.4 GB more memory (benchmarks/results/hyperinverter-compile-717cd43-xeon)")
    p.add_argument("--overwrite", action="store_true",
                   help="invert again the inputs whose results are already in --out (default: skip them)")
    _add_method(p)
    p.add_argument("--phase1-only", action="store_const", dest="method", const="phase1",
                   help="the same as --method phase1 (the W encoder alone)")
    p.add_argument("--align", action="store_true",
                   help="find every face (dlib 68 landmarks) and FFHQ-align it at the model's crop scale; the "
                   "placement is kept so that `edit --paste-back` can put edits back into the photo")
    p.add_argument("--render-with", default=None, metavar="GENERATOR",
                   help="domain adaptation: also render each inversion with this generator, a fine-tuned copy of the "
                   "model's (any generator file, bundle or catalogue name), keeping the offsets of the fine layers "
                   "only, as HyperStyle's script does; writes NAME_adapted.png")
    p.add_argument("--adapt-from", type=positive_int, default=None, metavar="RESOLUTION",
                   help="with --render-with, the lowest resolution whose conv offsets are kept (default: 1/8 of the "
                   "generator's)")
    add_min_face_score(p)
    p.set_defaults(func=run_invert)

    p = sub.add_parser("edit", help="edit inverted images along a direction, reusing their Δθ")
    p.add_argument("inputs", nargs="+", type=Path, help="images, or .safetensors files written by `invert`, or folders "
                   "(their .safetensors files, or where they hold none their images)")
    _add_model(p)
    add_dtype(p)
    _add_method(p)
    p.add_argument("--direction", required=True,
                   help="a direction of the model by name (see `hyperinverter directions list`), or a file: "
                   "InterFaceGAN .pt/.npy, GANSpace .pt, a StyleCLIP mapper .pt, or ours")
    p.add_argument("--strength", type=finite_float, nargs="+", action="extend", default=None,
                   help="one or more strengths, e.g. --strength -2 2 (repeatable; GANSpace: the value the coordinate "
                   "is set to)")
    p.add_argument("--component", type=int, help="GANSpace component index")
    p.add_argument("--layers", type=layer_range, metavar="START:END",
                   help="the layers the edit changes, START:END: a GANSpace edit's, or those a vector "
                   "direction is kept to (E2Style's official edits: 0:8)")
    p.add_argument("--paste-back", action="store_true",
                   help="for inversion files of aligned faces (`invert --align`), also write the photo with the "
                   "edited faces pasted back: one NAME_DIRECTION_STRENGTH_photo.png per photo, holding every face of "
                   "it that is given (NAME-faceI.safetensors), later faces over earlier where they overlap; a face "
                   "that cannot be pasted back fails alone")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="images one synthesis call makes (faces of a photo pasted back × strengths; an input with "
                   "more strengths is one call alone; default %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="the folder for the edits")
    p.add_argument("--overwrite", action="store_true",
                   help="edit again the inputs whose edits are already in --out (default: skip them)")
    p.set_defaults(func=run_edit)

    p = sub.add_parser("interpolate", help="interpolate two real images (w and Δθ): PNG strip, GIF and MP4")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    _add_model(p)
    add_dtype(p)
    _add_method(p)
    p.add_argument("--steps", type=_steps, default=8, help="frames from A to B, both ends included (default "
                   "%(default)s)")
    # (checked here: a higher rate was refused after the inversions and the rendering, naming no option)
    p.add_argument("--fps", type=at_most(positive_int, MAX_FPS), default=8,
                   help=f"frames per second of the MP4 (default 8, at most {MAX_FPS})")
    p.add_argument("--out", required=True, type=file_path,
                   help="output stem: writes OUT.png, OUT.gif and, with the video extra (PyAV), OUT.mp4")
    p.set_defaults(func=run_interpolate)

    p = sub.add_parser("export-generator", help="write θ+Δθ of one image as a standalone generator",
                       description="Bake one image's Δθ into the generator. '.pt' writes a rosinality file holding "
                       "g_ema, latent_avg and the image's codes as 'ws'; anything else writes our generator folder "
                       "with the codes in ws.safetensors. An existing output is replaced only if hyperinverter "
                       "wrote it.")
    p.add_argument("input", type=Path, help="an image or a .safetensors file written by `invert`")
    _add_model(p)
    add_dtype(p)
    _add_method(p)
    p.add_argument("--out", required=True, type=Path, help="'.pt' -> rosinality file, else our folder format")
    p.set_defaults(func=run_export)

    p = sub.add_parser("import-official", help="convert a released checkpoint (HyperInverter, HyperStyle, pSp, e4e, "
                       "E2Style, a pSp-style W encoder) and its generator into a bundle",
                       description="The kind of checkpoint is recognised from its keys. The generator comes from "
                       "--generator, else from the decoder inside the checkpoint (pSp-family files hold one). With "
                       "--add, the methods join an existing bundle whose generator is the same (its weights are "
                       "compared), so that one model holds every released method of a domain (for `benchmark`).")
    p.add_argument("checkpoint",
                   help="hyper_inverter_*.pt, hyperstyle_ffhq.pt (with --w-encoder), psp_ffhq_encode.pt, "
                   "e4e_ffhq_encode.pt, an E2Style file (inversion or restoration), or a pSp-style W encoder .pt (a "
                   "file, or a catalogue name once downloaded)")
    p.add_argument("--generator", default=None,
                   help="the generator it was trained with (NVIDIA .pkl or any format, or a catalogue name such as "
                   "stylegan2-ffhq-config-f); needed for HyperInverter")
    p.add_argument("--w-encoder", default=None,
                   help="HyperStyle's W encoder (faces_w_encoder.pt, or hyperstyle-faces-w-encoder), which starts "
                   "its iterations")
    p.add_argument("--task", default=None, metavar="srN",
                   help="for an E2Style super-resolution file trained on several factors: keep only one of them "
                   "(sr2 .. sr32), which `restore --simulate` then degrades by; by default it keeps them all, drawn "
                   "per image as the official transforms do. Other restoration files keep the task they were trained "
                   "for")
    p.add_argument("--w-encoder-only", action="store_true", help=argparse.SUPPRESS)  # recognised from the keys now
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--add", action="store_true",
                   help="add the methods to the bundle at --out (same generator) instead of writing a new one")
    _add_stored_weights(p)
    p.set_defaults(func=run_import_official)

    p = sub.add_parser("join", help="one bundle holding the methods of several bundles over the same generator",
                       description="Your own runs of HyperInverter, HyperStyle, pSp, e4e and E2Style on one "
                       "generator each give a bundle; joined, one model runs them all (benchmark, evaluate, the web "
                       "page). The generators must hold the same weights. A method in several bundles keeps the "
                       "first one's; the first bundle's card, directions, examples and stored generators are kept. "
                       "--out may be the first bundle (it is extended), never another input.")
    p.add_argument("bundles", nargs="+", help="two or more bundle folders (or catalogue names)")
    p.add_argument("--default", default=None, help="the joined bundle's default method (default: the first's)")
    p.add_argument("--out", required=True, type=Path)
    _add_stored_weights(p)
    p.set_defaults(func=run_join)

    p = sub.add_parser("import-pti", help="turn an official PTI result (tuned generator + pivot) into an inversion "
                       "file of a model",
                       description="PTI saves a tuned generator per image (torch.save of NVIDIA's network, read "
                       "without running code from it) and a pivot code. The tuned generator minus the model's "
                       "generator (its original) becomes the image's Δθ; the file then works with edit, interpolate "
                       "and export-generator like any inversion.")
    p.add_argument("tuned", type=Path, help="checkpoints/model_<run>_<image>.pt written by PTI")
    p.add_argument("--pivot", required=True, type=Path, help="embeddings/<image>/PTI/0.pt written by PTI")
    _add_model(p)
    p.add_argument("--out", required=True, type=file_path, help="the inversion file to write (.safetensors)")
    p.set_defaults(func=run_import_pti)

    p = sub.add_parser("models", help="list bundled and downloadable models")
    p.set_defaults(func=run_models)

    p = sub.add_parser("methods", help="list the inversion methods, what each needs and its options")
    p.set_defaults(func=run_methods)

    p = sub.add_parser("download", help="fetch a catalogue model into the cache and verify its sha256")
    p.add_argument("name")
    p.set_defaults(func=run_download)


def _load_pipeline(args):
    from ..catalogue import local_model_path
    from ..errors import InputError
    from ..io.files import PIPELINE_INDEX
    from ..io.images import check_content_rows, describe_content_rows
    from ..pipeline import InversionPipeline
    from ..training.distributed import local_device

    rows = getattr(args, "content_rows", None)
    if rows is not None:  # (named as the library's argument, content_rows)
        rows = check_content_rows(rows, "--content-rows")
    bundle = rows is not None and (local_model_path(args.model) / PIPELINE_INDEX).is_file()

    # Commands without --dtype (import-pti only reads the generator) load in fp32. Under torchrun on GPUs, auto and
    # cuda are the rank's own GPU, as in training (every rank of a sharded invert ran on GPU 0).
    pipe = InversionPipeline.from_pretrained(args.model, device=local_device(args.device),
                                             dtype=getattr(args, "dtype", "fp32"),
                                             content_rows=None if bundle else rows)
    if bundle and rows != pipe.content_rows:  # (the library's refusal named the bundle's folder, not the option)
        raise InputError("--content-rows", f"{list(rows)}: {args.model} is a bundle, which records its own rows (its "
                         f"methods read {describe_content_rows(pipe.content_rows)}); leave --content-rows out")
    method = getattr(args, "method", None)
    if method is not None:  # an unknown or unavailable method (or --method '') is an error now, before any work
        pipe.default_method = method
        pipe.inverter()
    return pipe


def _result_for(pipe, path: Path, args):
    """(``InversionResult``, record) for an inversion file (checked against the model) or an image (inverted
    with ``--method`` and its ``--option``s)."""
    from ..precision import dtype_name

    if _is_inversion_file(path):
        return pipe.load_result(path)
    return pipe.invert([path], **dict(getattr(args, "option", []))), {"placement": None, "source": str(path),
                                                                       "dtype": dtype_name(pipe.dtype)}


def _check_method_applies(args, inputs: list[Path]) -> None:
    """``--method`` and ``--option`` say how images are inverted: where every input is an inversion file, read as it
    was inverted, they are refused (they were ignored without a word)."""
    from ..errors import InputError

    given = [flag for flag, value in (("--method", args.method), ("--option", args.option or None))
             if value is not None]
    if given and inputs and all(_is_inversion_file(path) for path in inputs):
        raise InputError(f"{', '.join(given)}: {'apply' if len(given) > 1 else 'applies'} only to images, which are "
                         "inverted first; inversion files (.safetensors) are used as they were inverted")


def _is_inversion_file(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"  # (p.SAFETENSORS, as some systems name files)


def _report_failures(failures) -> None:
    for error in failures:
        print(f"failed: {error}", file=sys.stderr)


def run_invert(args: argparse.Namespace) -> int:
    import os

    from ..errors import InputError
    from ..inversion.batch import invert_files
    from ..io.files import check_output_folder
    from ..io.images import find_images, no_images_error

    face_options(args)  # (given without --align: refused before any work)
    if args.adapt_from is not None and args.render_with is None:  # (it was ignored without a word)
        raise InputError("--adapt-from: applies only with --render-with (the generator whose rendering keeps the "
                         "offsets from that resolution up)")
    found = find_images(args.inputs, skip=[args.out])  # (not our own results, on a re-run)
    if not found.paths and not found.problems:
        raise no_images_error(args.inputs)
    check_output_folder(args.out, inputs=args.inputs)  # a bad --out fails before the model loads
    detector = None
    if args.align and found.paths:
        detector = face_detector(args)
    pipe = _load_pipeline(args) if found.paths else None
    failures = list(found.problems) if os.environ.get("RANK", "0") == "0" else []
    if pipe is None:
        _report_failures(failures)
        print(f"inverted nothing: none of the {len(failures)} input(s) can be read", file=sys.stderr)
        return 1
    if args.compile:
        pipe.compile(getattr(args, "method", None))
    adapt = adapt_digest = None
    if args.render_with is not None:
        from ..catalogue import generator_path
        from ..convert.gan_files import load_generator
        from ..inversion.files import generator_fingerprint
        from ..io.work import fingerprint_of
        from ..pipeline import check_same_architecture

        if args.adapt_from is not None and args.adapt_from > pipe.generator.resolution:  # (no offset was kept)
            raise InputError(f"--adapt-from {args.adapt_from} is above the generator's resolution, "
                             f"{pipe.generator.resolution}: no offsets would be kept")
        other = load_generator(generator_path(args.render_with), device=pipe.device)
        try:
            check_same_architecture(pipe.generator, other)
        except ValueError as e:
            raise InputError(args.render_with, str(e)) from None

        def adapt(result):
            return pipe.adapt(result, other, min_resolution=args.adapt_from)

        adapt_digest = fingerprint_of([generator_fingerprint(other), args.adapt_from])
    report = invert_files(pipe, found.paths, args.out, options=dict(args.option), batch_size=args.batch_size,
                          detector=detector, model_name=str(args.model), overwrite=args.overwrite, adapt=adapt,
                          adapt_digest=adapt_digest)
    failures += report.failed
    _report_failures(failures)
    rank = f"rank {report.rank}/{report.world_size}: " if report.world_size > 1 else ""
    rate = f" ({report.seconds_per_image:.3f} s/image)" if report.written else ""
    print(f"{rank}wrote {len(report.written)} picture(s) into {args.out}{rate}; "
          f"{len(report.skipped)} input(s) already done, {len(failures)} failed")
    return 1 if failures else 0


def _direction(args, generator):
    import torch

    from ..catalogue import local_model_path
    from ..editing.catalogue import resolve_direction
    from ..editing.directions import check_component_applies
    from ..editing.sheet import parse_layer_range
    from ..errors import InputError

    start, end = parse_layer_range(args.layers, generator.num_ws) if args.layers is not None else (None, None)
    first = args.strength[0] if args.strength else None
    direction = resolve_direction(local_model_path(args.model), args.direction, index=args.component, start=start,
                                  end=end, strength=first, generator=generator)
    check_component_applies(direction, args.component, args.direction)
    try:  # does it fit this model's codes? (once, before any image is processed)
        direction.apply(generator.w_avg[None, None].expand(1, generator.num_ws, -1).to(torch.float32))
    except ValueError as e:
        raise InputError(args.direction, f"does not fit model {args.model} ({e})") from None
    return direction


def run_edit(args: argparse.Namespace) -> int:
    from ..editing.directions import check_strength
    from ..errors import InputError
    from ..inversion.batch import unique_stems
    from ..inversion.files import made_with_digest
    from ..io.files import InputFiles, check_output_folder, file_name_part, output_folder
    from ..io.images import MAX_PICTURE_SIDE, grid_side
    from ..io.work import fingerprint_of
    from ..precision import dtype_name
    from ..progress import progress_bar

    strengths = args.strength or [None]
    for strength in args.strength or ():  # (1e308 was blamed on the direction file's default strength, or, not
        check_strength(strength, "--strength")  # first, failed the run after --out was made: "strength must be")
    labels = ["default" if s is None else f"{s + 0.0:+g}" for s in strengths]  # (+ 0.0: -0 is 0)
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:  # (their edits were written to one file, the last one kept, while the strip showed each)
        raise ValueError(f"--strength: {', '.join(twice)} given more than once (the files are named by a strength's "
                         "first 6 digits)")
    args.inputs, unlisted = _inversion_files(args.inputs, out=args.out)
    _check_method_applies(args, args.inputs)
    check_output_folder(args.out)  # (made once the model and the direction have loaded)
    pipe = _load_pipeline(args)
    side = pipe.generator.resolution
    width = grid_side(len(strengths) + 1, side)  # each input's strip: its reconstruction, then each strength's edit
    if width > MAX_PICTURE_SIDE:  # (drawn in memory whole, past what viewers and `invert` itself read)
        raise InputError(f"--strength: {len(strengths)} strengths of {side} px make a strip {width:,} px wide (at most "
                         f"{MAX_PICTURE_SIDE:,}); give fewer")
    direction = _direction(args, pipe.generator)
    options = dict(args.option)
    pipe.inverter().check_options(options)  # images are inverted first: a bad option fails now, before --out is made
    with output_folder(args.out) as out_dir:  # (another run writing into it is refused)
        # What makes an input's edits, besides its file's bytes (and, pasted back, its photo's): a re-run skips only
        # the edits it would make again. Images are inverted first, by the method's weights (hashed only then).
        inverted_by = (made_with_digest(pipe.inverter(), options)
                       if any(not _is_inversion_file(path) for path in args.inputs) else None)
        made_by = fingerprint_of([pipe.fingerprint, direction, strengths, args.paste_back, dtype_name(pipe.dtype),
                                  inverted_by])
        inputs = InputFiles(args.inputs)
        failures, done, skipped = list(unlisted), 0, 0
        named = list(zip(args.inputs, unique_stems(args.inputs)))  # (inputs sharing a stem: their folder too)
        part = file_name_part(direction.name, fallback="direction")  # (a name from a file)
        # Pasted back, the faces of one photo go into one photo (it wrote a photo per face, each with that face alone
        # edited); each input's edits and strip stay its own.
        groups = _photo_groups(named) if args.paste_back else [(name, None, [(path, name)]) for path, name in named]
        with progress_bar(total=len(named), desc="edit", unit="file", disable=len(named) < 2) as bar:
            for photo_name, source, faces in groups:
                written, already, failed = _edit_group(pipe, args, direction, strengths, labels, made_by, inputs,
                                                       out_dir, part, photo_name, source, faces)
                done, skipped, failures = done + written, skipped + already, failures + failed
                bar.update(len(faces))
    _report_failures(failures)
    print(f"wrote edits of {done} input(s) along {direction.name!r} to {args.out}; {skipped} already done, "
          f"{len(failures)} failed")
    return 1 if failures else 0


def _photo_groups(named: list[tuple[Path, str]]) -> list[tuple[str, str | None, list[tuple[Path, str]]]]:
    """``edit --paste-back``'s inputs (path, output name) as (the pasted photos' name, the photo, its faces): the
    inversion files of aligned faces of one photo in one folder, named as `invert` names them (``NAME-faceI``), are
    one group, in the order of their faces in the photo (the input order among equals), so that a later face's crop
    goes over an earlier one's. Any other input (an image, a file without a placement or that cannot be read) is a
    group of its own, with no photo: it fails, saying why, when it is edited. The photos' names are all different."""
    from ..errors import InputError
    from ..inversion.batch import FACE_NUMBER
    from ..inversion.files import read_inversion_record

    groups: dict[object, tuple[str | None, list[tuple[int, int, Path, str]]]] = {}
    for order, (path, name) in enumerate(named):
        record = None
        if _is_inversion_file(path):
            try:
                record = read_inversion_record(path)  # (its header only: the codes and Δθ are read when edited)
            except (InputError, OSError):
                pass  # (loading it names the cause)
        if record is None or record["placement"] is None:
            groups[order] = (None, [(0, order, path, name)])
            continue
        index = record["picture"]["index"] if record["picture"] else 0
        # By the files' own folder and name: by their output names, the faces that share theirs with a face of
        # another folder (prefixed with their folder) made a photo of their own, without the photo's other faces.
        photo = path.parent / FACE_NUMBER.sub("", path.stem)
        groups.setdefault((record["source"], photo), (record["source"], []))[1].append((index, order, path, name))
    result, taken = [], set()
    for source, faces in groups.values():
        faces.sort()
        name = FACE_NUMBER.sub("", faces[0][3]) if source is not None else faces[0][3]
        candidate, k = name, 1
        while candidate in taken:  # (one name of two photos: x.safetensors of one, x-face0 of another)
            k += 1
            candidate = f"{name}_{k}"
        taken.add(candidate)
        result.append((candidate, source, [(path, face_name) for _, _, path, face_name in faces]))
    return result


def _edit_group(pipe, args, direction, strengths: list, labels: list[str], made_by: str, inputs, out_dir: Path,
                part: str, photo_name: str, source: str | None, faces: list[tuple[Path, str]]
                ) -> tuple[int, int, list]:
    """Edit the inputs ``faces`` (path, output name) and, with ``--paste-back``, paste them into their photo
    ``source`` as one photo per strength, ``photo_name``'s; all written as one group. A face that fails is left out
    of it, and the others are written. -> (the inputs written, those already done, the failures)."""
    import torch

    from ..align import paste_back_placements
    from ..errors import InputError, describe_os_error, naming
    from ..io.files import atomic_write_group, sha256_if_readable
    from ..io.images import image_bytes, images_made_with, make_grid, read_image, tensor_to_pil
    from ..io.work import fingerprint_of

    def failure(e: Exception, path: Path) -> InputError:
        if isinstance(e, InputError):
            return naming(e, path)
        # (a missing input stopped the batch halfway, exit 2, hiding what had failed before it)
        return InputError(path, describe_os_error(e)) if e.filename is None else InputError(describe_os_error(e))

    # By output name, which is each input's own: one file given twice is two inputs (by path, the second's names
    # were the first's too, and the first's edits were not written). Each edit's file, then the strip.
    targets = {name: [out_dir / f"{name}_{part}_{label}.png" for label in [*labels, "strip"]] for _, name in faces}
    photos = [out_dir / f"{photo_name}_{part}_{label}_photo.png" for label in labels] if args.paste_back else []
    try:
        inputs.check_outputs(photos)
    except InputError as e:  # (it names the output)
        return 0, 0, [e]
    # Made from every face given (one that fails here is still missing from the photo: its files are not there).
    made, photo, photo_sha256 = fingerprint_of([made_by, *(sha256_if_readable(path) for path, _ in faces)]), None, None
    failures, kept = [], []
    for path, name in faces:
        try:
            inputs.check_outputs(targets[name])
            kept.append((path, name))
        except InputError as e:
            failures.append(e)
    faces = kept
    if not faces:
        return 0, 0, failures
    if source is not None:
        photo_sha256 = sha256_if_readable(Path(source))  # (hashed once for all its faces)
        made = fingerprint_of([made, photo_sha256])
    if not args.overwrite and images_made_with([*photos, *(t for _, name in faces for t in targets[name])], made):
        return 0, len(faces), failures
    if source is not None:
        try:
            photo = read_image(source)
        except (InputError, OSError) as e:
            return 0, 0, failures + [InputError(path, f"cannot paste back into its photo ({failure(e, Path(source))})")
                                  for path, _ in faces]
    edited = []  # (path, name, [the reconstruction, then each edit], placement)
    loaded = []  # (path, name, result, placement): read, not yet edited

    def edit_loaded() -> None:
        # The faces in one synthesis call (each with its own Δθ); where that fails, each alone, so that a face whose
        # edit cannot be made fails by itself, as it did edited one at a time.
        try:
            edits = pipe.edit_each([result for _, _, result, _ in loaded], direction, strengths,
                                   batch_size=args.batch_size)
        except InputError:
            edits = []
            for path, _, result, _ in loaded:
                try:
                    edits.append(pipe.edit_strengths(result, direction, strengths))
                except InputError as e:
                    edits.append(None)
                    failures.append(failure(e, path))
        edited.extend((path, name, [result.image, *images], placement)
                      for (path, name, result, placement), images in zip(loaded, edits) if images is not None)
        loaded.clear()

    for path, name in faces:
        try:
            result, record = _result_for(pipe, path, args)
            if args.paste_back:
                _check_paste_back(path, record, photo, photo_sha256)
            loaded.append((path, name, result, record["placement"]))
        except (InputError, OSError) as e:
            failures.append(failure(e, path))
        if len(loaded) >= max(1, args.batch_size // len(strengths)):  # (a photo of 30 faces is not read at once)
            edit_loaded()
    if loaded:
        edit_loaded()
    outputs = []
    for _, name, images, _ in edited:
        outputs += [(target, image_bytes(pipe.content(img), made_with=made))
                    for target, img in zip(targets[name], images[1:])]
        strip = make_grid(pipe.content(torch.cat(images).cpu()), nrow=len(images))
        outputs.append((targets[name][-1], image_bytes(strip, made_with=made)))
    if photo is not None and edited:
        for k, target in enumerate(photos):
            crops = [tensor_to_pil(images[k + 1].cpu())[0].convert("RGB") for _, _, images, _ in edited]
            pasted = paste_back_placements(photo, crops, [placement for *_, placement in edited])
            outputs.append((target, image_bytes(pasted, made_with=made)))
    if outputs:
        atomic_write_group(outputs)  # the photo's edits are written whole
    return len(edited), 0, failures


def _check_paste_back(path: Path, record: dict, photo, photo_sha256: str | None) -> None:
    """Whether the face inverted from ``path`` can be pasted back into ``photo`` (read from its record's source,
    whose bytes hash to ``photo_sha256`` now): an ``InputError`` naming ``path`` if not."""
    from ..align import check_placement
    from ..errors import InputError

    if record["placement"] is None or photo is None:
        raise InputError(path, "has no face placement (invert it with --align to paste back)")
    try:
        check_placement(photo, record["placement"])
    except ValueError as e:
        raise InputError(path, f"cannot paste back into its photo {record['source']} ({e})") from None
    # A photo changed under its name since is pasted into (a retouched photo keeps its face's place), but a
    # viewer's rotation by its EXIF tag, or a crop, at the same size moved the face without a word.
    if record.get("source_sha256") not in (None, photo_sha256):
        logger.warning("%s: has changed since its face was aligned for %s: the edit goes where the face was then (if "
                       "the photo was turned or cropped since, invert it again)", record["source"], path)


def _inversion_files(inputs: list[Path], *, out: Path) -> tuple[list[Path], list[ValueError]]:
    """``edit``'s inputs: files as given; for a folder, the inversion files in it (``*.safetensors``, found
    recursively, not inside ``out``) where it holds any, since its images are then ``invert``'s own results, and
    else its images (a folder of photos, inverted first). A folder was a failed input ("is a folder, not an image
    file"). Returns them and what in the folders cannot be an input (a broken link, a folder that may not be
    listed, a folder that holds neither)."""
    from ..errors import InputError
    from ..io.images import find_images, no_images_error

    files, problems = [], []
    for path in inputs:
        if not path.is_dir():
            files.append(path)
            continue
        # (a broken link, or a folder that may not be listed, fails as an input of its own, as in invert)
        inversions = find_images([path], skip=[out], suffixes=[".safetensors"])
        found = inversions if inversions.paths else find_images([path], skip=[out])
        # A folder's broken links to inversion files fail too where its photos are taken (they were passed over).
        reported = {str(e) for e in found.problems}
        failed = found.problems + [e for e in inversions.problems if str(e) not in reported]
        if not found.paths and not failed:  # (it fails alone, as a missing input does: it ended the batch, exit 2)
            failed = [InputError(path, f"holds no inversion files (.safetensors, written by `invert`) and "
                                 f"{no_images_error([path]).cause}")]
        files += found.paths
        problems += failed
    return files, problems


def run_interpolate(args: argparse.Namespace) -> int:
    import torch

    from ..errors import InputError, OutputError
    from ..io import images
    from ..io.files import InputFiles, atomic_write_group
    from ..io.images import gif_bytes, image_bytes, make_grid
    from ..io.video import mp4_bytes, video_backend

    if args.out.is_dir():  # (it wrote DIR.png, DIR.gif and DIR.mp4 beside the folder)
        raise OutputError(args.out, "is a folder; give the clip's name (for example "
                          f"{args.out / 'interpolation'}: writes .png, .gif and .mp4)")
    # (x.PNG wrote x.PNG.png, x.PNG.gif and x.PNG.mp4)
    out = args.out.with_suffix("") if args.out.suffix.lower() in (".png", ".gif", ".mp4") else args.out
    _check_method_applies(args, [args.a, args.b])
    targets = {suffix: out.with_name(out.name + suffix) for suffix in (".png", ".gif", ".mp4")}
    InputFiles([args.a, args.b]).check_outputs(targets.values())
    pipe = _load_pipeline(args)
    a, b = _result_for(pipe, args.a, args)[0], _result_for(pipe, args.b, args)[0]
    try:  # (--steps is checked by its parser: what is left is the two ends together, which it named neither of)
        frames = pipe.content(pipe.interpolate(a, b, steps=args.steps).cpu())
    except ValueError as e:  # "cannot interpolate 'scale' and 'add' offsets", "come from different models"
        raise InputError(f"{args.a} and {args.b}", str(e)) from None
    there_and_back = list(frames) + list(frames.flip(0))
    # The strip shows evenly spaced frames, both ends among them, where all would be wider than the widest picture
    # (240 steps of a 1024-px model drew one 246,000 px wide); the GIF and the MP4 hold every frame.
    fit = max(2, images.most_in_a_row(frames.shape[-1]))
    shown = frames if len(frames) <= fit else frames[torch.linspace(0, len(frames) - 1, fit).round().long()]
    written = [(targets[".png"], image_bytes(make_grid(shown, nrow=len(shown)))),
               (targets[".gif"], gif_bytes(there_and_back))]
    if video_backend() is not None:
        written.append((targets[".mp4"], mp4_bytes(torch.stack(there_and_back), args.fps, beside=targets[".mp4"])))
    atomic_write_group(written)
    print("wrote " + ", ".join(str(path) for path, _ in written))
    if len(shown) < len(frames):
        print(f"the strip shows {len(shown)} of the {len(frames)} frames, evenly spaced: the GIF and MP4 hold them all")
    if video_backend() is None:
        print("no MP4: install the video extra (pip install 'hyperinverter[video]')")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..convert.gan_files import check_rosinality_replaceable, output_format, save_rosinality
    from ..inversion.export import bake_weight_delta
    from ..inversion.files import inversion_bytes
    from ..io.files import check_replaceable
    from ..io.gan import save_gan
    from ..methods import InversionResult

    _check_method_applies(args, [args.input])
    rosinality = output_format(args.out) == "rosinality"  # (a .pkl was written as a folder of that name)
    if rosinality:  # refuse an output that is not ours before any work
        check_rosinality_replaceable(args.out)
    else:
        check_replaceable(args.out, "generator")
    pipe = _load_pipeline(args)
    result, record = _result_for(pipe, args.input, args)
    # A method without offsets exports the generator unchanged, with the image's codes beside it.
    baked = bake_weight_delta(pipe.generator, result.weight_delta.select(0) if result.weight_delta else None).cpu()
    ws = result.ws[:1].cpu()
    # The baked generator renders the image from the inverted code (no offsets any more): the code goes with it,
    # in the same atomic write.
    if rosinality:
        save_rosinality(args.out, baked, extras={"ws": ws})
        print(f"wrote the image-specific generator and its code ('ws') to {args.out}")
    else:
        codes = inversion_bytes(InversionResult(ws=ws, image=result.image[:1].cpu()), source=args.input,
                                model=str(args.out), dtype=record["dtype"])
        save_gan(args.out, baked, files={"ws.safetensors": codes})
        print(f"wrote the image-specific generator to {args.out}, with its code in {args.out / 'ws.safetensors'}")
    return 0


def run_import_official(args: argparse.Namespace) -> int:
    from ..catalogue import local_model_path
    from ..convert.official import import_official
    from ..io.files import check_replaceable
    from ..pipeline import save_pipeline
    from ..precision import PRECISIONS

    check_replaceable(args.out, "pipeline")
    checkpoint, generator, w_encoder = (None if a is None else local_model_path(a)
                                        for a in (args.checkpoint, args.generator, args.w_encoder))
    methods = import_official(checkpoint, generator=generator, w_encoder=w_encoder, task=args.task)
    main = next(reversed(methods))  # the released method itself; phase1 is its first pass
    if not args.add:
        save_pipeline(methods, args.out, default_method=main, dtype=PRECISIONS[args.weights])
        print(f"wrote a bundle with {', '.join(methods)} to {args.out}; use it with --model {args.out}")
        return 0
    from ..pipeline import InversionPipeline, join_methods

    bundle = InversionPipeline.from_pretrained(args.out, device="cpu")
    joined = join_methods(bundle.methods, methods, source=str(checkpoint))
    save_pipeline(joined, args.out, default_method=bundle.default_method, align_scale=bundle.align_scale,
                  faces=bundle.faces, discriminator=bundle.discriminator,
                  dtype=PRECISIONS[args.weights])  # keeps its card and directions
    added = [m for m in methods if m not in bundle.methods]
    kept = [m for m in methods if m in bundle.methods]
    print(f"added {', '.join(added) or 'nothing'} to {args.out}" + (f" (kept the bundle's {', '.join(kept)})" if kept
                                                                      else "") + f"; it holds {', '.join(joined)}")
    return 0


def run_join(args: argparse.Namespace) -> int:
    from ..catalogue import local_model_path
    from ..errors import InputError
    from ..io.files import InputFiles
    from ..pipeline import InversionPipeline, join_methods, save_pipeline
    from ..precision import PRECISIONS

    if len(args.bundles) < 2:
        raise InputError(args.bundles[0], "is one bundle: give two or more to join")
    folders = [local_model_path(b) for b in args.bundles]
    InputFiles(folders[1:]).check_outputs([args.out], hint="only the first bundle may be extended; give another --out")
    pipes = [InversionPipeline.from_pretrained(f, device="cpu") for f in folders]
    for folder, pipe in zip(folders, pipes):
        if not any(type(m).components for m in pipe.methods.values()):
            raise InputError(folder, "holds no trained method (a generator alone): join bundles")
    scales = {p.align_scale for p in pipes}
    if len(scales) > 1:
        raise InputError(folders[0], f"and the other bundles crop faces at different scales ({sorted(scales)}); "
                         "their encoders do not take the same inputs")
    methods = dict(pipes[0].methods)
    for folder, pipe in zip(folders[1:], pipes[1:]):
        methods = join_methods(methods, pipe.methods, source=str(folder))
    default = pipes[0].default_method if args.default is None else args.default  # (--default '' was the first's)
    if default not in methods:
        raise InputError(f"--default {args.default!r}", f"is not a method of the joined bundles ({', '.join(methods)})")
    discriminator = next((p.discriminator for p in pipes if p.discriminator is not None), None)
    # (one generator: one domain) Any bundle that says faces makes the joined model one of faces: it was faces or not
    # by the order of its bundles.
    said = {p.faces for p in pipes} - {None}
    faces = True if True in said else False if said else None
    save_pipeline(methods, args.out, default_method=default, align_scale=scales.pop(), faces=faces,
                  discriminator=discriminator, keep_extras_of=folders[0], dtype=PRECISIONS[args.weights])
    print(f"wrote {args.out}, holding {', '.join(methods)} (default {default}); use it with --model {args.out}")
    return 0


def run_import_pti(args: argparse.Namespace) -> int:
    from ..convert.pti import load_pti_inversion
    from ..errors import OutputError
    from ..inversion.files import save_inversion

    if not _is_inversion_file(args.out):  # (written all the same: edit then read it as an unreadable image)
        raise OutputError(args.out, "an inversion file must be named NAME.safetensors: edit, interpolate and "
                          "export-generator tell inversion files from images by that suffix")
    pipe = _load_pipeline(args)
    result = load_pti_inversion(args.tuned, args.pivot, pipe.generator)
    save_inversion(args.out, result.to("cpu"), source=args.tuned, model=str(args.model), method="pti",
                   generator=pipe.fingerprint)
    print(f"wrote {args.out}: the pivot and Δθ on {len(result.weight_delta)} parameters; use it with --model "
          f"{args.model}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from ..catalogue import cache_dir, catalogue_rows

    rows = catalogue_rows()
    print(f"{'name':32} {'kind':26} {'status':12} {'size':10} {'sha256':15} file")
    for r in rows:
        print(f"{r['name']:32} {r['kind']:26} {r['status']:12} {r['size']:10} {r['sha256']:15} {r['file']}")
    print(f"\ncache: {cache_dir()} (set HYPERINVERTER_CACHE to move it)")
    return 0


def run_methods(args: argparse.Namespace) -> int:
    from ..methods import registered_methods

    for name, cls in sorted(registered_methods().items()):
        needs = ", ".join(cls.components) if cls.components else "nothing trained (runs on any generator)"
        options = ", ".join(f"{k}={v!r}" for k, v in cls.options.items()) or "none"
        print(f"{name}: {cls.label}. {cls.summary}\n    needs: {needs}\n    options: {options}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from ..download import download

    path = download(args.name)
    print(f"{args.name}: {path}")
    return 0


def register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score every method of a model on a held-out image folder, or any two "
                       "folders of images",
                       description="Inverts every image of DATA with each method and reports MSE, PSNR, SSIM, "
                       "MS-SSIM (and identity similarity when --identity is given) and seconds per image. "
                       "With --pred and --gt instead, scores the images of PRED against the same-named images of GT "
                       "(any method's outputs, also from other code); folders that do not hold the same names are an "
                       "error. Unreadable images are listed in the report and left out; the exit status is then 1. "
                       "Scores are kept in OUT.work until the report is written: running the same command again "
                       "resumes an interrupted evaluation.")
    p.add_argument("--data", type=Path, help="held-out image folder (never the training data)")
    p.add_argument("--pred", type=Path, help="a folder of predictions, to score against --gt (no model needed); or "
                   "one image")
    p.add_argument("--gt", type=Path, help="the ground-truth folder for --pred: files paired by name; or one image")
    _add_model(p, required=False)
    add_dtype(p)
    p.add_argument("--max-images", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per call (default %(default)s)")
    p.add_argument("--identity", action="store_true",
                   help="also report identity similarity (faces): CurricularFace, the papers', when it is in the "
                        "model cache, else SFace")
    p.add_argument("--whole-frame", action="store_true",
                   help="with --pred/--gt and --identity: embed the whole images, not the face box of FFHQ-aligned "
                   "faces (--model uses its own framing)")
    p.add_argument("--editability", type=positive_int, default=None, metavar="N",
                   help="also measure ground-truth editability on N images the generator makes from known codes, "
                   "with the model's directions (writes OUT-editability.md/.json)")
    p.add_argument("--methods", type=name_list, default=None,
                   help="comma-separated methods to score (default: every trained method of the model)")
    p.add_argument("--option", action="append", default=[], type=_method_option, metavar="METHOD.KEY=VALUE",
                   help="an option of one method, e.g. wplus-opt.steps=500 (repeatable)")
    p.add_argument("--out", required=True, type=Path,
                   help="report stem: writes OUT.md, OUT.json (means) and OUT.csv (every image's scores)")
    p.set_defaults(func=run_evaluate)


def _add_stored_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", choices=["fp32", "fp16"], default="fp32",
                   help="how the bundle stores its weights: fp32 (exact, the default) or fp16 (half the size, as the "
                   "bundled models; the networks still run in fp32 unless --dtype says otherwise). fp16 rounds the "
                   "generator too, so inversion files made with an fp32 bundle do not render with the fp16 one")


def _method_option(text: str) -> tuple[str, str, object]:
    """``METHOD.KEY=VALUE`` -> (method, key, value)."""
    key, value = _option(text)
    method, dot, key = key.rpartition(".")
    if not dot or not method or not key:
        raise argparse.ArgumentTypeError(f"expected METHOD.KEY=VALUE (e.g. pti.steps=100), got {text!r}")
    return method, key, value


def run_evaluate(args: argparse.Namespace) -> int:
    from ..errors import OutputError
    from ..io.files import check_file_replaceable

    if args.out.is_dir():  # (it wrote DIR.md, DIR.json and DIR.csv beside the folder)
        raise OutputError(args.out, f"is a folder; give the report's name (for example {args.out / 'report'}: "
                          "writes .md, .json, .csv and .png)")
    for path in [args.out.with_suffix(s) for s in (".md", ".json", ".csv", ".png")] + (
            _editability_paths(args.out) if args.editability else []):
        check_file_replaceable(path, report=True)  # (before the work: a user's file there is never replaced)
    if (args.pred is None) != (args.gt is None):
        print("error: --pred and --gt go together", file=sys.stderr)
        return 2
    if args.pred is not None:
        if args.model is not None or args.data is not None:
            print("error: give either --pred and --gt, or --model and --data", file=sys.stderr)
            return 2
        # (they were ignored without a word: every pair scored, no editability report, exit 0)
        given = {"--max-images": args.max_images, "--editability": args.editability, "--methods": args.methods,
                 "--option": args.option or None, "--content-rows": args.content_rows,
                 "--dtype": None if args.dtype == "fp32" else args.dtype}  # (the metrics run in fp32, as with --model)
        model_only = [flag for flag, value in given.items() if value is not None]
        if model_only:
            print(f"error: {', '.join(model_only)}: {'apply' if len(model_only) > 1 else 'applies'} only with --model "
                  "and --data, not to --pred and --gt", file=sys.stderr)
            return 2
        if args.whole_frame and not args.identity:  # (it frames the identity embeddings only: ignored without a word)
            print("error: --whole-frame: applies only with --identity (the framing of the faces it embeds)",
                  file=sys.stderr)
            return 2
        return _evaluate_folders(args)
    if args.model is None or args.data is None:
        print("error: evaluate needs --model and --data (or --pred and --gt)", file=sys.stderr)
        return 2
    if args.whole_frame:  # (ignored without a word: the model's own framing is scored)
        print("error: --whole-frame: applies only with --pred and --gt (--model scores its own framing)",
              file=sys.stderr)
        return 2
    return _evaluate_model(args)


def _standard_metrics(device, *, identity: bool, align_scale: float | None) -> tuple[dict, list[str]]:
    """The protocol's metrics beside the pixel ones: LPIPS-alex and the Inception distance (each, when its file is
    missing, replaced by a note saying so), and identity similarity if asked. Returns (metrics, notes)."""
    from ..evaluation import identity_metric, lpips_metric
    from ..inception_metrics import inception_metric

    extra, notes = {}, []
    for metric, note in (lpips_metric(device), inception_metric(device)):
        extra.update(metric)
        notes += [note] if note else []
    if identity:
        metric, note = identity_metric(device, align_scale=align_scale)
        extra.update(metric)
        notes.append(note)
    return extra, notes


def _evaluate_folders(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..evaluation import evaluate_folders
    from ..metrics import protocol_note

    device = resolve_device(args.device)  # (it was always the CPU: --device was accepted and ignored)
    # FFHQ-aligned faces unless told: the whole frame (background and hair) scored other numbers than --model does
    extra, notes = _standard_metrics(device, identity=args.identity, align_scale=None if args.whole_frame else 1.0)
    try:
        report, problems = evaluate_folders(args.pred, args.gt, extra_metrics=extra, batch_size=args.batch_size,
                                            device=device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report.notes.append(f"command: `{args.command}`")
    report.notes += [protocol_note(), *notes]
    written = report.save(args.out)
    print(report.to_markdown())
    _report_failures(problems)
    print(f"wrote {', '.join(map(str, written))} (every image's scores in the .csv)")
    return 1 if problems else 0


def _evaluate_model(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate, evaluation_work, load_heldout_images, quality_bars
    from ..io.files import check_outside
    from ..metrics import protocol_note
    from ..precision import dtype_name

    check_outside(args.out, args.data, why="its report and plot would be read as held-out images next time")
    pipe = _load_pipeline(args)
    options = _options_by_method(pipe, args.option, args.methods or list(pipe.methods))
    G = pipe.generator
    images, names, failures = load_heldout_images(args.data, resolution=G.resolution, channels=G.config.img_channels,
                                                  count=args.max_images, content_rows=pipe.content_rows)
    extra, notes = _standard_metrics(pipe.device, identity=args.identity, align_scale=pipe.align_scale)
    with evaluation_work(args.out) as work:  # another process evaluating into the same --out is refused
        report = evaluate(pipe, images, dataset=str(args.data), methods=args.methods, batch_size=args.batch_size,
                          extra_metrics=extra, options=options, names=names, work=work)
        report.notes += [f"{method} options: " + ", ".join(f"{k}={v!r}" for k, v in chosen.items())
                         for method, chosen in options.items()]
        report.notes.append(f"model: {args.model}")
        report.notes.append(f"precision: {dtype_name(pipe.dtype)}")
        report.notes += [protocol_note(G.resolution), *notes]
        report.notes.append(f"command: `{args.command}`")
        report.notes += [f"left out (unreadable): {e}" for e in failures]
        written = report.save(args.out)
        if work.resumed:
            print(f"resumed the interrupted evaluation stored in {work.folder}")
        print(report.to_markdown())
        try:
            print(f"plotted {report.plot(args.out.with_suffix('.png'))}")
        except ImportError:
            print("no plot: matplotlib is not installed (pip install 'hyperinverter[plot]')")
        if {"phase1", "hyperinverter"} <= report.metrics.keys():
            bars = quality_bars(report)
            print("quality bars: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in bars.items()))
        if args.editability:
            _editability(args, pipe, report, extra, options)
        # (once every output is written: stopped in its plot or editability, the command redid all the scores)
        work.remove()
    _report_failures(failures)
    print(f"wrote {', '.join(map(str, written))} (every image's scores in the .csv)")
    return 1 if failures else 0


def _options_by_method(pipe, given: list[tuple[str, str, object]], methods: list[str]) -> dict[str, dict]:
    """The ``--option METHOD.KEY=VALUE``s ``given``, by method, checked before any work: every method of
    ``methods`` (those run) and of the options is one of the model's, and each method's options are its own. An
    option of a method that is not run is refused (it was ignored without a word, and listed in the report)."""
    from ..errors import InputError

    options: dict[str, dict] = {}
    for method, key, value in given:
        options.setdefault(method, {})[key] = value
    for method in [*methods, *options]:
        pipe.inverter(method)  # an unknown or unavailable method is an error before any work
    for method, chosen in options.items():
        if method not in methods:
            raise InputError(f"--option {method}.{next(iter(chosen))}", f"{method} is not among the methods run "
                             f"({', '.join(methods)}); add it to --methods")
        pipe.inverter(method).check_options(chosen)
    return options


def _editability_paths(out: Path) -> list[Path]:
    """``OUT-editability.md`` and ``.json``, beside the report's ``out.with_suffix(".md")``: named from the report's
    stem, so that a dot in OUT (``--out scores.md``, ``run.v1``) leaves them apart (the editability report's
    ``with_suffix`` took ``.md-editability`` for a suffix and wrote over the evaluation report)."""
    stem = out.with_suffix("")
    return [stem.with_name(f"{stem.name}-editability{suffix}") for suffix in (".md", ".json")]


def _editability(args: argparse.Namespace, pipe, report, extra: dict, options: dict) -> None:
    import dataclasses

    from ..catalogue import local_model_path
    from ..editing.directions import edit_directions
    from ..evaluation import ground_truth_editability
    from ..io.files import atomic_write_group, json_report_bytes, markdown_bytes

    directions, stand_in = edit_directions(local_model_path(args.model), pipe.generator)
    if stand_in:
        print(f"editability: {stand_in}")
    result = ground_truth_editability(pipe, directions, methods=list(report.metrics), num_images=args.editability,
                                      extra_metrics=extra, batch_size=args.batch_size, options=options)
    md, json_path = _editability_paths(args.out)
    atomic_write_group([(json_path, json_report_bytes(dataclasses.asdict(result))),
                        (md, markdown_bytes(result.to_markdown()))], report=True)
    print(result.to_markdown())
    print(f"wrote {md} and {json_path}")
