"""One short run on a CUDA machine: the GPU paths work and agree with the CPU, and how fast every method is.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out OUT_DIR      # a few minutes on one GPU

Sections (each reported even if another fails):

0. ``tests``: the test suite's CUDA-marked tests (``tests/test_cuda.py``; through pytest where it is installed).
1. ``kernels``: the synthesis network with per-sample offsets on every parameter and noise buffer (both modes), on
   CUDA (the fused grouped-conv kernel ``auto`` picks there) against the CPU path: max |difference|.
2. ``speed``: every method at full size (seeded random weights, HyperInverter's and HyperStyle's offsets scaled to
   a trained model's size), batch 1 and 4, in fp32, bf16 and fp16 through the package's precision policy:
   s/image, s/step for optimisation, peak GPU memory, and the image change against fp32.
3. ``ddp``: a few Phase II training steps in bf16 under ``torchrun`` with the nccl backend (one process per GPU;
   with one GPU this checks the nccl path, not the scaling).
4. ``compile``: HyperInverter under ``torch.compile`` against eager, batch 1 and 4. Last: its cold compiles ran
   past the last lent GPU's time (stopped 260 s into the first), and each section's results are saved as it ends.

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


def check_tests(report: dict) -> None:
    """tests/test_cuda.py through pytest, or called directly where pytest is missing."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "tests"))
        import test_cuda

        report["tests"] = {"runner": "direct", "outcomes": test_cuda.run_without_pytest()}
        return
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_cuda.py")], check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, cwd=ROOT)
    report["tests"] = {"runner": "pytest", "returncode": done.returncode, "tail": (done.stdout + done.stderr)[-1500:]}


def _time(model, x, options: dict, dtype: torch.dtype, repeats: int):
    from hyperinverter.methods import Stopwatch
    from hyperinverter.precision import reduced_precision

    times, out, laps = [], None, {}
    with torch.no_grad(), reduced_precision(x.device, dtype):
        model(x, **options)  # warm-up (cuDNN autotuning, allocator, compilation)
        torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            stopwatch = Stopwatch(x.device)
            out = model(x, stopwatch=stopwatch, **options)
            sync()
            times.append(time.perf_counter() - start)
            laps = stopwatch.laps
    return statistics.median(times), out, laps


def check_speed(report: dict, methods: list[str], repeats: int) -> None:
    import bench_fullsize as bench

    from hyperinverter.precision import PRECISIONS

    rows = report.setdefault("speed", [])
    for method in methods:
        model, options = bench.build(method)
        model = model.cuda()
        for batch in (1, 4):
            x = bench.sample_images(model.generator, batch, seed=1).cuda()
            reference = None
            for name in ("fp32", "bf16", "fp16"):
                try:
                    seconds, out, laps = _time(model, x, options, PRECISIONS[name], repeats)
                except Exception as e:  # noqa: BLE001  (a report, not a test: record and go on)
                    rows.append({"method": method, "batch": batch, "dtype": name, "error": repr(e)[:300]})
                    continue
                image = out.image.float()
                row = {"method": method, "batch": batch, "dtype": name, "s_per_image": seconds / batch,
                       "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3,
                       "finite": bool(torch.isfinite(image).all()),
                       "stages": {k: v / batch for k, v in laps.items()}}
                if name == "fp32":
                    reference = image
                elif reference is not None and method not in bench.OFFICIAL_STEPS:
                    change = (image - reference).abs()
                    row.update(mean_abs_change=float(change.mean()), max_abs_change=float(change.max()))
                if method in bench.OFFICIAL_STEPS:
                    row["s_per_step"], row["s_per_image"] = bench.official_run_seconds(method, laps, batch)
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()


def check_compile(report: dict, repeats: int) -> None:
    import bench_fullsize as bench

    from hyperinverter.precision import PRECISIONS

    model, options = bench.build("hyperinverter")
    model = model.cuda()
    compiled = torch.compile(model)
    rows = report.setdefault("compile", [])
    for batch in (1, 4):
        x = bench.sample_images(model.generator, batch, seed=1).cuda()
        for name in ("fp32", "bf16"):
            eager, _, _ = _time(model, x, options, PRECISIONS[name], repeats)
            start = time.perf_counter()
            fast, _, _ = _time(compiled, x, options, PRECISIONS[name], repeats)
            rows.append({"batch": batch, "dtype": name, "eager_s_per_image": eager / batch,
                         "compiled_s_per_image": fast / batch, "first_call_s": time.perf_counter() - start})
            print(json.dumps(rows[-1]), flush=True)


def ddp_config(work: Path, steps: int, device: str) -> Path:
    """``work/config.yaml``: the shipped fashion32 Phase II config, with this run's keys replaced (as a mapping:
    training configs refuse a key given twice, and appended lines for keys the file sets too failed with exit 2)."""
    import yaml

    bundle = ROOT / "src/hyperinverter/bundled/fashion-32"
    config = yaml.safe_load((ROOT / "configs/fashion32/hypernetwork.yaml").read_text())
    config.pop("adv_start", None)
    config.update(run_dir=str(work / "run"), data=str(work / "data"), generator=str(bundle / "generator"),
                  w_encoder=str(bundle), steps=steps, device=device,
                  precision="bf16" if device == "cuda" else "fp32", dfeat_weight=0, adv_weight=0,
                  val_every=steps, checkpoint_every=steps, sample_every=steps, log_every=1)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


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
    config = ddp_config(work, steps, device)
    n_gpus = torch.cuda.device_count() if device == "cuda" else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_gpus}", "-m", "hyperinverter.cli.main",
           "train", "-v", "hypernetwork", "--config", str(config)]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    output = done.stdout + done.stderr
    report["ddp"] = {"gpus": n_gpus, "returncode": done.returncode, "seconds": time.perf_counter() - start,
                     "nccl": "nccl" in output, "errors": command_errors(output), "tail": output[-1500:]}


def command_errors(output: str) -> list[str]:
    """The package's own error lines (``error: <file>: <cause>``, ``failed: ...``) in a command's output: under
    torchrun a failing rank's cause came before torchrun's ChildFailedError traceback, which filled the tail."""
    return [line for line in output.splitlines() if line.startswith(("error:", "failed:"))][-5:]


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}", "", f"torch {report['torch']}, {report['when']}", ""]
    if "tests" in report:
        t = report["tests"]
        lines += ["## CUDA-marked tests", ""]
        if t["runner"] == "pytest":
            lines += [f"pytest exit status {t['returncode']}", "", "```", t["tail"][-600:].strip(), "```"]
        else:
            lines += [f"- {name}: {outcome}" for name, outcome in t["outcomes"].items()]
    if "kernels" in report:
        lines += ["", "## Per-sample offsets on CUDA vs the CPU path", "", "| resolution | mode | kernel | max abs diff |",
                  "|---|---|---|---|"]
        lines += [f"| {r['resolution']} | {r['mode']} | {r['kernel']} | {r['max_abs_diff']:.2e} |"
                  for r in report["kernels"]]
    if "speed" in report:
        header = ("| method | batch | dtype | s / image | s / step (per image) | peak GPU memory | "
                  "mean / max image change vs fp32 |")
        lines += ["", "## Full size (1024), seeded random weights, offsets of a trained model's size", "", header,
                  "|---|---|---|---|---|---|---|"]
        for r in report["speed"]:
            if "error" in r:
                lines.append(f"| {r['method']} | {r['batch']} | {r['dtype']} | error: {r['error'][:80]} | | | |")
                continue
            steps = ", ".join(f"{k} {v:.4f}" for k, v in r.get("s_per_step", {}).items()) or "–"
            change = f"{r['mean_abs_change']:.4f} / {r['max_abs_change']:.3f}" if "mean_abs_change" in r else "–"
            lines.append(f"| {r['method']} | {r['batch']} | {r['dtype']} | {r['s_per_image']:.4f} | {steps} | "
                         f"{r['peak_gpu_gb']:.2f} GB | {change} |")
    if "compile" in report:
        header = "| batch | dtype | eager s / image | compiled s / image | first call (s) |"
        lines += ["", "## torch.compile, HyperInverter", "", header, "|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['dtype']} | {r['eager_s_per_image']:.4f} | {r['compiled_s_per_image']:.4f} | "
                  f"{r['first_call_s']:.0f} |" for r in report["compile"]]
    if "ddp" in report:
        d = report["ddp"]
        lines += ["", "## Phase II under torchrun (nccl, bf16)", "",
                  f"{d['gpus']} GPU(s): exit status {d['returncode']} in {d['seconds']:.0f} s", "",
                  *[f"- {line}" for line in d.get("errors", [])], "", "```", d["tail"][-800:], "```"]
    for name, error in report.get("errors", {}).items():
        lines += ["", f"## {name} FAILED", "", "```", error[-1500:], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default="hyperinverter,hyperstyle,psp,e4e,e2style,w-opt,wplus-opt,pti")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="tests,kernels,speed,ddp,compile")
    parser.add_argument("--ddp-steps", type=int, default=6)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    torch.backends.cudnn.benchmark = True
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "when": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv), "errors": {}}
    checks = {"tests": lambda: check_tests(report), "kernels": lambda: check_kernels(report),
              "speed": lambda: check_speed(report, args.methods.split(","), args.repeats),
              "compile": lambda: check_compile(report, args.repeats), "ddp": lambda: check_ddp(report, args.ddp_steps)}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            checks[name]()
        except Exception:  # noqa: BLE001  (report every section)
            report["errors"][name] = traceback.format_exc()
        report.setdefault("seconds", {})[name] = time.perf_counter() - start
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
