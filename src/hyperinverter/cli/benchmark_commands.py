"""``hyperinverter benchmark``: every method of a model on a held-out folder, written as a report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..bounds import MAX_IMAGES, MAX_SEED
from .arguments import add_dtype, at_least_two, at_most, name_list, nonnegative_int, positive_int
from .inversion_commands import (
    _add_model,
    _load_pipeline,
    _method_option,
    _options_by_method,
    _report_failures,
    _standard_metrics,
)


def register(sub) -> None:
    p = sub.add_parser(
        "benchmark", help="the trade-off report: every method's quality, editability and time on a held-out folder",
        description="Inverts the first --images images of DATA (sorted by name) with every method of the model and "
                    "the optimisation methods (the first --optimisation-images of them: they take minutes per image "
                    "on a CPU), and writes OUT/benchmark.md (table, FID/KID, ground-truth editability, the paper's "
                    "claims checked, how it was made), OUT/benchmark.json, OUT/per_image.csv (every image's scores), "
                    "OUT/tradeoff.png (quality against time) and OUT/examples.png (reconstructions and edits). Work "
                    "is kept in OUT/work: running the same command again resumes an interrupted run. Unreadable "
                    "images are reported and left out; the exit status is then 1.")
    p.add_argument("--data", required=True, type=Path, help="held-out image folder (never the training data)")
    _add_model(p)
    add_dtype(p)
    p.add_argument("--methods", type=name_list, default=None,
                   help="comma-separated methods (default: the model's trained methods, then the optimisation ones)")
    # (2**70 images: islice's own error, naming no option)
    p.add_argument("--images", type=at_most(positive_int, MAX_IMAGES), default=64,
                   help="images each trained method inverts (default %(default)s)")
    p.add_argument("--optimisation-images", type=at_most(positive_int, MAX_IMAGES), default=16,
                   help="images each per-image optimisation method inverts (the first ones; default %(default)s)")
    p.add_argument("--editability", type=at_most(nonnegative_int, MAX_IMAGES), default=8, metavar="N",
                   help="generated images for ground-truth editability (0: skip it; default %(default)s)")
    p.add_argument("--direction", default=None, help="the edit shown in the examples (default: the model's first)")
    p.add_argument("--identity", action="store_true",
                   help="also report identity similarity (faces): CurricularFace, the papers', when it is in the "
                        "model cache, else SFace")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per call (default %(default)s)")
    # (seeds of images and codes, seed + index: 10**23 was "Overflow when unpacking long long" after the loading)
    p.add_argument("--seed", type=at_most(nonnegative_int, MAX_SEED), default=0,
                   help="the first seed of the runs' random draws (0 to 2**32 - 1, as generate's seeds)")
    p.add_argument("--kid-subset-size", type=at_least_two, default=1000, metavar="N",
                   help="images per KID subset (torch-fidelity's kid_subset_size: the paper uses 1000 for faces, "
                        "100 for churches; default %(default)s)")
    p.add_argument("--option", action="append", default=[], type=_method_option, metavar="METHOD.KEY=VALUE",
                   help="an option of one method, e.g. wplus-opt.steps=500 (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="the report folder")
    p.set_defaults(func=run_benchmark_command)


def run_benchmark_command(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkSettings, run_benchmark
    from ..catalogue import local_model_path
    from ..editing.directions import edit_directions
    from ..errors import OutputError
    from ..evaluation import load_heldout_images
    from ..inception_metrics import feature_extractor
    from ..io.files import check_file_replaceable, check_outside

    check_outside(args.out, args.data, why="its pictures would be read as held-out images next time")
    if os.path.lexists(args.out) and not args.out.is_dir():
        raise OutputError(args.out, "exists and is not a folder; give a folder for the report")
    for name in ("tradeoff.png", "examples.png", "benchmark.md", "benchmark.json", "per_image.csv"):
        check_file_replaceable(args.out / name, report=True)  # (before hours of work, and before any is written)
    pipe = _load_pipeline(args)
    G = pipe.generator
    methods = args.methods or pipe.available_methods()
    options = _options_by_method(pipe, args.option, methods)

    images, names, failures = load_heldout_images(args.data, resolution=G.resolution, channels=G.config.img_channels,
                                                  count=args.images, content_rows=pipe.content_rows)
    extra, notes = _standard_metrics(pipe.device, identity=args.identity, align_scale=pipe.align_scale)
    features, note = feature_extractor(pipe.device)
    notes += [note] if note else []
    notes += [f"left out (unreadable): {e}" for e in failures]
    directions, stand_in = edit_directions(local_model_path(args.model), G)
    notes += [f"editability: {stand_in}"] if stand_in and args.editability else []

    settings = BenchmarkSettings(
        methods=tuple(methods), images=args.images, optimisation_images=args.optimisation_images,
        batch_size=args.batch_size, editability_images=args.editability, direction=args.direction, seed=args.seed,
        options=options, kid_subset_size=args.kid_subset_size)
    stored = (args.out / "work" / "run.json").is_file()
    report = run_benchmark(pipe, images, names, args.out, settings=settings, model=args.model, data=str(args.data),
                           command=args.command, directions=directions,
                           extra_metrics=extra, features=features, notes=notes)
    if stored:
        print(f"reused the work stored in {args.out / 'work'} (only what it lacked was run)")
    print(report.to_markdown())
    _report_failures(failures)
    print(f"wrote {args.out}/benchmark.md, benchmark.json, per_image.csv, tradeoff.png and examples.png")
    return 1 if failures else 0
