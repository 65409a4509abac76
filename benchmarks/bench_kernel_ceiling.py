"""How close full-size HyperInverter can come to its FLOP floor with the kernels it runs on.

    python benchmarks/bench_kernel_ceiling.py --rounds 3 --out benchmarks/results/kernel-ceiling-cpu.md

``bench_fullsize.py``'s model (seeded weights, offsets of a trained model's size, heap reuse on, large conv weights
packed) inverts one image in fp32, in rounds. Each round runs

1. a plain pass (its time and its stages' times);
2. a pass with every convolution and matrix product timed in place, by stage and by kind of kernel;
3. each distinct kernel call again on its own, warm, on fresh tensors of the same shapes and strides (median of
   ``--repeats``): the time the pass's kernels take when nothing else runs;
4. the FLOP floor's conv (the best 512→512 3×3 conv, as in ``bench_fullsize.py``) and, on an AVX-512 CPU with a C
   compiler, the cores' fp32 multiply-add peak (``fma_peak.c``).

The machine's speed drifts by ±10 % within minutes, so every ratio is taken within its round and the report gives
the rounds' median (and range).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import bench_fullsize as bench
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count

HERE = Path(__file__).resolve().parent
STAGES = tuple(bench.STAGE_LABELS)  # HyperInverter's stopwatch laps, in order

KERNELS = {torch.ops.aten.convolution.default, torch.ops.aten.mm.default, torch.ops.aten.addmm.default}
if hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
    KERNELS.add(torch.ops.mkldnn._convolution_pointwise.default)
if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    KERNELS.add(torch.ops.mkldnn._linear_pointwise.default)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument, remade for the call alone: same shape, strides and dtype (values do not set the speed)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def make(self) -> torch.Tensor:
        # Through the storage: a broadcast argument (stride 0) shares elements, which normal_ cannot fill in place.
        extent = 0 if 0 in self.shape else 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        return torch.empty(extent, dtype=self.dtype).normal_().as_strided(self.shape, self.stride)


def _map_leaves(value, leaf, *, hashable: bool = False):
    """``leaf`` applied to everything inside a call's (nested) lists, tuples and dicts; ``hashable``: as tuples."""
    if isinstance(value, (list, tuple)):
        items = [_map_leaves(v, leaf, hashable=hashable) for v in value]
        return tuple(items) if hashable else type(value)(items)
    if isinstance(value, dict):
        mapped = {k: _map_leaves(v, leaf, hashable=hashable) for k, v in value.items()}
        return tuple(sorted(mapped.items())) if hashable else mapped
    return leaf(value)


def _spec(value):
    """A call's arguments with every dense tensor as its ``TensorSpec``. oneDNN's packed weights are the model's own
    (held anyway) and are kept as they are."""
    return _map_leaves(value, lambda v: TensorSpec(tuple(v.shape), v.stride(), v.dtype)
                       if isinstance(v, torch.Tensor) and not v.is_mkldnn else v)


def _make(value):
    """A spec'd call's arguments with fresh tensors."""
    return _map_leaves(value, lambda v: v.make() if isinstance(v, TensorSpec) else v)


def _key(value):
    """A hashable form of a spec'd call: what its speed depends on (a packed weight's layout follows from its shape
    and the input's)."""
    return _map_leaves(value, lambda v: ("packed", tuple(v.shape)) if isinstance(v, torch.Tensor) else v,
                       hashable=True)


def kind_and_gflop(func, args, out: torch.Tensor) -> tuple[str, float]:
    """A short name for the kernel's class of shapes, and its work (multiply-add = 2 FLOPs)."""
    if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
        a, b = args[-2], args[-1]
        return "product (sgemm)", 2 * a.shape[0] * a.shape[1] * b.shape[1] / 1e9
    x, w = args[0], args[1]
    if "linear" in str(func):
        return "product (oneDNN inner product)", 2 * x.numel() * w.shape[0] / 1e9
    packed = "pointwise" in str(func)
    stride, transposed, groups = (args[4], False, args[6]) if packed else (args[3], args[6], args[8])
    size = f"{w.shape[-2]}×{w.shape[-1]}"
    if transposed:
        kind = f"transposed {size}, stride {stride[0]}"
    elif groups > 1 and w.shape[1] == 1:
        kind = f"depthwise {size} (FIR filter)"
    elif w.shape[-1] == 1 and x.shape[-1] == 1:
        kind = "product as a 1×1 conv"
    else:
        kind = f"{size}, stride {stride[0]}" + (", packed weight" if packed else "")
    return kind, conv_flop_count(list(x.shape), list(w.shape), list(out.shape), transposed=transposed) / 1e9


@dataclass
class Call:
    key: tuple
    kind: str
    gflop: float
    seconds: float
    stage: str = ""


class KernelRecorder(TorchDispatchMode):
    """Times every convolution and product of a pass in place, and keeps a recipe of each distinct call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.recipes: dict[tuple, tuple] = {}
        self._staged = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in KERNELS:
            return func(*args, **kwargs)
        start = time.perf_counter()
        out = func(*args, **kwargs)
        seconds = time.perf_counter() - start
        recipe = (func, _spec(args), _spec(kwargs))
        key = (str(func), _key(recipe[1]), _key(recipe[2]))
        self.recipes.setdefault(key, recipe)
        self.calls.append(Call(key, *kind_and_gflop(func, args, out), seconds))
        return out

    def end_stage(self, name: str) -> None:
        for call in self.calls[self._staged:]:
            call.stage = name
        self._staged = len(self.calls)


def seconds_alone(recipes: dict[tuple, tuple], repeats: int) -> dict[tuple, float]:
    """Each distinct call on its own, warm, on fresh tensors: the median of ``repeats`` runs after one."""
    alone = {}
    with torch.no_grad():
        for key, (func, args, kwargs) in recipes.items():
            args, kwargs = _make(args), _make(kwargs)
            func(*args, **kwargs)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                func(*args, **kwargs)
                times.append(time.perf_counter() - start)
            alone[key] = statistics.median(times)
    return alone


def build_fma_peak(workdir: Path) -> Path | None:
    """``fma_peak.c`` compiled with the C compiler found (None: a CPU without AVX-512, no compiler, or it failed)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None
    binary = workdir / "fma_peak"
    built = subprocess.run([compiler, "-O2", "-mavx512f", "-fopenmp", str(HERE / "fma_peak.c"), "-o", str(binary)],
                           check=False, capture_output=True, text=True)
    return binary if built.returncode == 0 else None


def fma_peak_gflops(binary: Path | None) -> float | None:
    if binary is None:
        return None
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    run = subprocess.run([str(binary), "50000000"], env=env, capture_output=True, text=True, check=False)
    return float(run.stdout) if run.returncode == 0 else None


def run_round(model, x, options: dict, repeats: int, fma_binary: Path | None) -> dict:
    from hyperinverter.methods import Stopwatch

    cpu = torch.device("cpu")

    class StageMarks(Stopwatch):
        """A stopwatch that also tells the recorder where each stage ends."""

        def __init__(self, recorder: KernelRecorder) -> None:
            super().__init__(cpu)
            self.recorder = recorder

        def lap(self, name: str) -> None:
            super().lap(name)
            self.recorder.end_stage(name)

    with torch.no_grad():
        stopwatch = Stopwatch(cpu)
        start = time.perf_counter()
        model(x, stopwatch=stopwatch, **options)
        plain = time.perf_counter() - start
        recorder = KernelRecorder()
        start = time.perf_counter()
        with recorder:
            model(x, stopwatch=StageMarks(recorder), **options)
        recorded = time.perf_counter() - start
    alone = seconds_alone(recorder.recipes, repeats)
    best_conv = bench.conv_gflops(cpu)
    return {"plain": plain, "stages": dict(stopwatch.laps), "recorded": recorded, "calls": recorder.calls,
            "alone": alone, "best_conv": best_conv, "fma_peak": fma_peak_gflops(fma_binary)}


def plot_budget(r: dict, gflop: float, path: Path, title: str) -> Path:
    """One round at a glance (PNG): the whole inversion (floor: the counted ``gflop``) and each stage (floor: its
    kernels' work, band edges included) as its FLOP floor, what its kernels take over the floor, and everything
    else, with the target for the whole."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hyperinverter.io.files import atomic_write_figure

    rows = [(bench.STAGE_LABELS[stage], *stage_budget(r, stage)[:2], r["stages"][stage]) for stage in STAGES]
    whole = ("whole inversion", gflop / r["best_conv"], sum(row[2] for row in rows), r["plain"])
    fig, ax = plt.subplots(figsize=(10, 3.6), constrained_layout=True)
    parts = (("FLOP floor", "0.7"), ("kernels over the floor", "tab:orange"), ("everything else", "tab:red"))
    for y, (name, floor, kernels, total) in enumerate(reversed([whole, *rows])):
        widths = (floor, max(kernels - floor, 0.0), max(total - max(kernels, floor), 0.0))
        left = 0.0
        for (label, colour), width in zip(parts, widths, strict=True):
            ax.barh(y, width, left=left, height=0.6, color=colour, label=label if y == 0 else None)
            left += width
        ax.annotate(f"{total / floor:.2f}× its floor", (left, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    top, target = len(rows), bench.FLOOR_RATIO_TARGET * whole[1]
    ax.vlines(target, top - 0.4, top + 0.5, colors="black", linestyles="--", lw=1.2)
    ax.annotate(f"target: {bench.FLOOR_RATIO_TARGET}× the floor", (target, top + 0.5), xytext=(0, 1),
                textcoords="offset points", fontsize=7, ha="center", va="bottom")
    ax.set_yticks(range(len(rows) + 1), [row[0] for row in reversed([whole, *rows])])
    ax.set(xlabel="seconds per image", xlim=(0, 1.2 * r["plain"]), ylim=(-0.6, top + 0.9),
           title=f"{title}\nthe median round; the floor's conv at {r['best_conv']:.0f} GFLOP/s")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return atomic_write_figure(path, fig)


def whole_ratios(rounds: list[dict], gflop: float) -> list[float]:
    """Each round's plain inversion over its own FLOP floor (``gflop`` over the round's best conv)."""
    return [r["plain"] / (gflop / r["best_conv"]) for r in rounds]


def stage_budget(r: dict, stage: str) -> tuple[float, float, float]:
    """A stage of round ``r``: its kernels' work over the round's best conv (its floor, in seconds), and its kernels'
    seconds in place and alone."""
    calls = [c for c in r["calls"] if c.stage == stage]
    return (sum(c.gflop for c in calls) / r["best_conv"], sum(c.seconds for c in calls),
            sum(r["alone"][c.key] for c in calls))


def median_round(ratios: list[float]) -> int:
    """The index of the round whose whole inversion is the median one (the upper middle of an even count)."""
    return sorted(range(len(ratios)), key=lambda i: ratios[i])[len(ratios) // 2]


def _median_range(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def report(rounds: list[dict], gflop: float, args: argparse.Namespace) -> list[str]:
    from hyperinverter.benchmark import cpu_description

    target = bench.FLOOR_RATIO_TARGET
    floors = [gflop / r["best_conv"] for r in rounds]
    whole = whole_ratios(rounds, gflop)
    placed = [sum(c.seconds for c in r["calls"]) / f for r, f in zip(rounds, floors)]
    alone = [sum(r["alone"][c.key] for c in r["calls"]) / f for r, f in zip(rounds, floors)]
    rest = [w - p for w, p in zip(whole, placed)]
    calls = rounds[0]["calls"]
    lines = ["# Full-size HyperInverter, batch 1, fp32: how close its kernels let it come to the FLOP floor", ""]
    lines.append(f"`python benchmarks/bench_kernel_ceiling.py --rounds {args.rounds} --repeats {args.repeats} --out "
                 f"{args.out}` on {cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
                 f"Ratios are to the FLOP floor of the same round (the counted {gflop:.1f} GFLOP over that round's "
                 f"best 512→512 3×3 conv: {_median_range([r['best_conv'] for r in rounds], '{:.0f}')} GFLOP/s); "
                 f"the median of {len(rounds)} rounds, their range in brackets.")
    lines += ["", f"- The whole inversion: **{_median_range(whole)}×** the floor (target {target}×).",
              (f"- Its {len(calls)} convolutions and products ({len(rounds[0]['alone'])} distinct), timed in place: "
              f"**{_median_range(placed)}×**. The same calls each run alone, warm, on fresh tensors: "
              f"{_median_range(alone)}×: running inside the pass costs them little, so no ordering of the work "
              "would win much."),
              (f"- Everything else (the inversion less its kernels in place: elementwise passes, band copies, "
              f"BatchNorms, activations, weight arithmetic, Python): {_median_range(rest)}×. At {target}× it would "
              f"have to fit in {target - statistics.median(placed):.2f}× with the kernels as they are.")]
    peaks = [(r["best_conv"], r["fma_peak"]) for r in rounds]
    if all(p is not None for _, p in peaks):
        shares = [c / p for c, p in peaks]
        lines.append(
            f"- The floor's conv runs at {_median_range(shares, '{:.0%}')} of the cores' fp32 multiply-add peak "
            f"(`fma_peak.c`: AVX-512 FMAs on {torch.get_num_threads()} threads, no memory traffic, measured right "
            f"after it; GFLOP/s: {', '.join(f'{c:.0f} of {p:.0f}' for c, p in peaks)}). So {target}× the floor asks "
            f"the whole inversion, memory-bound work included, to average about "
            f"{statistics.median(shares) / target:.0%} of the arithmetic peak.")
    else:
        lines.append("- The cores' multiply-add peak was not measured (`fma_peak.c` needs AVX-512 and a C compiler with "
                     "OpenMP).")

    middle = median_round(whole)
    r = rounds[middle]
    lines += ["", f"## The median round ({whole[middle]:.2f}× the floor), by stage", "",
              (f"![the median round: each stage's floor, its kernels' time over it, and the rest]"
               f"({args.out.with_suffix('.png').name})"), "",
              ("| stage | time (s) | its floor (s) | time / floor | kernels in place (s) | kernels alone (s) | "
              "rest (s) |"), "|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        floor, in_place, solo = stage_budget(r, stage)
        t = r["stages"][stage]
        lines.append(f"| {stage} | {t:.3f} | {floor:.3f} | {t / floor:.2f}× | {in_place:.3f} | {solo:.3f} | "
                     f"{t - in_place:.3f} |")
    lines += ["", ("A stage's floor is its kernels' counted work over the round's best conv "
              f"({r['best_conv']:.0f} GFLOP/s); \"rest\" is its time in the plain pass less its kernels' in the "
              "recorded one."), "", "## The median round, by kind of kernel", "",
              ("| kernel | calls | GFLOP | in place (s) | GFLOP/s in place | alone (s) | GFLOP/s alone | "
              "in place / its floor |"), "|---|---|---|---|---|---|---|---|"]
    by_kind: dict[str, list[Call]] = defaultdict(list)
    for c in r["calls"]:
        by_kind[c.kind].append(c)
    for kind, kind_calls in sorted(by_kind.items(), key=lambda kv: -sum(c.seconds for c in kv[1])):
        work = sum(c.gflop for c in kind_calls)
        in_place, solo = sum(c.seconds for c in kind_calls), sum(r["alone"][c.key] for c in kind_calls)
        lines.append(f"| {kind} | {len(kind_calls)} | {work:.1f} | {in_place:.3f} | {work / in_place:.0f} | "
                     f"{solo:.3f} | {work / solo:.0f} | {in_place / (work / r['best_conv']):.2f}× |")
    lines.append("")
    return lines


def main() -> None:
    from hyperinverter.io.files import atomic_write_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kernel call alone")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kernel-ceiling-cpu.md"))
    args = parser.parse_args()

    model, options, x = bench.warmed_up_on_cpu("hyperinverter")
    gflop = bench.count_gflops(model, options, torch.device("cpu"))
    with torch.no_grad():
        model(x, **options)  # a pipeline's second pass, which grows the heap the later ones reuse
    with tempfile.TemporaryDirectory() as workdir:
        fma_binary = build_fma_peak(Path(workdir))
        rounds = [run_round(model, x, options, args.repeats, fma_binary) for _ in range(args.rounds)]
    lines = report(rounds, gflop, args)
    middle = median_round(whole_ratios(rounds, gflop))
    plot_budget(rounds[middle], gflop, args.out.with_suffix(".png"),
                "Full-size HyperInverter, batch 1, fp32, against its FLOP floor")
    atomic_write_bytes(args.out, "\n".join(lines).encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
