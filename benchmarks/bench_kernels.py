"""Which kernel runs per-sample generator weights fastest? (the measurement behind ``resolve_kernel``)

Times one modulated 3x3 conv at config-f sizes for: shared weights (the non-fused path), per-sample
weights through one grouped convolution, and per-sample weights through a loop of ordinary convolutions.

    python benchmarks/bench_kernels.py --device cpu --out benchmarks/results/kernels-cpu.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hyperinverter.benchmark import cpu_description
from hyperinverter.device import resolve_device
from hyperinverter.models.stylegan2.layers import modulated_conv2d
from hyperinverter.ops.filters import setup_filter

CASES = [  # (channels in/out, input resolution, upsample)
    (512, 8, 1), (512, 16, 1), (512, 32, 1), (512, 32, 2), (256, 64, 1), (256, 64, 2), (128, 128, 1), (64, 256, 1),
]


def timed(fn, device, repeats: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kernels-cpu.md"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    filt = setup_filter([1, 3, 3, 1]).to(device)
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for channels, res, up in CASES:
            x = torch.randn(batch, channels, res, res, device=device)
            styles = torch.randn(batch, channels, device=device)
            weight = torch.randn(channels, channels, 3, 3, device=device)
            per_sample = weight[None].repeat(batch, 1, 1, 1, 1)
            x = x.contiguous(memory_format=torch.channels_last)
            common = dict(up=up, resample_filter=filt, bias=torch.zeros(channels, device=device), gain=2**0.5)
            with torch.no_grad():
                shared = {k: timed(lambda: modulated_conv2d(x, weight, styles, kernel=k, **common), device, args.repeats)
                          for k in ("batched", "grouped", "loop")}
                per = {k: timed(lambda: modulated_conv2d(x, per_sample, styles, kernel=k, **common), device, args.repeats)
                       for k in ("grouped", "loop")}
            rows.append((batch, channels, res, up, shared, per))
            print(rows[-1])
    lines = [
        f"# Per-sample modulated conv kernels on {device.type} ({cpu_description()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})",
        "",
        f"Command: `python benchmarks/bench_kernels.py --device {args.device} --batch-sizes {args.batch_sizes} "
        f"--repeats {args.repeats}`",
        "",
        "Times in ms for one modulated 3x3 conv (bias, gain, demodulation included), channels-last input.",
        "",
        "| batch | channels | input res | up | shared: batched | shared: grouped | shared: loop | per-sample: grouped | per-sample: loop | best shared | best per-sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, c, r, u, sh, per in rows:
        best_s, best_p = min(sh, key=sh.get), min(per, key=per.get)
        lines.append(f"| {b} | {c} | {r} | {u} | " + " | ".join(f"{sh[k] * 1e3:.1f}" for k in ("batched", "grouped", "loop"))
                     + " | " + " | ".join(f"{per[k] * 1e3:.1f}" for k in ("grouped", "loop")) + f" | {best_s} | {best_p} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
