"""The evaluation protocol: invert a held-out set with every method, score each on the same images.

Reported per method: MSE (on [-1,1], the papers' L2), PSNR, SSIM, MS-SSIM, optionally LPIPS and identity
similarity, and seconds per image. Every number is a mean over images. Iterative methods (a result with
``steps``) are also scored at every iteration, with the seconds per image it takes to get there; the plot shows
quality against iterations and against time for every method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .inversion.files import method_fingerprint
from .io.files import atomic_write_figure, atomic_write_group, json_report_bytes, markdown_bytes
from .io.images import content_of
from .io.work import WorkFolder, as_recorded, fingerprint_of
from .metrics import PAPER_RESOLUTION, PIXEL_METRICS, FeatureMetric, resized_to_width, same_targets
from .pipeline import InversionPipeline
from .precision import dtype_name
from .progress import progress_bar

PairMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (reconstruction, target) -> [B]
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "ssim": True, "ms_ssim": True, "lpips": False, "inception_dist": False,
                    "id_sim": True}


def score_images(output: torch.Tensor, target: torch.Tensor, metrics: Mapping[str, PairMetric]
                 ) -> dict[str, list[float]]:
    """Each metric of every image of ``output`` against ``target``: name -> one value per image."""
    with torch.no_grad():
        return {name: fn(output, target).double().cpu().tolist() for name, fn in metrics.items()}


def add_metric_sums(totals: dict[str, float], output: torch.Tensor, target: torch.Tensor,
                    metrics: Mapping[str, PairMetric], per_image: dict[str, list[float]] | None = None) -> None:
    """Add each metric's sum over the images of ``output`` against ``target`` to ``totals`` (means are taken once
    every image is in: batches of any size weigh by their images), and each image's value to ``per_image``."""
    for name, values in score_images(output, target, metrics).items():
        totals[name] = totals.get(name, 0.0) + sum(values)
        if per_image is not None:
            per_image.setdefault(name, []).extend(values)


def image_scores_csv(names: Sequence[str], per_image: Mapping[str, Mapping[str, Sequence[float]]]) -> bytes:
    """The per-image table (``image,method,<metric>...``, one row per image and method; a metric a method lacks is
    empty): what a paired test or a search for the worst reconstructions needs, which means hide."""
    import csv
    import io

    metrics = sorted({m for values in per_image.values() for m in values}, key=list(HIGHER_IS_BETTER).index)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "method", *metrics])
    for method, values in per_image.items():
        for i, name in enumerate(names):
            writer.writerow([name, method, *(f"{values[m][i]:.7g}" if m in values else "" for m in metrics)])
    return text.getvalue().encode()


def load_heldout_images(folder: Path, *, resolution: int, channels: int, count: int | None = None,
                        content_rows: tuple[float, float] | None = None
                        ) -> tuple[torch.Tensor, list[str], list[Exception]]:
    """The first ``count`` (default: all) readable images of ``folder`` by name, as 8-bit pixels like a saved
    image: (``[N,C,R,R]`` in [-1,1], their names relative to ``folder``, the unreadable files and folders met).
    ``content_rows``: a pipeline's (cars), into which the images are fitted as its photos are."""
    from .data.folder import ImageFolderDataset
    from .training.run import preload_uint8, uint8_to_float

    dataset = ImageFolderDataset(folder, resolution=resolution, channels=channels, split="all",
                                 content_rows=content_rows)
    images = uint8_to_float(preload_uint8(dataset, limit=count))
    # Unreadable files are recorded as they are met, so the first readable ones are the ones loaded.
    readable = [p for i, p in enumerate(dataset.files) if i not in dataset.errors][: images.shape[0]]
    return (images, [p.relative_to(dataset.root).as_posix() for p in readable],
            [*dataset.problems, *dataset.errors.values()])


@dataclass
class EvaluationReport:
    dataset: str
    num_images: int
    metrics: dict[str, dict[str, float]]  # method -> metric -> mean
    seconds_per_image: dict[str, float]
    notes: list[str] = field(default_factory=list)
    # iterative methods: method -> one {metric: mean, "seconds": s/image to reach it} per iteration
    iterations: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    # every image's scores, for OUT.csv (not in OUT.json): the images' names, and method -> metric -> values
    image_names: list[str] = field(default_factory=list, repr=False)
    per_image: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)

    def to_markdown(self) -> str:
        bars = quality_bars(self) if {"phase1", "hyperinverter"} <= self.metrics.keys() else {}
        names = sorted({m for values in self.metrics.values() for m in values}, key=list(HIGHER_IS_BETTER).index)
        arrows = {m: "↑" if HIGHER_IS_BETTER[m] else "↓" for m in names}
        lines = [f"Dataset: {self.dataset} ({self.num_images} images)", "",
                 "| method | " + " | ".join(f"{m} {arrows[m]}" for m in names) + " | s/image |",
                 "|---|" + "---|" * (len(names) + 1)]
        for method, values in self.metrics.items():
            cells = [f"{values[m]:.4f}" if m in values else "–" for m in names]
            seconds = f"{self.seconds_per_image[method]:.4f}" if method in self.seconds_per_image else "–"
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds} |")
        if "mse" in self.metrics.get("phase1", {}):
            p1 = self.metrics["phase1"]["mse"]
            changes = [f"{m} {(v['mse'] - p1) / p1:+.1%}" for m, v in self.metrics.items()
                       if m != "phase1" and "mse" in v]
            if changes:
                lines += ["", f"MSE change from Phase I (the W encoder): {', '.join(changes)}", ""]
            lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in bars.items()]
        for method, steps in self.iterations.items():
            lines += ["", f"Per iteration, {method} (seconds: per image, to reach that iteration):", "",
                      "| iteration | " + " | ".join(f"{m} {arrows[m]}" for m in names) + " | s/image |",
                      "|---|" + "---|" * (len(names) + 1)]
            for t, values in enumerate(steps, start=1):
                cells = [f"{values[m]:.4f}" if m in values else "–" for m in names]
                seconds = f"{values['seconds']:.4f}" if "seconds" in values else "–"
                lines.append(f"| {t} | " + " | ".join(cells) + f" | {seconds} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path, metric: str = "mse") -> Path:
        """``metric`` against the iteration (iterative methods; the others as levels) and against seconds per
        image (every method), as a PNG (needs matplotlib: the ``plot`` extra)."""
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        arrow = "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"
        fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        colours = dict(zip(self.metrics, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
        most = max((len(v) for v in self.iterations.values()), default=1)
        for method, values in self.metrics.items():
            if metric not in values:
                continue
            steps = self.iterations.get(method)
            if steps:
                ts = range(1, len(steps) + 1)
                by_step.plot(ts, [v[metric] for v in steps], "o-", color=colours[method], label=method)
                if all("seconds" in v for v in steps):
                    by_time.plot([v["seconds"] for v in steps], [v[metric] for v in steps], "o-",
                                 color=colours[method], label=method)
                    for t, v in zip(ts, steps):
                        by_time.annotate(str(t), (v["seconds"], v[metric]), fontsize=7, xytext=(3, 3),
                                         textcoords="offset points")
            else:
                by_step.axhline(values[metric], color=colours[method], ls="--", label=method)
                by_time.plot([self.seconds_per_image.get(method, 0.0)], [values[metric]], "s",
                             color=colours[method], label=method)
        by_step.set(xlabel="iteration", ylabel=f"{metric} ({arrow})", xticks=range(1, most + 1),
                    title="quality by iteration")
        by_time.set(xlabel="seconds per image", ylabel=metric, xscale="log", title="quality against time")
        # Plain numbers, and only the 2s and 5s between decades (every minor label collides).
        plain = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}")
        some = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}" if f"{x:e}"[0] in "25" else "")
        by_time.xaxis.set_major_formatter(plain)
        by_time.xaxis.set_minor_formatter(some)
        for ax in (by_step, by_time):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{self.dataset} ({self.num_images} images)", fontsize=9)
        return atomic_write_figure(path, fig)

    def save(self, path: Path) -> list[Path]:
        """``path`` .json (the means), .md and, with per-image scores, .csv; returns the files written."""
        path = Path(path)
        summary = {k: v for k, v in asdict(self).items() if k not in ("image_names", "per_image")}
        files = [(path.with_suffix(".md"), markdown_bytes(self.to_markdown())),
                 (path.with_suffix(".json"), json_report_bytes(summary))]
        if self.per_image:
            files.append((path.with_suffix(".csv"), image_scores_csv(self.image_names, self.per_image)))
        return atomic_write_group(files, report=True)


EVALUATION_WORK_FORMAT = "hyperinverter-evaluation-work-v1"


def evaluation_work(out: Path) -> WorkFolder:
    """``OUT.work``: an evaluation's scores per method and batch until its report is written (``evaluate(work=)``)."""
    out = Path(out)
    return WorkFolder(out.with_name(out.name + ".work"), format=EVALUATION_WORK_FORMAT, what="evaluation")


def evaluate(
    pipeline: InversionPipeline,
    images: torch.Tensor,
    *,
    dataset: str,
    methods: Sequence[str] | None = None,
    batch_size: int = 32,
    extra_metrics: dict[str, PairMetric] | None = None,
    progress: bool = True,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    work: WorkFolder | None = None,
) -> EvaluationReport:
    """Score every method of ``methods`` (default: the pipeline's trained ones) on ``images`` (``[N,C,R,R]`` in
    [-1,1]): the mean of each metric over the images, every image's scores (``names``: the images' names, default
    their indices), and seconds per image. ``options``: per method, the options of its ``invert``. Each batch runs
    from seed ``seed + its index``. Where the domain fills only some rows of the generator's square (the
    pipeline's ``content_rows``: cars), the images are scored on those rows, as the official cars codes crop them.

    ``work`` (:func:`evaluation_work`): each method's scores are stored there batch by batch, so that an interrupted
    evaluation resumes where it stopped; one with other images, methods (weights included), options, metrics or
    precision refuses the stored work. The caller holds it (``with evaluation_work(out) as work:``, so that another
    process on the same ``out`` is refused) and removes it (``work.remove()``) once the report is saved."""
    options = options or {}
    metrics = dict(PIXEL_METRICS, **(extra_metrics or {}))
    methods = list(methods or pipeline.methods)
    rows = pipeline.content_rows
    names = [str(i) for i in range(images.shape[0])] if names is None else list(names)
    if len(names) != images.shape[0]:
        raise ValueError(f"{len(names)} names for {images.shape[0]} images")
    if work is not None:
        work.claim({"batch_size": batch_size, "seed": seed, "metrics": sorted(metrics),
                    "options": as_recorded({m: dict(options.get(m, {})) for m in methods}),
                    "methods": {m: method_fingerprint(pipeline.inverter(m)) for m in methods},
                    "images": fingerprint_of({"names": names, "pixels": images}),
                    "device": pipeline.device.type, "dtype": dtype_name(pipeline.dtype),
                    **({} if rows is None else {"content_rows": list(rows)})})
    per_image: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    step_sums: dict[str, list[dict[str, float]]] = {}
    seconds = dict.fromkeys(methods, 0.0)
    n = images.shape[0]
    for index, start in enumerate(progress_bar(range(0, n, batch_size), desc=f"evaluate {dataset}", disable=not progress)):
        x = images[start : start + batch_size].to(pipeline.device)
        with same_targets():  # every method's outputs (and iterations) against x: the networks see x once
            for method in methods:
                name = f"{method}/batch-{index:05d}.json"
                record = None if work is None else _batch_scores(work, name, x.shape[0], metrics)
                if record is None:
                    torch.manual_seed(seed + index)
                    record = _score_batch(pipeline.invert(x, method=method, batch_size=batch_size,
                                                          **options.get(method, {})), x, metrics, rows)
                    if work is not None:
                        work.write_json(name, record)
                seconds[method] += record["seconds"]
                for metric, values in record["scores"].items():
                    per_image[method].setdefault(metric, []).extend(values)
                if record["steps"]:
                    per_step = step_sums.setdefault(method, [{} for _ in record["steps"]])
                    for total, step in zip(per_step, record["steps"]):
                        for key, value in step.items():
                            total[key] = total.get(key, 0.0) + value
    means = {method: {k: sum(v) / n for k, v in values.items()} for method, values in per_image.items()}
    iterations = {method: [{k: v / n for k, v in step.items()} for step in steps]
                  for method, steps in step_sums.items()}
    return EvaluationReport(dataset=dataset, num_images=n, metrics=means,
                            seconds_per_image={k: v / n for k, v in seconds.items()}, iterations=iterations,
                            image_names=names, per_image=per_image)


def _score_batch(result, target: torch.Tensor, metrics: Mapping[str, PairMetric],
                 content_rows: tuple[float, float] | None) -> dict[str, Any]:
    """One method's batch: its seconds, every image's scores, and per iteration the scores' sums and the seconds
    (summed over the batch) to get there; on the ``content_rows`` of the images only."""
    target = content_of(target, content_rows)
    scores = score_images(content_of(result.image, content_rows), target, metrics)
    steps = []
    arrival = _step_seconds(result) if result.steps else None
    for t, image in enumerate(result.steps or ()):
        sums: dict[str, float] = {}
        if torch.equal(image, result.image):  # (the last step is the result: its scores, not a second scoring)
            sums.update({name: sum(values) for name, values in scores.items()})
        else:
            add_metric_sums(sums, content_of(image, content_rows), target, metrics)
        if arrival is not None:
            sums["seconds"] = arrival[t]
        steps.append(sums)
    return {"seconds": float(result.seconds), "scores": scores, "steps": steps}


def _batch_scores(work: WorkFolder, name: str, size: int, metrics: Mapping[str, PairMetric]) -> dict[str, Any] | None:
    """A stored batch's record, checked against the batch (None if not stored)."""
    record = work.read_json(name)
    if record is None:
        return None
    try:
        scores = record["scores"]
        fits = (set(scores) == set(metrics) and all(len(v) == size for v in scores.values())
                and isinstance(record["seconds"], (int, float)) and isinstance(record["steps"], list))
    except (TypeError, KeyError):
        fits = False
    if not fits:
        raise InputError(work.folder / name, f"does not hold the scores of this batch of {size} images "
                         f"({', '.join(metrics)}); move it away to redo its work")
    return record


def _step_seconds(result) -> list[float] | None:
    """Seconds (summed over the batch) to reach each of ``result.steps``: the method laps its stopwatch once
    per step, last, so the last ``len(steps)`` timings are the steps'. None if the timings do not say."""
    laps = list(result.timings.values())
    if len(laps) < len(result.steps):
        return None
    before = sum(laps[: len(laps) - len(result.steps)])
    arrival, total = [], before
    for lap in laps[len(laps) - len(result.steps):]:
        total += lap
        arrival.append(total)
    return arrival


def quality_bars(report: EvaluationReport, *, min_mse_reduction: float = 0.4) -> dict[str, bool]:
    """The bundled models' bars: the final result beats Phase I on every metric, and MSE falls by at least
    ``min_mse_reduction`` (a fraction of Phase I's MSE)."""
    p1, p2 = report.metrics["phase1"], report.metrics["hyperinverter"]
    bars = {f"{m} better": (p2[m] > p1[m]) if HIGHER_IS_BETTER[m] else (p2[m] < p1[m]) for m in p1}
    bars[f"mse at least {min_mse_reduction:.0%} lower"] = p2["mse"] <= (1 - min_mse_reduction) * p1["mse"]
    return bars


@dataclass
class EditabilityReport:
    """Ground-truth editability: images the generator made from known codes w*, inverted, then edited; each edit is
    compared with the true edit ``G(direction(w*, α))``. ``metrics``: method -> metric -> mean over images,
    directions and strengths; ``by_direction``: method -> direction -> metric -> mean over images and strengths."""

    num_images: int
    directions: list[str]
    strengths: list[float]
    metrics: dict[str, dict[str, float]]
    by_direction: dict[str, dict[str, dict[str, float]]]

    def to_markdown(self) -> str:
        names = sorted({m for values in self.metrics.values() for m in values}, key=list(HIGHER_IS_BETTER).index)
        arrows = {m: "↑" if HIGHER_IS_BETTER[m] else "↓" for m in names}
        lines = [f"Ground-truth editability: {self.num_images} images generated from known codes, inverted, edited "
                 f"along {', '.join(self.directions)} with strengths {self.strengths}; each edit against the "
                 "generator's own edit of the true code.", "",
                 "| method | " + " | ".join(f"{m} {arrows[m]}" for m in names) + " |",
                 "|---|" + "---|" * len(names)]
        for method, values in self.metrics.items():
            lines.append(f"| {method} | " + " | ".join(f"{values[m]:.4f}" for m in names) + " |")
        return "\n".join(lines) + "\n"


@torch.no_grad()
def ground_truth_editability(pipeline: InversionPipeline, directions: Mapping[str, Any], *, methods: Sequence[str],
                             num_images: int = 16, strengths: Sequence[float] = (-2.0, 2.0), seed: int = 0,
                             extra_metrics: dict[str, PairMetric] | None = None, batch_size: int = 16,
                             options: Mapping[str, Mapping[str, Any]] | None = None) -> EditabilityReport:
    """How well each method's codes keep their edits (no peer measures this against a ground truth):

    1. sample codes w* = mapping(z) (seeded) and render x = G(w*);
    2. invert x with each method;
    3. edit the inverted codes with each direction and strength, keeping the method's own offsets (``edit``);
    4. compare with the true edit G(direction(w*, α)), rendered by the plain generator (on the pipeline's
       ``content_rows`` only, where it has them).

    A run repeats whatever the global random state: the codes come from ``seed``, and the optimisation methods
    draw from their own ``seed`` option, per image.
    """
    metrics = dict(PIXEL_METRICS, **(extra_metrics or {}))
    options = options or {}
    G, rows = pipeline.generator, pipeline.content_rows
    z = torch.randn(num_images, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(pipeline.device)
    true_ws = G.mapping(z)
    sums = {m: {} for m in methods}
    per_direction = {m: {d: {} for d in directions} for m in methods}
    for start in range(0, num_images, batch_size):
        ws = true_ws[start : start + batch_size]
        x = pipeline.render(ws)
        results = {m: pipeline.invert(x, method=m, batch_size=batch_size, **options.get(m, {})) for m in methods}
        for name, direction in directions.items():
            for strength in strengths:
                truth = pipeline.render(direction.apply(ws, strength))
                for method, result in results.items():
                    edited = pipeline.edit(result, direction, strength)
                    add_metric_sums(per_direction[method][name], content_of(edited, rows),
                                    content_of(truth, rows), metrics)
    for method, by_direction in per_direction.items():  # the overall sums are the directions' sums added up
        for values in by_direction.values():
            for metric, value in values.items():
                sums[method][metric] = sums[method].get(metric, 0.0) + value
    total = num_images * len(directions) * len(strengths)
    per = num_images * len(strengths)
    return EditabilityReport(
        num_images=num_images, directions=list(directions), strengths=[float(s) for s in strengths],
        metrics={m: {k: v / total for k, v in values.items()} for m, values in sums.items()},
        by_direction={m: {d: {k: v / per for k, v in vals.items()} for d, vals in dirs.items()}
                      for m, dirs in per_direction.items()})


def lpips_metric(device: torch.device | str = "cpu", net: str = "alex") -> tuple[dict[str, PairMetric], str | None]:
    """The paper's LPIPS (AlexNet) as a metric when its files are installed: ``({"lpips": fn}, None)``; else
    ``({}, note)``, the note saying that it is unavailable and why (a report never drops it silently)."""
    from .losses.lpips import LPIPS

    try:
        network = LPIPS.from_files(net).to(device).eval()
    except FileNotFoundError as e:
        return {}, f"LPIPS-{net}: unavailable here ({e})"

    def features(images: torch.Tensor) -> list[torch.Tensor]:
        # The papers compare 256-px images, small ones enlarged: AlexNet has nothing left to pool under 31 px.
        return network.features(resized_to_width(images, PAPER_RESOLUTION, enlarge=True))

    return {"lpips": FeatureMetric(features, network.compare)}, None


def identity_metric(device: torch.device | str = "cpu", *, align_scale: float | None = 1.0
                    ) -> tuple[dict[str, PairMetric], str]:
    """Identity similarity (cosine of face embeddings, higher is better) as the papers measure it: CurricularFace
    IR-101 when ``CurricularFace_Backbone.pth`` is in the model cache, else SFace (offline). The face is the crop
    of the FFHQ framing at ``align_scale`` (None: the whole image); the papers re-align with MTCNN instead.
    Returns the metric and a note that says which network it is."""
    from .losses.identity import FFHQ_CROP, crop_for_align_scale, face_embeddings, load_identity_embedder

    try:
        embedder, name = load_identity_embedder("curricularface", device), "CurricularFace IR-101 (the papers')"
    except FileNotFoundError:
        embedder, name = load_identity_embedder("sface", device), ("SFace, offline (CurricularFace, the papers', "
                                                                   "is not in the model cache)")
    crop = None if align_scale is None else crop_for_align_scale(FFHQ_CROP, align_scale)

    def features(images: torch.Tensor) -> torch.Tensor:
        return face_embeddings(embedder, images, crop=crop)

    def compare(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(a, b, dim=1)

    where = "the whole image" if crop is None else f"the face crop of the FFHQ framing at align scale {align_scale:g}"
    return {"id_sim": FeatureMetric(features, compare)}, f"identity: {name}, cosine similarity on {where}"


# --- two folders ----------------------------------------------------------------------------------------------


@dataclass
class FolderPairs:
    """Images of a prediction folder and a ground-truth folder, paired by their path relative to the folder
    without the suffix (``a/001.png`` pairs with ``a/001.jpg``); or two images, one pair."""

    pairs: list[tuple[Path, Path]]
    problems: list[str] = field(default_factory=list)  # entries that cannot be images (a broken link): left out

    @classmethod
    def match(cls, pred: Path, gt: Path) -> FolderPairs:
        """Pair every image; a set that does not match (an image on one side only, or two images with one name)
        is a ``ValueError`` naming the files, before any work. An entry that cannot be an image (a broken link) is
        a problem of its pair, reported and left out."""
        from .io.files import refuse_special_file
        from .io.images import find_images

        def keyed(folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
            found = find_images([folder])
            broken: dict[str, str] = {}
            for problem in found.problems:
                source = Path(problem.source or "")
                if not source.is_relative_to(folder) or source == folder:
                    raise ValueError(str(problem))
                broken[source.relative_to(folder).with_suffix("").as_posix()] = str(problem)
            keys: dict[str, Path] = {}
            for path in found.paths:
                key = path.relative_to(folder).with_suffix("").as_posix()
                if key in keys:
                    raise ValueError(f"{folder}: {keys[key].name} and {path.name} have the same name: which one is "
                                     "meant is ambiguous")
                keys[key] = path
            if not keys:
                raise ValueError(f"{folder}: no images")
            return keys, broken

        pred, gt = Path(pred), Path(gt)
        for side in (pred, gt):  # (taken for a folder of one image: "PosixPath('.') has an empty name")
            refuse_special_file(side, lambda path, cause: ValueError(f"{path}: {cause}"), "an image or a folder")
        if pred.is_file() or gt.is_file():
            if not (pred.is_file() and gt.is_file()):
                file, folder = (pred, gt) if pred.is_file() else (gt, pred)
                raise ValueError(f"{file} is a file, but {folder} is not: give two folders, or two images")
            return cls([(pred, gt)])
        (a, broken_a), (b, broken_b) = keyed(pred), keyed(gt)
        only_pred, only_gt = sorted(set(a) - set(b) - set(broken_b)), sorted(set(b) - set(a) - set(broken_a))
        if only_pred or only_gt:
            parts = []
            if only_pred:
                parts.append(f"{len(only_pred)} only in {pred} ({', '.join(only_pred[:5])})")
            if only_gt:
                parts.append(f"{len(only_gt)} only in {gt} ({', '.join(only_gt[:5])})")
            raise ValueError("the folders do not hold the same images: " + "; ".join(parts))
        return cls([(a[k], b[k]) for k in sorted(a) if k in b], [*broken_a.values(), *broken_b.values()])


# A batch of folder pairs holds at most about this many values per side (128 MiB in fp32), or batch_size pairs.
FOLDER_BATCH_VALUES = 2**25


def evaluate_folders(pred: Path, gt: Path, *, extra_metrics: dict[str, PairMetric] | None = None,
                     batch_size: int = 32, progress: bool = True, device: torch.device | str = "cpu"
                     ) -> tuple[EvaluationReport, list[str]]:
    """Score the images of ``pred`` against the same-named images of ``gt`` (:class:`FolderPairs`) on ``device``
    (that of ``extra_metrics``' networks).

    Each pair is compared at the ground truth's size (a prediction of another size is an error for that pair,
    reported, and left out). Returns the report (one row, ``pred``) and the problems.
    """
    from .io.images import pil_to_tensor, read_image

    metrics = dict(PIXEL_METRICS, **(extra_metrics or {}))
    pred, gt = Path(pred), Path(gt)
    matched = FolderPairs.match(pred, gt)
    pairs = matched.pairs
    sums: dict[str, float] = {}
    problems: list[str] = list(matched.problems)
    names: list[str] = []
    per_image: dict[str, list[float]] = {}
    batch: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        by_shape: dict[tuple, list] = {}
        for name, x, y in batch:
            by_shape.setdefault(tuple(y.shape), []).append((name, x, y))
        for group in by_shape.values():
            add_metric_sums(sums, torch.cat([g[1] for g in group]).to(device),
                            torch.cat([g[2] for g in group]).to(device), metrics, per_image)
            names.extend(g[0] for g in group)
        batch.clear()

    for pred_path, gt_path in progress_bar(pairs, desc="evaluate folders", disable=not progress):
        try:
            target = pil_to_tensor(read_image(gt_path))
            output = pil_to_tensor(read_image(pred_path), channels=target.shape[1])
        except (OSError, ValueError) as e:
            problems.append(str(e))
            continue
        if output.shape != target.shape:
            problems.append(f"{pred_path}: it is {output.shape[3]}x{output.shape[2]} pixels, the ground truth "
                            f"{target.shape[3]}x{target.shape[2]} ({gt_path})")
            continue
        batch.append((pred_path.name if pred_path == pred else pred_path.relative_to(pred).as_posix(), output, target))
        # (by values too: 32 phone photos at full size held several GB, and the metrics' maps several times that)
        if len(batch) >= batch_size or sum(t.numel() for _, _, t in batch) >= FOLDER_BATCH_VALUES:
            flush()
    flush()
    count = len(names)
    if count == 0:
        raise ValueError(f"no pair of {pred} and {gt} could be compared: {problems[:3]}")
    report = EvaluationReport(dataset=f"{pred} against {gt}", num_images=count,
                              metrics={"pred": {k: v / count for k, v in sums.items()}},
                              seconds_per_image={}, notes=[f"left out: {p}" for p in problems],
                              image_names=names, per_image={"pred": per_image})
    return report, problems

