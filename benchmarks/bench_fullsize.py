"""Full-size methods at ffhq-1024 on this machine, in fp32 and bf16: seconds per image at batch 1 and 4, peak memory,
page faults, the ratio to the FLOP floor, and the image change of bf16 against fp32.

    python benchmarks/bench_fullsize.py --methods hyperinverter,hyperstyle --device cpu

Each (method, batch, dtype) runs in its own subprocess; with ``--rounds N``, in N of them, run round-robin with the
method's other rows so that the machine's drift over minutes (whole inversions here moved 16-22 % between runs half
an hour apart) falls on every row alike, and the row pools their timed passes. The peak resident memory (VmHWM) is
reset once the weights are loaded, so it is the inference's (the loading peak is reported beside it). The
package's CPU heap reuse (:mod:`hyperinverter.memory`) is on, as in every pipeline; ``--plain-malloc`` adds rows
without it. On a CPU in fp32 the trained parts' large conv weights are packed for oneDNN at their first call, as in
a pipeline loaded from a bundle (:mod:`hyperinverter.ops.prepacked`); ``--plain-weights`` adds rows without. The
FLOP floor is the counted work (FlopCounterMode) over the best 512→512 3×3 conv throughput of the row's dtype,
measured in the same process. Weights are seeded random: timings do not depend on their values; HyperInverter's and HyperStyle's offsets
are scaled to a trained model's size so that precision changes show. One results file per method
(``results/<method>-ffhq1024-<device>.md``) and one side-by-side table (``results/fullsize-ffhq1024-<device>.md``,
with its ``.json`` and a picture, ``.png``; ``--plot-from JSON`` redraws a saved run's picture).

The configurations are the papers' released ones:

- ``hyperinverter``: IR-SE50 E1 and E2 at 256 px, hypernetworks of hidden size D=128 on every layer.
- ``hyperstyle``: the IR-SE50 W encoder, the ResNet-34 hypernetwork at 256 px with the released layer set (the 17
  3x3 convs, no ToRGB; 332.7M parameters), 5 iterations.
- ``psp``, ``e4e``: the GradualStyleEncoder / Encoder4Editing on the IR-SE50 trunk at 256 px.
- ``e2style``: three stages of the shallow IR-SE50 encoder with the efficient heads, at 256 px.
- ``w-opt``, ``wplus-opt``, ``pti``: optimisation, timed over a few steps (with the official perceptual distance's
  network, random weights) and reported per step and per image for the official step counts (W 1000, W+ 2000,
  PTI 450 pivot + 350 tuning steps; PTI's early stop can end tuning sooner).

    python benchmarks/bench_fullsize.py --methods hyperinverter,hyperstyle,psp,e4e,e2style,w-opt,wplus-opt,pti \
        --repeats 2 --rounds 2 --dtypes fp32,bf16 --plain-malloc hyperinverter \
        --bundled-precision benchmarks/results/precision.json        # make bench, after bench_precision.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
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


# Δθ of a trained model's size, so that precision changes show (seeded weights alone make Δθ ~1e-6 and hide them).
# Medians over the bundled models' layers on 32 held-out images each (benchmarks/calibrate_delta.py):
# HyperInverter's additive Δθ is 0.35 (faces-64) and 0.40 (fashion-32) of each weight's RMS; HyperStyle's
# multiplicative Δ after 5 iterations has an RMS of 0.32 and 0.22, so about 0.27 / 5 per iteration.
DELTA_TO_WEIGHT_RMS = 0.35
HYPERSTYLE_STEP_RMS = 0.27 / 5

# The performance targets the findings are checked against: fp32 HyperInverter within this multiple of the FLOP
# floor at batch 1, and its peak resident memory there.
FLOOR_RATIO_TARGET = 1.3
PEAK_GB_TARGET = 2.0


def _scale_(tensors, factor: float) -> None:
    with torch.no_grad():
        for t in tensors:
            t.mul_(factor)


def calibrate_hyperinverter(model, x: torch.Tensor) -> None:
    """Scale each regressor's last linear map (Δθ is linear in it) so that RMS(Δθ) = 0.35 · RMS(θ) on ``x``."""
    with torch.no_grad():
        delta = model(x).weight_delta
    weights = dict(model.generator.synthesis.named_parameters())
    for t in model.hypernetwork.targets:
        ratio = float(delta[t.name].square().mean().sqrt() / weights[t.name].square().mean().sqrt())
        regressor = model.hypernetwork.weight_regressors[t.name.replace(".", "_")]
        _scale_([regressor.w2, regressor.b2], DELTA_TO_WEIGHT_RMS / ratio)


def calibrate_hyperstyle(model, x: torch.Tensor) -> None:
    """Scale the refinement heads so that one iteration's Δ has an RMS of 0.054 (0.27 after five)."""
    net = model.hypernetwork
    size = net.config.input_size
    pair = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        delta = net(torch.cat([pair, pair], dim=1))
    rms = {t.name: float(delta[t.name].square().mean().sqrt()) for t in net.config.targets}
    shared = [rms[t.name] for t in net.config.targets if t.shared]
    if shared:
        hyper = net.shared_weight_hypernet
        _scale_([hyper.w1, hyper.b1], HYPERSTYLE_STEP_RMS / statistics.median(shared))
    for t in net.config.targets:
        if not t.shared:
            head = net.refinement_blocks[str(t.index)].output[-1]
            _scale_(list(head.parameters()), HYPERSTYLE_STEP_RMS / rms[t.name])


def build_hyperinverter(G):
    from hyperinverter.methods.hyperinverter import HyperInverter
    from hyperinverter.models.encoders import encoder_preset
    from hyperinverter.models.hypernetwork import HyperNetwork

    preset = encoder_preset("ffhq")
    model = HyperInverter(G, w_encoder=preset.build_w_encoder(), feature_encoder=preset.build_feature_encoder(),
                          hypernetwork=HyperNetwork.from_generator(G, hidden_dim=128), encoder_resolution=256)
    calibrate_hyperinverter(model.eval(), sample_images(G, 1))
    return model, {}


def build_hyperstyle(G):
    from hyperinverter.methods.hyperstyle import HyperStyle

    model = HyperStyle.create(G, preset="ffhq")
    assert sum(p.numel() for p in model.hypernetwork.parameters()) / 1e6 > 332  # the released size
    calibrate_hyperstyle(model.eval(), sample_images(G, 1))
    return model, {"iterations": 5}


def sample_images(G, n: int, seed: int = 0) -> torch.Tensor:
    """The generator's own images as inputs (in [-1, 1]): realistic activations for the encoders."""
    device = G.w_avg.device
    with torch.no_grad():
        z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
        return G(z, noise_mode="const").clamp(-1, 1)


def build_style_code_encoder(mode: str):
    def builder(G):
        from hyperinverter.methods import get_method

        return get_method(mode).create(G, preset="ffhq"), {}  # the released GradualStyleEncoder / Encoder4Editing
    return builder


# Optimisation runs this many steps per measurement; the tables give seconds per step and, from them, per image
# for the official step counts (PTI: its pivot's and its tuning's).
MEASURED_STEPS = 2
OFFICIAL_STEPS = {"w-opt": {"optimise": 1000}, "wplus-opt": {"optimise": 2000}, "pti": {"pivot": 450, "tune": 350}}


def official_run_seconds(method: str, laps: dict[str, float], batch: int) -> tuple[dict[str, float], float]:
    """From the stopwatch laps of ``MEASURED_STEPS`` steps per stage: seconds per step of each stage (per image),
    and seconds per image for the official step counts."""
    per_step = {stage: laps[stage] / MEASURED_STEPS / batch for stage in OFFICIAL_STEPS[method]}
    return per_step, sum(per_step[stage] * n for stage, n in OFFICIAL_STEPS[method].items())


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
    from hyperinverter.memory import large_blocks_mapped, trim
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    # The memory policy of InversionPipeline.from_pretrained: large blocks get mappings of their own while the model
    # is made and converted, and what that freed goes back (heap reuse comes on with the run). Without it, glibc's
    # moving threshold put parameter copies in the heap, which the conversion then left full of holes.
    with large_blocks_mapped():
        torch.manual_seed(0)
        G = Generator(GeneratorConfig(resolution=1024))
        with torch.no_grad():
            G.mapping.w_avg.normal_(0, 0.5)
        model, options = BUILDERS[method](G)
        # The layout InversionPipeline uses.
        model = model.to(memory_format=torch.channels_last).eval().requires_grad_(False)
    trim()
    return model, options


def warmed_up_on_cpu(method: str, batch: int = 1) -> tuple:
    """``method``'s full-size model as a CPU fp32 pipeline from a bundle runs it, with ``batch`` inputs: large conv
    weights packed, and one pass made (a pipeline's first: large blocks mapped, heap reuse after it). Returns the
    model, its options and the inputs."""
    from hyperinverter.memory import first_pass_mapped
    from hyperinverter.ops.prepacked import prepack_convolutions

    model, options = build(method)
    prepack_convolutions(*model.parts().values())
    x = sample_images(model.generator, batch, seed=1)
    with torch.no_grad(), first_pass_mapped():
        model(x, **options)
    return model, options, x


def conv_gflops(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """The best throughput of the kernel that dominates, conv2d 512->512 3x3 on 64x64, over batch 1 and 4 and
    both layouts (the FLOP floor divides by it)."""
    from hyperinverter.precision import reduced_precision

    best = 0.0
    for batch in (1, 4):
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(batch, 512, 64, 64, device=device).contiguous(memory_format=layout)
            w = torch.randn(512, 512, 3, 3, device=device).contiguous(memory_format=layout)
            flops = 2 * batch * 512 * 512 * 9 * 64 * 64
            times = []
            with torch.no_grad(), reduced_precision(device, dtype):
                torch.nn.functional.conv2d(x, w, padding=1)
                for _ in range(repeats):
                    _sync(device)
                    t = time.perf_counter()
                    torch.nn.functional.conv2d(x, w, padding=1)
                    _sync(device)
                    times.append(time.perf_counter() - t)
            best = max(best, flops / statistics.median(times) / 1e9)
    return best


def count_gflops(model, options: dict, device: torch.device, bands: bool = False) -> float:
    """The counted work of one image. By default with whole maps: the algorithm's work, without the rows that
    CPU bands recompute at their edges (``bands=True`` counts those too)."""
    from torch.utils.flop_counter import FlopCounterMode

    synthesis = model.generator.synthesis
    x = torch.randn(1, 3, 1024, 1024, device=device)
    previous, synthesis.bands = synthesis.bands, bands
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, **options)
    finally:
        synthesis.bands = previous
    return counter.get_total_flops() / 1e9


def seconds(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls, after one untimed."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def alternating_passes(model, x: torch.Tensor, options: dict, use, modes: tuple[str, str],
                       pairs: int) -> dict[str, dict[str, float]]:
    """Whole inversions of ``x`` in two modes, ABBA order in one process, so that the machine's drift (whole
    inversions moved by 10-25 % between processes) falls on both alike: the median seconds per image of each pass
    and of each stage. ``use(mode)`` switches ``model`` to a mode. The first pass is a CPU pipeline's (large blocks
    mapped, heap reuse after it) in the second mode; one more pass in each grows the heap the timed ones reuse."""
    from hyperinverter.memory import first_pass_mapped
    from hyperinverter.methods import Stopwatch

    batch = x.shape[0]
    passes: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with torch.no_grad():
        use(modes[1])
        with first_pass_mapped():
            model(x, **options)
        for mode in reversed(modes):
            use(mode)
            model(x, **options)
        for i in range(2 * pairs):
            mode = modes[(0, 1, 1, 0)[i % 4]]
            use(mode)
            stopwatch = Stopwatch(torch.device("cpu"))
            start = time.perf_counter()
            model(x, stopwatch=stopwatch, **options)
            laps = {"pass": time.perf_counter() - start, **stopwatch.laps}
            passes[mode].append({k: v / batch for k, v in laps.items()})
    return {mode: {k: statistics.median(p[k] for p in runs) for k in runs[0]} for mode, runs in passes.items()}


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def reset_peak_rss() -> None:
    """Restart VmHWM from the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def page_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(method: str, batch: int, device_name: str, repeats: int, dtype_name: str = "fp32",
            reuse_memory: bool = True, compile_model: bool = False, bands: bool = True,
            count_work: bool = True, prepack: bool = True) -> dict:
    from hyperinverter.device import resolve_device
    from hyperinverter.memory import first_pass_mapped
    from hyperinverter.methods import Stopwatch
    from hyperinverter.ops.prepacked import parameter_count, prepack_convolutions
    from hyperinverter.precision import reduced_precision, resolve_dtype

    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    model, options = build(method)
    model = model.to(device)
    model.generator.synthesis.bands = bands
    # As a pipeline from a bundle runs: on a CPU in fp32 the trained parts' large conv weights pack at their first
    # call (in the warm-up below); torch.compile packs them its own way.
    prepack = prepack and device.type == "cpu" and dtype == torch.float32 and not compile_model
    if prepack:
        prepack_convolutions(*model.parts().values())
    load_peak = peak_rss_gb()
    reuse = reuse_memory and device.type == "cpu"
    reset_peak_rss()  # from here on, the peak is the inference's
    runner = torch.compile(model) if compile_model else model
    x = sample_images(model.generator, batch, seed=1).to(device)
    times, faults = [], []
    with torch.no_grad(), reduced_precision(device, dtype):
        start = time.perf_counter()
        # The warm-up (and compilation) is a CPU pipeline's first pass: large blocks mapped, heap reuse after it;
        # then one pass that grows the heap the timed ones reuse (a pipeline's second). Both are called as the timed
        # passes are, with a stopwatch: a compiled model compiled again for its laps in the first timed pass.
        with first_pass_mapped() if reuse else contextlib.nullcontext():
            runner(x, stopwatch=Stopwatch(device), **options)
        warmup = time.perf_counter() - start
        if reuse:
            runner(x, stopwatch=Stopwatch(device), **options)
        out = None
        for _ in range(repeats):
            out = None  # the peak is one inversion's: the previous result is not held through the next
            _sync(device)
            f, t = page_faults(), time.perf_counter()
            stopwatch = Stopwatch(device)
            out = runner(x, stopwatch=stopwatch, **options)
            _sync(device)
            times.append(time.perf_counter() - t)
            faults.append(page_faults() - f)
    peak = peak_rss_gb()  # before anything else runs in this process
    assert torch.isfinite(out.image).all()
    result = {"method": method, "batch": batch, "dtype": dtype_name, "reuse_memory": reuse_memory, "bands": bands,
              "prepack": prepack, "load_peak_gb": load_peak,
              "compile": compile_model, "warmup_s": warmup, "runs": times, "median": statistics.median(times),
              "s_per_image": statistics.median(times) / batch, "peak_gb": peak,
              "page_faults_per_image": statistics.median(faults) / batch,
              "stages": {k: v / batch for k, v in stopwatch.laps.items()},
              "conv_gflops": conv_gflops(device), "load": os.getloadavg()[0],
              "parameters_m": parameter_count(model) / 1e6}
    if dtype != torch.float32:
        result["conv_gflops_reduced"] = conv_gflops(device, dtype)
        if method not in OFFICIAL_STEPS:  # the quality cost against fp32 on the same input, realistic Δθ
            with torch.no_grad():
                reference = model(x, **options).image.float()
            change = (out.image.float() - reference).abs()
            result.update(mean_abs_change=float(change.mean()), max_abs_change=float(change.max()))
    if method in OFFICIAL_STEPS:
        per_step, official = official_run_seconds(method, stopwatch.laps, batch)
        result.update(s_per_image=official, median=official * batch, s_per_step=per_step, runs=[official * batch])
    if batch == 1 and dtype == torch.float32 and count_work:
        result["gflop_per_image"] = count_gflops(model, options, device)
        if bands and device.type == "cpu":
            result["gflop_per_image_banded"] = count_gflops(model, options, device, bands=True)
        if method in OFFICIAL_STEPS:  # counted over MEASURED_STEPS of every stage: scale to the official run
            measured = sum(MEASURED_STEPS for _ in OFFICIAL_STEPS[method])
            result["gflop_per_image"] *= sum(OFFICIAL_STEPS[method].values()) / measured
    return result


def pool(rounds: list[dict]) -> dict:
    """One row from its rounds (processes run round-robin with the method's other rows, so that the machine's
    drift over minutes falls on every row alike): every timed pass pooled, the median of each round's best conv,
    faults and stages, the highest peaks."""
    row = dict(rounds[0])
    if len(rounds) == 1:
        return row
    row["runs"] = [t for r in rounds for t in r["runs"]]
    row["median"] = statistics.median(row["runs"])
    row["s_per_image"] = row["median"] / row["batch"]
    for key in ("peak_gb", "load_peak_gb", "load", "mean_abs_change", "max_abs_change"):
        if key in row:
            row[key] = max(r[key] for r in rounds)
    for key in ("conv_gflops", "conv_gflops_reduced", "page_faults_per_image"):
        if key in row:
            row[key] = statistics.median(r[key] for r in rounds)
    for key in ("stages", "s_per_step"):
        if key in row:
            row[key] = {k: statistics.median(r[key][k] for r in rounds) for k in row[key]}
    row["rounds"] = len(rounds)
    return row


def variant(r: dict) -> str:
    """How a row ran, beyond method and batch: the dtype, and what differs from the package's defaults."""
    packed_by_default = r["dtype"] == "fp32" and not r["compile"]
    notes = ([r["dtype"]] + (["plain malloc"] if not r["reuse_memory"] else [])
             + (["whole maps"] if not r.get("bands", True) else [])
             + (["plain weights"] if packed_by_default and not r.get("prepack", True) else [])
             + (["compiled"] if r["compile"] else []))
    return ", ".join(notes)


def floor_ratio(r: dict, gflop: float) -> float:
    """Seconds per image over the FLOP floor (counted work / the best conv throughput of the row's dtype)."""
    return r["s_per_image"] / (gflop / r.get("conv_gflops_reduced", r["conv_gflops"]))


def stage_table(rows: list[dict]) -> list[str]:
    stages = list(dict.fromkeys(k for r in rows for k in r["stages"]))
    lines = ["| variant | batch | " + " | ".join(stages) + " | total |", "|---|---|" + "---|" * (len(stages) + 1)]
    for r in rows:
        cells = " | ".join(f"{r['stages'].get(k, float('nan')):.3f}" for k in stages)
        lines.append(f"| {variant(r)} | {r['batch']} | {cells} | {sum(r['stages'].values()):.3f} |")
    return lines


def method_report(method: str, results: list[dict], args: argparse.Namespace) -> list[str]:
    from hyperinverter.benchmark import cpu_description

    gflop = next(r["gflop_per_image"] for r in results if "gflop_per_image" in r)
    official = OFFICIAL.get(method, {})
    lines = [
        f"# {method} ffhq-1024 on {args.device}",
        "",
        (f"Machine: {cpu_description()}, {os.cpu_count()} cores, torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads, no_grad, seeded random weights with Δθ of a trained model's size, "
         f"{results[0]['parameters_m']:.1f}M parameters."),
        f"Command: `{args.command}`"
        + ("" if args.rounds == 1 else f" (each row pools {args.rounds} processes, run round-robin with the others)."),
        "",
        f"Counted work: **{gflop:.1f} GFLOP / image** (FlopCounterMode, multiply-add = 2 FLOPs"
        + (f"; official {official['gflop_per_image']}" if official else "") + ").",
        "",
        ("| variant | batch | s / image (median) | runs (s, whole batch) | page faults / image | peak RSS (loading) | "
         "best conv GFLOP/s (same run) | FLOP floor s/img | ratio to floor |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        best = r.get("conv_gflops_reduced", r["conv_gflops"])
        runs = ", ".join(f"{t:.2f}" for t in r["runs"])
        lines.append(f"| {variant(r)} | {r['batch']} | **{r['s_per_image']:.2f}** | {runs} | "
                     f"{r['page_faults_per_image'] / 1e3:.0f}k | {r['peak_gb']:.2f} GB ({r['load_peak_gb']:.2f}) | "
                     f"{best:.0f} | "
                     f"{gflop / best:.2f} | {floor_ratio(r, gflop):.2f}× |")
    if any(len(r["stages"]) > 1 for r in results):
        lines += ["", "Seconds per image by stage (the method's stopwatch, last timed run):", "", *stage_table(results)]
    return lines


def _row(rows: list[dict], dtype: str, batch: int) -> dict | None:
    """The row that ran as a pipeline runs (no variant beyond the dtype)."""
    return next((r for r in rows if r["dtype"] == dtype and r["batch"] == batch and variant(r) == dtype), None)


STAGE_LABELS = {"w_encoder": "E1", "w_image": "W-image", "feature_encoder": "E2 (both images)",
                "hypernetworks": "hypernetworks", "synthesis": "final synthesis"}


def plot_speed(results: dict[str, list[dict]], path: Path, title: str) -> Path:
    """The run at a glance (PNG): HyperInverter's seconds per image by stage against its fp32 FLOP floor and the
    target ratio, and every method's seconds per image at batch 1, fp32 and bf16 (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hyperinverter.io.files import atomic_write_figure

    fig, (by_stage, by_method) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True,
                                              gridspec_kw={"width_ratios": [1.1, 1]})
    rows = results.get("hyperinverter", [])
    shown = [(f"{dtype}, batch {batch}", r) for dtype in ("fp32", "bf16") for batch in (1, 4)
             if (r := _row(rows, dtype, batch))]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for y, (label, r) in enumerate(reversed(shown)):
        left = 0.0
        for i, (stage, seconds) in enumerate(r["stages"].items()):
            by_stage.barh(y, seconds, left=left, height=0.6, color=colours[i % len(colours)],
                          label=STAGE_LABELS.get(stage, stage) if y == 0 else None)
            left += seconds
        by_stage.annotate(f"{r['s_per_image']:.2f} s (median)", (left, y), xytext=(4, 0), textcoords="offset points",
                          va="center", fontsize=8, bbox={"fc": "white", "ec": "none", "pad": 1})
    if shown:
        fp32 = _row(rows, "fp32", 1)
        if fp32 is not None:
            floor = fp32["gflop_per_image"] / fp32["conv_gflops"]
            by_stage.axvline(floor, color="black", lw=1)
            by_stage.axvline(FLOOR_RATIO_TARGET * floor, color="black", lw=1, ls="--")
            by_stage.annotate("fp32 FLOP floor", (floor, len(shown) - 0.3), fontsize=7, ha="right", xytext=(-2, 0),
                              textcoords="offset points")
            by_stage.annotate(f"{FLOOR_RATIO_TARGET}× the floor", (FLOOR_RATIO_TARGET * floor, len(shown) - 0.3),
                              fontsize=7, xytext=(2, 0),
                              textcoords="offset points")
        by_stage.set_yticks(range(len(shown)), [label for label, _ in reversed(shown)])
        longest = max(sum(r["stages"].values()) for _, r in shown)
        by_stage.set(xlim=(0, 1.3 * longest), ylim=(-0.6, len(shown) - 0.05))  # room for the labels
        by_stage.legend(fontsize=7, loc="lower right")
    by_stage.set(xlabel="seconds per image (stages: the last timed pass)", title="HyperInverter at full size, by stage")
    methods = [m for m in results if _row(results[m], "fp32", 1)]
    dtypes = [d for d in ("fp32", "bf16") if any(_row(results[m], d, 1) for m in methods)]
    height = 0.8 / max(len(dtypes), 1)
    for k, dtype in enumerate(dtypes):
        seconds = [(_row(results[m], dtype, 1) or {}).get("s_per_image", float("nan")) for m in methods]
        offset = (len(dtypes) - 1) / 2 * height - k * height  # the dtypes' bars side by side around the tick
        ys = [len(methods) - 1 - i + offset for i in range(len(methods))]
        by_method.barh(ys, seconds, height=height, color=colours[k], label=dtype)
        for y, s in zip(ys, seconds, strict=True):
            if not math.isnan(s):
                by_method.annotate(f"{s:,.0f}" if s >= 100 else f"{s:.2f}", (s, y), xytext=(3, 0),
                                   textcoords="offset points", va="center", fontsize=7)
    by_method.set_yticks(range(len(methods)), list(reversed(methods)))
    by_method.set(xscale="log", xlabel="seconds per image, batch 1 (log)", title="every method at full size")
    by_method.legend(fontsize=8, loc="upper right")
    for ax in (by_stage, by_method):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return atomic_write_figure(path, fig)


def comparison(results: dict[str, list[dict]], args: argparse.Namespace) -> list[str]:
    from hyperinverter.benchmark import cpu_description

    lines = [
        f"# Full-size methods side by side, ffhq-1024 on {args.device}",
        "",
        (f"One run of `{args.command}`; each row "
         + ("a separate process" if args.rounds == 1 else
            f"{args.rounds} separate processes, run round-robin with the method's other rows (times: the median of "
            "their pooled passes; floor: the median of their best convs; peak: the highest)")
         + f", on {os.cpu_count()} cores "
         f"({cpu_description()}, torch {torch.__version__}). Seeded random weights; HyperInverter's and HyperStyle's "
         "offsets scaled to a trained model's size (`calibrate_delta.py`), so that precision changes show. The FLOP "
         "floor is the counted work over the best 512→512 3×3 conv throughput of the row's dtype in the same "
         "process."),
        "",
        ("| method | parameters | GFLOP / image | variant | batch | s / image | s / step (per image) | peak RSS | "
         "page faults / image | ratio to floor | bf16: mean / max image change |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rows in results.items():
        gflop = next(r["gflop_per_image"] for r in rows if "gflop_per_image" in r)
        for r in rows:
            steps = ", ".join(f"{k} {v:.2f}" for k, v in r.get("s_per_step", {}).items()) or "–"
            change = (f"{r['mean_abs_change']:.4f} / {r['max_abs_change']:.3f}" if "mean_abs_change" in r else "–")
            lines.append(f"| {method} | {r['parameters_m']:.1f}M | {gflop:.1f} | {variant(r)} | {r['batch']} | "
                         f"**{r['s_per_image']:.2f}** | {steps} | {r['peak_gb']:.2f} GB | "
                         f"{r['page_faults_per_image'] / 1e3:.0f}k | {floor_ratio(r, gflop):.2f}× | {change} |")
    lines += ["", f"![by stage and by method](fullsize-ffhq1024-{args.device}.png)", "", "## Findings", ""]
    hi = results.get("hyperinverter", [])
    if _row(hi, "fp32", 1):
        gflop = next(r["gflop_per_image"] for r in hi if "gflop_per_image" in r)
        b1, b4 = _row(hi, "fp32", 1), _row(hi, "fp32", 4)
        lines.append(f"- HyperInverter fp32, ratio to the floor: {floor_ratio(b1, gflop):.2f}× at batch 1"
                     + (f", {floor_ratio(b4, gflop):.2f}× at batch 4 ({b4['s_per_image']:.2f} vs "
                        f"{b1['s_per_image']:.2f} s per image)" if b4 else "")
                     + f"; target {FLOOR_RATIO_TARGET}×. Peak RSS at batch 1: {b1['peak_gb']:.2f} GB "
                     f"(target {PEAK_GB_TARGET} GB).")
        whole = next((r for r in hi if not r.get("bands", True)), None)
        if whole:
            lines.append(f"- Bands (CPU synthesis of the high-resolution blocks a band of rows at a time): peak "
                         f"{b1['peak_gb']:.2f} GB and {b1['s_per_image']:.2f} s per image; with whole maps "
                         f"{whole['peak_gb']:.2f} GB and {whole['s_per_image']:.2f} s. The rows bands recompute at "
                         f"their edges: {b1.get('gflop_per_image_banded', gflop) - gflop:.1f} GFLOP per image "
                         "(not in the floor).")
        plain = next((r for r in hi if not r["reuse_memory"] and r["batch"] == 1), None)
        if plain:
            lines.append(f"- Page faults: without heap reuse (blocks of 32 MB and up mapped afresh each time, as in a process that "
                         f"calls `keep_memory_bounded`) {plain['s_per_image']:.2f} s "
                         f"and {plain['page_faults_per_image'] / 1e3:.0f}k faults per image, peak "
                         f"{plain['peak_gb']:.2f} GB; with the package's heap reuse {b1['s_per_image']:.2f} s, "
                         f"{b1['page_faults_per_image'] / 1e3:.0f}k faults, {b1['peak_gb']:.2f} GB.")
        unpacked = next((r for r in hi if "plain weights" in variant(r)), None)
        if unpacked:
            stages = ", ".join(f"{k} {unpacked['stages'][k]:.3f} → {b1['stages'][k]:.3f} s" for k in b1["stages"]
                               if k in unpacked["stages"])
            lines.append(f"- Large conv weights packed for oneDNN at their first call (`hyperinverter.ops.prepacked`), "
                         f"as a CPU fp32 pipeline does: {b1['s_per_image']:.2f} s per image, peak {b1['peak_gb']:.2f} "
                         f"GB; with plain weights, reordered at every call, {unpacked['s_per_image']:.2f} s, peak "
                         f"{unpacked['peak_gb']:.2f} GB (by stage, plain → packed: {stages}).")
    for method, rows in results.items():
        for batch in (1, 4):
            full, reduced = _row(rows, "fp32", batch), next((r for r in rows if r["dtype"] != "fp32"
                                                             and r["batch"] == batch and not r["compile"]), None)
            if full and reduced:
                lines.append(f"- {method} {reduced['dtype']} at batch {batch}: {reduced['s_per_image']:.2f} s, "
                             f"{reduced['s_per_image'] / full['s_per_image']:.2f} of fp32's time"
                             + (f"; image change mean {reduced['mean_abs_change']:.4f}, max "
                                f"{reduced['max_abs_change']:.3f}" if "mean_abs_change" in reduced else "") + ".")
        compiled = next((r for r in rows if r["compile"]), None)
        plain_row = _row(rows, compiled["dtype"], compiled["batch"]) if compiled else None
        if compiled and plain_row:
            lines.append(f"- {method} with torch.compile ({variant(compiled)}, batch {compiled['batch']}): "
                         f"{compiled['s_per_image']:.2f} s against {plain_row['s_per_image']:.2f} s eager, after a "
                         f"{compiled['warmup_s']:.0f} s first call.")
    if _row(hi, "fp32", 1):
        base = _row(hi, "fp32", 1)["s_per_image"]
        slower = [f"{m} {_row(rows, 'fp32', 1)['s_per_image'] / base:,.0f}×" for m, rows in results.items()
                  if m in OFFICIAL_STEPS and _row(rows, "fp32", 1)]
        if slower:
            lines.append("- Time per image relative to HyperInverter at batch 1, fp32 (official step counts): "
                         + ", ".join(slower) + ".")
    if "hyperstyle" in results and _row(hi, "fp32", 1) and _row(results["hyperstyle"], "fp32", 1):
        hs, h1 = results["hyperstyle"], hi
        g_hs = next(r["gflop_per_image"] for r in hs if "gflop_per_image" in r)
        g_hi = next(r["gflop_per_image"] for r in h1 if "gflop_per_image" in r)
        lines.append(f"- HyperStyle / HyperInverter: {g_hs / g_hi:.2f}× the FLOPs, "
                     f"{_row(hs, 'fp32', 1)['s_per_image'] / _row(h1, 'fp32', 1)['s_per_image']:.2f}× the time at "
                     "batch 1.")
    if args.bundled_precision:
        lines += ["", *bundled_precision(args.bundled_precision)]
    if hi:
        lines += ["", "## HyperInverter by stage (seconds per image)", "", *stage_table(hi)]
    return lines


def bundled_precision(path: Path) -> list[str]:
    """The quality cost of bf16 on the bundled domains' held-out sets, from ``bench_precision.py``'s results."""
    rows = json.loads(path.read_text())
    lines = [f"## bf16 on the bundled domains' held-out sets (`bench_precision.py`: `{path}`)",
             "", "Target: mean |image change| ≤ 0.01 and MSE change ≤ 2 % against fp32.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        of_model = [r for r in rows if r["model"] == model]
        worst_change = max(of_model, key=lambda r: r["mean_abs_change"])
        worst_mse = max(of_model, key=lambda r: r["mse_change"])
        failing = [r["method"] for r in of_model if not r["passes"]]
        hyper = next((r for r in of_model if r["method"] == "hyperinverter"), None)
        lines.append(
            f"- {model} ({len(of_model)} methods, up to {max(r['images'] for r in of_model)} held-out images): "
            + (f"HyperInverter mean change {hyper['mean_abs_change']:.4f}, MSE {hyper['mse_change']:+.2%}; " if hyper
               else "")
            + f"largest mean change {worst_change['mean_abs_change']:.4f} ({worst_change['method']}), largest MSE "
            f"change {worst_mse['mse_change']:+.2%} ({worst_mse['method']}); "
            + (f"**over the target: {', '.join(failing)}**; fp32 stays their default" if failing
               else "every method meets the target") + ".")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="hyperinverter,hyperstyle", help=f"of {', '.join(BUILDERS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--optimization-batches", default="1",
                        help="batches for w-opt, wplus-opt and pti (each step is a full forward and backward pass)")
    parser.add_argument("--plain-malloc", default="hyperinverter",
                        help="methods also measured at fp32, batch 1, without the package's heap reuse")
    parser.add_argument("--whole-maps", default="hyperinverter",
                        help="methods also measured at fp32, batch 1, without CPU bands (whole-map synthesis)")
    parser.add_argument("--plain-weights", default="hyperinverter",
                        help="methods also measured at fp32, batch 1, without packing the large conv weights")
    parser.add_argument("--compile", default="", help="methods also measured under torch.compile (fp32, batch 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--bundled-precision", type=Path,
                        help="bench_precision.py's JSON from the same run: its bf16 costs go into the side-by-side file")
    parser.add_argument("--rounds", type=int, default=1,
                        help="processes per row, run round-robin with the method's other rows; a row pools their runs")
    parser.add_argument("--plot-from", type=Path, metavar="JSON",
                        help="only draw the picture of a saved run (its fullsize-*.json), as a PNG beside it")
    parser.add_argument("--worker", nargs=8, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plot_from is not None:
        if not args.plot_from.is_file():
            parser.error(f"--plot-from: {args.plot_from} does not exist")
        try:
            results = json.loads(args.plot_from.read_text())
            png = plot_speed(results, args.plot_from.with_suffix(".png"), f"the run in {args.plot_from}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            parser.error(f"--plot-from: {args.plot_from} is not a results file of this script "
                         f"({type(e).__name__}: {e})")
        print(f"wrote {png}")
        return
    if args.worker is not None:
        method, batch, dtype, reuse, compiled, bands, prepack, count_work = args.worker
        print(json.dumps(measure(method, int(batch), args.device, args.repeats, dtype, reuse == "1", compiled == "1",
                                 bands == "1", count_work == "1", prepack == "1")))
        return
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.bundled_precision and not args.bundled_precision.is_file():
        parser.error(f"--bundled-precision: {args.bundled_precision} does not exist (run bench_precision.py first)")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in BUILDERS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(BUILDERS)}")
    plain_malloc = args.plain_malloc or '""'
    whole_maps = args.whole_maps or '""'
    plain_weights = args.plain_weights or '""'
    args.command = (f"python benchmarks/bench_fullsize.py --methods {args.methods} --device {args.device} "
                    f"--repeats {args.repeats} --rounds {args.rounds} --batches {args.batches} --dtypes {args.dtypes} "
                    f"--optimization-batches {args.optimization_batches} --plain-malloc {plain_malloc} "
                    f"--whole-maps {whole_maps} --plain-weights {plain_weights}"
                    + (f" --compile {args.compile}" if args.compile else "")
                    + (f" --bundled-precision {args.bundled_precision}" if args.bundled_precision else ""))
    results: dict[str, list[dict]] = {}
    for method in methods:
        batches = args.optimization_batches if method in OFFICIAL_STEPS else args.batches
        # (batch, dtype, heap reuse, compiled, bands, packed weights)
        runs = [(int(b), dtype, "1", "0", "1", "1") for dtype in args.dtypes.split(",") for b in batches.split(",")]
        if method in args.plain_malloc.split(","):
            runs.append((1, "fp32", "0", "0", "1", "1"))
        if method in args.whole_maps.split(","):
            runs.append((1, "fp32", "1", "0", "0", "1"))
        if method in args.plain_weights.split(","):
            runs.append((1, "fp32", "1", "0", "1", "0"))
        if method in args.compile.split(","):
            runs.append((1, "fp32", "1", "1", "1", "1"))
        rounds: dict[tuple, list[dict]] = {spec: [] for spec in runs}
        for _ in range(args.rounds):
            for spec in runs:
                batch, dtype, reuse, compiled, bands, prepack = spec
                count_work = "0" if rounds[spec] else "1"  # the counted work is the same in every round
                cmd = [sys.executable, __file__, "--worker", method, str(batch), dtype, reuse, compiled, bands,
                       prepack, count_work, "--device", args.device, "--repeats", str(args.repeats)]
                done = subprocess.run(cmd, check=False, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{method} batch {batch} {dtype}: failed\n{done.stderr[-2000:]}", file=sys.stderr,
                          flush=True)
                    continue
                rounds[spec].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rounds[spec][-1]), flush=True)
        pooled = [pool(done_rounds) for done_rounds in rounds.values() if done_rounds]
        if pooled:
            results[method] = pooled
        if method in results and not any("gflop_per_image" in r for r in results[method]):
            raise SystemExit(f"{method}: the fp32 batch-1 row counts the FLOPs and it did not run")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"fullsize-ffhq1024-{args.device}.json").write_text(json.dumps(results, indent=1) + "\n")
    for method, rows in results.items():
        path = args.out / f"{method}-ffhq1024-{args.device}.md"
        path.write_text("\n".join(method_report(method, rows, args)) + "\n")
        print(f"wrote {path}")
    path = args.out / f"fullsize-ffhq1024-{args.device}.md"
    path.write_text("\n".join(comparison(results, args)) + "\n")
    print(f"wrote {path}")
    from hyperinverter.benchmark import cpu_description

    print(f"wrote {plot_speed(results, path.with_suffix('.png'), f'{args.device}: {cpu_description()}')}")


if __name__ == "__main__":
    main()
