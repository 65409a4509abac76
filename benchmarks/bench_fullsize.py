"""Full-size methods at ffhq-1024 on this machine: seconds per image at batch 1 and 4, peak memory, and the ratio
to the FLOP floor (counted FLOPs / conv throughput measured in the same run).

    python benchmarks/bench_fullsize.py --methods hyperinverter,hyperstyle --device cpu

Each (method, batch) runs in its own subprocess, so the peak resident memory (VmHWM) belongs to that measurement
alone. Weights are seeded random: timings do not depend on their values. One results file per method
(``results/<method>-ffhq1024-<device>.md``) and one side-by-side table (``results/fullsize-ffhq1024-<device>.md``).

The configurations are the papers' released ones:

- ``hyperinverter``: IR-SE50 E1 and E2 at 256 px, hypernetworks of hidden size D=128 on every layer.
- ``hyperstyle``: the IR-SE50 W encoder, the ResNet-34 hypernetwork at 256 px with the released layer set (the 17
  3x3 convs, no ToRGB; 332.7M parameters), 5 iterations.
- ``psp``, ``e4e``: the GradualStyleEncoder / Encoder4Editing on the IR-SE50 trunk at 256 px.
- ``e2style``: three stages of the shallow IR-SE50 encoder with the efficient heads, at 256 px.
- ``w-opt``, ``wplus-opt``, ``pti``: optimisation, timed over a few steps (with the official perceptual distance's
  network, random weights) and reported per step and per image for the official step counts (W 1000, W+ 2000,
  PTI 450 pivot + 350 tuning steps; PTI's early stop can end tuning sooner).

    python benchmarks/bench_fullsize.py --methods hyperinverter,hyperstyle,psp,e4e,e2style,w-opt,wplus-opt,pti --device cpu \
        --repeats 2 --optimization-batches 1
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

# The official code on the machine of ../shared (official_cpu_timing.md): another CPU, ~2.2x this one's conv
# throughput, so only its ratios to the floor compare.
OFFICIAL = {"hyperinverter": {"s_per_image_b1": 4.7, "s_per_image_b4": 6.2, "peak_gb_b1": 3.1,
                              "gflop_per_image": 662.7}}


def _small_outputs(module: torch.nn.Module, names: tuple[str, ...], factor: float = 0.05) -> None:
    """Keep activations O(1) with random weights (as the official measurement did): small hypernet outputs."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(names):
                p.mul_(factor)


def build_hyperinverter(G):
    from hyperinverter.methods.hyperinverter import HyperInverter
    from hyperinverter.models.encoders import encoder_preset
    from hyperinverter.models.hypernetwork import HyperNetwork

    preset = encoder_preset("ffhq")
    model = HyperInverter(G, w_encoder=preset.build_w_encoder(), feature_encoder=preset.build_feature_encoder(),
                          hypernetwork=HyperNetwork.from_generator(G, hidden_dim=128), encoder_resolution=256)
    _small_outputs(model.hypernetwork, ("w1", "w2"))
    return model, {}


def build_hyperstyle(G):
    from hyperinverter.methods.hyperstyle import HyperStyle

    model = HyperStyle.create(G, preset="ffhq")
    assert sum(p.numel() for p in model.hypernetwork.parameters()) / 1e6 > 332  # the released size
    _small_outputs(model.hypernetwork, ("w1", "b1", *(f"output.{i}.{p}" for i in (0, 1) for p in ("weight", "bias"))))
    return model, {"iterations": 5}


def build_style_code_encoder(mode: str):
    def builder(G):
        from hyperinverter.methods import get_method

        return get_method(mode).create(G, preset="ffhq"), {}  # the released GradualStyleEncoder / Encoder4Editing
    return builder


# Optimisation runs this many steps per measurement; the tables give seconds per step and, from them, per image
# for the official step counts (PTI: its pivot's and its tuning's).
MEASURED_STEPS = 2
OFFICIAL_STEPS = {"w-opt": {"optimise": 1000}, "wplus-opt": {"optimise": 2000}, "pti": {"pivot": 450, "tune": 350}}


def build_optimization(name: str):
    def builder(G):
        from hyperinverter.losses.lpips import LPIPS
        from hyperinverter.methods import get_method

        model = get_method(name)(G)
        # The official distance's cost (LPIPS-VGG for the projector, -AlexNet for PTI) with random weights: the
        # files are not installed here, and timings do not depend on the values.
        model.use_distance(f"lpips-{model.lpips_net} (random weights)", LPIPS(model.lpips_net))
        steps = {"pivot_steps": MEASURED_STEPS, "steps": MEASURED_STEPS} if name == "pti" else {"steps": MEASURED_STEPS}
        return model, steps
    return builder


def build_e2style(G):
    from hyperinverter.methods.e2style import E2Style

    return E2Style.create(G, preset="ffhq", stages=3), {}  # the released layout: IR-SE50 at 256, 3 stages


BUILDERS = {"hyperinverter": build_hyperinverter, "hyperstyle": build_hyperstyle,
            "psp": build_style_code_encoder("psp"), "e4e": build_style_code_encoder("e4e"), "e2style": build_e2style,
            **{name: build_optimization(name) for name in OFFICIAL_STEPS}}


def build(method: str):
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=1024))
    with torch.no_grad():
        G.mapping.w_avg.normal_(0, 0.5)
    model, options = BUILDERS[method](G)
    # The layout InversionPipeline uses.
    return model.to(memory_format=torch.channels_last).eval().requires_grad_(False), options


def conv_gflops(device: torch.device, repeats: int = 5) -> float:
    """Throughput of the kernel that dominates: conv2d 512->512 3x3 on 64x64, batch 4."""
    x = torch.randn(4, 512, 64, 64, device=device)
    w = torch.randn(512, 512, 3, 3, device=device)
    flops = 2 * 4 * 512 * 512 * 9 * 64 * 64
    times = []
    with torch.no_grad():
        torch.nn.functional.conv2d(x, w, padding=1)
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            _sync(device)
            times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def count_gflops(model, options: dict, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 1024, 1024, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, **options)
    return counter.get_total_flops() / 1e9


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(method: str, batch: int, device_name: str, repeats: int) -> dict:
    from hyperinverter.device import resolve_device
    from hyperinverter.methods import Stopwatch

    device = resolve_device(device_name)
    model, options = build(method)
    model = model.to(device)
    x = torch.randn(batch, 3, 1024, 1024, device=device).clamp(-1, 1)
    times = []
    with torch.no_grad():
        model(x, **options)  # warm-up
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            stopwatch = Stopwatch(device)
            out = model(x, stopwatch=stopwatch, **options)
            _sync(device)
            times.append(time.perf_counter() - t)
    assert torch.isfinite(out.image).all()
    if method in OFFICIAL_STEPS:  # seconds per step and per image (official steps), from the stage timings
        per_step = {stage: stopwatch.laps[stage] / MEASURED_STEPS / batch for stage in OFFICIAL_STEPS[method]}
        official = sum(per_step[stage] * n for stage, n in OFFICIAL_STEPS[method].items())
        times = [official * batch]  # the table's runs column: the official run, whole batch
    result = {"method": method, "batch": batch, "runs": times, "median": statistics.median(times),
              "s_per_image": statistics.median(times) / batch, "peak_gb": peak_rss_gb(),
              "conv_gflops": conv_gflops(device), "load": os.getloadavg()[0],
              "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if method in OFFICIAL_STEPS:
        result.update(s_per_image=official, median=official * batch, s_per_step=per_step)
    if batch == 1:
        result["gflop_per_image"] = count_gflops(model, options, device)
        if method in OFFICIAL_STEPS:  # counted over MEASURED_STEPS of every stage: scale to the official run
            measured = sum(MEASURED_STEPS for _ in OFFICIAL_STEPS[method])
            result["gflop_per_image"] *= sum(OFFICIAL_STEPS[method].values()) / measured
    return result


def method_report(method: str, results: list[dict], args: argparse.Namespace) -> list[str]:
    gflop = results[0]["gflop_per_image"]
    official = OFFICIAL.get(method, {})
    lines = [
        f"# {method} ffhq-1024 on {args.device}",
        "",
        (f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32, no_grad, seeded random weights, "
        f"{results[0]['parameters_m']:.1f}M parameters."),
        f"Command: `{args.command}`",
        "",
        f"Counted work: **{gflop:.1f} GFLOP / image** (FlopCounterMode, multiply-add = 2 FLOPs"
        + (f"; official {official['gflop_per_image']}" if official else "") + ").",
        "",
        ("| batch | s / image (median) | runs (s, whole batch) | peak RSS | conv GFLOP/s (same run) | FLOP floor s/img | "
        "ratio to floor |"),
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        floor = gflop / r["conv_gflops"]
        runs = ", ".join(f"{t:.2f}" for t in r["runs"])
        lines.append(f"| {r['batch']} | **{r['s_per_image']:.2f}** | {runs} | {r['peak_gb']:.2f} GB | "
                     f"{r['conv_gflops']:.0f} | {floor:.2f} | {r['s_per_image'] / floor:.2f}× |")
    b1 = next((r for r in results if r["batch"] == 1), None)
    b4 = next((r for r in results if r["batch"] == 4), None)
    lines += ["", "Checks:", ""]
    if b1:
        floor = gflop / b1["conv_gflops"]
        lines.append(f"- within 2× of the floor at batch 1: {'yes' if b1['s_per_image'] <= 2 * floor else 'NO'} "
                     f"({b1['s_per_image'] / floor:.2f}×)")
    if b1 and b4:
        lines.append(f"- batch 4 no slower per image than batch 1: "
                     f"{'yes' if b4['s_per_image'] <= b1['s_per_image'] * 1.02 else 'NO'} "
                     f"({b4['s_per_image']:.2f} vs {b1['s_per_image']:.2f} s)")
    if official:
        lines.append(f"- the official code on its machine: {official['s_per_image_b1']} s/img at batch 1, "
                     f"{official['s_per_image_b4']} s at batch 4, {official['peak_gb_b1']} GB")
    return lines


def comparison(results: dict[str, list[dict]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"# Full-size methods side by side, ffhq-1024 on {args.device}",
        "",
        f"One run of `{args.command}`; each row a separate process. Seeded random weights, fp32, no_grad.",
        "",
        "| method | parameters | GFLOP / image | batch | s / image | s / step (per image) | peak RSS | ratio to floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, rows in results.items():
        gflop = rows[0]["gflop_per_image"]
        for r in rows:
            floor = gflop / r["conv_gflops"]
            steps = ", ".join(f"{k} {v:.2f}" for k, v in r.get("s_per_step", {}).items()) or "–"
            lines.append(f"| {method} | {r['parameters_m']:.1f}M | {gflop:.1f} | {r['batch']} | "
                         f"**{r['s_per_image']:.2f}** | {steps} | {r['peak_gb']:.2f} GB | "
                         f"{r['s_per_image'] / floor:.2f}× |")
    if "hyperinverter" in results:
        hi = results["hyperinverter"][0]["s_per_image"]
        slower = [f"{m} {rows[0]['s_per_image'] / hi:,.0f}×" for m, rows in results.items() if m in OFFICIAL_STEPS]
        if slower:
            lines += ["", "Time per image relative to HyperInverter at batch 1 (official step counts): "
                      + ", ".join(slower) + "."]
    if {"hyperinverter", "hyperstyle"} <= results.keys():
        hi, hs = results["hyperinverter"], results["hyperstyle"]
        lines += ["", (f"HyperStyle / HyperInverter: {hs[0]['gflop_per_image'] / hi[0]['gflop_per_image']:.2f}× the "
                  f"FLOPs, {hs[0]['s_per_image'] / hi[0]['s_per_image']:.2f}× the time at batch 1.")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="hyperinverter,hyperstyle", help=f"of {', '.join(BUILDERS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--optimization-batches", default="1",
                        help="batches for w-opt, wplus-opt and pti (each step is a full forward and backward pass)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), args.device, args.repeats)))
        return
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in BUILDERS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(BUILDERS)}")
    args.command = (f"python benchmarks/bench_fullsize.py --methods {args.methods} --device {args.device} "
                    f"--repeats {args.repeats} --batches {args.batches} "
                    f"--optimization-batches {args.optimization_batches}")
    results: dict[str, list[dict]] = {}
    for method in methods:
        batches = args.optimization_batches if method in OFFICIAL_STEPS else args.batches
        for batch in [int(b) for b in batches.split(",")]:
            cmd = [sys.executable, __file__, "--worker", method, str(batch), "--device", args.device,
                   "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.setdefault(method, []).append(json.loads(out))
            print(results[method][-1], flush=True)
        if "gflop_per_image" not in results[method][0]:
            raise SystemExit("batch 1 must come first: it counts the FLOPs")
    args.out.mkdir(parents=True, exist_ok=True)
    for method, rows in results.items():
        path = args.out / f"{method}-ffhq1024-{args.device}.md"
        path.write_text("\n".join(method_report(method, rows, args)) + "\n")
        print(f"wrote {path}")
    if len(results) > 1:
        path = args.out / f"fullsize-ffhq1024-{args.device}.md"
        path.write_text("\n".join(comparison(results, args)) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
