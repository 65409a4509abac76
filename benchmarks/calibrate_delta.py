"""How large a trained model's weight offsets are: the figures ``bench_fullsize.py`` scales its seeded
hypernetworks to (so that precision changes show at full size).

    python benchmarks/calibrate_delta.py      # needs `make data`

Per layer: HyperInverter's RMS(Δθ) / RMS(θ), and the RMS of HyperStyle's multiplicative Δ after its 5 iterations,
on the first 32 held-out images of each bundled model; printed as medians (and ranges) over the layers.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from hyperinverter.pipeline import InversionPipeline

DATA = {"faces-64": "data/faces64/heldout", "fashion-32": "data/fashion32/test"}


def main() -> None:
    for model, folder in DATA.items():
        files = sorted(Path(folder).glob("*.png"))[:32]
        if not files:
            raise SystemExit(f"{folder}: no images (run `make data`)")
        pipe = InversionPipeline.from_pretrained(model, device="cpu")
        weights = dict(pipe.generator.synthesis.named_parameters())
        added = pipe.invert(files, method="hyperinverter").weight_delta
        ratios = [float(d.square().mean().sqrt() / weights[name].square().mean().sqrt()) for name, d in added.items()]
        scaled = pipe.invert(files, method="hyperstyle").weight_delta
        rms = [float(d.square().mean().sqrt()) for d in scaled.values()]
        print(f"{model}: HyperInverter RMS(Δθ)/RMS(θ) median {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f}); HyperStyle RMS(Δ) median {statistics.median(rms):.3f} "
              f"({min(rms):.3f}-{max(rms):.3f})")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
