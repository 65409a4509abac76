"""The benchmark report: every method of a model on one held-out folder, and the paper's trade-off between
reconstruction quality, editability and time.

One run inverts the same images with every method and writes, to ``OUT/``:

- ``benchmark.md``: the table (every metric, seconds per image, peak memory, parameters), FID/KID, ground-truth
  editability, the paper's claims checked one by one, and how the run was made (command, machine, version,
  seed, settings);
- ``benchmark.json``: every number;
- ``tradeoff.png``: quality against seconds per image, one point per method (the paper's Figure 1);
- ``examples.png``: inputs, and each method's reconstruction and edit of them.

Per-image optimisation methods cost minutes per image on a CPU, so they invert the first ``optimisation_images``
of the images that the encoder methods invert. The main table scores every method on the images that all of them
inverted, so that its rows compare; the encoders' FID/KID over all their images is a second table.

Work is stored per method and batch in ``OUT/work/`` (atomically), so an interrupted run resumes where it
stopped. A run with other settings, another generator, other weights of any method, other images (names or
pixels), other directions or another precision refuses to reuse that work.

The methods run in the pipeline's precision (``InversionPipeline(dtype=...)``, ``--dtype``), which the report
records with the device.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import __version__
from .errors import InputError
from .evaluation import (
    HIGHER_IS_BETTER,
    EditabilityReport,
    PairMetric,
    add_metric_sums,
    ground_truth_editability,
    image_scores_csv,
)
from .inception_metrics import fid_kid
from .inversion.files import method_fingerprint
from .io.checkpoints import read_safetensors, save_safetensors
from .io.files import (
    atomic_write_bytes,
    atomic_write_figure,
    json_report_bytes,
    markdown_bytes,
    remove_stale_temporaries,
)
from .io.images import content_of, image_bytes
from .io.work import WorkFolder, fingerprint_of
from .memory import trim
from .metrics import PIXEL_METRICS, protocol_note, same_targets
from .ops.prepacked import parameter_count
from .pipeline import InversionPipeline
from .precision import dtype_name
from .progress import progress_bar

if TYPE_CHECKING:
    from tqdm import tqdm

logger = logging.getLogger(__name__)

WORK_FORMAT = "hyperinverter-benchmark-work-v1"
# The paper's W+ encoders, and the slow methods HyperInverter claims to be >= 100x faster than.
WPLUS_ENCODERS = ("psp", "e4e")
SLOW_METHODS = ("wplus-opt", "pti")
METRIC_LABELS = {"mse": "MSE", "inception_dist": "Inception dist.", "lpips": "LPIPS-alex", "psnr": "PSNR",
                 "ssim": "SSIM", "ms_ssim": "MS-SSIM", "id_sim": "identity"}


@dataclass(frozen=True)
class BenchmarkSettings:
    """What a run does; two runs with equal settings on the same model and images give comparable rows."""

    methods: tuple[str, ...]
    images: int = 64  # images each trained method (an encoder) inverts
    optimisation_images: int = 16  # the first of those, inverted by each per-image optimisation method
    batch_size: int = 16
    editability_images: int = 8  # generated images for ground-truth editability (0: not measured)
    example_images: int = 4
    direction: str | None = None  # the edit of the examples; default: the model's first direction
    seed: int = 0
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per method, options of its invert
    kid_subset_size: int = 1000  # torch-fidelity's kid_subset_size (the paper: 1000 for faces, 100 for churches)

    def __post_init__(self) -> None:
        if isinstance(self.kid_subset_size, bool) or not isinstance(self.kid_subset_size, int) \
                or self.kid_subset_size < 2:
            raise ValueError(f"kid_subset_size must be a whole number of 2 or more (KID compares pairs within a "
                             f"subset), got {self.kid_subset_size!r}")

    def images_for(self, pipeline: InversionPipeline, method: str) -> int:
        optimises = not type(pipeline.inverter(method)).components  # nothing trained: it optimises per image
        return min(self.images, self.optimisation_images) if optimises else self.images

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, as read back


@dataclass
class MethodRun:
    """One method's stored work: reconstructions ``[N,C,R,R]``, edits of the example images, time and memory."""

    images: torch.Tensor
    edits: torch.Tensor
    seconds: float
    peak_memory_mb: float
    parameters: int

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images.shape[0]


# --- memory ---------------------------------------------------------------------------------------------------


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory while in the block, in MB: CUDA's allocator peak on a GPU; on a CPU the process's resident set,
    sampled every few milliseconds by a thread (its lifetime peak, VmHWM, would carry the earlier methods').

    On a CPU the heap's free memory is given back first: the package keeps freed blocks mapped for speed
    (:mod:`hyperinverter.memory`), and a block would otherwise reuse them unseen, or start from another's.
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = torch.device(device), interval
        self.mb = self.start_mb = float("nan")

    def __enter__(self) -> PeakMemory:  # noqa: PYI034 - final class
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        trim()
        self._start = _resident_bytes()
        self._peak = self._start or 0
        self.start_mb = self._peak / 2**20 if self._start is not None else float("nan")
        self._stop = threading.Event()
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _resident_bytes() or 0)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._start is not None:
            self._stop.set()
            self._thread.join()
            self.mb = max(self._peak, _resident_bytes() or 0) / 2**20


# --- running ---------------------------------------------------------------------------------------------------


class BenchmarkWork(WorkFolder):
    """``OUT/work``: the settings a run was started with, and one file per method and batch."""

    def __init__(self, out: Path) -> None:
        super().__init__(Path(out) / "work", format=WORK_FORMAT, what="benchmark")

    def lock(self) -> None:
        super().lock()
        remove_stale_temporaries(self.folder.parent)  # a killed run's half-written report (OUT is the benchmark's)

    def batch_path(self, method: str, index: int) -> Path:
        return self.folder / method / f"batch-{index:04d}.safetensors"

    def editability_path(self, method: str) -> Path:
        return self.folder / method / "editability.json"

    def features(self, name: str, images: torch.Tensor, extract: Callable[[torch.Tensor], np.ndarray]
                 ) -> np.ndarray:
        """The Inception features of ``images`` (a method's reconstructions, or the inputs), computed once."""
        path = self.folder / name / "inception-features.safetensors"
        if path.is_file():
            stored, _ = read_safetensors(path)
            if stored["features"].shape[0] == images.shape[0]:
                return stored["features"].double().numpy()
        computed = extract(images)
        save_safetensors(path, {"features": torch.from_numpy(np.ascontiguousarray(computed))})
        return computed


def _batch_record(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    if not path.is_file():
        return None
    tensors, metadata = read_safetensors(path)
    return tensors, json.loads(metadata.get("record", "{}"))


def run_method(pipeline: InversionPipeline, method: str, inputs: torch.Tensor, work: BenchmarkWork,
               settings: BenchmarkSettings, direction: Any | None, progress: tqdm | None = None) -> MethodRun:
    """Invert ``inputs`` with ``method`` batch by batch, each batch stored as soon as it is done (resume)."""
    from .methods.projector import OptimizationMethod

    inverter = pipeline.inverter(method)
    options = dict(settings.options.get(method, {}))
    batches, seconds, peak = [], 0.0, 0.0
    edits = torch.zeros(0, *inputs.shape[1:])
    optimises = isinstance(inverter, OptimizationMethod)
    warm = optimises  # (hundreds of steps: a first pass's costs are lost in them)
    for index, start in enumerate(range(0, inputs.shape[0], settings.batch_size)):
        path = work.batch_path(method, index)
        record = _batch_record(path)
        if record is None and not warm:  # one untimed image first: a process's and a method's first pass pay
            pipeline.invert(inputs[:1].to(pipeline.device), method=method, **options)  # once (1.8x the first batch)
            warm = True
        if record is None:
            x = inputs[start : start + settings.batch_size].to(pipeline.device)
            torch.manual_seed(settings.seed + index)
            with PeakMemory(pipeline.device) as memory:
                result = pipeline.invert(x, method=method, batch_size=settings.batch_size, **options)
            if not optimises:  # timed on a pass of its own: the memory pass's heap trim and sampler thread made an
                torch.manual_seed(settings.seed + index)  # encoder's batch 10-20 % slower (faces-64, 2 cores)
                result = pipeline.invert(x, method=method, batch_size=settings.batch_size, **options)
            tensors = {"images": result.image.float().cpu().contiguous()}
            examples = max(0, min(settings.example_images - start, x.shape[0]))
            if direction is not None and examples:
                edited = pipeline.edit(result.select(slice(0, examples)), direction)
                tensors["edits"] = edited.float().cpu().contiguous()
            meta = {"seconds": result.seconds, "peak_memory_mb": memory.mb}
            save_safetensors(path, tensors, {"record": json.dumps(meta)})
            record = tensors, meta
        tensors, meta = record
        batches.append(tensors["images"])
        if "edits" in tensors:
            edits = torch.cat([edits, tensors["edits"]])
        seconds += float(meta["seconds"])
        peak = max(peak, float(meta["peak_memory_mb"]))
        if progress is not None:
            progress.update(1)
    parameters = sum(parameter_count(part) for part in inverter.parts().values())
    return MethodRun(torch.cat(batches), edits, seconds, peak, parameters)


def run_editability(pipeline: InversionPipeline, method: str, directions: Mapping[str, Any], work: BenchmarkWork,
                    settings: BenchmarkSettings, extra_metrics: Mapping[str, PairMetric]) -> EditabilityReport:
    path = work.editability_path(method)
    if path.is_file():
        return EditabilityReport(**json.loads(path.read_text()))
    report = ground_truth_editability(pipeline, directions, methods=[method],
                                      num_images=settings.editability_images, seed=settings.seed,
                                      extra_metrics=dict(extra_metrics), batch_size=settings.batch_size,
                                      options=settings.options)
    atomic_write_bytes(path, (json.dumps(dataclasses.asdict(report)) + "\n").encode())
    return report


# --- scoring ---------------------------------------------------------------------------------------------------


def score(reconstructions: Mapping[str, torch.Tensor], inputs: torch.Tensor, metrics: Mapping[str, PairMetric],
          batch_size: int, *, progress: bool = False) -> dict[str, tuple[dict[str, float], dict[str, list[float]]]]:
    """Per method (``reconstructions``: method -> images of ``inputs``), the mean of every metric over the images
    and every image's values. Batch by batch, every method against the same inputs: the network metrics see each
    batch of inputs once (:func:`~hyperinverter.metrics.same_targets`)."""
    totals: dict[str, dict[str, float]] = {m: {} for m in reconstructions}
    per_image: dict[str, dict[str, list[float]]] = {m: {} for m in reconstructions}
    for start in progress_bar(range(0, inputs.shape[0], batch_size), desc="scoring", disable=not progress):
        target = inputs[start : start + batch_size]
        with same_targets():
            for method, images in reconstructions.items():
                add_metric_sums(totals[method], images[start : start + batch_size], target, metrics,
                                per_image[method])
    return {m: ({name: total / inputs.shape[0] for name, total in totals[m].items()}, per_image[m])
            for m in reconstructions}


@dataclass
class BenchmarkReport:
    """Every number of a run, and the text that explains it."""

    model: str
    data: str
    settings: dict[str, Any]
    common_images: int
    metrics: dict[str, dict[str, float]]  # method -> metric -> mean over the common images
    distribution: dict[str, dict[str, float]]  # method -> fid, kid, kid_std over the common images
    distribution_at_scale: dict[str, dict[str, float]]  # methods that inverted more images: the same over them
    seconds_per_image: dict[str, float]
    peak_memory_mb: dict[str, float]
    parameters: dict[str, int]
    images_per_method: dict[str, int]
    editability: dict[str, dict[str, float]]  # method -> metric -> mean (ground truth edits)
    editability_setup: dict[str, Any]
    claims: list[dict[str, Any]]
    notes: list[str]
    provenance: dict[str, Any]

    # --- text ---
    def to_markdown(self) -> str:
        p = self.provenance
        most = max(self.images_per_method.values())
        lines = [f"# Benchmark: {self.model} on {self.data}", "",
                 (f"{self.common_images} held-out images, inverted by every method; the encoders inverted {most}. "
                  f"Made by `{p['command']}`."), ""]
        names = [m for m in METRIC_LABELS if any(m in v for v in self.metrics.values())]
        arrows = {m: "↑" if HIGHER_IS_BETTER.get(m, False) else "↓" for m in names}
        fid = bool(self.distribution)
        lines += ["| method | " + " | ".join(f"{METRIC_LABELS[m]} {arrows[m]}" for m in names)
                  + (" | FID ↓ | KID×10³ ↓" if fid else "") + " | s / image | peak memory | trained parameters |",
                  "|---|" + "---|" * (len(names) + 3 + 2 * fid)]
        for method, values in self.metrics.items():
            d = self.distribution.get(method, {})
            cells = [_cell(values.get(m)) for m in names]
            cells += [_cell(d.get("fid"), 2), _kid(d)] if fid else []
            cells += [_seconds(self.seconds_per_image[method]), f"{self.peak_memory_mb[method]:.0f} MB",
                      _count(self.parameters[method])]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        memory = "GPU memory allocated" if self.provenance["device"].startswith("cuda") else "resident memory (RSS)"
        lines += ["", (f"Seconds per image at batch size {self.settings['batch_size']}, after one untimed image "
                       "(the encoders; an optimisation's steps outweigh its first pass); peak memory: the process's "
                       f"peak {memory} while the method ran (the models of the whole bundle included), measured on "
                       "an untimed pass of each batch for the encoders.")]
        if fid:
            lines += ["", (f"FID and KID compare the {self.common_images} reconstructions with their inputs through "
                           "the FID Inception-v3 network. FID over so few images is biased upward; compare it between "
                           "rows of one table only. KID is the unbiased estimate over subsets of up to "
                           f"{self.settings.get('kid_subset_size', 1000)} images (± the spread over subsets, as "
                           "torch-fidelity reports it); with fewer images every subset is the whole set, so "
                           "there is no spread, and the estimate can fall slightly below zero when the two sets are "
                           "close.")]
        if self.distribution_at_scale:
            n = max(self.images_per_method.values())
            lines += ["", f"The encoders over all {n} images:", "", "| method | FID ↓ | KID×10³ ↓ |", "|---|---|---|"]
            lines += [f"| {m} | {_cell(d.get('fid'), 2)} | {_kid(d)} |" for m, d in self.distribution_at_scale.items()]
        if self.editability:
            e = self.editability_setup
            enames = [m for m in METRIC_LABELS if any(m in v for v in self.editability.values())]
            lines += ["", "## Ground-truth editability", "",
                      (f"{e['images']} images generated from known codes w*, inverted, edited along "
                       f"{', '.join(e['directions'])} with strengths {e['strengths']}, each compared with the same "
                       "edit of the true code, G(edit(w*, α)): w* + αd for a vector direction, for a GANSpace edit "
                       "w* with its coordinate set to α. Lower distance: the method's codes keep their edits."), "",
                      "| method | " + " | ".join(f"{METRIC_LABELS[m]} {arrows.get(m, '')}" for m in enames) + " |",
                      "|---|" + "---|" * len(enames)]
            lines += [f"| {m} | " + " | ".join(_cell(v.get(k)) for k in enames) + " |"
                      for m, v in self.editability.items()]
        if self.claims:
            lines += ["", "## The paper's claims on this domain", ""]
            lines += [f"- **{'confirmed' if c['holds'] else 'refuted'}**: {c['claim']}. {c['evidence']}"
                      for c in self.claims]
        lines += ["", "## How it was made", "",
                  f"- command: `{p['command']}`",
                  f"- hyperinverter {p['version']}, torch {p['torch']}, Python {p['python']}",
                  f"- machine: {p['machine']}", f"- device: {p['device']}",
                  f"- precision: {p.get('dtype', 'fp32')}",
                  f"- seed {self.settings['seed']}, batch size {self.settings['batch_size']}, date {p['date']}",
                  f"- images: the first {most} of {self.data} by name (names' sha256 {p['images_sha256'][:16]})",
                  "- images per method: " + ", ".join(f"{m} {n}" for m, n in self.images_per_method.items())]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    @classmethod
    def load(cls, out: Path) -> BenchmarkReport:
        """The report a run wrote to ``out`` (``benchmark.json``)."""
        path = Path(out) / "benchmark.json"
        try:
            record = json.loads(path.read_text())
            record.pop("written_by", None)  # (the mark, see json_report_bytes)
            return cls(**record)
        except (OSError, json.JSONDecodeError, TypeError, AttributeError) as e:
            raise InputError(path, f"is not a benchmark report ({e})") from None

    def save(self, out: Path) -> None:
        out = Path(out)
        atomic_write_bytes(out / "benchmark.json", json_report_bytes(dataclasses.asdict(self)), report=True)
        atomic_write_bytes(out / "benchmark.md", markdown_bytes(self.to_markdown()), report=True)

    # --- pictures ---
    def plot(self, path: Path) -> Path:
        """Quality against seconds per image (log axis), one point per method: MSE, and the perceptual distance
        beside it when one was measured."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        perceptual = next((m for m in ("lpips", "inception_dist") if all(m in v for v in self.metrics.values())),
                          None)
        panels = ["mse"] + ([perceptual] if perceptual else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), constrained_layout=True,
                                 squeeze=False)
        for ax, metric in zip(axes[0], panels):
            for method, values in self.metrics.items():
                x, y = self.seconds_per_image[method], values[metric]
                ax.scatter([x], [y], s=40)
                ax.annotate(method, (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
            ax.set(xscale="log", xlabel="seconds per image (log)", ylabel=f"{METRIC_LABELS[metric]} (lower is better)",
                   title=f"{METRIC_LABELS[metric]} against time")
            ax.grid(alpha=0.3, which="both")
        fig.suptitle(f"{self.model}: {self.common_images} held-out images ({self.provenance['device']}, "
                     f"{self.provenance.get('dtype', 'fp32')})", fontsize=9)
        return atomic_write_figure(path, fig)


def _cell(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _kid(d: Mapping[str, float]) -> str:
    if "kid" not in d:
        return "–"
    # Subsets of all the images are one subset (their spread is rounding): no ± then.
    spread = f" ± {d['kid_std'] * 1e3:.2f}" if d.get("kid_std", 0.0) * 1e3 >= 0.005 else ""
    return f"{d['kid'] * 1e3:.2f}{spread}"


def _seconds(s: float) -> str:
    return f"{s:.4f}" if s < 1 else f"{s:.1f}"


def _count(n: int) -> str:
    return "none (optimises per image)" if n == 0 else f"{n / 1e6:.2f} M"


def example_figure(inputs: torch.Tensor, runs: Mapping[str, MethodRun], edit_label: str | None,
                   content_rows: tuple[float, float] | None = None) -> Any:
    """Columns: the input, then each method. Rows: the example images reconstructed, then the same images edited
    (the input column repeats the inputs beside the edits); of a domain in a band of the square, the band."""
    from .io.images import labelled_columns

    k = min(run.edits.shape[0] for run in runs.values()) if edit_label else 0
    n = k or min(4, *(run.images.shape[0] for run in runs.values()))  # without edits, a few reconstructions
    columns = {"input": content_of(torch.cat([inputs[:n], inputs[:k]]), content_rows)}
    for method, run in runs.items():
        columns[method] = content_of(torch.cat([run.images[:n], run.edits[:k]]), content_rows)
    return labelled_columns(columns, scale=max(2, math.ceil(96 / inputs.shape[-1])))  # room for the labels


# --- the claims ----------------------------------------------------------------------------------------------------


def check_claims(report: BenchmarkReport) -> list[dict[str, Any]]:
    """The paper's claims that this run can test, each with its verdict and the numbers behind it."""
    claims: list[dict[str, Any]] = []
    m, hi = report.metrics, "hyperinverter"
    if hi not in m:
        return claims
    # Judged on the paper's metrics only: the Inception distance stands in for LPIPS offline, but a verdict on it
    # would be one on a metric the paper does not report (it is shown, not judged).
    shown = "inception_dist" if "lpips" not in m[hi] and "inception_dist" in m[hi] else None

    def compared(k: str, rival: str) -> str:
        change = (m[hi][k] - m[rival][k]) / abs(m[rival][k])
        return f"{METRIC_LABELS[k]} {m[hi][k]:.4f} vs {m[rival][k]:.4f} ({change:+.1%})"

    for rival in ["phase1", *WPLUS_ENCODERS]:
        if rival not in m:
            continue
        judged = [k for k in ("mse", "lpips", "ssim") if k in m[rival] and k in m[hi]]
        evidence = [compared(k, rival) for k in judged]
        if shown and shown in m[rival]:
            evidence.append(f"not judged: {compared(shown, rival)}, not the paper's metric (LPIPS is unavailable "
                            "here)")
        holds = all(m[hi][k] > m[rival][k] if HIGHER_IS_BETTER[k] else m[hi][k] < m[rival][k] for k in judged)
        claims.append({"claim": f"HyperInverter beats {rival} on {', '.join(METRIC_LABELS[k] for k in judged)}",
                       "holds": holds, "evidence": "; ".join(evidence)})
    t = report.seconds_per_image
    for rival in SLOW_METHODS:
        if rival in t:
            ratio = t[rival] / t[hi]
            times = f"{ratio:,.0f}×" if ratio >= 10 else f"{ratio:.2g}×"  # (0.4 read "0×")
            claims.append({"claim": f"HyperInverter is at least 100× faster than {rival}", "holds": ratio >= 100,
                           "evidence": f"{t[rival]:.2f} s against {t[hi]:.4f} s per image: {times}"
                                       f"{_shorter_run(report, rival)}"})
    e = report.editability
    if hi in e and "mse" in e[hi]:
        if "phase1" in e:
            ratio = e[hi]["mse"] / e["phase1"]["mse"]
            claims.append({"claim": "HyperInverter's ground-truth editability stays near Phase I's (edit MSE within "
                                    "1.25× of it)", "holds": ratio <= 1.25,
                           "evidence": f"edit MSE {e[hi]['mse']:.4f} against {e['phase1']['mse']:.4f} ({ratio:.2f}×)"})
        if "wplus-opt" in e:
            ours, theirs = e[hi]["mse"], e["wplus-opt"]["mse"]
            claims.append({"claim": "HyperInverter's ground-truth editability is better than W+ optimisation's",
                           "holds": ours < theirs,
                           "evidence": f"edit MSE {ours:.4f} against {theirs:.4f} ({(ours - theirs) / theirs:+.1%})"
                                       f"{_shorter_run(report, 'wplus-opt')}"})
    return claims


# The step counts of the slow methods, as the papers ran them (their options' defaults).
_STEP_OPTIONS = {"wplus-opt": ("W+ optimisation", ("steps",)), "pti": ("PTI", ("pivot_steps", "steps"))}


def _shorter_run(report: BenchmarkReport, method: str) -> str:
    """What a verdict on ``method`` must say where the run gave it other step counts than the paper's: a speed
    ratio or an edit against 500 steps is not one against 2000 (the speed claims said nothing of it)."""
    from .methods.registry import get_method

    label, keys = _STEP_OPTIONS[method]
    chosen = report.settings.get("options", {}).get(method, {})
    official = get_method(method).options
    if all(chosen.get(k, official[k]) == official[k] for k in keys):
        return ""
    ran, paper = ([o.get(k, official[k]) for k in keys] for o in (chosen, official))
    than = "shorter" if sum(ran) < sum(paper) else "longer"
    return (f"; {label} ran {' + '.join(map(str, ran))} steps, not the paper's {' + '.join(map(str, paper))}: the "
            f"verdict is on that {than} run")


# --- the whole run ---------------------------------------------------------------------------------------------------


# CPU flags beyond the vector width that decide which kernels run (and so what a CPU timing means), as reports name them.
_CPU_EXTENSIONS: tuple[tuple[str, str], ...] = (("avx512_bf16", "AVX-512 BF16"), ("amx_tile", "AMX"))


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU as a timing report should name it: the model name, and on x86 its family and model numbers (a VM's
    model name is often generic: "Intel(R) Xeon(R) Processor") and the vector extensions the kernels use, e.g.
    ``"Intel(R) Xeon(R) Processor (family 6, model 207; AVX-512, AVX-512 BF16, AMX)"``. ``cpuinfo``: the text of
    ``/proc/cpuinfo`` (read when None; without it, ``platform``'s name for the processor)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']}, model {fields['model']}")
    flags = set(fields.get("flags", "").split())
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    extensions = ([widest] if widest else []) + [label for flag, label in _CPU_EXTENSIONS if flag in flags]
    if extensions:
        details.append(", ".join(extensions))
    return f"{name} ({'; '.join(details)})" if details else name


def machine_description() -> str:
    return f"{cpu_description()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, {platform.system()}"


def run_inversions(pipeline: InversionPipeline, inputs: torch.Tensor, names: Sequence[str], work: BenchmarkWork, *,
                   settings: BenchmarkSettings, direction: Any | None, directions: Mapping[str, Any],
                   progress: bool = True) -> dict[str, MethodRun]:
    """Invert ``inputs`` with every method of ``settings`` (the expensive part of a run), stored in ``work``
    batch by batch; what is stored already is read back, not redone. ``direction`` edits the example images;
    ``directions`` are those the editability runs (recorded, as the methods' weights and the images are: a run
    with any of them changed refuses the stored work)."""
    count = min(settings.images, inputs.shape[0])
    images_per_method = {m: min(count, settings.images_for(pipeline, m)) for m in settings.methods}
    # (what the stored inversions depend on: KID's subsets are drawn from them afresh)
    made_with = {k: v for k, v in settings.to_json().items() if k != "kid_subset_size"}
    work.claim({"settings": made_with, "model": pipeline.fingerprint,
                "methods": {m: method_fingerprint(pipeline.inverter(m)) for m in settings.methods},
                "images": fingerprint_of({"names": names[:count], "pixels": inputs[:count]}),
                "directions": fingerprint_of(dict(directions) if settings.editability_images else {}),
                "example_edit": None if direction is None else fingerprint_of(direction),
                "dtype": dtype_name(pipeline.dtype)},
               defaults={"dtype": "fp32"})  # runs from before reduced precision ran in fp32
    total = sum(math.ceil(n / settings.batch_size) for n in images_per_method.values())
    runs: dict[str, MethodRun] = {}
    with progress_bar(total=total, desc="benchmark", unit="batch", disable=not progress) as bar:
        for method in settings.methods:
            bar.set_postfix_str(method)
            runs[method] = run_method(pipeline, method, inputs[: images_per_method[method]], work, settings,
                                      direction, bar)
    return runs


def _names_digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def run_benchmark(pipeline: InversionPipeline, inputs: torch.Tensor, names: Sequence[str], out: Path, *,
                  settings: BenchmarkSettings, model: str, data: str, command: str,
                  directions: Mapping[str, Any], extra_metrics: Mapping[str, PairMetric] | None = None,
                  features: Callable[[torch.Tensor], np.ndarray] | None = None,
                  notes: Sequence[str] = (), progress: bool = True) -> BenchmarkReport:
    """Run (or resume) the benchmark of ``settings.methods`` on ``inputs`` (``[N,C,R,R]`` in [-1,1], the files
    ``names``) in the pipeline's precision and write the report to ``out``. ``extra_metrics``: pair metrics beside
    MSE/PSNR/SSIM/MS-SSIM (perceptual, identity); ``features(images)``: per-image Inception features for FID/KID,
    when available (kept in ``OUT/work``, so that a resumed run does not compute them again)."""
    out, started = Path(out), time.perf_counter()
    if settings.direction is not None and settings.direction not in directions:
        raise InputError(model, f"has no direction {settings.direction!r}; it has {sorted(directions) or 'none'}")
    direction_name = settings.direction or next(iter(directions), None)
    with BenchmarkWork(out) as work:  # another process on the same OUT is refused
        direction = directions.get(direction_name) if direction_name else None
        runs = run_inversions(pipeline, inputs, names, work, settings=settings, direction=direction,
                              directions=directions, progress=progress)
        images_per_method = {m: r.images.shape[0] for m, r in runs.items()}
        count = max(images_per_method.values())
        inputs, names = inputs[:count], list(names[:count])
        metrics = dict(PIXEL_METRICS, **(extra_metrics or {}))
        common = min(images_per_method.values())
        rows = pipeline.content_rows  # a domain in a band of the square (cars) is scored on the band, as evaluate()
        scored = score({m: content_of(r.images[:common], rows) for m, r in runs.items()},
                       content_of(inputs[:common], rows), metrics, settings.batch_size, progress=progress)
        scores = {m: means for m, (means, _) in scored.items()}
        spread, at_scale = {}, {}
        distribution_notes = []
        if features is not None and count < 2:
            distribution_notes.append(f"FID/KID: not measured (they compare sets: {count} image is too few)")
        elif features is not None:
            real = work.features("inputs", content_of(inputs, rows), features)
            for m, r in progress_bar(runs.items(), desc="FID/KID", disable=not progress):
                mine = work.features(m, content_of(r.images, rows), features)
                if common >= 2:
                    spread[m] = fid_kid(mine[:common], real[:common], subset_size=settings.kid_subset_size)
                if r.images.shape[0] > max(common, 1):
                    at_scale[m] = fid_kid(mine, real[: r.images.shape[0]], subset_size=settings.kid_subset_size)
            if common < 2:
                distribution_notes.append(f"FID/KID: not measured over the {common} image every method inverted "
                                          "(they compare sets); the methods that inverted more are measured over those")

        editability: dict[str, dict[str, float]] = {}
        setup: dict[str, Any] = {}
        if settings.editability_images and directions:
            for method in progress_bar(settings.methods, desc="editability", disable=not progress):
                report = run_editability(pipeline, method, directions, work, settings, extra_metrics or {})
                editability[method] = report.metrics[method]
                setup = {"images": report.num_images, "directions": report.directions, "strengths": report.strengths}

        provenance = {"command": command, "version": __version__, "torch": torch.__version__,
                      "python": platform.python_version(), "machine": machine_description(),
                      "device": str(pipeline.device), "dtype": dtype_name(pipeline.dtype),
                      "date": datetime.date.today().isoformat(),
                      "images_sha256": _names_digest(names)}
        side = pipeline.generator.resolution
        band = [] if rows is None else [(f"the domain fills rows {round(rows[0] * side)} to {round(rows[1] * side)} "
                                         "of the generator's square: every score compares those rows only")]
        all_notes = [protocol_note(side), *band, *notes, *distribution_notes,
                     f"per_image.csv: every method's scores on each of the {common} common images"]
        if direction is not None:
            k = min(settings.example_images, *images_per_method.values())
            all_notes.append(f"examples.png: rows 1–{k} are reconstructions, the next {k} the same "
                             f"images edited along {direction_name!r} at its default strength, each method keeping its "
                             "own offsets")
        for method, chosen in settings.options.items():
            all_notes.append(f"{method} options: " + ", ".join(f"{k}={v!r}" for k, v in chosen.items()))
        report = BenchmarkReport(
            model=model, data=data, settings=settings.to_json(), common_images=common, metrics=scores,
            distribution=spread, distribution_at_scale=at_scale,
            seconds_per_image={m: r.seconds_per_image for m, r in runs.items()},
            peak_memory_mb={m: r.peak_memory_mb for m, r in runs.items()},
            parameters={m: r.parameters for m, r in runs.items()}, images_per_method=images_per_method,
            editability=editability, editability_setup=setup, claims=[], notes=all_notes, provenance=provenance)
        report.claims = check_claims(report)
        per_image = {m: values for m, (_, values) in scored.items()}
        atomic_write_bytes(out / "per_image.csv", image_scores_csv(names[:common], per_image), report=True)
        try:
            report.plot(out / "tradeoff.png")
        except ImportError:
            logger.warning("no trade-off plot: matplotlib is not installed (pip install 'hyperinverter[plot]')")
        figure = example_figure(inputs, runs, direction_name, rows)
        atomic_write_bytes(out / "examples.png", image_bytes(figure))
        report.save(out)  # last: the report that names the files above is there only once they all are
        logger.info("benchmark written to %s in %.0f s", out, time.perf_counter() - started)
        return report
