"""How long a command takes before it does its work: `hyperinverter invert` on one photo with the bundled faces-64
model, end to end, beside what the same process spends importing PyTorch and loading the model, and whether loading
imports PyTorch's compiler stack (Dynamo, SymPy), which no inversion needs.

    python benchmarks/bench_startup.py --out benchmarks/results/startup-cpu.md
    python benchmarks/bench_startup.py --src OTHER_CHECKOUT/src --out ...   # alternating with another version

Every measurement is a fresh process (a command's real start: nothing cached in memory but the OS's file cache),
taken round-robin over the sources, so that a slow minute falls on all of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "src/hyperinverter/bundled/samples/astronaut.jpg"

# Each stage is a small program run in its own process; the last line it prints is its own timing in seconds (the
# command's stage is timed from outside, as a user sees it).
STAGES = {
    "import torch": "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)",
    "import torch, load faces-64": (
        "import time, sys; t = time.perf_counter(); import torch\n"
        "from hyperinverter.pipeline import InversionPipeline\n"
        "pipe = InversionPipeline.from_pretrained('faces-64', device='cpu')\n"
        "for method in pipe.available_methods(): pipe.inverter(method)\n"
        "print(time.perf_counter() - t)\n"
        "print('yes' if 'torch._dynamo' in sys.modules or 'sympy' in sys.modules else 'no')"
    ),
}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "this CPU"


def _label(src: Path) -> str:
    """A source by its checkout's commit (and whether its tree differs from it), else its path."""
    git = ["git", "-C", str(src)]
    done = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return str(src)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True).stdout.strip()
    return f"commit {done.stdout.strip()}" + (" + changes" if dirty else "")


def run_stage(code: str, src: Path) -> tuple[float, str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(src)})
    lines = done.stdout.split()
    return float(lines[0]), (lines[1] if len(lines) > 1 else "")


def run_command(src: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hyperinverter", "-q", "invert", "--model", "faces-64", str(PHOTO),
                    "--out", str(out), "--overwrite"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(src)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, action="append", default=[],
                        help="another checkout's src/ to measure alternately with this one's (repeatable)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = parser.parse_args()

    sources = {_label(src): src for src in [ROOT / "src", *(s.resolve() for s in args.src)]}
    times: dict[tuple[str, str], list[float]] = {}
    compiler: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for name, src in sources.items():
                for stage, code in STAGES.items():
                    seconds, imported = run_stage(code, src)
                    times.setdefault((name, stage), []).append(seconds)
                    compiler[name] = imported or compiler.get(name, "")
                seconds = run_command(src, Path(scratch) / "out")
                times.setdefault((name, "`invert` on one photo, end to end"), []).append(seconds)
    stages = [*STAGES, "`invert` on one photo, end to end"]
    lines = ["# A command's start, on the CPU", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"Seconds, median (min-max) of {args.rounds} fresh processes per cell, round-robin, on {_cpu()} "
             f"({os.cpu_count()} cores): `{' '.join(['python', *sys.argv])}`", "",
             "| source | " + " | ".join(stages) + " | loading imports Dynamo or SymPy |",
             "|---" * (len(stages) + 2) + "|"]
    for name in sources:
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
                 for v in (times[(name, stage)] for stage in stages)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {compiler[name]} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
