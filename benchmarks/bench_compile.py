"""Does ``torch.compile`` pay off? One bundled method, eager against compiled, on held-out images.

    python benchmarks/bench_compile.py --model fashion-32 --data data/fashion32/test --method hyperinverter \
        --out benchmarks/results/compile-cpu.md

Reports the eager time per batch, the compiled first call (compilation included) and steady time, the largest
difference between the two results, and how many batches it takes to win the compilation back.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hyperinverter.benchmark import cpu_description
from hyperinverter.pipeline import InversionPipeline


def timed(fn, x: torch.Tensor):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn(x)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-32")
    parser.add_argument("--data", type=Path, default=Path("data/fashion32/test"))
    parser.add_argument("--method", default="hyperinverter")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compile-cpu.md"))
    args = parser.parse_args()
    pipe = InversionPipeline.from_pretrained(args.model, device="cpu")
    x = pipe.prepare(sorted(args.data.glob("*.png"))[: args.batch])
    inverter = pipe.inverter(args.method)
    reference, _ = timed(inverter, x)
    eager = min(timed(inverter, x)[1] for _ in range(3))
    compiled = torch.compile(inverter)
    out, first = timed(compiled, x)
    steady = min(timed(compiled, x)[1] for _ in range(3))
    difference = float((out.image - reference.image).abs().max())
    saved = eager - steady
    payback = f"{(first - steady) / saved:,.0f}" if saved > 0 else "never"
    lines = [f"# torch.compile on {args.model} {args.method}, batch {args.batch}, CPU", ""]
    lines.append(f"`python benchmarks/bench_compile.py --model {args.model} --data {args.data} --method {args.method} "
                 f"--batch {args.batch} --out {args.out}` on {cpu_description()}, torch {torch.__version__}.")
    lines += ["", ("| eager s / batch | compiled: first call (s) | compiled s / batch | max difference | "
                   "batches to win the compilation back |"), "|---|---|---|---|---|",
              f"| {eager:.3f} | {first:.1f} | {steady:.3f} | {difference:.1e} | {payback} |"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
