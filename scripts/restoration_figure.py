"""E2Style's super-resolution x4 and face swapping on the bundled faces, as a picture.

    python scripts/restoration_figure.py --images data/faces64/heldout --count 6 --out docs/images/restoration.png

Rows of columns: the held-out face; what the super-resolution model reads (the face down-sampled to 16 px and
up-sampled back); its restoration (faces-64-sr4); E2Style's inversion of the clean face (faces-64); then face
swapping with faces-64's E2Style: the next face's face region pasted in, and the reconstruction of that composite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hyperinverter.io.images import find_images, labelled_columns, save_image
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.restoration import face_swap, restore


def figure(images: list[Path], *, sr_model: str = "faces-64-sr4", model: str = "faces-64", scale: int = 2,
           device: str = "cpu") -> torch.Tensor:
    sr = InversionPipeline.from_pretrained(sr_model, device=device)
    pipe = InversionPipeline.from_pretrained(model, device=device)
    x = pipe.prepare(images)
    with torch.no_grad():
        restored = restore(sr, x, simulate=True)
        swap = face_swap(pipe, x.roll(1, dims=0), x, method="e2style")
        columns = {
            "input": x,
            "x4 down, up": restored.degraded,
            "SR x4 (E2Style)": restored.result.image,
            "E2Style of input": pipe.invert(x, method="e2style").image,
            "next face pasted": swap.composite,
            "swap (E2Style)": swap.result.image,
        }
    return labelled_columns(columns, scale=scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("data/faces64/heldout"))
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("docs/images/restoration.png"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    found = find_images([args.images])
    if not found.paths:
        print(f"error: no images in {args.images}", file=sys.stderr)
        return 2
    save_image(figure(found.paths[: args.count], device=args.device), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
