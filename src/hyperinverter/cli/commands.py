"""Subcommand definitions: parse arguments, call the library, print where results went."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path



def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="torch device: auto (default), cpu, cuda, cuda:1, mps")


def _generate(sub) -> None:
    p = sub.add_parser("generate", help="render samples from a generator file (any supported format)")
    p.add_argument("--model", required=True, type=Path, help="generator: our folder/.safetensors, rosinality .pt or NVIDIA .pkl")
    p.add_argument("--seeds", default="0-15", help="seeds, e.g. '0-15' or '1,4,9-12' (default 0-15)")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1.0: none)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="output image (a grid of all seeds)")
    p.add_argument("--batch-size", type=int, default=16)
    _add_device(p)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from ..convert.gan_files import load_generator
    from ..device import resolve_device
    from ..generate import generate_images, parse_seeds
    from ..io.images import make_grid, save_image

    seeds = parse_seeds(args.seeds)
    G = load_generator(args.model, device=resolve_device(args.device))
    images = generate_images(G, seeds, truncation_psi=args.trunc, noise_mode=args.noise_mode,
                             batch_size=args.batch_size)
    save_image(make_grid(images), args.out)
    print(f"wrote {len(seeds)} samples ({G.resolution}x{G.resolution}) to {args.out}")
    return 0


def _convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a generator between formats",
        description="Convert SRC (our folder/.safetensors, rosinality .pt, NVIDIA .pkl) to DST. "
        "The target format follows DST: '.pt' -> rosinality, anything else -> our folder format.",
    )
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--to", choices=["hyperinverter", "rosinality"], default=None, help="force the target format")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ..convert.gan_files import convert_generator

    fmt = convert_generator(args.src, args.dst, to=args.to)
    print(f"wrote {fmt} generator to {args.dst}")
    return 0


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="the out-of-the-box demo (see README)")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    _add_device(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo as demo

    report = demo(args.out, device=args.device)
    for reason in report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    for reason in report.missing:
        print(f"not run: {reason}", file=sys.stderr)
    if not report.items:
        print("demo: no bundled model is installed, nothing to show", file=sys.stderr)
        return 1
    print(f"demo: {len(report.items)} picture(s) in {report.seconds:.1f} s; open {args.out / 'index.html'}")
    return 0


def _train(sub) -> None:
    from .train_commands import register

    register(sub)


def _inversion(sub) -> None:
    from .inversion_commands import register, register_evaluate

    register(sub)
    register_evaluate(sub)


def _data(sub) -> None:
    from .data_commands import register

    register(sub)


REGISTRY = [_generate, _convert, _inversion, _data, _train, _demo]
