"""Plain against packed convolution weights at full-size HyperInverter's own conv shapes: which to pack.

    python benchmarks/bench_prepacked.py --out benchmarks/results/prepacked-cpu.md

Every convolution of the trained parts (E1, E2, hypernetworks) at batch 1 is recorded with its input shape; each
distinct shape is then timed with the plain weight (reordered by oneDNN at every call) and with one packed for it
(``hyperinverter.ops.prepacked``), cycling over a few weights so that they are not in cache, as in a pass. The table
says which the package packs (weights of ``PACK_FROM_BYTES`` and up) and what the pass gains per image. Then whole
inversions, plain and packed alternating in one process (ABBA), so that the machine's drift, which moves whole
inversions by 10-20 % between processes, falls on both alike.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import bench_fullsize as bench
import torch
from torch import nn

CYCLED_WEIGHTS = 4


def recorded_shapes() -> collections.Counter:
    """(in, out, kernel, stride, padding, input shape) -> calls per pass, for the trained parts' convolutions."""
    from hyperinverter.memory import first_pass_mapped

    model, _ = bench.build("hyperinverter")
    x = bench.sample_images(model.generator, 1, seed=1)
    seen: collections.Counter = collections.Counter()

    def record(m: nn.Conv2d, inputs: tuple) -> None:
        seen[(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], tuple(inputs[0].shape))] += 1

    hooks = [m.register_forward_pre_hook(record) for part in model.parts().values() for m in part.modules()
             if type(m) is nn.Conv2d and m.groups == 1]
    with torch.no_grad(), first_pass_mapped():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def alternating_passes(pairs: int) -> dict[str, dict[str, float]]:
    """Whole batch-1 inversions with plain and with packed weights, in ABBA order in one process: the median
    seconds per pass and per stage of each. Both sets of weights are held (the memory is not a pipeline's)."""
    from hyperinverter.ops.prepacked import PrepackedConv2d, packable

    model, options = bench.build("hyperinverter")
    x = bench.sample_images(model.generator, 1, seed=1)
    swaps = [(parent, name, child, PrepackedConv2d(child)) for part in model.parts().values()
             for parent in part.modules() for name, child in parent.named_children() if packable(child)]

    def use(mode: str) -> None:
        for parent, name, plain, packed in swaps:
            setattr(parent, name, packed if mode == "packed" else plain)

    # The weights pack in the first pass, as in a pipeline's.
    return bench.alternating_passes(model, x, options, use, ("plain", "packed"), pairs)


def time_shape(c_in: int, c_out: int, k: int, s: int, p: int, shape: tuple[int, ...]) -> tuple[float, float]:
    """Milliseconds per call of ``nn.Conv2d`` and of :class:`PrepackedConv2d`, over CYCLED_WEIGHTS weights."""
    from hyperinverter.ops.prepacked import PrepackedConv2d

    plain = [nn.Conv2d(c_in, c_out, k, stride=s, padding=p).to(memory_format=torch.channels_last).eval()
             for _ in range(CYCLED_WEIGHTS)]
    packed = [PrepackedConv2d(conv) for conv in plain]
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    for conv in packed:
        conv(x)  # packs, for this input size

    def plain_calls():
        return [conv(x) for conv in plain]

    def packed_calls():
        return [conv(x) for conv in packed]

    repeats = max(1, int(0.02 / max(bench.seconds(plain_calls, 1) / CYCLED_WEIGHTS, 1e-5)))
    return (bench.seconds(plain_calls, repeats) / CYCLED_WEIGHTS * 1e3,
            bench.seconds(packed_calls, repeats) / CYCLED_WEIGHTS * 1e3)


def main() -> None:
    from hyperinverter.benchmark import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepacked-cpu.md"))
    parser.add_argument("--pairs", type=int, default=8, help="plain and packed passes each, alternating")
    args = parser.parse_args()
    from hyperinverter.ops.prepacked import PACK_FROM_BYTES

    torch.manual_seed(0)
    rows, gain_packed, gain_all = [], 0.0, 0.0
    with torch.no_grad():
        for (c_in, c_out, k, s, p, shape), calls in sorted(recorded_shapes().items(), key=lambda kv: -kv[0][5][2]):
            plain_ms, packed_ms = time_shape(c_in, c_out, k, s, p, shape)
            weight_bytes = c_out * c_in * k * k * 4
            chosen = weight_bytes >= PACK_FROM_BYTES
            gain = (plain_ms - packed_ms) * calls
            gain_all += gain
            gain_packed += gain if chosen else 0.0
            rows.append(f"| {c_in}→{c_out} | {k}×{k} | {s} | {tuple(shape)} | {weight_bytes / 2**20:.2f} | {calls} | "
                        f"{plain_ms:.3f} | {packed_ms:.3f} | {gain:+.2f} | {'yes' if chosen else 'no'} |")
    passes = alternating_passes(args.pairs)
    plain, packed = passes["plain"], passes["packed"]
    stages = ", ".join(f"{k} {plain[k]:.3f} → {packed[k]:.3f}" for k in plain if k != "pass")
    lines = [
        "# Plain or packed conv weights, at full-size HyperInverter's shapes (CPU, fp32)", "",
        (f"`python benchmarks/bench_prepacked.py --out {args.out} --pairs {args.pairs}` on {cpu_description()}, torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads. Each shape: {CYCLED_WEIGHTS} weights cycled (not in cache, as in a "
         "pass), milliseconds per call; E2 runs the image and the W-image as a batch of 2."),
        "",
        (f"- Packing the weights of {PACK_FROM_BYTES / 2**20:.0f} MiB and up (the package's rule) saves "
         f"**{gain_packed:.0f} ms per image** in these calls; packing every weight would save {gain_all:.0f} ms "
         "(the small ones lose or gain microseconds)."),
        (f"- Whole inversions at batch 1, {args.pairs} plain and {args.pairs} packed, alternating (ABBA) in one "
         f"process: **{plain['pass']:.2f} → {packed['pass']:.2f} s** per image (medians; by stage, plain → packed: "
         f"{stages} s)."),
        "",
        ("| conv | kernel | stride | input | weight MiB | calls / image | plain ms | packed ms | gain ms / image | "
         "packed by the package |"),
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
