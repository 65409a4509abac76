"""``hyperinverter data faces64|fashion32|stylise|align``: the demo domains' images from offline sources, and
a user's photos aligned as training data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bounds import MAX_ALIGN_SCALE, MAX_SEED
from .arguments import at_most, nonnegative_int, positive_float, positive_int

# Faces are warped at 4x the crop's side before it is reduced: 2048 px crops warp 8192-px images (0.8 GB).
MAX_ALIGNED_SIZE = 2048


def register(sub) -> None:
    p = sub.add_parser("data", help="write the demo datasets (faces64, fashion32) from offline sources, or align "
                       "a folder of photos")
    kinds = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    q = kinds.add_parser("faces64", help="64x64 faces sampled from the pretrained DCGAN in gan-face-generate")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--n", type=at_most(positive_int, 10_000_000), default=None,
                   help="number of images (default 30000)")
    q.add_argument("--seed-start", type=at_most(nonnegative_int, MAX_SEED), default=None,
                   help="first seed (default 0; held-out: 1000000)")
    q.add_argument("--heldout", action="store_true", help="the held-out set: 500 images from seed 1000000")
    q.add_argument("--batch-size", type=positive_int, default=500, help="faces per call (default %(default)s)")
    q.add_argument("--device", default="auto", help="torch device of the DCGAN (default %(default)s: CUDA, then MPS, "
                   "then CPU; the faces are the same on any)")
    q.set_defaults(func=run_faces64)
    q = kinds.add_parser("fashion32", help="Fashion-MNIST (Debian dataset-fashion-mnist) padded to 32x32")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--split", choices=["train", "test"], default="train",
                   help="Fashion-MNIST's 60,000 training or 10,000 test images (default %(default)s)")
    q.set_defaults(func=run_fashion32)
    q = kinds.add_parser("stylise", help="a stylised copy of an image folder (the target of a fine-tuned generator)")
    q.add_argument("source", type=Path, help="the folder of images to stylise")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--style", default="sketch", help="the style (default sketch: a pencil-sketch rendering)")
    q.add_argument("--n", type=positive_int, default=None, help="only the first N images (sorted by name)")
    q.set_defaults(func=run_stylise)
    q = kinds.add_parser("align", help="every face of a folder of photos, FFHQ-aligned: your own face training data",
                         description="Detects every face (dlib, 68 landmarks) of every photo in SOURCE and writes "
                         "its FFHQ crop as OUT/NAME.png (NAME-faceI.png for one of several), as `invert --align` "
                         "frames photos. Photos without a face are reported and skipped (exit status 1); running "
                         "it again resumes.")
    q.add_argument("source", type=Path, help="the folder of photos")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--size", type=at_most(positive_int, MAX_ALIGNED_SIZE), default=256,
                   help=f"the crops' side in pixels (default 256, at most {MAX_ALIGNED_SIZE})")
    # (1e308 made the folder and its dataset.json, then failed every photo)
    q.add_argument("--scale", type=at_most(positive_float, MAX_ALIGN_SCALE), default=1.0,
                   help="crop scale: 1 (the default) is FFHQ's framing; a model's own is in its pipeline.json "
                   "(align_scale)")
    q.add_argument("--n", type=positive_int, default=None, help="only the first N photos (sorted by name)")
    q.set_defaults(func=run_align)


def run_faces64(args: argparse.Namespace) -> int:
    from ..data import sources
    from ..device import resolve_device
    from ..errors import InputError

    n, seed = args.n or sources.FACES64_TRAIN_COUNT, args.seed_start
    if args.heldout:
        if args.n is not None or args.seed_start is not None:  # (they were ignored without a word)
            raise InputError(f"--heldout writes the fixed held-out set ({sources.FACES64_HELDOUT_COUNT} faces from "
                             f"seed {sources.FACES64_HELDOUT_SEED_START}): leave out --n and --seed-start")
        n, seed = sources.FACES64_HELDOUT_COUNT, sources.FACES64_HELDOUT_SEED_START
    seed = sources.FACES64_TRAIN_SEED_START if seed is None else seed
    if seed + n - 1 > MAX_SEED:  # (the library's error named its own arguments, not these options)
        raise InputError(f"--seed-start {seed} --n {n}: the seeds would end at {seed + n - 1}, past the last, "
                         f"{MAX_SEED}")
    out = sources.write_faces64(args.out, n, seed_start=seed, batch_size=args.batch_size,
                                device=resolve_device(args.device))
    print(f"wrote {n} faces (seeds {seed}..{seed + n - 1}) to {out}")
    return 0


def run_fashion32(args: argparse.Namespace) -> int:
    from ..data import sources

    out = sources.write_fashion32(args.out, args.split)
    print(f"wrote the Fashion-MNIST {args.split} split to {out}")
    return 0


def run_stylise(args: argparse.Namespace) -> int:
    from ..data import sources

    if not args.source.is_dir():
        raise FileNotFoundError(f"{args.source}: not a folder")
    out, failed = sources.write_stylised(args.source, args.out, args.style, limit=args.n)
    for error in failed:  # (they were warnings, "skipped ...", and the summary called every one unreadable)
        print(f"failed: {error}", file=sys.stderr)
    print(f"wrote {args.style} renderings of {args.source} to {out}; {len(failed)} image(s) failed")
    return 1 if failed else 0


def run_align(args: argparse.Namespace) -> int:
    from ..data import sources

    if not args.source.is_dir():
        raise FileNotFoundError(f"{args.source}: not a folder")
    out, count, failed = sources.write_aligned(args.source, args.out, size=args.size, scale=args.scale, limit=args.n)
    for error in failed:
        print(f"failed: {error}", file=sys.stderr)
    print(f"{out} holds {count} aligned face(s) of {args.size} px; {len(failed)} photo(s) failed")
    return 1 if failed else 0
