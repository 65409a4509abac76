"""Full-size HyperInverter (ffhq-1024, IR-SE50 encoders, D=128) on this machine: seconds per image at batch 1
and 4, peak memory, and the ratio to the FLOP floor (counted FLOPs / conv throughput measured in the same run).

    python benchmarks/bench_hyperinverter.py --device cpu --out benchmarks/results/hyperinverter-ffhq1024-cpu.md

Each batch size runs in its own subprocess, so the peak resident memory (VmHWM) belongs to that measurement
alone. Weights are seeded random: timings do not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

OFFICIAL = {"s_per_image_b1": 4.7, "s_per_image_b4": 6.2, "peak_gb_b1": 3.1, "gflop_per_image": 662.7}


def build_model(hidden_dim: int):
    from hyperinverter.methods.hyperinverter import HyperInverter
    from hyperinverter.models.encoders import encoder_preset
    from hyperinverter.models.hypernetwork import HyperNetwork
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=1024))
    with torch.no_grad():
        G.mapping.w_avg.normal_(0, 0.5)
    preset = encoder_preset("ffhq")
    model = HyperInverter(
        G,
        w_encoder=preset.build_w_encoder(),
        feature_encoder=preset.build_feature_encoder(),
        hypernetwork=HyperNetwork.from_generator(G, hidden_dim=hidden_dim),
        encoder_resolution=256,
    )
    # Keep activations O(1) with random weights (as the official measurement did): small hypernet outputs.
    with torch.no_grad():
        for name, p in model.hypernetwork.named_parameters():
            if name.endswith(("w1", "w2")):
                p.mul_(0.05)
    # The layout InversionPipeline uses.
    return model.to(memory_format=torch.channels_last).eval().requires_grad_(False)


def conv_gflops(device: torch.device, repeats: int = 5) -> float:
    """Throughput of the kernel that dominates: conv2d 512->512 3x3 on 64x64, batch 4."""
    x = torch.randn(4, 512, 64, 64, device=device)
    w = torch.randn(512, 512, 3, 3, device=device)
    flops = 2 * 4 * 512 * 512 * 9 * 64 * 64
    times = []
    with torch.no_grad():
        torch.nn.functional.conv2d(x, w, padding=1)
        for _ in range(repeats):
            t = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def count_gflops(model, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 1024, 1024, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def measure(batch: int, hidden_dim: int, device_name: str, repeats: int) -> dict:
    from hyperinverter.device import resolve_device

    device = resolve_device(device_name)
    model = build_model(hidden_dim).to(device)
    x = torch.randn(batch, 3, 1024, 1024, device=device).clamp(-1, 1)
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    assert torch.isfinite(out.image).all()
    result = {"batch": batch, "runs": times, "median": statistics.median(times),
              "s_per_image": statistics.median(times) / batch, "peak_gb": peak_rss_gb(),
              "conv_gflops": conv_gflops(device), "load": os.getloadavg()[0]}
    if batch == 1:
        result["gflop_per_image"] = count_gflops(model, device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hyperinverter-ffhq1024-cpu.md"))
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.hidden_dim, args.device, args.repeats)))
        return
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        cmd = [sys.executable, __file__, "--worker", str(batch), "--device", args.device,
               "--hidden-dim", str(args.hidden_dim), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        print(results[-1], flush=True)
    gflop = results[0].get("gflop_per_image", OFFICIAL["gflop_per_image"])
    lines = [
        f"# HyperInverter ffhq-1024 (IR-SE50, D={args.hidden_dim}) on {args.device}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32, no_grad, seeded random weights.",
        f"Command: `python benchmarks/bench_hyperinverter.py --device {args.device} --hidden-dim {args.hidden_dim} "
        f"--repeats {args.repeats} --batches {args.batches}`",
        "",
        f"Counted work: **{gflop:.1f} GFLOP / image** (FlopCounterMode, multiply-add = 2 FLOPs; official 662.7).",
        "",
        "| batch | s / image (median) | runs (s, whole batch) | peak RSS | conv GFLOP/s (same run) | FLOP floor s/img | ratio to floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        floor = gflop / r["conv_gflops"]
        runs = ", ".join(f"{t:.2f}" for t in r["runs"])
        lines.append(f"| {r['batch']} | **{r['s_per_image']:.2f}** | {runs} | {r['peak_gb']:.2f} GB | "
                     f"{r['conv_gflops']:.0f} | {floor:.2f} | {r['s_per_image'] / floor:.2f}× |")
    b1 = next((r for r in results if r["batch"] == 1), None)
    b4 = next((r for r in results if r["batch"] == 4), None)
    lines += ["", "Targets and the official code on this CPU (4.7 s/img at batch 1, 6.2 s at batch 4, 3.1 GB):", ""]
    if b1:
        floor = gflop / b1["conv_gflops"]
        lines.append(f"- within 2× of the floor at batch 1: {'yes' if b1['s_per_image'] <= 2 * floor else 'NO'} "
                     f"({b1['s_per_image'] / floor:.2f}×)")
        lines.append(f"- peak memory at batch 1 under 2.5 GB: {'yes' if b1['peak_gb'] < 2.5 else 'NO'} "
                     f"({b1['peak_gb']:.2f} GB)")
    if b1 and b4:
        lines.append(f"- batch 4 no slower per image than batch 1: "
                     f"{'yes' if b4['s_per_image'] <= b1['s_per_image'] * 1.02 else 'NO'} "
                     f"({b4['s_per_image']:.2f} vs {b1['s_per_image']:.2f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
