"""The out-of-the-box demo: align real photos, invert them with the bundled models, edit, interpolate, restore.

For each input it writes one picture: input | Phase I | HyperInverter | the model's other methods (HyperStyle) |
two edits | interpolation frames; for the restoration model, held-out faces: clean | degraded | restored. An
``index.html`` shows them all. Everything is computed here, on the machine that runs it.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..editing.directions import load_model_directions
from ..inversion.batch import read_pictures
from ..io.files import (
    atomic_write_bytes,
    check_own_folder,
    is_temporary,
    remove_stale_temporaries,
    written_by_us,
)
from ..io.images import enlarge_nearest, labelled_row, pil_to_tensor, read_image, save_image
from ..pipeline import InversionPipeline
from . import model_examples, sample_photos

DISPLAY_SIZE = 128  # pictures show each panel at least this many pixels wide


@dataclass
class DemoItem:
    title: str
    picture: Path
    caption: str


@dataclass
class DemoReport:
    out_dir: Path
    items: list[DemoItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # bundled models that are not installed
    seconds: float = 0.0


def _strip(pipe: InversionPipeline, x: torch.Tensor, partner: torch.Tensor, directions: list,
           frames: int) -> tuple[torch.Tensor, list[str]]:
    """input | first pass (if the method has one) | result | the model's other methods | edits... |
    interpolation frames to ``partner``: ``[n,C,R,R]``, with the column labels."""
    method = pipe.inverter()
    result = pipe.invert(torch.cat([x, partner]))
    me, other = result.select(0), result.select(1)
    panels, labels = [x], ["input"]
    if me.initial_image is not None:
        panels.append(me.initial_image)
        labels.append(method.initial_label or "first pass")
    panels.append(me.image)
    labels.append(method.label)
    for name in _other_methods(pipe):
        panels.append(pipe.invert(x, method=name).image)
        labels.append(pipe.inverter(name).label)
    for d in directions[:2]:
        panels.append(pipe.edit(me, d))
        labels.append(f"edit: {d.name}")
    lerp = pipe.interpolate(me, other, steps=frames)
    panels += list(lerp[1:-1].split(1))
    labels += [f"interp {i}/{frames - 1}" for i in range(1, frames - 1)]
    panels = torch.cat([p.cpu() for p in panels])
    # Small models make small images: enlarge (nearest, so no detail is invented) to be seen without zooming.
    return enlarge_nearest(panels, DISPLAY_SIZE), labels


def _other_methods(pipe: InversionPipeline) -> list[str]:
    """The model's trained methods beyond its default, except those that are a part of the default (their image
    is its first pass, e.g. ``phase1`` under ``hyperinverter``)."""
    default = {id(m) for m in pipe.inverter().parts().values()}
    return [name for name, m in pipe.methods.items()
            if name != pipe.default_method and m.components and not {id(p) for p in m.parts().values()} <= default]


# What marks a folder as an earlier demo's (its index.html), which a new demo may write over.
DEMO_TITLE = "<title>hyperinverter demo</title>"


def _not_a_demo(folder: Path, prefixes: tuple[str, ...] = ("face_",)) -> str | None:
    """Why ``folder`` is not an earlier demo's (which a new demo may write over), or None: its index.html says so,
    or, for a demo stopped before writing its index, it holds only our pictures under names starting with one of
    ``prefixes`` (and temporaries of ours)."""
    try:
        ours = DEMO_TITLE in (folder / "index.html").read_text(errors="replace")[:4096]
    except OSError:
        ours = False
    if not ours and not (folder / "index.html").exists():  # (an interrupted demo's folder was refused for good)
        ours = all(is_temporary(p.name) or (p.name.startswith(prefixes) and p.suffix == ".png" and p.is_file()
                                           and written_by_us(p)) for p in folder.iterdir())
    return None if ours else "holds files that are not an earlier demo's"


def _write_index(report: DemoReport) -> Path:
    rows = "\n".join(
        f'<figure><img src="{html.escape(item.picture.name)}" alt="{html.escape(item.title)}">'
        f"<figcaption><b>{html.escape(item.title)}</b><br>{html.escape(item.caption)}</figcaption></figure>"
        for item in report.items
    )
    skipped = "".join(f"<li>{html.escape(s)}</li>" for s in report.skipped)
    page = f"""<!doctype html>
<html lang="en"><meta charset="utf-8">{DEMO_TITLE}
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}img{{image-rendering:pixelated;width:100%}}
figure{{margin:0 0 2em}}figcaption{{font-size:0.9em;color:#333}}</style>
<h1>HyperInverter demo</h1>
<p>Each row: input | Phase I (one code in W) | HyperInverter (W code + predicted residual weights) |
the model's other methods (HyperStyle: the same W code, multiplicative weight offsets refined over 5 iterations) |
two edits of HyperInverter's W code with the same residual weights | interpolation of code and weights towards the
next input. The restoration model's rows: a held-out face | the same degraded by its task | restored by E2Style.
Computed on this machine in {report.seconds:.1f} s by the bundled CPU models.</p>
{rows}
{f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else ""}
</html>
"""
    path = report.out_dir / "index.html"
    atomic_write_bytes(path, page.encode())
    return path


def _restorations(report: DemoReport, pipe: InversionPipeline, faces_dir: Path, title: str, count: int) -> None:
    """The faces model's held-out faces degraded by the model's task (seeded, as ``restore --simulate``) and
    restored."""
    from ..restoration import restoration_task, restore

    paths = model_examples(faces_dir)[:count]
    if not paths:
        report.skipped.append(f"{faces_dir / 'examples'} has no held-out images to restore")
        return
    G = pipe.generator
    clean = torch.cat([pil_to_tensor(read_image(p), size=G.resolution, channels=G.config.img_channels)
                       for p in paths]).to(pipe.device)
    restored = restore(pipe, clean, simulate=True)
    task = restoration_task(pipe)
    degraded = torch.nn.functional.interpolate(restored.degraded, size=clean.shape[-2:], mode="nearest")
    for path, x, low, out in zip(paths, clean, degraded, restored.result.image):
        labels = ["clean (held out)", f"degraded ({task})", "restored"]
        panels = enlarge_nearest(torch.stack([x, low, out]).cpu(), DISPLAY_SIZE)
        picture = save_image(labelled_row(panels, labels), report.out_dir / f"{title}_{path.stem}.png")
        report.items.append(DemoItem(f"held-out face {path.stem} restored ({title})", picture, " | ".join(labels)))


def _faces(report: DemoReport, pipe: InversionPipeline, model_dir: Path, frames: int, title: str) -> None:
    """Align every face in the bundled photos (as `invert --align` does) and invert it."""
    from ..align import optional_detector

    detector, why_not = optional_detector()
    if why_not:
        report.skipped.append(f"{why_not}; photos are only centre-cropped")
    photos = sample_photos()
    pictures, skipped = read_pictures(photos, [p.stem for p in photos], resolution=pipe.generator.resolution,
                                      channels=3, detector=detector, align_scale=pipe.align_scale)
    report.skipped += skipped
    directions = list(load_model_directions(model_dir).values())
    for i, picture in enumerate(pictures):
        partner = pictures[(i + 1) % len(pictures)].image if len(pictures) > 1 else picture.image.flip(-1)
        panels, labels = _strip(pipe, picture.image.to(pipe.device), partner.to(pipe.device), directions, frames)
        # (an earlier demo's picture is replaced; a user's file at its name is not: the folder may hold both)
        path = save_image(labelled_row(panels, labels), report.out_dir / f"face_{picture.name}.png")
        report.items.append(DemoItem(f"{picture.name} ({title})", path, " | ".join(labels)))


def _examples(report: DemoReport, pipe: InversionPipeline, model_dir: Path, frames: int, title: str,
              count: int) -> None:
    """Invert the model's held-out examples (test images never used in training or model selection)."""
    paths = model_examples(model_dir)[:count]
    if not paths:
        report.skipped.append(f"{model_dir / 'examples'} has no held-out images")
        return
    G = pipe.generator
    tensors = [pil_to_tensor(read_image(p), size=G.resolution, channels=G.config.img_channels) for p in paths]
    directions = list(load_model_directions(model_dir).values())
    for i, (path, x) in enumerate(zip(paths, tensors)):
        partner = tensors[(i + 1) % len(tensors)]
        panels, labels = _strip(pipe, x.to(pipe.device), partner.to(pipe.device), directions, frames)
        picture = save_image(labelled_row(panels, labels), report.out_dir / f"{title}_{path.stem}.png")
        report.items.append(DemoItem(f"held-out image {path.stem} ({title})", picture, " | ".join(labels)))


def run_demo(out_dir: Path, *, device: str | torch.device = "auto", faces_model: str = "faces-64",
             fashion_model: str = "fashion-32", restoration_model: str = "faces-64-sr4", frames: int = 5,
             num_examples: int = 4, dtype: str | torch.dtype = "fp32") -> DemoReport:
    """Run every bundled model that is installed; a missing one is reported in ``report.missing``. ``dtype``: the
    precision the models run in (see :class:`~hyperinverter.pipeline.InversionPipeline`)."""
    from ..catalogue import resolve_model
    from ..device import resolve_device
    from ..precision import resolve_dtype

    start = time.perf_counter()
    out_dir = Path(out_dir)
    prefixes = ("face_", *(f"{model}_" for model in (fashion_model, restoration_model)))
    check_own_folder(out_dir, lambda folder: _not_a_demo(folder, prefixes), what="the demo (--out)")
    # The models load one by one below: a device or precision they cannot run on is refused before --out is made
    # (fp16 on a CPU, or CUDA without one, left it empty).
    resolve_dtype(dtype, resolve_device(device))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # (a killed demo's, where files cannot be written unnamed)
    report = DemoReport(out_dir=out_dir)
    folders: dict[str, Path] = {}
    for model in (faces_model, fashion_model, restoration_model):
        try:
            folders[model] = resolve_model(model)
        except FileNotFoundError as e:
            report.missing.append(str(e))
    def load(model: str) -> InversionPipeline:
        return InversionPipeline.from_pretrained(folders[model], device=device, dtype=dtype)

    if faces_model in folders:  # a face model: the bundled photos, aligned
        _faces(report, load(faces_model), folders[faces_model], frames, faces_model)
    if fashion_model in folders:
        _examples(report, load(fashion_model), folders[fashion_model], frames, fashion_model, num_examples)
    if restoration_model in folders and faces_model in folders:  # (the faces model's held-out faces)
        _restorations(report, load(restoration_model), folders[faces_model], restoration_model, min(num_examples, 2))
    report.seconds = time.perf_counter() - start
    if report.items:
        _write_index(report)
    return report
