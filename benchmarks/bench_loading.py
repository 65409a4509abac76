"""What a user's process holds: load a saved full-size HyperInverter bundle (ffhq-1024) through
``InversionPipeline.from_pretrained`` and invert one image on the CPU; peak resident memory after loading and over
the whole process, against the weights' size.

    python benchmarks/bench_loading.py --out benchmarks/results/loading-cpu.md
    python benchmarks/bench_loading.py --src OTHER_CHECKOUT/src ...   # the same, with another version's package

The bundle (seeded random weights, 1.5 GB) is written once to ``--bundle`` (default: a temporary folder). Each
measurement runs in its own process, so one process's heap does not carry into the next.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from bench_fullsize import build, peak_rss_gb, reset_peak_rss


def write_bundle(path: Path) -> None:
    from hyperinverter.pipeline import save_pipeline

    model, _ = build("hyperinverter")
    save_pipeline(model, path)


def worker(bundle: Path) -> dict:
    import hyperinverter
    from hyperinverter.pipeline import InversionPipeline

    start = time.perf_counter()
    pipeline = InversionPipeline.from_pretrained(bundle, method="hyperinverter", device="cpu")
    load_s = time.perf_counter() - start
    load_peak = peak_rss_gb()
    model = pipeline.inverter("hyperinverter")
    weights_gb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1024**3
    x = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reset_peak_rss()  # from the resident set after loading
    start = time.perf_counter()
    result = pipeline.invert(x)
    invert_s = time.perf_counter() - start
    assert torch.isfinite(result.image).all()
    return {"package": str(Path(hyperinverter.__file__).parent), "weights_gb": weights_gb, "load_s": load_s,
            "load_peak_gb": load_peak, "inversion_peak_gb": peak_rss_gb(),
            "process_peak_gb": max(load_peak, peak_rss_gb()), "first_inversion_s": invert_s}


def _describe(src: str | None) -> str:
    """The package's checkout, by its commit where git knows it (and whether files differ from it)."""
    where = Path(src) if src else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "."], check=True,
                                 capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return src or "this checkout"
    return f"{'this checkout' if src is None else 'checkout'} at {commit}" + (" with changes" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="where the full-size bundle is (written there if missing)")
    parser.add_argument("--src", action="append", default=[],
                        help="also measure the package under this src folder (another checkout); repeatable")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle or Path(scratch) / "hyperinverter-ffhq1024"
        if not (bundle / "pipeline.json").exists():
            write_bundle(bundle)
        rows = []
        for src in [None, *args.src]:
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--worker", str(bundle)], env=env, check=True,
                                     capture_output=True, text=True).stdout
                rows.append({"src": _describe(src), **json.loads(out.strip().splitlines()[-1])})
                print(json.dumps(rows[-1]), flush=True)
    command = f"python benchmarks/bench_loading.py {' '.join(sys.argv[1:])}"
    # Imported only now: a worker (this script with --worker) imports the package it measures, maybe another checkout's.
    from hyperinverter.benchmark import cpu_description

    lines = ["# Loading a full-size HyperInverter bundle, and the whole process's peak", "",
             (f"`{command}` on {cpu_description()}, {os.cpu_count()} cores, torch {torch.__version__}. Each row a "
              "fresh process: `InversionPipeline.from_pretrained` on a saved ffhq-1024 bundle (seeded random "
              "weights), then one 1024-px image inverted with HyperInverter in fp32."), "",
             ("| package | weights | load s | peak RSS while loading | peak RSS while inverting | "
              "peak RSS of the process | first inversion s |"),
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['src']} | {r['weights_gb']:.2f} GB | {r['load_s']:.1f} | {r['load_peak_gb']:.2f} GB | "
              f"{r['inversion_peak_gb']:.2f} GB | {r['process_peak_gb']:.2f} GB | {r['first_inversion_s']:.2f} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
