"""The evaluation protocol: invert a held-out set with every method, score each on the same images.

Reported per method: MSE (on [-1,1], the papers' L2), PSNR, SSIM, MS-SSIM, optionally LPIPS and identity
similarity, and seconds per image. Every number is a mean over images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .io.files import atomic_write_bytes
from .metrics import PIXEL_METRICS
from .pipeline import InversionPipeline

PairMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (reconstruction, target) -> [B]
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "ssim": True, "ms_ssim": True, "lpips": False, "id_sim": True}


@dataclass
class EvaluationReport:
    dataset: str
    num_images: int
    metrics: dict[str, dict[str, float]]  # method -> metric -> mean
    seconds_per_image: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        bars = quality_bars(self) if {"phase1", "hyperinverter"} <= self.metrics.keys() else {}
        names = sorted({m for values in self.metrics.values() for m in values}, key=list(HIGHER_IS_BETTER).index)
        arrows = {m: "↑" if HIGHER_IS_BETTER[m] else "↓" for m in names}
        lines = [f"Dataset: {self.dataset} ({self.num_images} images)", "",
                 "| method | " + " | ".join(f"{m} {arrows[m]}" for m in names) + " | s/image |",
                 "|---|" + "---|" * (len(names) + 1)]
        for method, values in self.metrics.items():
            cells = [f"{values[m]:.4f}" if m in values else "–" for m in names]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {self.seconds_per_image.get(method, 0):.4f} |")
        if "mse" in self.metrics.get("phase1", {}):
            p1, p2 = self.metrics["phase1"]["mse"], self.metrics["hyperinverter"]["mse"]
            lines += ["", f"MSE change from Phase I: {(p2 - p1) / p1:+.1%}", ""]
            lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in bars.items()]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def save(self, path: Path) -> None:
        path = Path(path)
        atomic_write_bytes(path.with_suffix(".json"), (json.dumps(asdict(self), indent=2) + "\n").encode())
        atomic_write_bytes(path.with_suffix(".md"), self.to_markdown().encode())


def evaluate(
    pipeline: InversionPipeline,
    images: torch.Tensor,
    *,
    dataset: str,
    methods: Sequence[str] | None = None,
    batch_size: int = 32,
    extra_metrics: dict[str, PairMetric] | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Score every method of ``methods`` (default: the pipeline's trained ones) on ``images`` (``[N,C,R,R]`` in
    [-1,1]): the mean of each metric over the images, and seconds per image."""
    metrics = dict(PIXEL_METRICS, **(extra_metrics or {}))
    methods = list(methods or pipeline.methods)
    sums: dict[str, dict[str, float]] = {m: {} for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    n = images.shape[0]
    for start in tqdm(range(0, n, batch_size), desc=f"evaluate {dataset}", disable=not progress):
        x = images[start : start + batch_size].to(pipeline.device)
        for method in methods:
            result = pipeline.invert(x, method=method, batch_size=batch_size)
            seconds[method] += result.seconds
            with torch.no_grad():
                for name, fn in metrics.items():
                    sums[method][name] = sums[method].get(name, 0.0) + float(fn(result.image, x).sum())
    means = {method: {k: v / n for k, v in values.items()} for method, values in sums.items()}
    return EvaluationReport(dataset=dataset, num_images=n, metrics=means,
                            seconds_per_image={k: v / n for k, v in seconds.items()})


def quality_bars(report: EvaluationReport, *, min_mse_reduction: float = 0.4) -> dict[str, bool]:
    """The bundled models' bars: the final result beats Phase I on every metric, and MSE falls by at least
    ``min_mse_reduction`` (a fraction of Phase I's MSE)."""
    p1, p2 = report.metrics["phase1"], report.metrics["hyperinverter"]
    bars = {f"{m} better": (p2[m] > p1[m]) if HIGHER_IS_BETTER[m] else (p2[m] < p1[m]) for m in p1}
    bars[f"mse at least {min_mse_reduction:.0%} lower"] = p2["mse"] <= (1 - min_mse_reduction) * p1["mse"]
    return bars
