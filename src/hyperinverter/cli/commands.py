"""Subcommand definitions: parse arguments, call the library, print where results went."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .arguments import (
    add_device,
    add_dtype,
    at_most,
    file_path,
    finite_float,
    port,
    positive_float,
    positive_int,
)


def _generate(sub) -> None:
    p = sub.add_parser("generate", help="render samples from a generator file (any supported format)")
    p.add_argument("--model", required=True,
                   help="generator: our folder/.safetensors, rosinality .pt, NVIDIA .pkl, a pipeline folder or a "
                   "bundled model name")
    p.add_argument("--seeds", default="0-15", help="seeds, e.g. '0-15' or '1,4,9-12' (default 0-15); a seed's z is "
                   "drawn as NVIDIA's generate.py draws it, so a pickle gives the same samples as there")
    p.add_argument("--trunc", type=finite_float, default=1.0, help="truncation psi (default 1.0: none)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const",
                   help="the synthesis layers' noise: the generator's fixed maps, fresh random ones, or none (default "
                   "%(default)s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=file_path, default=None,
                       help="output image: a grid of all seeds (default grid.png)")
    where.add_argument("--outdir", type=Path, default=None,
                       help="write one PNG per seed (seed0042.png, as NVIDIA's gen_images.py) into this folder, a "
                       "batch in memory at a time; running it again skips the seeds already written by the same "
                       "generator and settings")
    p.add_argument("--overwrite", action="store_true", help="with --outdir: write every seed again")
    p.add_argument("--batch-size", type=positive_int, default=16, help="samples per call (default %(default)s)")
    add_device(p)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from ..catalogue import generator_path
    from ..convert.gan_files import load_generator
    from ..device import resolve_device
    from ..errors import InputError
    from ..generate import generate_images, parse_seeds, write_samples
    from ..io.images import MAX_PICTURE_SIDE, grid_side, image_output_path, make_grid, save_image
    from ..pipeline import ensure_finite

    if args.overwrite and args.outdir is None:  # (a grid is always written whole: it was ignored without a word)
        raise InputError("--overwrite: applies only with --outdir (a grid file is always written again)")
    seeds = parse_seeds(args.seeds)
    G = load_generator(generator_path(args.model), device=resolve_device(args.device))
    if args.outdir is not None:
        report = write_samples(G, seeds, args.outdir, truncation_psi=args.trunc, noise_mode=args.noise_mode,
                               batch_size=args.batch_size, overwrite=args.overwrite)
        for error in report.failed:
            print(f"failed: {error}", file=sys.stderr)
        print(f"wrote {len(report.written)} samples ({G.resolution}x{G.resolution}) into {args.outdir}; "
              f"{len(report.skipped)} already there" + (f", {len(report.failed)} failed" if report.failed else ""))
        return 1 if report.failed else 0
    side = grid_side(math.ceil(math.sqrt(len(seeds))), G.resolution)
    if side > MAX_PICTURE_SIDE:
        raise ValueError(f"--seeds {args.seeds}: {len(seeds)} samples of {G.resolution} px make a grid {side} px "
                         f"wide (at most {MAX_PICTURE_SIDE}); write one file per seed with --outdir")
    images = generate_images(G, seeds, truncation_psi=args.trunc, noise_mode=args.noise_mode,
                             batch_size=args.batch_size)
    ensure_finite(images, f"the samples of {args.model}")
    out = save_image(make_grid(images), image_output_path(args.out or Path("grid.png")))
    print(f"wrote {len(seeds)} samples ({G.resolution}x{G.resolution}) to {out}")
    return 0


def _convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a generator between formats",
        description="Convert SRC (our folder/.safetensors, rosinality .pt, NVIDIA .pkl, a bundle's generator, or a "
        "catalogue name) to DST. The target format follows DST: '.pt' -> rosinality, anything else -> our folder "
        "format.",
    )
    p.add_argument("src")
    p.add_argument("dst", type=Path)
    p.add_argument("--to", choices=["hyperinverter", "rosinality"], default=None, help="force the target format")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ..catalogue import local_model_path
    from ..convert.gan_files import convert_generator
    from ..io.files import InputFiles

    src = local_model_path(args.src)
    InputFiles([src]).check_outputs([args.dst], hint="give another DST")
    fmt = convert_generator(src, args.dst, to=args.to)
    print(f"wrote {fmt} generator to {args.dst}")
    return 0


def _parse_saved_direction(text: str) -> tuple[str, int, str, float | None]:
    """``NAME=PC:START:END[:STRENGTH]`` (e.g. ``smile=3:2:6:2.5``)."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PC:START:END[:STRENGTH], e.g. smile=3:2:6:2.5")
    from ..io.files import file_name_part

    if file_name_part(name, fallback="") != name:  # NAME.safetensors is written next to the sheet
        raise argparse.ArgumentTypeError(f"{text!r}: NAME must be a plain file name (no folder, no leading dot)")
    try:
        strength = finite_float(parts[3]) if len(parts) == 4 else None
        return name, int(parts[0]), f"{parts[1]}:{parts[2]}", strength
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r}: PC must be an integer and STRENGTH a number") from None


def _ganspace(sub) -> None:
    p = sub.add_parser(
        "ganspace",
        help="GANSpace principal directions of a generator: a sheet to name them by eye, and direction files",
        description="PCA of w = mapping(z) over seeded samples (GANSpace). Writes a labelled sheet (one row per "
        "component: each seed with the coordinate set to -s..+s on the chosen layers) and, for every --save, a "
        "direction file that `edit` and the demo read.",
    )
    p.add_argument("--model", required=True,
                   help="generator (any supported format), pipeline folder, or bundled model name (e.g. faces-64)")
    p.add_argument("--out", type=file_path, default=Path("ganspace_sheet.png"),
                   help="the sheet (PNG; default %(default)s)")
    p.add_argument("--components", default="0-7", help="components on the sheet, e.g. '0-7' or '0,3,5' (default 0-7)")
    p.add_argument("--layers", default=":", help="layer range START:END the sheet edits (default: every layer)")
    p.add_argument("--seeds", default="0-2", help="seeds of the sheet's samples (default 0-2)")
    p.add_argument("--strength", type=at_most(positive_float, 1000), default=3.0,
                   help="the sheet's range -s..+s in stds (default 3)")
    p.add_argument("--trunc", type=finite_float, default=0.7,
                   help="truncation psi of the sheet's samples (default 0.7)")
    p.add_argument("--samples", type=at_most(positive_int, 10_000_000), default=100_000,
                   help="w samples for the PCA (default 100000, at most 10 million)")
    p.add_argument("--save", action="append", default=[], type=_parse_saved_direction, metavar="NAME=PC:START:END[:S]",
                   help="also write NAME.safetensors next to the sheet: component PC on layers START:END, "
                   "default strength S (default --strength); repeatable")
    add_device(p)
    p.set_defaults(func=run_ganspace)


def run_ganspace(args: argparse.Namespace) -> int:
    from ..catalogue import generator_path
    from ..convert.gan_files import load_generator
    from ..device import resolve_device
    from ..editing import GANSpaceDirection, compute_ganspace, save_direction
    from ..editing.directions import w_probe
    from ..editing.ganspace import samples_problem
    from ..editing.sheet import parse_layer_range, render_ganspace_sheet
    from ..generate import parse_seeds
    from ..io.files import check_file_replaceable
    from ..io.images import image_output_path

    G = load_generator(generator_path(args.model), device=resolve_device(args.device))
    # Checked before the PCA and the sheet, so that a bad option writes nothing.
    layers = parse_layer_range(args.layers, G.num_ws)
    components, seeds = parse_seeds(args.components, what="component"), parse_seeds(args.seeds)
    problem = samples_problem(args.samples, G.w_dim)
    if problem is not None:  # (the PCA's own error named no option)
        raise ValueError(f"--samples {args.samples}: {problem}")
    saved = []
    for name, pc, spec, s in args.save:
        try:
            saved.append((name, pc, parse_layer_range(spec, G.num_ws), s))
        except ValueError as e:  # (it did not say which --save)
            raise ValueError(f"--save {name}: {e}") from None
    names = [name for name, *_ in saved]
    if len(set(names)) < len(names):
        raise ValueError(f"--save: {sorted({n for n in names if names.count(n) > 1})} given more than once (each "
                         "writes NAME.safetensors)")
    for name, pc, *_ in saved:
        if not 0 <= pc < G.w_dim:
            raise ValueError(f"--save {name}: component {pc} out of range (the basis has {G.w_dim}: 0 to "
                             f"{G.w_dim - 1})")
    check_file_replaceable(image_output_path(args.out))
    for name in names:  # (an inversion of ours at NAME was refused after the PCA and the sheet)
        check_file_replaceable(args.out.parent / f"{name}.safetensors", kind="direction")
    basis = compute_ganspace(G, num_samples=args.samples, num_components=G.w_dim)
    sheet = render_ganspace_sheet(G, basis, image_output_path(args.out), components=components,
                                  layers=layers, seeds=seeds, strength=args.strength,
                                  truncation_psi=args.trunc)
    print(f"wrote the sheet of layers {layers[0]}:{layers[1]} to {sheet}")
    for name, pc, (start, end), strength in saved:
        direction = GANSpaceDirection(basis, pc, start, end, args.strength if strength is None else strength,
                                      name=name, w_probe=w_probe(G))
        print(f"wrote {save_direction(direction, args.out.parent / f'{name}.safetensors')}")
    return 0


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="the out-of-the-box demo (see README)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="the folder for its pictures (default "
                   "%(default)s)")
    add_device(p)
    add_dtype(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..apps.demo import run_demo as demo

    report = demo(args.out, device=args.device, dtype=args.dtype)
    for reason in report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    for reason in report.missing:
        print(f"not run: {reason}", file=sys.stderr)
    if not report.items:
        print("demo: no bundled model is installed, nothing to show", file=sys.stderr)
        return 1
    print(f"demo: {len(report.items)} picture(s) in {report.seconds:.1f} s; open {args.out / 'index.html'}")
    return 0


def _web(sub) -> None:
    from ..apps.limits import WebLimits

    defaults = WebLimits()
    p = sub.add_parser("web", help="the web page: upload a photo, invert with any method, edit, mix, interpolate, "
                       "swap faces (needs the web extra)",
                       description="Serve a Gradio page on this machine: upload a photo (every face is aligned), "
                       "invert it with any method of the model (the optimisation ones with a progress bar and "
                       "Cancel), see its time, edit along the model's directions (pasted back into the photo if "
                       "asked), mix styles with and interpolate towards a second photo, and download the results "
                       "and the inversion file. Analytics are off; uploads and results are deleted after "
                       "--keep-minutes.")
    p.add_argument("--model", action="append", default=None,
                   help="pipeline folder or catalogue name; repeatable (default: every installed bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=7860, help="default %(default)s")
    p.add_argument("--max-upload-mb", type=positive_float, default=defaults.max_upload_mb,
                   help=f"largest upload in MB (default {defaults.max_upload_mb:g})")
    p.add_argument("--max-pixels", type=positive_int, default=defaults.max_pixels,
                   help=f"largest photo in pixels, refused before decoding (default {defaults.max_pixels:,})")
    p.add_argument("--detect-side", type=positive_int, default=defaults.detect_side,
                   help=f"photos whose longest side is larger are downscaled to it before face detection "
                   f"(default {defaults.detect_side})")
    p.add_argument("--concurrency", type=positive_int, default=defaults.concurrency,
                   help=f"requests that run a model at once; the others wait in the queue (default "
                   f"{defaults.concurrency})")
    p.add_argument("--queue-size", type=positive_int, default=defaults.queue_size,
                   help=f"requests that may wait; more are refused with a message (default {defaults.queue_size})")
    p.add_argument("--max-pages", type=positive_int, default=defaults.max_pages,
                   help=f"pages whose inversions are kept in memory; the least recently used are dropped (default "
                   f"{defaults.max_pages})")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                   help=f"images one model call takes: a group photo's faces are inverted and edited this many at "
                   f"once (default {defaults.batch_size})")
    p.add_argument("--keep-minutes", type=positive_int, default=defaults.keep_seconds // 60,
                   help=f"uploads, results and a closed page's state are deleted after this (default "
                   f"{defaults.keep_seconds // 60})")
    p.add_argument("--content-rows", nargs=2, type=finite_float, metavar=("TOP", "BOTTOM"), default=None,
                   help="for the models that are a generator alone, of a domain that fills only some rows of the "
                   "square (NVIDIA's cars: 0.125 0.875): those rows, as fractions of the side (a bundle records its "
                   "own)")
    add_device(p)
    add_dtype(p)
    p.set_defaults(func=run_web)


def run_web(args: argparse.Namespace) -> int:
    from ..apps import sample_photos
    from ..apps.web import WebLimits, build_app, private_upload_folder, settle_memory
    from ..io.images import check_content_rows
    from ..memory import keep_memory_bounded

    _check_can_listen(args.host, args.port)  # before minutes of loading models, and with a message that says why
    if args.content_rows is not None:  # (the models load on first use: a bad value fails now, not on the page)
        check_content_rows(args.content_rows, "--content-rows")
    settle_memory(arenas=2)  # before Gradio starts its request threads
    keep_memory_bounded()  # a server's memory must level off: no heap reuse (hyperinverter.memory)
    from ..catalogue import installed_bundles

    limits = WebLimits(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, detect_side=args.detect_side,
                       concurrency=args.concurrency, queue_size=args.queue_size,
                       keep_seconds=60 * args.keep_minutes, max_pages=args.max_pages,
                       batch_size=args.batch_size)
    models = args.model or installed_bundles()
    with private_upload_folder():
        app = build_app(models, device=args.device, dtype=args.dtype, examples=sample_photos(), limits=limits,
                        content_rows=args.content_rows)
        print(f"serving {', '.join(models)} on http://{args.host}:{args.port} (Ctrl-C stops)")
        # Gradio's own wait takes Ctrl-C and SIGTERM for a clean exit (status 0): waiting here, they end the server
        # as they end every command (130 or 143, "interrupted"), also where they come while it starts.
        try:
            app.launch(server_name=args.host, server_port=args.port, show_error=False,
                       max_file_size=limits.transport_bytes, prevent_thread_lock=True)  # (Gradio refused "0.5mb")
            while True:
                time.sleep(3600)
        finally:
            app.close(verbose=False)
            if getattr(app, "server", None) is not None:  # (close() leaves a server whose queue had not started)
                app.server.close()
    return 0


def _check_can_listen(host: str, port: int) -> None:
    """A ``ValueError`` naming the cause if the web page could not listen on ``host:port`` (Gradio says only that it
    found no empty port)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: not a name or address this machine can listen on ({e.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as e:
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def _train(sub) -> None:
    from .train_commands import register

    register(sub)


def _inversion(sub) -> None:
    from .inversion_commands import register, register_evaluate

    register(sub)
    register_evaluate(sub)


def _benchmark(sub) -> None:
    from .benchmark_commands import register

    register(sub)


def _directions(sub) -> None:
    from .direction_commands import register

    register(sub)


def _mixing(sub) -> None:
    from .mixing_commands import register

    register(sub)


def _applications(sub) -> None:
    from .application_commands import register

    register(sub)


def _data(sub) -> None:
    from .data_commands import register

    register(sub)


def _env(sub) -> None:
    p = sub.add_parser("env", help="versions, devices, CPU features, optional parts and the model cache (for a bug "
                       "report)")
    p.set_defaults(func=run_env)


def run_env(args: argparse.Namespace) -> int:
    from ..environment import describe_environment

    rows = describe_environment()
    width = max(len(what) for what, _ in rows)
    for what, value in rows:
        print(f"{what:<{width}}  {value}")
    return 0


REGISTRY = [_generate, _convert, _ganspace, _directions, _inversion, _mixing, _benchmark, _applications, _data, _train,
            _demo, _web, _env]
