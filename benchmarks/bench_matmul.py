"""MKL's sgemm against oneDNN's 1x1 convolution for the hypernetworks' products (``hyperinverter.ops.matmul``).

    python benchmarks/bench_matmul.py --out benchmarks/results/matmul-cpu.md

Whole inversions of full-size HyperInverter (batch 1 and 4) and HyperStyle (batch 1) with each kernel, alternating
in one process (ABBA), recording every product they hand to ``ops.matmul.addmm``; each distinct shape is then timed
both ways, cycling over a few right-hand sides so that they are not in cache, as in a pass, and a grid around the
package's rule (rows, multiply-adds) shows where it holds.
"""

from __future__ import annotations

import argparse
import collections
import platform
from pathlib import Path

import bench_fullsize as bench
import torch

CYCLED_OPERANDS = 4
# Around the rule: K of both hypernetworks (HyperInverter's D=128, HyperStyle's z=512), rows from a code (1) to
# four images' channels.
GRID = [(m, k, n) for k in (128, 512) for m, n in ((1, 65536), (64, 4608), (128, 1152), (128, 4608), (256, 288),
                                                     (256, 576), (256, 4608), (512, 1152), (2048, 4608))]


def time_product(m: int, k: int, n: int) -> tuple[float, float]:
    """Milliseconds per call of ``torch.addmm`` and of the convolution, over CYCLED_OPERANDS right-hand sides."""
    from hyperinverter.ops.matmul import addmm_by_convolution

    a = torch.randn(m, k)
    operands = [(torch.randn(n), torch.randn(k, n)) for _ in range(CYCLED_OPERANDS)]

    def sgemm():
        return [torch.addmm(bias, a, b) for bias, b in operands]

    def convolution():
        return [addmm_by_convolution(bias, a, b) for bias, b in operands]

    repeats = max(1, int(0.05 / max(bench.seconds(sgemm, 1), 1e-5)))
    return (bench.seconds(sgemm, repeats) / CYCLED_OPERANDS * 1e3,
            bench.seconds(convolution, repeats) / CYCLED_OPERANDS * 1e3)


def alternating_passes(method: str, batch: int, pairs: int) -> tuple[dict[str, dict[str, float]], dict]:
    """Whole inversions with each kernel, alternating (``bench_fullsize.alternating_passes``), and the products
    they hand to ``ops.matmul.addmm``: (M, K, N) -> calls per pass (every pass makes the same calls)."""
    from hyperinverter.ops import matmul
    from hyperinverter.ops.prepacked import prepack_convolutions

    model, options = bench.build(method)
    prepack_convolutions(*model.parts().values())  # as a CPU fp32 pipeline from a bundle runs it
    x = bench.sample_images(model.generator, batch, seed=1)
    rows, convolves = matmul.CONVOLVE_FROM_ROWS, matmul.convolves
    seen: collections.Counter = collections.Counter()

    def use(mode: str) -> None:
        matmul.CONVOLVE_FROM_ROWS = rows if mode == "oneDNN" else 2**62

    def record(a, b, bias=None):
        seen[(a.shape[0], a.shape[1], b.shape[1])] += 1
        return convolves(a, b, bias)

    matmul.convolves = record
    try:
        passes = bench.alternating_passes(model, x, options, use, ("sgemm", "oneDNN"), pairs)
    finally:
        matmul.CONVOLVE_FROM_ROWS, matmul.convolves = rows, convolves
    count = 3 + 2 * pairs  # the first pass, one more in each mode, the timed ones
    assert all(n % count == 0 for n in seen.values()), f"passes made different products: {seen}"
    return passes, {shape: n // count for shape, n in seen.items()}


def row(m: int, k: int, n: int, calls: int | None = None, batch: int = 1) -> tuple[str, float]:
    """A table row for one product shape, and what the package's choice saves per image (``calls`` per pass of
    ``batch`` images)."""
    from hyperinverter.ops.matmul import convolves

    sgemm_ms, conv_ms = time_product(m, k, n)
    chosen = convolves(torch.empty(m, k), torch.empty(k, n))
    gflop = 2 * m * k * n / 1e9
    gain = (sgemm_ms - conv_ms) * (calls or 0) / batch
    cells = [f"{m}", f"{k}", f"{n}", f"{calls}" if calls is not None else "–", f"{sgemm_ms:.3f} ({gflop / sgemm_ms * 1e3:.0f})",
             f"{conv_ms:.3f} ({gflop / conv_ms * 1e3:.0f})", f"{sgemm_ms / conv_ms:.2f}", "oneDNN" if chosen else "sgemm"]
    if calls is not None:
        cells.append(f"{gain:+.1f}")
    return "| " + " | ".join(cells) + " |", gain if chosen else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/matmul-cpu.md"))
    parser.add_argument("--pairs", type=int, default=6, help="HyperInverter passes of each kernel, alternating")
    parser.add_argument("--hyperstyle-pairs", type=int, default=3)
    args = parser.parse_args()
    from hyperinverter.ops.matmul import CONVOLVE_FROM_MACS, CONVOLVE_FROM_ROWS

    torch.manual_seed(0)
    header = ["| M | K | N | calls per pass | sgemm ms (GFLOP/s) | oneDNN ms (GFLOP/s) | speed-up | the package runs |"]
    lines = ["# The hypernetworks' products: MKL's sgemm or oneDNN's 1x1 convolution (CPU, fp32)", "",
             (f"`python benchmarks/bench_matmul.py --out {args.out} --pairs {args.pairs} --hyperstyle-pairs "
              f"{args.hyperstyle_pairs}` on {platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads. Products ``bias + a @ b`` with ``a: [M, K]``, ``b: [K, N]``; "
              f"{CYCLED_OPERANDS} right-hand sides cycled (not in cache, as in a pass). The package's rule: oneDNN "
              f"from {CONVOLVE_FROM_ROWS} rows and {CONVOLVE_FROM_MACS / 2**20:.0f} Mi multiply-adds up."), ""]
    # Whole passes first: their first pass turns the package's heap reuse on, and the products below are timed with
    # it, as in a pipeline (without it each large output was a fresh mapping, faulted in page by page).
    summary, sections, products = [], [], {}
    for method, batch, pairs in (("hyperinverter", 1, args.pairs), ("hyperinverter", 4, args.pairs),
                                 ("hyperstyle", 1, args.hyperstyle_pairs)):
        passes, products[method, batch] = alternating_passes(method, batch, pairs)
        sgemm, onednn = passes["sgemm"], passes["oneDNN"]
        stages = ", ".join(f"{k} {sgemm[k]:.3f} → {onednn[k]:.3f}" for k in sgemm if k != "pass")
        summary.append(f"- Whole {method} inversions at batch {batch}, {pairs} with each kernel alternating (ABBA) in "
                       f"one process: **{sgemm['pass']:.3f} → {onednn['pass']:.3f} s** per image (medians; by stage, "
                       f"sgemm → oneDNN: {stages} s).")
    with torch.no_grad():
        for (method, batch), seen in products.items():
            rows, gain = [], 0.0
            for (m, k, n), calls in sorted(seen.items(), key=lambda kv: -kv[0][0] * kv[0][2]):
                text, g = row(m, k, n, calls, batch)
                rows.append(text)
                gain += g
            summary.append(f"- {method} at batch {batch}: the package's choice saves **{gain:.0f} ms per image** in "
                           "these products.")
            sections += [f"## {method}, batch {batch}: its products", "",
                         header[0][:-2] + " | gain ms / image |", "|---|---|---|---|---|---|---|---|---|", *rows, ""]
        grid = [row(m, k, n)[0] for m, k, n in GRID]
    lines += [*summary, "", *sections, "## Around the rule", "", *header,
              "|---|---|---|---|---|---|---|---|", *grid]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
