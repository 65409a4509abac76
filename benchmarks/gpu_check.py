"""One short run on a CUDA machine: the GPU paths work and agree with the CPU, and how fast every method is.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out OUT_DIR      # a few minutes on one GPU

Sections (each reported even if another fails):

1. ``kernels``: the synthesis network with per-sample offsets on every parameter and noise buffer (both modes), on
   CUDA (the fused grouped-conv kernel ``auto`` picks there) against the CPU path: max |difference|.
2. ``precision``: the full-size (1024) generator under ``torch.autocast`` bf16 and fp16, with realistic offsets
   (Δθ of 2 % of each weight's RMS): mean and max |image change| against fp32.
3. ``speed``: every method at full size (seeded random weights, batch 1 and 4, fp32 and bf16 autocast): s/image,
   s/step for optimisation, peak GPU memory.
4. ``ddp``: a few Phase II training steps in bf16 under ``torchrun`` with the nccl backend (one process per GPU;
   with one GPU this checks the nccl path, not the scaling).

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_delta(G, batch: int, mode: str, scale: float = 0.02, seed: int = 0):
    """Offsets on every offsettable tensor, ``scale`` × that tensor's RMS (noise buffers: a fresh map)."""
    from hyperinverter.models.weight_delta import WeightDelta

    gen = torch.Generator().manual_seed(seed)
    state = {**dict(G.synthesis.named_parameters()), **dict(G.synthesis.named_buffers())}
    tensors = {}
    for name, shape in G.synthesis.offsettable_parameters().items():
        rms = float(state[name].float().square().mean().sqrt()) or 1.0
        tensors[name] = torch.randn(batch, *shape, generator=gen) * (scale if mode == "add" else scale / rms) * rms
    return WeightDelta(tensors, mode=mode)


def check_kernels(report: dict) -> None:
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    # The parity check in full fp32: cuDNN's default TF32 convs differ from the CPU by ~1e-2 on their own.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for resolution, base in ((32, 512), (256, 4096)):
        torch.manual_seed(0)
        G = Generator(GeneratorConfig(resolution=resolution, z_dim=64, w_dim=64, channel_base=base, channel_max=128))
        ws = torch.randn(4, G.num_ws, G.w_dim)
        for mode in ("add", "scale"):
            delta = random_delta(G, 4, mode, scale=0.3)
            with torch.no_grad():
                G.synthesis.kernel = "loop"
                reference = G.synthesis(ws, weight_delta=delta)
                Gc = G.cuda()
                for kernel in ("auto", "grouped", "loop"):
                    Gc.synthesis.kernel = kernel
                    out = Gc.synthesis(ws.cuda(), weight_delta=delta.to("cuda")).cpu()
                    rows.append({"resolution": resolution, "mode": mode, "kernel": kernel,
                                 "max_abs_diff": float((out - reference).abs().max())})
                G.cpu()
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    report["kernels"] = rows


def full_generator():
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=1024))
    with torch.no_grad():
        G.mapping.w_avg.normal_(0, 0.5)
    return G.eval().requires_grad_(False)


def check_precision(report: dict) -> None:
    G = full_generator().cuda().to(memory_format=torch.channels_last)
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(1)).cuda()
    delta = random_delta(G, 4, "add").only([n for n in G.synthesis.offsettable_parameters()
                                            if not n.endswith("noise_const")]).to("cuda")
    rows = []
    with torch.no_grad():
        ws = G.mapping(z)
        reference = G.synthesis(ws, weight_delta=delta)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cuda", dtype=dtype):
                out = G.synthesis(ws, weight_delta=delta).float()
            change = (out - reference).abs()
            rows.append({"dtype": str(dtype).removeprefix("torch."), "mean_abs_change": float(change.mean()),
                         "max_abs_change": float(change.max()), "finite": bool(torch.isfinite(out).all())})
    report["precision"] = rows


def check_speed(report: dict, methods: list[str], repeats: int) -> None:
    import bench_fullsize as bench

    from hyperinverter.methods import Stopwatch

    rows = []
    for method in methods:
        model, options = bench.build(method)
        model = model.cuda()
        for batch in (1, 4):
            for dtype in ("fp32", "bf16"):
                x = torch.randn(batch, 3, 1024, 1024, device="cuda").clamp(-1, 1)
                torch.cuda.reset_peak_memory_stats()
                context = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else _null()
                times, out, laps = [], None, {}
                try:
                    with torch.no_grad(), context:
                        model(x, **options)  # warm-up (cuDNN autotuning, allocator)
                        warmup_peak = torch.cuda.max_memory_allocated()
                        torch.cuda.reset_peak_memory_stats()
                        for _ in range(repeats):
                            sync()
                            start = time.perf_counter()
                            stopwatch = Stopwatch(x.device)
                            out = model(x, stopwatch=stopwatch, **options)
                            sync()
                            times.append(time.perf_counter() - start)
                            laps = stopwatch.laps
                except Exception as e:  # noqa: BLE001  (a report, not a test: record and go on)
                    rows.append({"method": method, "batch": batch, "dtype": dtype, "error": repr(e)[:300]})
                    continue
                row = {"method": method, "batch": batch, "dtype": dtype,
                       "s_per_image": statistics.median(times) / batch,
                       "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3,
                       "warmup_peak_gpu_gb": warmup_peak / 1024**3,
                       "finite": bool(torch.isfinite(out.image).all())}
                if method in bench.OFFICIAL_STEPS:
                    per_step = {k: laps[k] / bench.MEASURED_STEPS / batch for k in bench.OFFICIAL_STEPS[method]}
                    row["s_per_step"] = per_step
                    row["s_per_image"] = sum(per_step[k] * n for k, n in bench.OFFICIAL_STEPS[method].items())
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
    report["speed"] = rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def check_ddp(report: dict, steps: int, device: str = "cuda") -> None:
    """Phase II on generated fashion-32 images, bf16, torchrun with nccl."""
    from hyperinverter.io.images import save_image
    from hyperinverter.pipeline import InversionPipeline

    work = Path(tempfile.mkdtemp(prefix="gpu-ddp-"))
    pipe = InversionPipeline.from_pretrained("fashion-32", device="cpu")
    with torch.no_grad():
        images = pipe.generator(torch.randn(64, pipe.generator.z_dim, generator=torch.Generator().manual_seed(0)))
    for i, image in enumerate(images):
        save_image(image, work / "data" / f"{i:04d}.png")
    bundle = ROOT / "src/hyperinverter/bundled/fashion-32"
    config = (ROOT / "configs/fashion32/hypernetwork.yaml").read_text()
    config = "\n".join(line for line in config.splitlines()
                       if not line.startswith(("run_dir", "data", "generator", "w_encoder", "steps", "device",
                                               "adv_start", "val_every", "checkpoint_every", "sample_every")))
    config += (f"\nrun_dir: {work / 'run'}\ndata: {work / 'data'}\ngenerator: {bundle / 'generator'}\n"
               f"w_encoder: {bundle}\nsteps: {steps}\ndevice: {device}\n"
               f"precision: {'bf16' if device == 'cuda' else 'fp32'}\n"
               f"dfeat_weight: 0\nadv_weight: 0\nval_every: {steps}\ncheckpoint_every: {steps}\n"
               f"sample_every: {steps}\nlog_every: 1\n")
    (work / "config.yaml").write_text(config)
    n_gpus = torch.cuda.device_count() if device == "cuda" else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_gpus}", "-m", "hyperinverter.cli.main",
           "train", "-v", "hypernetwork", "--config", str(work / "config.yaml")]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    report["ddp"] = {"gpus": n_gpus, "returncode": done.returncode, "seconds": time.perf_counter() - start,
                     "nccl": "nccl" in (done.stdout + done.stderr), "tail": (done.stdout + done.stderr)[-1500:]}


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}", "", f"torch {report['torch']}, {report['when']}", ""]
    if "kernels" in report:
        lines += ["## Per-sample offsets on CUDA vs the CPU path", "", "| resolution | mode | kernel | max abs diff |",
                  "|---|---|---|---|"]
        lines += [f"| {r['resolution']} | {r['mode']} | {r['kernel']} | {r['max_abs_diff']:.2e} |"
                  for r in report["kernels"]]
    if "precision" in report:
        lines += ["", "## Reduced precision, 1024 generator with Δθ (2 % of each weight's RMS)", "",
                  "| dtype | mean abs change | max abs change | finite |", "|---|---|---|---|"]
        lines += [f"| {r['dtype']} | {r['mean_abs_change']:.4f} | {r['max_abs_change']:.4f} | {r['finite']} |"
                  for r in report["precision"]]
    if "speed" in report:
        lines += ["", "## Full size (1024), seeded random weights", "",
                  "| method | batch | dtype | s / image | s / step (per image) | peak GPU memory | peak in warm-up |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["speed"]:
            if "error" in r:
                lines.append(f"| {r['method']} | {r['batch']} | {r['dtype']} | error: {r['error'][:80]} | | |")
                continue
            steps = ", ".join(f"{k} {v:.4f}" for k, v in r.get("s_per_step", {}).items()) or "–"
            lines.append(f"| {r['method']} | {r['batch']} | {r['dtype']} | {r['s_per_image']:.4f} | {steps} | "
                         f"{r['peak_gpu_gb']:.2f} GB | {r.get('warmup_peak_gpu_gb', float('nan')):.2f} GB |")
    if "ddp" in report:
        d = report["ddp"]
        lines += ["", "## Phase II under torchrun (nccl, bf16)", "",
                  f"{d['gpus']} GPU(s): exit status {d['returncode']} in {d['seconds']:.0f} s", "", "```",
                  d["tail"][-800:], "```"]
    for name, error in report.get("errors", {}).items():
        lines += ["", f"## {name} FAILED", "", "```", error[-1500:], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default="hyperinverter,hyperstyle,psp,e4e,e2style,w-opt,wplus-opt,pti")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="kernels,precision,speed,ddp")
    parser.add_argument("--ddp-steps", type=int, default=6)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    torch.backends.cudnn.benchmark = True
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "when": time.strftime("%Y-%m-%d %H:%M"), "errors": {}}
    checks = {"kernels": lambda: check_kernels(report), "precision": lambda: check_precision(report),
              "speed": lambda: check_speed(report, args.methods.split(","), args.repeats),
              "ddp": lambda: check_ddp(report, args.ddp_steps)}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            checks[name]()
        except Exception:  # noqa: BLE001  (report every section)
            report["errors"][name] = traceback.format_exc()
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
