"""Where full-size HyperInverter's time goes on this machine: the profiler's split by operator, the time inside
convolution kernels and their throughput, against the FLOP floor.

    python benchmarks/profile_hyperinverter.py --batch 1 --out benchmarks/results/hyperinverter-profile-cpu.md

Same model as ``bench_fullsize.py`` (seeded weights, offsets of a trained model's size, fp32, heap reuse on, large
conv weights packed at their first call).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bench_fullsize as bench
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_overrideable", "aten::slow_conv_transpose2d",
            "aten::mkldnn_convolution_transpose", "aten::_convolution", "mkldnn::_convolution_pointwise")


def main() -> None:
    from hyperinverter.benchmark import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hyperinverter-profile-cpu.md"))
    args = parser.parse_args()
    model, _, x = bench.warmed_up_on_cpu("hyperinverter", args.batch)  # as a CPU fp32 pipeline from a bundle runs it
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(x)
        conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items()
                         if "convolution" in str(k)) / 1e9
        total_flops = counter.get_total_flops() / 1e9
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS) / 1e6
    best = bench.conv_gflops(torch.device("cpu"))
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    per_image, floor = total_flops / args.batch, total_flops / args.batch / best
    lines = [f"# Full-size HyperInverter, batch {args.batch}, fp32: where the time goes", ""]
    lines.append(f"`python benchmarks/profile_hyperinverter.py --batch {args.batch} --out {args.out}` on "
                 f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads. One profiled "
                 "pass after a warm-up.")
    lines.append("")
    lines.append(f"- counted work: {per_image:.1f} GFLOP per image, of which convolutions "
                 f"{conv_flops / args.batch:.1f};")
    lines.append(f"- profiled time: {total / args.batch:.2f} s per image, of which {conv / args.batch:.2f} s "
                 f"({conv / total:.0%}) inside convolution kernels, at {conv_flops / conv:.0f} GFLOP/s on average;")
    lines.append(f"- the best 512→512 3×3 conv here runs at {best:.0f} GFLOP/s, so the FLOP floor is {floor:.2f} s "
                 f"per image; the convolutions alone, at the speed they reach at HyperInverter's real shapes, take "
                 f"{conv / args.batch / floor:.2f}× that floor.")
    lines += ["", "| operator | self time (s / image) | share | calls |", "|---|---|---|---|"]
    lines += [f"| `{e.key}` | {e.self_cpu_time_total / 1e6 / args.batch:.3f} | "
              f"{e.self_cpu_time_total / 1e6 / total:.1%} | {e.count} |" for e in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
