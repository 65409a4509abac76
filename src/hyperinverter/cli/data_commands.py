"""``hyperinverter data faces64|fashion32``: write the demo domains' images from offline sources."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("data", help="write the demo datasets (faces64, fashion32) from offline sources")
    kinds = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    q = kinds.add_parser("faces64", help="64x64 faces sampled from the pretrained DCGAN in gan-face-generate")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--n", type=int, default=30000, help="number of images (default 30000)")
    q.add_argument("--seed-start", type=int, default=None, help="first seed (default 0; held-out: 1000000)")
    q.add_argument("--heldout", action="store_true", help="the held-out set: 500 images from seed 1000000")
    q.add_argument("--batch-size", type=int, default=500)
    q.add_argument("--device", default="auto")
    q.set_defaults(func=run_faces64)
    q = kinds.add_parser("fashion32", help="Fashion-MNIST (Debian dataset-fashion-mnist) padded to 32x32")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--split", choices=["train", "test"], default="train")
    q.set_defaults(func=run_fashion32)


def run_faces64(args: argparse.Namespace) -> int:
    from ..data import sources
    from ..device import resolve_device

    n, seed = args.n, args.seed_start
    if args.heldout:
        n, seed = sources.FACES64_HELDOUT_COUNT, sources.FACES64_HELDOUT_SEED_START
    seed = sources.FACES64_TRAIN_SEED_START if seed is None else seed
    out = sources.write_faces64(args.out, n, seed_start=seed, batch_size=args.batch_size,
                                device=resolve_device(args.device))
    print(f"wrote {n} faces (seeds {seed}..{seed + n - 1}) to {out}")
    return 0


def run_fashion32(args: argparse.Namespace) -> int:
    from ..data import sources

    out = sources.write_fashion32(args.out, args.split)
    print(f"wrote the Fashion-MNIST {args.split} split to {out}")
    return 0
