"""``directions train|label|list``: edit directions that users make themselves, and a model's catalogue."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..bounds import MAX_SEED
from .arguments import (
    at_most,
    file_path,
    finite_float,
    layer_range,
    nonnegative_float,
    nonnegative_int,
    positive_int,
)
from .inversion_commands import _add_model

logger = logging.getLogger(__name__)

OFFICIAL_DOMAINS = ("cars", "church", "faces", "faces-e4e")  # editing.official's tables (not imported: it loads torch)
MAX_LABEL_SAMPLES = 1_000_000  # (InterFaceGAN labelled 500,000; 10^11 filled memory with its seeds before any work)

TRAIN_DESCRIPTION = """\
Fit a linear classifier (L2-regularised logistic regression) that separates the samples with much of an
attribute from those with little, on their W codes (or W+ rows); its unit normal is the direction. The accuracy
on a seeded held-out split is printed and stored in the file."""

LABELS_FORMAT = """\
labels CSV: one row per sample after a header row. Either a `seed` column (the code is regenerated from the
model's mapping network: w = mapping(z), z drawn as `generate` and NVIDIA's generate.py draw it,
np.random.RandomState(seed).randn(z_dim), or with a `z` column of `torch`, torch.randn(z_dim) of
torch.Generator().manual_seed(seed), as `directions label` drew before it wrote that column; an optional `trunc`
column gives the truncation psi, default 1, and an optional `generator` column the fingerprint of the generator that
drew the sample, which must be the model's) or a `codes` column (an inversion .safetensors
written by `hyperinverter invert`, relative to the CSV's folder, made with the same model). Every other column
is an attribute: a number per row, empty for "not labelled". A column of only 0 and 1 is a binary label; any
other is a score whose top and bottom --fraction are the two classes (InterFaceGAN's recipe)."""


def _fraction(text: str) -> float:
    value = nonnegative_float(text)
    if not 0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be in (0, 0.5], got {value:g}")
    return value


def _test_fraction(text: str) -> float:
    value = nonnegative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value:g}")
    return value


def _layer_bounds(text: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected START:END, two layer numbers, e.g. 0:5 (with no model "
                                         "given, an open end cannot be filled in)")
    start, end = (int(part) for part in parts)
    if start >= end:
        raise argparse.ArgumentTypeError(f"{text!r}: the range is empty (START must be below END)")
    return start, end


MAX_SEFA_LAYER = 255  # a 2048-px generator has 19 modulated convolutions


def _sefa_layers(text: str) -> tuple[int, ...] | str:
    """``all``, or layer numbers and ranges: ``2,3,4,5``, ``2-5``, ``0,4-7`` (checked against the model later)."""
    if text.strip() == "all":
        return "all"
    layers: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r}: expected layer numbers or ranges, e.g. 2,3,4,5 or 2-5, "
                                             "or all")
        end = int(last if dash else first)
        if end < int(first):
            raise argparse.ArgumentTypeError(f"{text!r}: the range {part.strip()} is empty")
        if end > MAX_SEFA_LAYER:  # (0-1000000000 built a list of a billion numbers before the model said no)
            raise argparse.ArgumentTypeError(f"{text!r}: layer {end} is beyond any generator's (at most "
                                             f"{MAX_SEFA_LAYER})")
        layers.extend(range(int(first), end + 1))
    return tuple(layers)


def _name_prefix(text: str) -> str:
    from ..io.files import file_name_part

    if not text or file_name_part(text, fallback="") != text:  # PREFIX_i.safetensors is written into --out
        raise argparse.ArgumentTypeError(f"{text!r}: must be a plain file name (no folder, no leading dot)")
    return text


def register(sub) -> None:
    p = sub.add_parser("directions", help="train edit directions from labels, label faces, import official ones, "
                       "find SeFa ones, list a model's directions",
                       description="Edit directions that you make yourself (InterFaceGAN boundaries from labelled "
                       "samples, SeFa directions from the generator's weights), official ones, and the directions a "
                       "model ships.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    q = actions.add_parser("train", help="an InterFaceGAN boundary from a labels CSV: a linear classifier on the "
                           "codes, whose unit normal is the edit",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=TRAIN_DESCRIPTION + "\n\n" + LABELS_FORMAT)
    _add_model(q, photos=False)
    q.add_argument("--labels", required=True, type=Path, help="the labels CSV (format below)")
    q.add_argument("--attribute", required=True, help="the column to train")
    q.add_argument("--condition", action="append", default=[], metavar="OTHER",
                   help="keep this attribute unchanged (InterFaceGAN's conditional edit: its normal is projected "
                   "off): another column of the CSV, a direction file, or a direction of the model; repeatable")
    q.add_argument("--space", choices=["w", "wplus"], default="w",
                   help="w (default): the classifier reads w (the mean of the rows of --layers); wplus: the rows "
                   "of --layers side by side")
    q.add_argument("--layers", type=layer_range, default=None, metavar="START:END",
                   help="the layers the direction edits (and the classifier reads); default: all")
    q.add_argument("--fraction", type=_fraction, default=0.3,
                   help="for a continuous score, the top and bottom fraction used as the classes (default 0.3)")
    q.add_argument("--test-fraction", type=_test_fraction, default=0.2,
                   help="the share of the samples held out to measure the accuracy (default 0.2)")
    q.add_argument("--seed", type=nonnegative_int, default=0, help="the seed of the held-out split (default 0)")
    q.add_argument("--strength", type=nonnegative_float, default=None,
                   help="the default strength stored in the file (default: 2 standard deviations of the codes "
                   "along the direction)")
    q.add_argument("--name", default=None, help="the direction's name (default: the attribute)")
    q.add_argument("--out", type=file_path, default=None,
                   help="the direction file to write (default: NAME.safetensors in the current folder, NAME being "
                   "--name or else the attribute)")
    q.set_defaults(func=run_train)

    q = actions.add_parser("label", help="label a face model's samples with landmark attributes (yaw, mouth and "
                           "eye opening) for `directions train`",
                           description="Generate the samples of seeds S..S+N-1, find the 68 dlib landmarks (small "
                           "images are upscaled first) and write one CSV row per sample with a face: seed, trunc, "
                           "yaw (nose-tip offset from the face's midline over the outer eye-corner distance; "
                           "positive: the nose points to the image's right), mouth_open (inner-lip gap over mouth "
                           "width) and eyes_open (mean eye aspect ratio). Samples without a face are skipped and "
                           "counted. Each batch's labels are kept in OUT.work until the CSV is written, so "
                           "running the same command again after an interruption resumes. Needs "
                           "`pip install 'hyperinverter[align]'`.")
    _add_model(q, photos=False)
    q.add_argument("--samples", required=True, type=at_most(positive_int, MAX_LABEL_SAMPLES),
                   help=f"how many samples to generate (at most {MAX_LABEL_SAMPLES:,})")
    q.add_argument("--seed", type=at_most(nonnegative_int, MAX_SEED), default=0,
                   help=f"the first seed (default 0; seeds go up to {MAX_SEED})")
    q.add_argument("--trunc", type=nonnegative_float, default=1.0,
                   help="truncation psi of the samples (default 1: none; recorded in the CSV)")
    q.add_argument("--upscale", type=positive_int, default=4,
                   help="upscale factor (Lanczos) before detection; the detector misses faces under ~80 px "
                   "(default %(default)s)")
    q.add_argument("--min-face-score", type=nonnegative_float, default=0.0,
                   help="the lowest dlib detection score kept (default 0, dlib's own: samples are small)")
    q.add_argument("--batch-size", type=positive_int, default=32, help="samples per call (default %(default)s)")
    q.add_argument("--out", required=True, type=file_path, help="the labels CSV to write")
    q.set_defaults(func=run_label)

    q = actions.add_parser("import", help="official direction files as ours, for a model's directions/ folder: "
                           "InterFaceGAN .pt/.npy, or a GANSpace PCA file with its domain's official named edits",
                           description="Write direction files of ours from the files the official codes ship, so that "
                           "`edit --direction NAME`, the web page and `directions list` offer them once they are in "
                           "a model's directions/ folder. A GANSpace basis (ffhq_pca.pt, cars_pca.pt, "
                           "church_pca.pt) gives the official named edits of its domain (--edits: faces, "
                           "HyperInverter's eight and PTI's smile; faces-e4e, e4e's five on ffhq_pca.pt, with its "
                           "own values; cars, e4e's and HyperStyle's five; church, HyperInverter's four), "
                           "or one edit "
                           "(--component, --layers, --strength, --name). An InterFaceGAN direction (age.pt, "
                           "smile.pt, pose.pt, a .npy boundary) gives one, named by --name or the file.")
    q.add_argument("file", type=Path, help="the official direction file")
    q.add_argument("--edits", choices=OFFICIAL_DOMAINS, help="a GANSpace basis's official named edits")
    q.add_argument("--component", type=nonnegative_int, help="GANSpace: the component of one edit")
    q.add_argument("--layers", type=_layer_bounds, metavar="START:END",
                   help="the layers of one edit: GANSpace's, or those a vector direction is kept to (E2Style's "
                   "official age.npy and smile.npy edits: 0:8)")
    q.add_argument("--strength", type=finite_float, default=None,
                   help="the default strength (GANSpace: the value the coordinate is set to)")
    q.add_argument("--name", default=None, help="the direction's name (default: the file's stem)")
    q.add_argument("--out", required=True, type=Path, help="the folder to write into, e.g. MODEL/directions")
    q.add_argument("--overwrite", action="store_true", help="replace direction files of the same names")
    q.set_defaults(func=run_import)

    q = actions.add_parser("sefa", help="SeFa directions of a generator (closed-form factorisation of its style "
                           "weights, as e4e's editings/sefa.py finds and applies them)",
                           description="Write the first --count SeFa directions of the model's generator: the "
                           "eigenvectors of W·Wᵀ, W being the style (affine) weights of the modulated convolutions "
                           "--layers, each column scaled to unit length, in the order np.linalg.eig gives them (e4e's: "
                           "not sorted by eigenvalue; each file records its eigenvalue). Layer numbers are e4e's: 0 is "
                           "the 4-px convolution, l is rosinality's convs[l-1], styled by W+ row l. An edit is "
                           "w + s·v on the rows e4e edits, l-1 for each layer l but 0 (rows 1-4 for layers 2-5: one "
                           "row before the layers factorised); --rows styled edits rows l instead. Files PREFIX_0, "
                           "PREFIX_1, ... (e4e's semantics index), for a model's directions/ folder.")
    q.add_argument("--model", required=True,
                   help="a catalogue name, a model folder or a generator file (any supported format)")
    q.add_argument("--layers", type=_sefa_layers, default=(2, 3, 4, 5), metavar="L,L,...|all",
                   help="the modulated convolutions to factorise, e4e's numbers: e.g. 2,3,4,5 (default, e4e's), "
                   "2-5, or all")
    q.add_argument("--count", type=positive_int, default=5, help="how many directions to write (default 5)")
    q.add_argument("--rows", choices=("official", "styled"), default="official",
                   help="the W+ rows an edit changes: official (default), e4e's, row l-1 for each layer l but 0; "
                   "styled, rows l, which style the layers factorised")
    q.add_argument("--strength", type=finite_float, default=None,
                   help="the default strength: the step along the unit direction (default: 2 standard deviations of "
                   "the generator's codes along it; 15 is where e4e's distances end)")
    q.add_argument("--prefix", type=_name_prefix, default="sefa", help="the files' and directions' names: "
                   "PREFIX_0, PREFIX_1, ... (default sefa)")
    q.add_argument("--out", required=True, type=Path, help="the folder to write into, e.g. MODEL/directions")
    q.add_argument("--overwrite", action="store_true", help="replace direction files of the same names")
    q.set_defaults(func=run_sefa)

    q = actions.add_parser("list", help="a model's directions: name, kind, layers, default strength and, for "
                           "trained ones, attribute and held-out accuracy")
    q.add_argument("--model", required=True, help="a catalogue name or a model folder")
    q.set_defaults(func=run_list)


def run_train(args: argparse.Namespace) -> int:
    from ..editing.boundaries import save_boundary, train_from_labels
    from ..errors import OutputError
    from ..io.files import check_file_replaceable

    out = args.out if args.out is not None else Path(f"{args.name or args.attribute}.safetensors")
    if out.suffix.lower() != ".safetensors":
        raise OutputError(out, "a direction file must end in .safetensors")
    if out.is_dir():
        raise OutputError(out, "is a folder; give the direction file to write")
    # (before the training: a user's file there, or an inversion of ours, was found after it)
    check_file_replaceable(out, safetensors=True, kind="direction")
    result = train_from_labels(args.model, args.labels, args.attribute, conditions=args.condition, space=args.space,
                               layers=args.layers, fraction=args.fraction, test_fraction=args.test_fraction,
                               seed=args.seed, strength=args.strength, name=args.name, device=args.device)
    save_boundary(result, out)
    start, end = result.layers
    print(f"{result.attribute}: held-out accuracy {result.accuracy:.3f} on {result.num_test} samples (trained on "
          f"{result.num_train}; training accuracy {result.train_accuracy:.3f})")
    for condition in result.conditions:
        print(f"  conditioned on {condition} (cosine before projection {result.condition_cosines[condition]:+.3f})")
    if result.conditions:
        print(f"  without the conditions the held-out accuracy is {result.accuracy_unconditioned:.3f}")
    print(f"wrote {out}: {result.space} direction on layers {start}:{end}, "
          f"default strength {result.direction.default_strength:g}")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from ..align import Dlib68Detector
    from ..catalogue import generator_path
    from ..convert.gan_files import load_generator
    from ..device import resolve_device
    from ..editing.attributes import label_samples, labelling_work, write_labels_csv
    from ..errors import OutputError
    from ..io.files import check_file_replaceable
    from ..io.images import MAX_PICTURE_SIDE

    if args.seed + args.samples - 1 > MAX_SEED:  # (numpy refused it in the first batch, its work folder made)
        raise ValueError(f"--seed {args.seed} --samples {args.samples}: the seeds would end at "
                         f"{args.seed + args.samples - 1}, past the last, {MAX_SEED}")
    if args.out.is_dir():
        raise OutputError(args.out, "is a folder; give the CSV file to write")
    check_file_replaceable(args.out, report=True)  # (before the labelling: a user's own labels are never replaced)
    detector = Dlib68Detector(min_score=args.min_face_score, upsample=0)
    G = load_generator(generator_path(args.model), device=resolve_device(args.device)).eval()
    if G.resolution * args.upscale > MAX_PICTURE_SIDE:  # (--upscale 100000: a MemoryError, its work folder made)
        raise ValueError(f"--upscale {args.upscale}: the {G.resolution}-px samples would be "
                         f"{G.resolution * args.upscale:,} px wide, past the largest picture, {MAX_PICTURE_SIDE:,}")
    seeds = range(args.seed, args.seed + args.samples)
    with labelling_work(args.out) as work:  # another process labelling into the same OUT is refused
        report = label_samples(G, seeds, detector, truncation_psi=args.trunc, upscale=args.upscale,
                               batch_size=args.batch_size, progress=True, work=work)
        if work.resumed:
            print(f"resumed the labelling stored in {work.folder}")
        if report.rows:
            write_labels_csv(args.out, report)
        work.remove()
    if not report.rows:
        print(f"labelled nothing: no face found in any of the {report.samples} samples (try a larger --upscale "
              "or --trunc 0.7)", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(report.rows)} labelled sample(s) of {report.samples} (seeds {seeds.start}-"
          f"{seeds.stop - 1}); {len(report.skipped)} without a face were skipped")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..editing.catalogue import edited_layers
    from ..editing.directions import (
        GANSpaceDirection,
        LinearDirection,
        check_component_applies,
        load_direction,
        save_direction,
    )
    from ..editing.official import official_ganspace_edits
    from ..errors import InputError

    one_edit = (args.component, args.layers, args.name, args.strength)
    if args.edits is not None:
        if any(v is not None for v in one_edit):
            raise InputError(args.file, "--edits writes the official named edits; --component, --layers, "
                             "--strength and --name describe one edit of your own: give one or the other")
        directions = official_ganspace_edits(args.file, args.edits)
    else:
        start, end = (None, None) if args.layers is None else args.layers
        directions = [load_direction(args.file, name=args.name, index=args.component, start=start, end=end,
                                     strength=args.strength)]
        check_component_applies(directions[0], args.component, args.file)
    for direction in directions:
        if not isinstance(direction, (LinearDirection, GANSpaceDirection)):
            raise InputError(args.file, f"is a {type(direction).__name__}, which has no file format of ours: use it "
                             "as it is (edit --direction FILE)")
    targets = _direction_targets([d.name for d in directions], args.out, overwrite=args.overwrite)
    for direction, target in zip(directions, targets):
        save_direction(direction, target)
        if isinstance(direction, GANSpaceDirection):
            layers = f"layers {direction.start}:{direction.end}, component {direction.index}"
        else:  # InterFaceGAN: one vector for every layer, or one per layer (pose.pt: [18, 512])
            rows, edited = direction.vector.shape[0], edited_layers(direction)
            layers = ("every layer" if rows == 1 else f"one vector for each of {rows} layers" if edited is None
                      else f"layers {edited[0]}:{edited[1]} of {rows}")
        print(f"wrote {target}: {direction.name} ({layers}, default strength {direction.default_strength:g})")
    return 0


def _direction_targets(names: list[str], out: Path, *, overwrite: bool) -> list[Path]:
    """``out/NAME.safetensors`` for each name, checked before anything is written: a file of ours there is replaced
    only with ``overwrite``, a user's never; ``out`` is made."""
    from ..errors import OutputError
    from ..io.files import check_file_replaceable, file_name_part

    if out.exists() and not out.is_dir():
        raise OutputError(out, "is a file: give the folder to write the directions into")
    targets = [out / f"{file_name_part(name, fallback='direction')}.safetensors" for name in names]
    for target in targets:  # (before anything is written) a direction of ours may be replaced, never a user's file
        check_file_replaceable(target, kind="direction")
    taken = [t for t in targets if t.exists()]
    if taken and not overwrite:
        raise OutputError(taken[0], f"exists{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''}: "
                          "--overwrite replaces it")
    out.mkdir(parents=True, exist_ok=True)
    return targets


def run_sefa(args: argparse.Namespace) -> int:
    from ..catalogue import generator_path
    from ..convert.gan_files import load_generator
    from ..editing.directions import check_strength, save_direction
    from ..editing.sefa import factorize_weight, named_directions

    if args.strength is not None:
        check_strength(args.strength, "--strength")
    G = load_generator(generator_path(args.model))
    factorisation = factorize_weight(G, args.layers, rows=args.rows)
    if args.count > len(factorisation.vectors):
        raise ValueError(f"--count {args.count}: the generator has {len(factorisation.vectors)} SeFa directions (its "
                         "w_dim)")
    directions = named_directions(G, factorisation, count=args.count, strength=args.strength, prefix=args.prefix)
    targets = _direction_targets(list(directions), args.out, overwrite=args.overwrite)
    rows = ",".join(map(str, sorted(factorisation.rows)))
    for i, (direction, target) in enumerate(zip(directions.values(), targets)):
        save_direction(direction, target, record=factorisation.record(i))
        print(f"wrote {target}: {direction.name} (eigenvalue {float(factorisation.eigenvalues[i]):.4g}, rows {rows}, "
              f"default strength {direction.default_strength:g})")
    return 0


def _generator_if_any(model: str):
    """The model's generator, to check its directions against, or None for a folder of directions alone (a
    generator that fails to load is the error of the commands that use it, not of a listing)."""
    from ..catalogue import load_model_gan
    from ..errors import InputError

    try:
        return load_model_gan(model).generator
    except (InputError, OSError) as e:
        logger.warning("the directions are listed unchecked: %s", e)
        return None


def run_list(args: argparse.Namespace) -> int:
    from ..catalogue import local_model_path
    from ..editing.catalogue import direction_catalogue
    from ..errors import InputError
    from ..io.files import output_kind

    folder = local_model_path(args.model)
    if not folder.is_dir():  # (an inversion file was "a folder with no directions", exit 0)
        raise InputError(args.model, "is a file, not a model folder")
    entries = direction_catalogue(args.model, _generator_if_any(args.model))
    if not entries and output_kind(folder) is None:
        raise InputError(args.model, "is not a model folder (it holds no pipeline.json, no generator and no "
                         "directions)")
    if not entries:
        print(f"{args.model} has no directions (its folder {local_model_path(args.model)} has no "
              "directions/*.safetensors)")
        return 0
    header = ("name", "kind", "layers", "strength", "attribute", "held-out accuracy")
    rows = []
    for e in entries:
        if e.error is not None:
            rows.append((e.name, e.kind, "-", "-", "-", "-"))
            continue
        rows.append((e.name, e.kind, e.describe_layers(), f"{e.strength:g}", e.attribute or "-",
                     f"{e.accuracy:.3f}" if e.accuracy is not None else "-"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    bad = [e for e in entries if e.error is not None]
    for e in bad:
        print(f"failed: {e.error}", file=sys.stderr)
    return 1 if bad else 0

