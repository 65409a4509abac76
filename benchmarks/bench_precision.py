"""The quality cost of bf16 on both bundled domains' held-out images, every method, against fp32.

    python benchmarks/bench_precision.py --out benchmarks/results/precision      # needs `make data`

For each method: the mean and max |image change| (pixels in [-1, 1]) between the bf16 and the fp32 result of the
same input, the perceptual (Inception) distance between the two, and how the reconstruction's MSE moves. A method passes where the
mean change is at most 0.01 and the MSE moves by at most 2 %. Encoders run on ``--images`` held-out images; the
optimisation methods on ``--optimisation-images`` with the steps of ``make benchmark``. Also the seconds per image
of both, on this machine. Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from hyperinverter.benchmark import cpu_description
from hyperinverter.evaluation import load_heldout_images
from hyperinverter.inception_metrics import inception_metric
from hyperinverter.metrics import mse
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.precision import cpu_has_native_bf16

DATA = {"faces-64": "data/faces64/heldout", "fashion-32": "data/fashion32/test"}
OPTIMISATION = {"w-opt": {"steps": 300}, "wplus-opt": {"steps": 500}, "pti": {"pivot_steps": 150, "steps": 100}}
MEAN_CHANGE_TARGET, MSE_CHANGE_TARGET = 0.01, 0.02


def invert(pipe: InversionPipeline, images: torch.Tensor, method: str, dtype: str, batch_size: int,
           options: dict) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    result = pipe.invert(images, method=method, dtype=dtype, batch_size=batch_size, **options)
    return result.image.clamp(-1, 1), (time.perf_counter() - start) / images.shape[0]


def measure(model: str, folder: str, args: argparse.Namespace) -> list[dict]:
    pipe = InversionPipeline.from_pretrained(model, device="cpu")
    G = pipe.generator
    images, _, _ = load_heldout_images(Path(folder), resolution=G.resolution, channels=G.config.img_channels,
                                       count=args.images)
    distance, note = inception_metric("cpu")
    rows = []
    methods = [(m, images, {}) for m in pipe.methods]
    methods += [(m, images[: args.optimisation_images], options) for m, options in OPTIMISATION.items()]
    for method, x, options in methods:
        torch.manual_seed(0)
        full, full_s = invert(pipe, x, method, "fp32", args.batch_size, options)
        torch.manual_seed(0)
        reduced, reduced_s = invert(pipe, x, method, "bf16", args.batch_size, options)
        change = (reduced - full).abs()
        row = {"model": model, "method": method, "images": x.shape[0], "mean_abs_change": float(change.mean()),
               "max_abs_change": float(change.max()), "mse_fp32": float(mse(full, x).mean()),
               "mse_bf16": float(mse(reduced, x).mean()), "s_per_image_fp32": full_s, "s_per_image_bf16": reduced_s}
        row["mse_change"] = row["mse_bf16"] / row["mse_fp32"] - 1
        if distance:
            def mean_distance(a: torch.Tensor, b: torch.Tensor, fn=distance["inception_dist"]) -> float:
                with torch.no_grad():  # in batches: the network sees 299-px images
                    return float(torch.cat([fn(a[i : i + 32], b[i : i + 32]) for i in range(0, len(a), 32)]).mean())

            row["inception_between"] = mean_distance(reduced, full)
        row["passes"] = row["mean_abs_change"] <= MEAN_CHANGE_TARGET and row["mse_change"] <= MSE_CHANGE_TARGET
        rows.append(row)
        print(json.dumps(row), flush=True)
    if note:
        rows.append({"model": model, "note": note})
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# bf16 against fp32 on the bundled domains' held-out images",
        "",
        (f"Made by `{args.command}` on {cpu_description()}, {os.cpu_count()} cores, torch {torch.__version__} "
         f"(native bf16: {'yes' if cpu_has_native_bf16() else 'no'}). Encoders: the first {args.images} held-out "
         f"images; optimisation (steps of `make benchmark`): the first {args.optimisation_images}. "
         f"Target: mean |image change| ≤ {MEAN_CHANGE_TARGET} (pixels in [-1, 1]) and MSE change ≤ "
         f"{MSE_CHANGE_TARGET:.0%}. Inception distance: ours, not LPIPS (docs/benchmarks/README.md); for scale, "
         "a reconstruction's distance to its input is 0.5-0.6 on faces-64."),
        "",
        ("| model | method | images | mean / max image change | MSE fp32 → bf16 | MSE change | Inception distance "
         "between bf16 and fp32 | s / image fp32 → bf16 | passes |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "note" in r:
            continue
        inception = f"{r['inception_between']:.4f}" if "inception_between" in r else "–"
        lines.append(f"| {r['model']} | {r['method']} | {r['images']} | {r['mean_abs_change']:.4f} / "
                     f"{r['max_abs_change']:.3f} | {r['mse_fp32']:.5f} → {r['mse_bf16']:.5f} | "
                     f"{r['mse_change']:+.2%} | {inception} | {r['s_per_image_fp32']:.4f} → "
                     f"{r['s_per_image_bf16']:.4f} | {'yes' if r['passes'] else '**no**'} |")
    failing = [f"{r['model']} {r['method']}" for r in rows if "passes" in r and not r["passes"]]
    lines += ["", "Every method meets the target on both domains." if not failing
              else "Outside the target (these stay fp32 by default): " + ", ".join(failing) + "."]
    lines += [f"- {r['model']}: {r['note']}" for r in rows if "note" in r]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--optimisation-images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    args.command = (f"python benchmarks/bench_precision.py --out {args.out} --images {args.images} "
                    f"--optimisation-images {args.optimisation_images} --batch-size {args.batch_size}")
    rows = []
    for model, folder in DATA.items():
        if not Path(folder).is_dir():
            raise SystemExit(f"{folder}: missing (run `make data`)")
        rows += measure(model, folder, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, args))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
