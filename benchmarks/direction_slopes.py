"""Does an edit direction change what it claims to? Landmark attributes before and after edits of held-out samples.

For each direction (a model's catalogue name or a file), the samples of held-out seeds are edited at several
strengths (multiples of the direction's default strength), the 68 dlib landmarks are found in each image
(upscaled x4), and every attribute of :mod:`hyperinverter.editing.attributes` (yaw, mouth_open, eyes_open) is
fitted against the strength: the slope per unit strength (one intercept per face), its spread over faces and
its R² (the share of the within-face variation it explains). Faces not found at every strength are left out.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/direction_slopes.py --model faces-64 \\
        --directions yaw mouth-open eyes-open turn --out benchmarks/results/faces-64-directions-slopes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from hyperinverter.align import Dlib68Detector
from hyperinverter.catalogue import generator_path, local_model_path
from hyperinverter.convert.gan_files import load_generator
from hyperinverter.editing.attributes import ATTRIBUTES, measure_edit_response
from hyperinverter.editing.catalogue import resolve_direction
from hyperinverter.io.files import atomic_write_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="faces-64")
    p.add_argument("--directions", nargs="+", required=True, help="catalogue names or direction files")
    p.add_argument("--seed-start", type=int, default=1_000_000,
                   help="first held-out seed (default 1000000: the labels use seeds from 0)")
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--multiples", default="-1,-0.5,0,0.5,1",
                   help="strengths as multiples of each direction's default strength")
    p.add_argument("--trunc", type=float, default=1.0)
    p.add_argument("--out", type=Path, required=True, help="output stem: writes OUT.json and OUT.md")
    args = p.parse_args()
    torch.set_num_threads(1)

    G = load_generator(generator_path(args.model)).eval()
    detector = Dlib68Detector(min_score=0.0, upsample=0)
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    multiples = [float(m) for m in args.multiples.split(",")]
    model_dir = local_model_path(args.model)
    results = {}
    for spec in args.directions:
        direction = resolve_direction(model_dir, spec)
        base = abs(direction.default_strength)
        strengths = [m * base for m in multiples]
        start = time.perf_counter()
        response = measure_edit_response(G, direction, seeds, strengths, detector, truncation_psi=args.trunc,
                                         progress=sys.stderr.isatty())
        results[spec] = {"name": direction.name, "kind": type(direction).__name__, "default_strength":
                         direction.default_strength, "strengths": strengths,
                         "seconds": round(time.perf_counter() - start, 1),
                         "response": {a: r.__dict__ for a, r in response.items()}}
    header = (f"Held-out seeds {seeds.start}-{seeds.stop - 1} ({args.seeds}), truncation {args.trunc:g}; strengths "
              f"{args.multiples} x each direction's default. Slope: attribute change per unit strength (± spread "
              "over faces; standard error in brackets); Δ over ±default: the change from -default to +default; "
              "R²: share of the within-face variation explained; n: faces found at every strength.")
    lines = [header, "", "| direction | default | attribute | slope / unit strength | Δ over ±default | R² | n |",
             "|---|---|---|---|---|---|---|"]
    for spec, result in results.items():
        for a in ATTRIBUTES:
            r = result["response"][a]
            delta = 2 * r["slope"] * abs(result["default_strength"])
            lines.append(f"| {spec} | {result['default_strength']:g} | {a} | {r['slope']:+.4f} ± {r['slope_std']:.4f} "
                         f"({r['stderr']:.4f}) | {delta:+.3f} | {r['r2']:.2f} | {r['samples']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out.with_suffix(".json"), json.dumps(
        {"model": args.model, "seeds": [seeds.start, seeds.stop], "trunc": args.trunc, "multiples": multiples,
         "results": results}, indent=1).encode())
    atomic_write_bytes(args.out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
