"""MKL's sgemm against oneDNN for the hypernetworks' products (``hyperinverter.ops.matmul``): oneDNN's 1x1
convolution for the large ones, its inner product for a code times a weight stored transposed.

    python benchmarks/bench_matmul.py --out benchmarks/results/matmul-cpu.md

Whole inversions of full-size HyperInverter (batch 1 and 4) and HyperStyle (batch 1), alternating in one process
(ABBA) between PyTorch's product everywhere, from the official (plain) weight layouts, and the package's kernels,
recording every product the package hands to ``ops.matmul.addmm`` and the kernel it picks; each distinct shape is
then timed both ways, cycling over a few right-hand sides so that they are not in cache, as in a pass, and a grid
around the convolution's rule (rows, multiply-adds) shows where it holds.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import bench_fullsize as bench
import torch

CYCLED_OPERANDS = 4
# Around the rule: K of both hypernetworks (HyperInverter's D=128, HyperStyle's z=512), rows from a code (1) to
# four images' channels.
GRID = [(m, k, n) for k in (128, 512) for m, n in ((1, 65536), (64, 4608), (128, 1152), (128, 4608), (256, 288),
                                                     (256, 576), (256, 4608), (512, 1152), (2048, 4608))]
# A code (or a few) times a weight stored transposed: HyperInverter's w1 for 512-, 256- and 128-channel layers.
TRANSPOSED_GRID = [(m, 128, n) for n in (65536, 32768, 16384) for m in (1, 4, 32)]


def time_product(m: int, k: int, n: int, onednn: str = "convolution") -> tuple[float, float]:
    """Milliseconds per call of ``torch.addmm`` (``b`` in the plain layout) and of oneDNN's ``onednn`` kernel (the
    inner product reads ``b`` stored transposed, as the package stores it), over CYCLED_OPERANDS right-hand sides."""
    from hyperinverter.ops.matmul import addmm_by_convolution, addmm_by_inner_product, transposed_storage

    a = torch.randn(m, k)
    operands = [(torch.randn(n), torch.randn(k, n)) for _ in range(CYCLED_OPERANDS)]
    inner = onednn == "inner_product"
    multiply = addmm_by_inner_product if inner else addmm_by_convolution
    onednn_operands = [(bias, transposed_storage(b) if inner else b) for bias, b in operands]

    def sgemm():
        return [torch.addmm(bias, a, b) for bias, b in operands]

    def onednn_kernel():
        return [multiply(bias, a, b) for bias, b in onednn_operands]

    repeats = max(1, int(0.05 / max(bench.seconds(sgemm, 1), 1e-5)))
    return (bench.seconds(sgemm, repeats) / CYCLED_OPERANDS * 1e3,
            bench.seconds(onednn_kernel, repeats) / CYCLED_OPERANDS * 1e3)


def alternating_passes(method: str, batch: int, pairs: int) -> tuple[dict[str, dict[str, float]], dict]:
    """Whole inversions with PyTorch's product from plain weights ("sgemm") and with the package's kernels
    ("oneDNN"), alternating (``bench_fullsize.alternating_passes``), and the products the package hands to
    ``ops.matmul.addmm``: (M, K, N, kernel) -> calls per pass (every pass makes the same calls)."""
    from hyperinverter.ops import matmul
    from hyperinverter.ops.prepacked import prepack_convolutions

    model, options = bench.build(method)
    prepack_convolutions(*model.parts().values())  # as a CPU fp32 pipeline from a bundle runs it
    x = bench.sample_images(model.generator, batch, seed=1)
    kernel = matmul.kernel
    # The weights stored transposed for the inner product, and the same values in the official layout.
    transposed = [p for p in model.parameters() if matmul.stored_transposed(p)]
    layouts = {"oneDNN": [p.data for p in transposed], "sgemm": [p.data.contiguous() for p in transposed]}
    seen: collections.Counter = collections.Counter()

    def record(a, b, bias=None):
        chosen = kernel(a, b, bias)
        seen[(a.shape[0], a.shape[1], b.shape[1], chosen)] += 1
        return chosen

    def use(mode: str) -> None:
        matmul.kernel = record if mode == "oneDNN" else (lambda a, b, bias=None: "torch")
        for p, data in zip(transposed, layouts[mode], strict=True):
            p.data = data

    try:
        passes = bench.alternating_passes(model, x, options, use, ("sgemm", "oneDNN"), pairs)
    finally:
        use("oneDNN")
        matmul.kernel = kernel
    count = 2 + pairs  # the first pass, one more, the timed ones
    assert all(n % count == 0 for n in seen.values()), f"passes made different products: {seen}"
    return passes, {shape: n // count for shape, n in seen.items()}


def row(m: int, k: int, n: int, chosen: str | None = None, calls: int | None = None,
        batch: int = 1) -> tuple[str, float]:
    """A table row for one product shape, and what the package's kernel saves per image against sgemm (``calls``
    per pass of ``batch`` images). ``chosen``: the kernel the package ran it with (default: by the convolution's
    rule on plain operands)."""
    from hyperinverter.ops.matmul import kernel

    chosen = chosen or kernel(torch.empty(m, k), torch.empty(k, n))
    onednn = "inner_product" if chosen == "inner_product" else "convolution"
    sgemm_ms, onednn_ms = time_product(m, k, n, onednn)
    gflop = 2 * m * k * n / 1e9
    gain = (sgemm_ms - onednn_ms) * (calls or 0) / batch
    cells = [f"{m}", f"{k}", f"{n}", f"{calls}" if calls is not None else "–", f"{sgemm_ms:.3f} ({gflop / sgemm_ms * 1e3:.0f})",
             f"{onednn.replace('_', ' ')}: {onednn_ms:.3f} ({gflop / onednn_ms * 1e3:.0f})", f"{sgemm_ms / onednn_ms:.2f}",
             "sgemm" if chosen == "torch" else f"oneDNN {chosen.replace('_', ' ')}"]
    if calls is not None:
        cells.append(f"{gain:+.1f}")
    return "| " + " | ".join(cells) + " |", gain if chosen != "torch" else 0.0


def main() -> None:
    from hyperinverter.benchmark import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/matmul-cpu.md"))
    parser.add_argument("--pairs", type=int, default=6, help="HyperInverter passes of each kernel, alternating")
    parser.add_argument("--hyperstyle-pairs", type=int, default=3)
    args = parser.parse_args()
    from hyperinverter.ops.matmul import CONVOLVE_FROM_MACS, CONVOLVE_FROM_ROWS

    torch.manual_seed(0)
    header = ["| M | K | N | calls per pass | sgemm ms (GFLOP/s) | oneDNN ms (GFLOP/s) | speed-up | the package runs |"]
    lines = ["# The hypernetworks' products: MKL's sgemm or oneDNN (CPU, fp32)", "",
             (f"`python benchmarks/bench_matmul.py --out {args.out} --pairs {args.pairs} --hyperstyle-pairs "
              f"{args.hyperstyle_pairs}` on {cpu_description()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads. Products ``bias + a @ b`` with ``a: [M, K]``, ``b: [K, N]``; "
              f"{CYCLED_OPERANDS} right-hand sides cycled (not in cache, as in a pass). The package's rules: "
              f"oneDNN's 1x1 convolution from {CONVOLVE_FROM_ROWS} rows and "
              f"{CONVOLVE_FROM_MACS / 2**20:.0f} Mi multiply-adds up; below that, oneDNN's inner product for a "
              "``b`` stored transposed (HyperInverter's ``w1``, timed from that layout; sgemm from the plain one, "
              "as the official layout stores it); else sgemm. \"sgemm\" whole passes run PyTorch's product "
              "everywhere, from the plain layout."), ""]
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
            for (m, k, n, chosen), calls in sorted(seen.items(), key=lambda kv: -kv[0][0] * kv[0][2]):
                text, g = row(m, k, n, chosen, calls, batch)
                rows.append(text)
                gain += g
            summary.append(f"- {method} at batch {batch}: the package's choice saves **{gain:.0f} ms per image** in "
                           "these products.")
            sections += [f"## {method}, batch {batch}: its products", "",
                         header[0][:-2] + " | gain ms / image |", "|---|---|---|---|---|---|---|---|---|", *rows, ""]
        grid = [row(m, k, n)[0] for m, k, n in GRID]
        transposed_grid = [row(m, k, n, "inner_product")[0] for m, k, n in TRANSPOSED_GRID]
    lines += [*summary, "", *sections, "## Around the convolution's rule", "", *header,
              "|---|---|---|---|---|---|---|---|", *grid, "",
              "## A code times a weight stored transposed (oneDNN's inner product)", "", *header,
              "|---|---|---|---|---|---|---|---|", *transposed_grid]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
