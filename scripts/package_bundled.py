"""Package the finished demo runs of one domain into a bundled model folder.

    python scripts/package_bundled.py --domain fashion32 --runs runs --out src/hyperinverter/bundled/fashion-32 \\
        --examples data/fashion32/test [--metrics eval/fashion-32.md] [--device cpu]

It reads ``<runs>/<domain>-generator/final`` (our GAN folder, with its discriminator),
``<runs>/<domain>-w-encoder/best`` (Phase I) and ``<runs>/<domain>-hypernetwork/best`` (Phase II, whose W
encoder must be the Phase I model), and writes::

    pipeline.json generator/ w_encoder/ feature_encoder/ hypernetwork/   the Phase II model, weights in fp16
    directions/*.safetensors   named GANSpace edits (DIRECTIONS below)
    ganspace_sheet.png         the first 8 principal components at strengths -s..+s, to name them by eye
    examples/*.png             held-out images (never training images)
    samples.png                64 generator samples (seeds 0-63, truncation 0.7)
    configs/*.yaml             each run's resolved config
    MODEL_CARD.md              data, licence, commands, steps, CPU hours, validation losses, sizes, evaluation

The folder is built in a hidden temporary folder next to the target, checked (the fp16 model reloads and
matches the fp32 model; all bundled models together stay within the size budget), and only then swapped in:
an interrupted or failed packaging leaves the previous folder (or none) in place.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hyperinverter.config_base import decode, encode
from hyperinverter.convert.gan_files import load_gan
from hyperinverter.data.sources import FACES64_LICENSE, FASHION_LICENSE
from hyperinverter.device import resolve_device
from hyperinverter.editing.directions import GANSpaceDirection, load_direction, save_direction, w_probe
from hyperinverter.editing.ganspace import GANSpaceBasis, compute_ganspace
from hyperinverter.editing.sheet import parse_layer_range, render_ganspace_sheet
from hyperinverter.generate import generate_images
from hyperinverter.io.files import atomic_write_bytes, staged_directory
from hyperinverter.io.images import IMAGE_SUFFIXES, make_grid, read_image, save_image
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
from hyperinverter.pipeline import InversionPipeline, save_pipeline

logger = logging.getLogger("package_bundled")

# Named GANSpace edits per domain: name -> (component index, layer range "start:end", strength).
# GANSpace *sets* the component's coordinate (in units of its std) to ``strength`` on those layers.
# Name them from `hyperinverter ganspace --layers START:END` sheets of the finished generator, then package.
# fashion32 has 8 ws (32 px), faces64 has 10 (64 px).
DIRECTIONS: dict[str, dict[str, tuple[int, str, float]]] = {
    # Named by eye from sheets of PC0-7 on layers 3:8 (appearance; on all layers the PCs change the class).
    "fashion32": {
        "brightness": (0, "3:8", 3.0),  # -3 dark, +3 bright, same garment
        "print": (1, "3:8", 3.0),  # +3 adds stripes and prints, -3 plain
    },
    # Named by eye from `hyperinverter ganspace` sheets of PC0-7 on layers 0:4, 4:7 and 7:10 (seeds 0-6), and
    # checked on the inverted sample photos at -3..+3: beyond about 2 stds the photos' edits lose their detail.
    # The demo shows the first two by name.
    "faces64": {
        "hair": (3, "0:4", 2.0),  # +2 darker, fuller hair or a fringe; -2 light hair
        "light-warm": (1, "7:10", -2.0),  # -2 warm yellow light; +2 cool blue light
        "shade": (0, "4:7", -2.0),  # -2 a darker, more contrasted face; +2 a brighter one
        "turn": (2, "0:4", -2.0),  # -2 turns the head to the side (washed out on photos); +2 faces the camera
    },
}

BUDGET_MB = 80.0  # all bundled models together
SAMPLE_SEEDS = tuple(range(64))
SAMPLE_TRUNCATION = 0.7
SHEET_COMPONENTS = 8
SHEET_SEEDS = (0, 1, 2)
SHEET_STRENGTH = 3.0
SHEET_STEPS = 5
FP16_ATOL = 0.05  # max |fp16 - fp32| on images in [-1, 1]
FP16_MEAN_ATOL = 0.005  # mean |fp16 - fp32|


@dataclass(frozen=True)
class DomainSpec:
    bundle_name: str
    title: str
    data_description: str
    license: str
    default_examples: str
    # How the training and held-out images were written; {train}, {examples} and {n} are filled in.
    data_commands: tuple[str, ...]
    directions: dict[str, tuple[int, str, float]] = field(default_factory=dict)
    faces: bool = False  # photos are FFHQ-aligned before inversion: measure the crop scale of the training faces
    recipe: tuple[str, ...] = ()  # the model card's "what was chosen and why", one bullet each
    limitations: tuple[str, ...] = ()  # what the model cannot do, one bullet each
    directions_note: str = ""  # what the named directions do, after the sheet's description


# Both domains train Phase I the same way.
PHASE1_RECIPE = (
    "Phase I: half of every batch are synthetic pairs (w, G(w)) with a loss on w as well as on the image: the "
    "generator is known, so these pairs give the encoder exact targets in W and keep its codes where the generator "
    "was trained; the other half are real training images.")

DOMAINS: dict[str, DomainSpec] = {
    "fashion32": DomainSpec(
        bundle_name="fashion-32",
        title="32x32 grayscale Fashion-MNIST",
        data_description=(
            "Fashion-MNIST (Zalando Research), read from Debian's `dataset-fashion-mnist`: the 60,000 training "
            "images, 28x28 grayscale padded to 32x32 with 2 black pixels per side. The 10,000 test images are "
            "never used in training; `examples/` holds some of them."),
        license=FASHION_LICENSE,
        default_examples="data/fashion32/test",
        data_commands=("hyperinverter data fashion32 --out {train} --split train",
                       "hyperinverter data fashion32 --out {examples} --split test"),
        directions=DIRECTIONS["fashion32"],
        directions_note="On every layer the components mostly change the kind of object, so the named ones act "
                        "on layers 3:8, where they change its appearance.",
        recipe=(
            "Generator: adversarial training from scratch (non-saturating loss, lazy R1, EMA, style mixing), no "
            "warm start: at 32x32 grayscale with widths capped at 64 a step of batch 32 costs about 1.3 s on "
            "one core, so 5000 steps took 1.8 CPU hours.",
            PHASE1_RECIPE,
            "Phase II: the official schedule (L2 + perceptual loss, then the adversarial loss with the generator's "
            "own discriminator for the last quarter). The perceptual loss uses the discriminator's features, "
            "since LPIPS' VGG weights cannot be installed offline (`docs/losses.md`).",
            "Model selection (the shipped `best` encoders) uses a validation split of the training images only.",
        ),
    ),
    "faces64": DomainSpec(
        bundle_name="faces-64",
        title="64x64 RGB synthetic faces",
        data_description=(
            "64x64 synthetic faces: samples of the pretrained DCGAN shipped in `gan-face-generate` 1.1.1 (trained "
            "on Microsoft DigiFace-1M), image i = DCGAN(z_i) with z_i seeded by i. Training uses seeds [0, N); "
            "the held-out set (500 seeds from 1,000,000) is never used in training; `examples/` holds some of it."),
        license=FACES64_LICENSE,
        default_examples="data/faces64/heldout",
        data_commands=("hyperinverter data faces64 --out {train} --n {n}",
                       "hyperinverter data faces64 --out {examples} --heldout"),
        directions=DIRECTIONS["faces64"],
        directions_note="Layers 0:4 hold the head's pose and hair, 7:10 the colour of the light. The strengths "
                        "were checked on the inverted sample photos: beyond about 2 stds their edits lose detail.",
        faces=True,
        recipe=(
            "Generator widths (w 128, channels capped at 64, z 100 so that it reads the DCGAN's z) were sized from "
            "the speed measured in the first minutes: about 28 images per second for an adversarial step on 2 "
            "threads, so one step of batch 32 takes about 1.1 s.",
            "Warm start by distillation (first 1000 steps): G(mapping(z)) regresses onto DCGAN(z) for the same z "
            "while the discriminator warms up. Measured, it learns little more than the mean face: its loss "
            "plateaus at 0.48, against 0.52 for predicting the mean image and 0.23 for a 4x4-blurred copy of each "
            "target, and three variants (100x mapping learning rate, Adam beta1 0.9, lr 0.01) did not change that. "
            "The adversarial stage that follows is what trains the generator; the warm start is kept only because "
            "the shipped generator was trained with it.",
            "Length: 4500 steps were planned; the samples were still rough, and every further 1000 steps had "
            "visibly sharpened them, so the run was continued to 7000 steps (same command, resumed).",
            PHASE1_RECIPE,
            "Phase II: L2 + discriminator-feature perceptual loss + SFace identity loss, then the adversarial stage "
            "for the last quarter (the official schedule). SFace runs on 2 of the 8 samples of a batch, since on "
            "a CPU it costs about as much as the rest of the step. The DCGAN faces fill the whole frame, so the "
            "identity loss embeds the whole image, not FFHQ's face box.",
            "Model selection (the shipped `best` encoders) uses a validation split of the training images only; "
            "the held-out seeds are never read in training.",
        ),
        limitations=(
            "Trained only on synthetic faces from a small DCGAN, at 64x64: on real photos (the demo's) it "
            "reconstructs the colours, lighting and layout of the face but not the person's identity; the "
            "evaluation below is on held-out synthetic faces. It is a CPU demo of the method, not a face model "
            "to use on people.",
            "The generator's own samples are rough (smeared details); edits beyond about 2 stds lose detail on "
            "inverted photos.",
        ),
    ),
}

RUN_KINDS = ("generator", "w-encoder", "hypernetwork")


# --- runs ---------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What the model card says about one training run, read from its ``config.yaml`` and ``stats.jsonl``."""

    kind: str  # generator | w-encoder | hypernetwork
    run_dir: Path
    config: dict[str, Any]
    steps_done: int
    steps_planned: int | None
    first_time: float | None
    last_time: float | None
    hours: float
    final_losses: dict[str, float]
    val_final: tuple[int, float] | None  # (step, val/loss) of the last validation
    val_best: tuple[int, float] | None  # (step, val/loss) of the best validation: the shipped `best` model

    @property
    def finished(self) -> bool:
        return self.steps_planned is None or self.steps_done >= self.steps_planned


def run_dirs(runs: Path, domain: str) -> dict[str, Path]:
    return {kind: Path(runs) / f"{domain}-{kind}" for kind in RUN_KINDS}


def model_dirs(runs: Path, domain: str) -> dict[str, Path]:
    """The folder each run contributes: the generator's ``final``, the two inversion runs' ``best``."""
    dirs = run_dirs(runs, domain)
    return {"generator": dirs["generator"] / "final", "w-encoder": dirs["w-encoder"] / "best",
            "hypernetwork": dirs["hypernetwork"] / "best"}


def read_stats(path: Path) -> list[dict[str, Any]]:
    """The records of a ``stats.jsonl`` (a torn last line from a killed run is skipped)."""
    records = []
    if not Path(path).is_file():
        return records
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d is not JSON; skipped", path, i + 1)
            continue
        if isinstance(record, dict) and "step" in record and "time" in record:
            records.append(record)
    return records


def training_hours(records: Sequence[dict[str, Any]], *, batch_size: int | None, log_every: int = 50) -> float:
    """Hours of training computation, robust to resumes and to idle gaps between sessions.

    With ``speed/img_per_s`` and the batch size, each logging window took ``steps · batch / speed`` seconds
    (validation, sampling and checkpoint writes included). A resume shows as a step that does not advance; its
    window is then ``log_every`` steps (or up to the step). Without speeds: the time between consecutive
    records, where a gap slower than 10x the median pace (an idle machine) counts at the median pace.
    """
    scalar = [r for r in records if "speed/img_per_s" in r]
    if scalar and batch_size:
        seconds, prev = 0.0, 0
        for r in scalar:
            step = int(r["step"])
            steps = step - prev if step > prev else min(step, log_every)
            seconds += steps * batch_size / max(float(r["speed/img_per_s"]), 1e-9)
            prev = step
        return seconds / 3600
    if len(records) < 2:
        return 0.0
    pairs = [(b["step"] - a["step"], b["time"] - a["time"]) for a, b in itertools.pairwise(records)]
    paces = [t / s for s, t in pairs if s > 0 and t > 0]
    if not paces:
        return 0.0
    pace = statistics.median(paces)
    seconds = sum((t if t <= 10 * pace * s else pace * s) if s > 0 else (t if 0 <= t < 10 * pace * log_every else 0.0)
                  for s, t in pairs)
    seconds += pace * min(int(records[0]["step"]), log_every)  # the first window, before the first record
    return seconds / 3600


def summarize_run(kind: str, run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: is it a run folder of `hyperinverter train {kind}`?")
    config = yaml.safe_load(config_path.read_text()) or {}
    records = read_stats(run_dir / "stats.jsonl")
    if not records:
        logger.warning("%s has no stats.jsonl records: steps and hours are unknown", run_dir)
    scalar = [r for r in records if "val/loss" not in r]
    val = [(int(r["step"]), float(r["val/loss"])) for r in records if "val/loss" in r]
    final_losses = {k: float(v) for k, v in (scalar[-1] if scalar else {}).items() if k.startswith("loss/")}
    times = [float(r["time"]) for r in records]
    planned = config.get("steps")
    return RunSummary(
        kind=kind, run_dir=run_dir, config=config,
        steps_done=max((int(r["step"]) for r in records), default=0),
        steps_planned=int(planned) if planned is not None else None,
        first_time=min(times, default=None), last_time=max(times, default=None),
        hours=training_hours(records, batch_size=config.get("batch_size"), log_every=int(config.get("log_every", 50))),
        final_losses=final_losses,
        val_final=val[-1] if val else None,
        val_best=min(val, key=lambda sv: sv[1]) if val else None,
    )


def _config_class(kind: str):
    from hyperinverter.training import TRAINERS

    return TRAINERS[kind].load()[0]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def training_command(kind: str, resolved: dict[str, Any], repo_config: Path | None) -> str:
    """``hyperinverter train KIND --config REPO_CONFIG key=value ...``: the overrides that turn the repository's
    config (plus the trainer's defaults) into the run's resolved config. ``None`` or a missing file: the
    resolved config copied into the bundle (``configs/KIND.yaml``) is the command's config."""
    if repo_config is None or not Path(repo_config).is_file():
        return f"hyperinverter train {kind} --config configs/{kind}.yaml   # the copy in this folder"
    # The repository config as the trainer reads it: nested configs get their defaults too.
    effective = encode(decode(_config_class(kind), yaml.safe_load(Path(repo_config).read_text()) or {}))
    overrides = []
    for key, value in resolved.items():
        if key not in effective or _plain(effective[key]) != _plain(value):
            text = yaml.safe_dump(_plain(value), default_flow_style=True).strip()
            text = text[: -len("...")].strip() if text.endswith("...") else text
            overrides.append(shlex.quote(f"{key}={text}"))
    return " ".join([f"hyperinverter train {kind} --config {repo_config.as_posix()}", *overrides])


# --- models -------------------------------------------------------------------------------------------


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def load_models(runs: Path, domain: str, *, device: str | torch.device = "cpu") -> InversionPipeline:
    """The Phase II ``best`` pipeline (fp32), checked to hold the Phase I ``best`` W encoder and the final
    generator."""
    dirs = model_dirs(runs, domain)
    for kind, path in dirs.items():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist: the {kind} run of {domain} has not finished "
                                    f"(run `hyperinverter train {kind} --config configs/{domain}/{kind}.yaml`)")
    pipe = InversionPipeline.from_pretrained(dirs["hypernetwork"], device=device)
    if "hyperinverter" not in pipe.methods:
        raise ValueError(f"{dirs['hypernetwork']} is a Phase I model; the bundle needs the Phase II model")
    model = pipe.inverter("hyperinverter")
    phase1 = InversionPipeline.from_pretrained(dirs["w-encoder"], device="cpu").inverter("phase1")
    if not _same_weights(model.w_encoder, phase1.w_encoder):
        raise ValueError(f"the W encoder inside {dirs['hypernetwork']} is not the Phase I model {dirs['w-encoder']}: "
                         "Phase II was trained on another Phase I run")
    gan = load_gan(dirs["generator"], with_discriminator=True)
    if gan.discriminator is None:
        logger.warning("%s has no discriminator (expected from the generator trainer)", dirs["generator"])
    if not _same_weights(model.generator, gan.generator):
        raise ValueError(f"the generator inside {dirs['hypernetwork']} is not {dirs['generator']}: "
                         "the inversion runs were trained on another generator")
    pipe.default_method = "hyperinverter"
    return pipe


@torch.no_grad()
def verify_fp16(reference: InversionPipeline, folder: Path, images: torch.Tensor, *, device: str | torch.device,
                method: str | None = None, atol: float = FP16_ATOL, mean_atol: float = FP16_MEAN_ATOL
                ) -> dict[str, float]:
    """Reload ``folder`` with ``InversionPipeline.from_pretrained`` and compare it with the fp32 ``reference``.

    Checks that every floating tensor came back as float32 and that the fp16-stored model's Phase I and final
    images match the fp32 model's within ``atol`` (max) and ``mean_atol`` (mean), for ``method`` (default: the
    reference's default). Returns the differences.
    """
    loaded = InversionPipeline.from_pretrained(folder, device=device)
    wrong = sorted(k for m in loaded.methods.values() for k, v in m.state_dict().items()
                   if v.is_floating_point() and v.dtype != torch.float32)
    if wrong:
        raise ValueError(f"{folder} loaded with non-fp32 tensors: {wrong[:5]}")
    method = method or reference.default_method
    a, b = reference.invert(images, method=method), loaded.invert(images, method=method)
    diffs = {
        "ws_max": float((a.ws - b.ws).abs().max()),
        "image_max": float((a.image - b.image).abs().max()),
        "image_mean": float((a.image - b.image).abs().mean()),
    }
    if a.initial_image is not None:  # methods with a first pass (a W-encoder image)
        diffs["w_image_max"] = float((a.initial_image - b.initial_image).abs().max())
        diffs["phase2_effect_mean"] = float((a.image - a.initial_image).abs().mean())
    if not all(math.isfinite(v) for v in diffs.values()):
        raise ValueError(f"the fp16 model of {folder} gives non-finite outputs: {diffs}")
    if max(diffs.get("w_image_max", 0.0), diffs["image_max"]) > atol or diffs["image_mean"] > mean_atol:
        raise ValueError(f"the fp16 model of {folder} differs from the fp32 model by more than fp16 rounding "
                         f"(max {atol}, mean {mean_atol}): {diffs}")
    return diffs


# --- directions, sheet, samples, examples ------------------------------------------------------------


def build_directions(basis: GANSpaceBasis, specs: dict[str, tuple[int, str, float]],
                     G: Generator) -> list[GANSpaceDirection]:
    """The named directions, each with the generator's probe codes (``w_space_mismatch`` warns where one is used
    with another generator)."""
    probe, out = w_probe(G), []
    for name, (index, layers, strength) in specs.items():
        start, end = parse_layer_range(layers, G.num_ws)
        out.append(GANSpaceDirection(basis, int(index), start, end, float(strength), name=name, w_probe=probe))
    return out


def write_directions(directions: Sequence[GANSpaceDirection], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in directions:
        path = save_direction(d, folder / f"{d.name}.safetensors")
        again = load_direction(path)
        if not isinstance(again, GANSpaceDirection) or (again.index, again.start, again.end) != (d.index, d.start,
                                                                                                 d.end):
            raise ValueError(f"{path} does not read back as the direction it was written from")
        paths.append(path)
    return paths


def write_samples(G: Generator, path: Path, *, seeds: Sequence[int] = SAMPLE_SEEDS,
                  truncation_psi: float = SAMPLE_TRUNCATION) -> Path:
    images = generate_images(G, list(seeds), truncation_psi=truncation_psi, noise_mode="const")
    return save_image(make_grid(images, nrow=8), path)


def _dataset_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "dataset.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _overlaps(a: Path, b: Path) -> bool:
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def select_examples(examples: Path, training_data: Sequence[Path], *, count: int = 8) -> list[Path]:
    """Up to ``count`` images of the held-out folder ``examples``, refusing anything that is training data.

    Refused: a folder inside (or containing) a training data folder, a folder whose ``dataset.json`` says
    ``split: train``, and seed ranges that overlap the training data's. With labels in ``dataset.json``,
    the first image of each label is taken first, so the examples cover the classes.
    """
    examples = Path(examples)
    if not examples.is_dir():
        raise FileNotFoundError(f"examples folder {examples} does not exist (write the held-out images first)")
    for data in training_data:
        if _overlaps(examples, data):
            raise ValueError(f"examples folder {examples} overlaps the training data {data}: use held-out images")
    meta = _dataset_meta(examples)
    if meta.get("split") == "train":
        raise ValueError(f"{examples}/dataset.json says split 'train': use the test / held-out images")
    if "seeds" in meta:
        lo, hi = meta["seeds"]
        for data in training_data:
            train_meta = _dataset_meta(data)
            if "seeds" in train_meta and lo < train_meta["seeds"][1] and train_meta["seeds"][0] < hi:
                raise ValueError(f"the seeds {meta['seeds']} of {examples} overlap the training seeds "
                                 f"{train_meta['seeds']} of {data}")
    files = sorted(p for p in examples.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {examples}")
    labels = meta.get("labels")
    chosen: list[Path] = []
    if isinstance(labels, list) and len(labels) == len(files):
        seen = set()
        for p, label in zip(files, labels):
            if label not in seen and len(chosen) < count:
                seen.add(label)
                chosen.append(p)
    chosen += [p for p in files if p not in chosen][: count - len(chosen)]
    return sorted(chosen)


def copy_examples(files: Sequence[Path], folder: Path) -> list[Path]:
    """Copy images as PNG (PNG files byte for byte, other formats re-encoded), keeping their names."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in files:
        dst = folder / f"{src.stem}.png"
        if dst.exists():
            raise ValueError(f"two examples are named {src.stem}: rename one")
        if src.suffix.lower() == ".png":
            shutil.copyfile(src, dst)
        else:
            save_image(read_image(src), dst)
        out.append(dst)
    return out


# --- model card --------------------------------------------------------------------------------------


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if t is not None else "?"


def _fmt_losses(losses: dict[str, float]) -> str:
    return ", ".join(f"{k.removeprefix('loss/')} {v:.4g}" for k, v in sorted(losses.items())) or "–"


def write_model_card(folder: Path, *, domain: str, spec: DomainSpec, summaries: dict[str, RunSummary],
                     commands: dict[str, str], data_commands: Sequence[str], examples_dir: Path,
                     examples: Sequence[Path], directions: Sequence[GANSpaceDirection], ganspace_samples: int,
                     fp16: dict[str, float], metrics: str | None, generator: GeneratorConfig) -> Path:
    """``MODEL_CARD.md``: everything about where the bundled model comes from and how good it is."""
    name = spec.bundle_name
    lines = [
        f"# {name}: HyperInverter for {spec.title}",
        "",
        (f"A small HyperInverter (Dat et al., CVPR 2022) trained on CPU with this repository: a StyleGAN2 generator, "
        f"its W encoder (Phase I) and the hypernetworks that predict residual generator weights (Phase II). "
        f"Load it with `InversionPipeline.from_pretrained(\"{name}\")`; it is what `hyperinverter demo` runs."),
        "",
        "## Data and licence",
        "",
        f"- Data: {spec.data_description}",
        f"- Licence of the data, and so of these weights and images: {spec.license}.",
        "- Code: MIT.",
        (f"- `examples/`: {len(examples)} held-out images from `{examples_dir.as_posix()}` "
        f"({', '.join(p.name for p in examples)}); none is a training image."),
        "",
        "## Training",
        "",
        "Run from the repository root, in this order:",
        "",
        "```bash",
        *data_commands,
        *(commands[k] for k in RUN_KINDS),
        "```",
        "",
        ("Each run's resolved configuration is in `configs/` (copied from its run folder); "
        "`hyperinverter train KIND --config configs/KIND.yaml` with it repeats the run exactly. "
        "The trainers resume from their checkpoints, so an interrupted run is continued by the same command."),
        "",
        *(["What was chosen, and why:", "", *(f"- {item}" for item in spec.recipe), ""] if spec.recipe else []),
        "| run | shipped | steps done / planned | training hours (CPU) | first – last log |",
        "|---|---|---|---|---|",
    ]
    shipped = {"generator": "`final` (EMA generator)", "w-encoder": "`best` (lowest val loss)",
               "hypernetwork": "`best` (lowest val loss)"}
    total_hours = 0.0
    devices = ", ".join(sorted({str(summaries[k].config.get("device")) for k in RUN_KINDS}))
    for kind in RUN_KINDS:
        s = summaries[kind]
        total_hours += s.hours
        planned = s.steps_planned if s.steps_planned is not None else "?"
        lines.append(f"| {kind} | {shipped[kind]} | {s.steps_done} / {planned}"
                     f"{'' if s.finished else ' (not finished)'} | {s.hours:.2f} | "
                     f"{_when(s.first_time)} – {_when(s.last_time)} |")
    lines += [
        f"| total | | | {total_hours:.2f} | |",
        "",
        ("Training hours are the wall-clock time of the training process summed over its logging windows "
        "(`steps x batch / images per second` from `stats.jsonl`), so idle time between resumed sessions is not "
        f"counted. Devices (from the configs): {devices}."),
        "",
        "## Final losses",
        "",
        "| run | validation loss: final (step) | validation loss: best (step) = shipped | last training losses |",
        "|---|---|---|---|",
    ]
    for kind in RUN_KINDS:
        s = summaries[kind]
        vf = f"{s.val_final[1]:.5f} ({s.val_final[0]})" if s.val_final else "– (no validation split)"
        vb = f"{s.val_best[1]:.5f} ({s.val_best[0]})" if s.val_best else "–"
        lines.append(f"| {kind} | {vf} | {vb} | {_fmt_losses(s.final_losses)} |")
    lines += [
        "",
        ("The validation loss is the training loss (weighted L2 + perceptual terms, see the configs) on the "
        "validation split of the training folder (`val_fraction`), computed on the final HyperInverter image."),
        "",
        *(["## Limitations", "", *(f"- {item}" for item in spec.limitations), ""] if spec.limitations else []),
        "## Packaging",
        "",
        (f"- Generator: {generator.resolution} px, {generator.img_channels} channel(s), z {generator.z_dim}, "
        f"w {generator.w_dim}, {generator.num_ws} ws; the discriminator is not shipped."),
        ("- Weights stored in fp16 and cast back to fp32 when loaded. On the examples, the fp16 model differs from "
        f"the fp32 one by at most {fp16['image_max']:.4f} (mean {fp16['image_mean']:.5f}) on the final image and "
        f"{fp16['w_image_max']:.4f} on the Phase I image (pixel values in [-1, 1]); for scale, Phase II changes "
        f"the image by {fp16['phase2_effect_mean']:.3g} on average."),
        (f"- `samples.png`: generator samples for seeds {SAMPLE_SEEDS[0]}-{SAMPLE_SEEDS[-1]} at truncation "
        f"{SAMPLE_TRUNCATION} (`hyperinverter generate --model {name} --seeds 0-63 --trunc {SAMPLE_TRUNCATION}`)."),
        "",
        "## Edit directions",
        "",
        (f"GANSpace principal directions of W, computed from the generator itself (PCA of {ganspace_samples:,} "
        "mapped codes, seed 0, no truncation). An edit sets the component's coordinate, in units of its standard "
        "deviation, to the strength on the given layers; the image's residual weights are reused unchanged. "
        + ("The names are placeholders until someone names the components by eye "
           if any(re.fullmatch(r"pc\d+(-\w+)?", d.name) for d in directions)
           else "They were named by eye from edits of the first components on several layer ranges "
                "(`hyperinverter ganspace --layers START:END`); ")
        + f"`ganspace_sheet.png` shows the first {SHEET_COMPONENTS} components at "
        f"-{SHEET_STRENGTH:g}..+{SHEET_STRENGTH:g} on every layer. {spec.directions_note}".rstrip()),
        "",
        "| file | component | layers | strength | component std |",
        "|---|---|---|---|---|",
        *(f"| `directions/{d.name}.safetensors` | {d.index} | {d.start}:{d.end} | {d.default_strength:g} | "
          f"{float(d.basis.std[d.index]):.4g} |" for d in directions),
        "",
        "## Files",
        "",
        "| file | size |",
        "|---|---|",
    ]
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "MODEL_CARD.md")
    lines += [f"| `{p.relative_to(folder).as_posix()}` | {_size(p.stat().st_size)} |" for p in files]
    weights = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
    lines += [f"| all files (without this card) | {_size(sum(p.stat().st_size for p in files))} |",
              f"| of which weights (`*.safetensors`) | {_size(weights)} |", "", "## Evaluation", ""]
    if metrics:
        lines.append(metrics.rstrip())
    else:
        lines += ["Not evaluated yet. Run",
                  "",
                  "```bash",
                  f"hyperinverter evaluate --data {examples_dir.as_posix()} --model {name} --out eval/{name}",
                  "```",
                  "",
                  f"and package again with `--metrics eval/{name}.md` to put its table here."]
    path = folder / "MODEL_CARD.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


# --- the whole packaging -----------------------------------------------------------------------------


@dataclass
class PackageResult:
    out: Path
    size_bytes: int
    total_bytes: int  # this folder and the other bundled models next to it
    fp16: dict[str, float]


def _data_paths(summaries: dict[str, RunSummary]) -> list[Path]:
    return sorted({Path(s.config["data"]) for s in summaries.values() if s.config.get("data")})


def _fill_data_commands(spec: DomainSpec, train: Path | None, examples: Path) -> list[str]:
    n = _dataset_meta(train).get("count", 30000) if train is not None else 30000
    train_text = train.as_posix() if train is not None else "DATA"
    return [c.format(train=train_text, examples=examples.as_posix(), n=n) for c in spec.data_commands]


def _make_readable(folder: Path) -> None:
    """Temporary files and folders are private (0600/0700); shipped ones must be readable by everyone."""
    os.chmod(folder, 0o755)
    for p in folder.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def sibling_bundles(out: Path) -> list[Path]:
    """The other bundled model folders next to ``out`` (folders holding a ``pipeline.json``)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != out.name
                  and (p / "pipeline.json").is_file())


def finish_staged_bundle(tmp: Path, out: Path, budget_mb: float) -> tuple[int, int]:
    """Make the staged folder ``tmp`` (to become ``out``) readable and check the size budget of all bundled models
    together -> (its size, the total) in bytes."""
    _make_readable(tmp)
    size = folder_size(tmp)
    total = size + sum(folder_size(p) for p in sibling_bundles(out))
    if total > budget_mb * 1e6:
        raise ValueError(f"the bundled models would take {total / 1e6:.1f} MB (this one {size / 1e6:.1f} MB), "
                         f"over the {budget_mb:g} MB budget")
    return size, total


def measure_training_crop_scale(train_dir: Path, *, count: int = 300):
    """The ``align_scale`` of a face model: see :func:`hyperinverter.align.measure_crop_scale`."""
    from PIL import Image

    from hyperinverter.align import Dlib68Detector, measure_crop_scale

    files = sorted(p for p in Path(train_dir).rglob("*.png"))[:count]
    if not files:
        raise FileNotFoundError(f"no training images under {train_dir} to measure the face crop scale on")
    # Score 0 (dlib's own threshold): the upscaled 64-px faces score lower than faces in photos.
    return measure_crop_scale([Image.open(p) for p in files], Dlib68Detector(min_score=0.0))


def package(
    domain: str,
    runs: str | Path,
    out: str | Path,
    *,
    examples: str | Path | None = None,
    device: str | torch.device = "cpu",
    metrics: str | Path | None = None,
    directions: dict[str, tuple[int, str, float]] | None = None,
    repo_configs: str | Path | None = "configs",
    num_examples: int = 8,
    ganspace_samples: int = 100_000,
    ganspace_components: int = 80,
    budget_mb: float = BUDGET_MB,
) -> PackageResult:
    """Build the bundled model folder ``out`` for ``domain`` from the runs under ``runs`` (see the module doc).

    ``repo_configs``: the folder holding ``<domain>/<kind>.yaml``, used to write the training commands as
    config + overrides (``None``: the commands point at the copied resolved configs).
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known: {sorted(DOMAINS)}")
    spec = DOMAINS[domain]
    runs, out = Path(runs), Path(out)
    if out.name != spec.bundle_name:
        logger.warning("%s is not named %s: `resolve_model(%r)` will not find it", out, spec.bundle_name,
                       spec.bundle_name)
    device = resolve_device(device)
    specs = spec.directions if directions is None else directions
    metrics_text = Path(metrics).read_text() if metrics is not None else None

    dirs = run_dirs(runs, domain)
    summaries = {kind: summarize_run(kind, dirs[kind]) for kind in RUN_KINDS}
    for s in summaries.values():
        if not s.finished:
            logger.warning("%s stopped at step %d of %s: packaging an unfinished run", s.run_dir, s.steps_done,
                           s.steps_planned)
    reference = load_models(runs, domain, device=device)
    G = reference.generator
    examples_dir = Path(examples if examples is not None else spec.default_examples)
    example_files = select_examples(examples_dir, _data_paths(summaries), count=num_examples)
    train_data = summaries["generator"].config.get("data")
    data_commands = _fill_data_commands(spec, Path(train_data) if train_data else None, examples_dir)
    commands = {kind: training_command(kind, summaries[kind].config,
                                       Path(repo_configs) / domain / f"{kind}.yaml" if repo_configs else None)
                for kind in RUN_KINDS}

    with staged_directory(out, "pipeline") as tmp:
        # 1. the pipeline in fp16, reloaded and compared with the fp32 model
        crop = measure_training_crop_scale(Path(train_data)) if spec.faces else None
        save_pipeline(reference.methods, tmp / "_pipeline", default_method="hyperinverter", dtype=torch.float16,
                      align_scale=crop.scale if crop else 1.0, faces=spec.faces)
        for item in (tmp / "_pipeline").iterdir():
            os.replace(item, tmp / item.name)
        (tmp / "_pipeline").rmdir()
        copied = copy_examples(example_files, tmp / "examples")
        fp16 = verify_fp16(reference, tmp, reference.prepare(copied), device=device)
        logger.info("fp16 model reloads; differences to fp32: %s", fp16)

        # 2. GANSpace directions and the sheet to name them
        basis = compute_ganspace(G, num_samples=ganspace_samples, num_components=min(ganspace_components, G.w_dim))
        named = build_directions(basis, specs, G)
        write_directions(named, tmp / "directions")
        render_ganspace_sheet(G, basis, tmp / "ganspace_sheet.png", components=SHEET_COMPONENTS, seeds=SHEET_SEEDS,
                              strength=SHEET_STRENGTH, steps=SHEET_STEPS, truncation_psi=SAMPLE_TRUNCATION)

        # 3.-4. samples (examples were copied above)
        write_samples(G, tmp / "samples.png")

        # 5. configs and the model card
        (tmp / "configs").mkdir()
        for kind in RUN_KINDS:
            shutil.copyfile(dirs[kind] / "config.yaml", tmp / "configs" / f"{kind}.yaml")
        write_model_card(tmp, domain=domain, spec=spec, summaries=summaries, commands=commands,
                         data_commands=data_commands, examples_dir=examples_dir, examples=copied,
                         directions=named, ganspace_samples=ganspace_samples, fp16=fp16, metrics=metrics_text,
                         generator=G.config)
        if crop is not None:
            with open(tmp / "MODEL_CARD.md", "a") as card:
                card.write(f"\n## Face alignment\n\nPhotos are FFHQ-aligned (dlib 68 landmarks) with crop scale "
                           f"{crop.scale:.3f} (`align_scale` in `pipeline.json`): the median ratio of a training "
                           f"image's side to the FFHQ crop of its own face, measured on {crop.images} training "
                           f"images ({crop.faces_found} faces found). The DCGAN faces are framed tighter than "
                           f"FFHQ's, so photos are cropped tighter to match.\n")
        size, total = finish_staged_bundle(tmp, out, budget_mb)
    logger.info("wrote %s (%.1f MB)", out, size / 1e6)
    return PackageResult(out=out, size_bytes=size, total_bytes=total, fp16=fp16)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Turn the finished runs of a demo domain into its bundled model.")
    parser.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder of the run folders (default runs)")
    parser.add_argument("--out", type=Path, required=True, help="e.g. src/hyperinverter/bundled/fashion-32")
    parser.add_argument("--examples", type=Path, default=None,
                        help="held-out image folder (default: data/fashion32/test or data/faces64/heldout)")
    parser.add_argument("--metrics", type=Path, default=None, help="`hyperinverter evaluate` table (OUT.md)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = package(args.domain, args.runs, args.out, examples=args.examples, device=args.device,
                         metrics=args.metrics)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"packaged {args.domain} into {result.out}: {result.size_bytes / 1e6:.1f} MB; all bundled models "
          f"{result.total_bytes / 1e6:.1f} MB of {BUDGET_MB:g} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
