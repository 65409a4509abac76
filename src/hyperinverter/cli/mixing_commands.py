"""``mix``: style mixing between two inversions over chosen W+ layer ranges."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_dtype, file_path
from .inversion_commands import _add_method, _add_model, _check_method_applies, _load_pipeline, _result_for


def _layer_spec(text: str) -> str:
    """``START:END`` checked for its form here (a usage error); the range is checked against the model later."""
    start, sep, end = text.partition(":")
    try:
        if not sep or (start.strip() and int(start) < 0) or (end.strip() and int(end) < 0):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected START:END, e.g. 0:4 (either side may be empty)") from None
    return text


def register(sub) -> None:
    p = sub.add_parser("mix", help="style mixing: the codes of some W+ layers of B in A, keeping A's offsets",
                       description="Inverts A and B (or reads their inversion files) and renders A with the codes "
                       "of the layers START:END taken from B; A keeps its own generator offsets (Δθ), as in editing. "
                       "Coarse layers carry pose and shape, fine layers colour and texture. Writes OUT (the mix) and "
                       "OUT_strip (A | B | mix) together. With several --layers, one mix per range: OUT_START-END "
                       "each, all in one strip.")
    p.add_argument("a", type=Path, help="the image that keeps its offsets and the other layers: an image, or a "
                   ".safetensors file written by `invert`")
    p.add_argument("b", type=Path, help="the image that gives the codes of the layer range (image or .safetensors)")
    _add_model(p)
    add_dtype(p)
    _add_method(p)
    p.add_argument("--layers", required=True, action="append", type=_layer_spec, metavar="START:END",
                   help="the W+ rows taken from B, e.g. 0:4 (coarse) or 8: (fine); repeatable, one mix per range")
    p.add_argument("--out", type=file_path, default=None,
                   help="the mixed image (.png, .jpg or .webp; default: A_B_mix.png in the current folder)")
    p.set_defaults(func=run_mix)


def _outputs(args: argparse.Namespace, ranges: list[tuple[int, int]]) -> tuple[list[Path], Path]:
    """(one path per range, the strip's path); an output that is an input or a folder is an error."""
    from ..errors import OutputError
    from ..io.files import InputFiles
    from ..io.images import image_output_path

    out = image_output_path(args.out or Path(f"{args.a.stem}_{args.b.stem}_mix.png"))
    stem, suffix = out.name[: -len(out.suffix)], out.suffix
    mixes = [out] if len(ranges) == 1 else [out.with_name(f"{stem}_{s}-{e}{suffix}") for s, e in ranges]
    strip = out.with_name(f"{stem}_strip{suffix}")
    for path in [*mixes, strip]:
        if path.is_dir():
            raise OutputError(path, "is a folder; give a file name for the mix (--out)")
    InputFiles([args.a, args.b]).check_outputs([*mixes, strip])
    return mixes, strip


def run_mix(args: argparse.Namespace) -> int:
    import torch

    from ..editing.sheet import parse_layer_range
    from ..io.files import atomic_write_group
    from ..io.images import image_bytes, make_grid

    _check_method_applies(args, [args.a, args.b])
    pipe = _load_pipeline(args)
    num_ws = pipe.generator.num_ws
    ranges = [parse_layer_range(spec, num_ws) for spec in args.layers]  # before any inversion
    twice = sorted({f"{s}:{e}" for s, e in ranges if ranges.count((s, e)) > 1})
    if twice:  # (the second mix of a range replaced the first, and the summary listed it twice)
        raise ValueError(f"--layers: {', '.join(twice)} given more than once")
    mixes, strip = _outputs(args, ranges)
    a, _ = _result_for(pipe, args.a, args)
    b, _ = _result_for(pipe, args.b, args)
    images = [pipe.content(pipe.mix(a, b, start, end).cpu()) for start, end in ranges]
    row = torch.cat([pipe.content(a.image[:1].cpu()), pipe.content(b.image[:1].cpu()), *images])
    written = atomic_write_group([*((path, image_bytes(img, path.suffix)) for path, img in zip(mixes, images)),
                                  (strip, image_bytes(make_grid(row, nrow=len(row)), strip.suffix))])
    layers = ", ".join(f"{s}:{e}" for s, e in ranges)
    print(f"mixed layers {layers} of {args.b} into {args.a} (of {num_ws}): wrote {', '.join(map(str, written))}")
    return 0
