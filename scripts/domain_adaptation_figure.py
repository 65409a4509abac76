"""HyperStyle's domain adaptation on a bundled model: codes and offsets predicted with the original generator,
rendered by a fine-tuned copy of it (here the bundled pencil-sketch faces generator).

    python scripts/domain_adaptation_figure.py --model faces-64 --render-with faces-64-sketch \\
        --images data/faces64/heldout --count 6 --out docs/images/domain-adaptation.png

Columns: the input; the sketch style applied to the input itself (what a perfect adaptation would approach);
HyperStyle's reconstruction with the original generator; then, with the sketch generator: the W code alone, the
code with HyperStyle's offsets, and the code with HyperInverter's offsets (any method whose offsets are on the
same layers can be adapted the same way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hyperinverter.catalogue import generator_path
from hyperinverter.convert.gan_files import load_generator
from hyperinverter.data.sources import stylise_images
from hyperinverter.io.images import find_images, labelled_columns, save_image
from hyperinverter.pipeline import InversionPipeline


def figure(model: str, render_with: str, images: list[Path], *, style: str = "sketch", scale: int = 2,
           device: str = "cpu") -> torch.Tensor:
    pipe = InversionPipeline.from_pretrained(model, device=device)
    tuned = load_generator(generator_path(render_with), device=device)
    x = pipe.prepare(images)
    with torch.no_grad():
        styled = pipe.invert(x, method="hyperstyle")
        hyperinverter = pipe.invert(x, method="hyperinverter")
        columns = {
            "input": x,
            f"{style}(input)": stylise_images(x, style),
            "HyperStyle": styled.image,
            "W code, G'": pipe.render(styled.ws, None, generator=tuned),
            "HyperStyle, G'": pipe.adapt(styled, tuned),
            "HyperInverter, G'": pipe.adapt(hyperinverter, tuned),
        }
    return labelled_columns(columns, scale=scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="faces-64")
    parser.add_argument("--render-with", default="faces-64-sketch", help="the fine-tuned generator")
    parser.add_argument("--images", type=Path, default=Path("data/faces64/heldout"))
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("docs/images/domain-adaptation.png"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    found = find_images([args.images])
    if not found.paths:
        print(f"error: no images in {args.images}", file=sys.stderr)
        return 2
    image = figure(args.model, args.render_with, found.paths[: args.count], device=args.device)
    save_image(image, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
