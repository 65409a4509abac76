"""The web page (``hyperinverter web``): upload a photo, invert it with any method of the model (the optimisation
ones with a progress bar and a Cancel button), edit it, paste the edit back, mix styles, interpolate.

:class:`WebSession` is the logic, plain Python on the pipeline (tested without a browser); :func:`build_app`
wires it to a Gradio page (the optional ``web`` extra), which a test drives in headless Chromium. Everything runs
on the machine that serves it: Gradio's analytics are off, and uploads, results and per-user state are deleted
after ``WebLimits.keep_seconds``; the results of at most ``WebLimits.max_pages`` pages are kept.

What a shared server needs is in :class:`WebLimits`: an upload limit in bytes and in pixels, large photos
downscaled before face detection, and a queue that runs at most ``concurrency`` requests on the models at once.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .. import memory
from ..catalogue import CATALOGUE
from ..editing.directions import Direction, GANSpaceDirection, check_strength, edit_directions
from ..errors import ImageReadError, InputError
from ..io.files import PIPELINE_INDEX, atomic_write_bytes, file_name_part
from ..io.images import IMAGE_SUFFIXES, enlarge_nearest, image_bytes, make_grid, read_image, tensor_to_pil
from ..methods import InversionResult
from ..pipeline import InversionPipeline
from . import model_examples
from .limits import WebLimits

DEFAULT_LIMITS = WebLimits()
# The optimisation methods' step counts the page offers (W, W+ and PTI take minutes at their official counts): shown
# for the methods that take them, from 1 up to the method's own (official) count.
STEP_OPTIONS = ("pivot_steps", "steps")
SWEEP_STEPS = 7  # the edits of a sweep, from -|strength| to +|strength|


def step_options(inverter, values: Sequence[object]) -> dict[str, int]:
    """``inverter``'s options from the page's step fields (``STEP_OPTIONS`` order; empty: its default)."""
    chosen = {}
    for key, value in zip(STEP_OPTIONS, values):
        if key not in inverter.options or value in (None, ""):
            continue
        most = int(inverter.options[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= most \
                or value != int(value):  # (the range first: int() of inf or NaN raised its own message)
            raise ValueError(f"{key.replace('_', ' ')} must be a whole number from 1 to {most} ({inverter.label}'s "
                             f"own count), got {value!r}")
        chosen[key] = int(value)
    return chosen


def step_label(key: str, most: object) -> str:
    """The page's label of a step field, with its range where the method is known."""
    where = f", 1 to {most}" if most is not None else ""
    return f"{key.replace('_', ' ')}{where} (fewer: quicker, rougher)"


logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """The user pressed Cancel while a slow method ran."""


@dataclass
class WebInversion:
    """One inverted face (or whole image): its model-size input, the result, and where it sits in its photo."""

    label: str  # what the page calls it ("face 1 of 2 (from the left)")
    stem: str  # what its downloads are called ("astronaut_face1_hyperinverter")
    input: torch.Tensor  # [1,C,R,R] in [-1,1]
    result: InversionResult  # one sample
    method: str  # the method that inverted it
    seconds: float  # its share of the method's time
    # The photo it was aligned from, for pasting edits back: the upload's path (read again when pasting, so that
    # a user's state stays small), or the image itself when the caller gave one.
    photo: Image.Image | str | None = None
    placement: dict | None = None
    photo_stem: str = ""  # what downloads made from every face of its photo are called (default: ``stem``)


def _safe_stem(name: str) -> str:
    return file_name_part(Path(name).stem, fallback="photo", ascii_only=True, max_length=60)


def read_upload(photo: Image.Image | str | Path | None, limits: WebLimits) -> Image.Image:
    """An upload as a plain image within ``limits``; a photo larger than ``detect_side`` is downscaled (its faces
    are found, aligned and pasted back at that size). Errors never show server paths."""
    if photo is None:
        raise ImageReadError("the upload", "no image given")
    if isinstance(photo, (str, Path)) and not Path(photo).exists():  # (the page still shows it)
        raise ImageReadError("the uploaded file", f"is no longer on the server (uploads are deleted "
                             f"{limits.keep_seconds // 60} minutes after they are made): upload it again")
    if isinstance(photo, (str, Path)) and Path(photo).is_file() and Path(photo).stat().st_size > limits.upload_bytes:
        size = Path(photo).stat().st_size / 2**20
        raise ImageReadError("the uploaded file", f"is {size:.1f} MB; this server takes photos up to "
                             f"{limits.max_upload_mb:g} MB")
    image = read_image(photo, name="the uploaded file", max_pixels=limits.max_pixels)
    side = limits.detect_side
    if max(image.size) > side:
        logger.info("downscaling a %dx%d upload to at most %d px", *image.size, side)
        image = image.copy()
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


class WebSession:
    """Invert, edit, mix and interpolate with one pipeline, returning display-ready PIL images."""

    def __init__(self, pipe: InversionPipeline, directions: Mapping[str, Direction] | None = None, *,
                 detector=None, display_size: int = 256, limits: WebLimits = DEFAULT_LIMITS, card: str = "",
                 examples: Sequence[Path] = ()) -> None:
        self.pipe = pipe
        self.directions = dict(directions or {})
        self.detector = detector  # a face detector for alignment (None: alignment unavailable)
        self.display_size = display_size
        self.limits = limits
        self.card = card  # what the model is and where it is weak, in Markdown
        self.examples = list(examples)  # in-domain held-out images the model ships

    @classmethod
    def from_model(cls, model: str | Path, *, device: str | torch.device = "auto", display_size: int = 256,
                   limits: WebLimits = DEFAULT_LIMITS, dtype: str | torch.dtype = "fp32",
                   content_rows: tuple[float, float] | None = None) -> WebSession:
        """A pipeline folder or catalogue name, with its directions, its card, its held-out examples and (if
        installed) dlib alignment. ``dtype``: the precision it runs in (see :class:`InversionPipeline`);
        ``content_rows``: where the model is a generator alone (a bundle records its own)."""
        from ..align import optional_detector
        from ..catalogue import local_model_path

        path = local_model_path(model)
        # Uploads are downscaled to the limits' side first: the detector looks at that size (its own default, 2048,
        # reduced larger ones again, so `web --detect-side 6000` found no face that 2048 did not).
        detector, why_not = optional_detector(detect_side=limits.detect_side)
        if why_not:
            logger.warning(why_not)
        examples = model_examples(path)
        bundle = (path / PIPELINE_INDEX).is_file()
        pipe = InversionPipeline.from_pretrained(path, device=device, dtype=dtype,
                                                 content_rows=None if bundle else content_rows)
        card = model_card_summary(path) if (path / "MODEL_CARD.md").is_file() else generated_card(path, pipe)
        broken: list[Exception] = []  # one unreadable direction file does not take the model off the page
        directions, stand_in = edit_directions(path, pipe.generator, skipped=broken)
        if stand_in:  # a generator alone, or a bundle without directions: its principal ones are edits
            card += (f"\n\n**Edits:** it ships no named directions, so the edit menu offers the generator's first "
                     f"{len(directions)} principal directions in W (GANSpace, on every layer). They have no names: "
                     "try each; `hyperinverter ganspace` makes a sheet of them to name by eye.")
        if broken:
            names = ", ".join(Path(getattr(e, "source", "") or "?").name for e in broken)
            card += (f"\n\n**Left out:** {len(broken)} direction file(s) that cannot be read or do not fit this "
                     f"model's generator ({names}); the server log says why.")
        return cls(pipe, directions, detector=detector, display_size=display_size, limits=limits, card=card,
                   examples=examples)

    @property
    def takes_faces(self) -> bool:
        """Whether photos of people are this model's input (RGB, aligned like FFHQ; not a domain that fills only some
        rows of the generator's square, as cars do), unless its bundle says it is not a model of faces (a user's
        church model ticked face alignment and offered the sample portraits)."""
        return (self.pipe.faces is not False and self.pipe.generator.config.img_channels == 3
                and self.detector is not None and self.pipe.content_rows is None)

    def methods(self) -> list[str]:
        """The methods this model runs, its default first."""
        names = self.pipe.available_methods()
        return [self.pipe.default_method] + [n for n in names if n != self.pipe.default_method]

    def invert(self, photo: Image.Image | str | Path | None, *, align: bool, method: str | None = None,
               progress: Callable[[int, int], None] | None = None, name: str = "photo",
               options: Mapping[str, object] | None = None, largest_only: bool = False) -> list[WebInversion]:
        """Every face of ``photo`` (an upload's file, or a PIL image) FFHQ-aligned (``align``), left to right, or
        its centred square, inverted in one batch by ``method`` (default: the model's) with its ``options``.
        ``largest_only``: its largest face alone (the second photo's, as ``swap`` takes it).
        ``progress(step, total)`` is called by iterative optimisation methods; it may raise (:class:`Cancelled`)
        to stop them.

        Raises ``ImageReadError`` for an upload that is not a readable image or is over the limits,
        ``NoFaceFoundError`` when aligning a photo without a face, ``ImportError`` when alignment is asked for but
        dlib is not installed.
        """
        from ..inversion.batch import photo_pictures

        if align and self.detector is None:
            raise ImportError("face alignment needs dlib: pip install 'hyperinverter[align]'")
        image = read_upload(photo, self.limits)
        G = self.pipe.generator
        pictures = photo_pictures(image, "photo", Path("the photo"), resolution=G.resolution,
                                  channels=G.config.img_channels, detector=self.detector if align else None,
                                  align_scale=self.pipe.align_scale, content_rows=self.pipe.content_rows)
        found = len(pictures)
        if largest_only:  # (every face was inverted, a W optimisation each, and the leftmost used)
            pictures = pictures[:1]  # the detector's order is by size
        # Left to right, as a person reads the photo.
        pictures.sort(key=lambda p: sum(x for x, _ in p.placement["quad"]) if p.placement else 0.0)
        batch = torch.cat([p.image for p in pictures])
        method = method or self.pipe.default_method
        inverter = self.pipe.inverter(method)
        options = dict(options or {})
        if progress is not None and "progress" in inverter.options:
            options["progress"] = progress
        result = self.pipe.invert(batch, method=method, warn_unsigned=False,  # (read from the upload)
                                  batch_size=self.limits.batch_size, originals=[p.original for p in pictures],
                                  **options)
        stem, n = _safe_stem(name), len(pictures)
        items = []
        for i, p in enumerate(pictures):
            label = ("the photo" if not p.placement else f"face {i + 1} of {n} (from the left)" if n > 1
                     else f"the largest of {found} faces" if found > 1 else "face")
            file_stem = f"{stem}_face{i + 1}_{method}" if p.placement and n > 1 else f"{stem}_{method}"
            source = str(photo) if isinstance(photo, (str, Path)) else image
            items.append(WebInversion(label, file_stem, batch[i : i + 1], result.select(i), method,
                                      result.seconds / n, source if p.placement else None, p.placement,
                                      f"{stem}_{method}"))
        return items

    def to_display(self, images: torch.Tensor) -> Image.Image:
        """``[N,C,R,R]`` -> one row (of the domain's rows: ``pipe.content``), enlarged to about display_size."""
        images = enlarge_nearest(self.pipe.content(images.cpu()), self.display_size)
        return tensor_to_pil(make_grid(images, nrow=len(images)))[0].convert("RGB")

    def comparison_labels(self, method: str | None = None) -> list[str]:
        method = self.pipe.inverter(method)
        return ["input"] + ([method.initial_label or "first pass"] if method.initial_label else []) + [method.label]

    def comparison(self, item: WebInversion) -> Image.Image:
        """input | the method's first pass (if it has one) | its result."""
        r = item.result
        panels = [item.input, r.initial_image, r.image] if r.initial_image is not None else [item.input, r.image]
        return self.to_display(torch.cat([p.cpu() for p in panels]))

    def edit(self, item: WebInversion, direction: str, strength: float, *, paste_back: bool = False) -> Image.Image:
        """The edited image (the codes move, Δθ is reused); pasted back into the photo if asked and aligned."""
        return self.edit_faces([item], direction, strength, paste_back=paste_back)

    def edit_faces(self, items: Sequence[WebInversion], direction: str, strength: float, *,
                   paste_back: bool = False) -> Image.Image:
        """Faces of one photo (``invert``'s items) edited alike: in a row, or, if asked and aligned, all pasted back
        into their photo, as ``hyperinverter edit --paste-back`` pastes a group photo's faces."""
        chosen = self._direction(direction)
        if not items:
            raise ValueError("no faces to edit")
        if any(it.photo is not items[0].photo and it.photo != items[0].photo for it in items):
            raise ValueError("the faces to edit together come from different photos")
        # One synthesis call per batch of faces (each with its own Δθ), not per face.
        edited = [e[0] for e in self.pipe.edit_each([it.result for it in items], chosen, [strength],
                                                    batch_size=self.limits.batch_size)]
        photo = self._photo_to_paste_into(items[0]) if paste_back else None
        if photo is not None:
            from ..align import paste_back_placements

            faces = [tensor_to_pil(face.cpu())[0].convert("RGB") for face in edited]
            return paste_back_placements(photo, faces, [it.placement for it in items])
        return self.to_display(torch.cat(edited))

    def sweep(self, item: WebInversion, direction: str, strength: float, steps: int = SWEEP_STEPS) -> Image.Image:
        """``item`` edited along ``direction`` at ``steps`` strengths evenly from -|strength| to +|strength|, in one
        synthesis call: a row to choose the strength from."""
        chosen = self._direction(direction)
        check_strength(strength)  # (infinity became NaN strengths)
        # In float64: float32's overflowed past 3.4e38, an internal error where the edit says to give a smaller one.
        strengths = torch.linspace(-abs(strength), abs(strength), steps, dtype=torch.float64).tolist()
        return self.to_display(self.pipe.edit_strengths(item.result, chosen, strengths)[:, 0])

    def _direction(self, name: str) -> Direction:
        """The model's direction ``name``; a ``ValueError`` naming the ones it has otherwise."""
        if not isinstance(name, str) or name not in self.directions:  # (an API client's list was a TypeError)
            raise ValueError(f"unknown direction {repr(name)[:80]}; this model has {sorted(self.directions) or 'none'}")
        return self.directions[name]

    def _photo_to_paste_into(self, item: WebInversion) -> Image.Image | None:
        """The photo ``item``'s face was aligned from (read again from the upload), or None if it was not aligned."""
        if item.placement is None or item.photo is None:
            return None
        return item.photo if isinstance(item.photo, Image.Image) else read_upload(item.photo, self.limits)

    def swap(self, a: WebInversion, b: WebInversion, *, paste_back: bool = False) -> Image.Image:
        """The face of ``b`` on ``a`` (E2Style's face swapping: the composite is inverted by ``a``'s method);
        pasted back into ``a``'s photo (the face only) if asked and aligned."""
        from ..restoration import face_swap

        if not self.takes_faces:
            raise ValueError("face swapping is for models of aligned faces, and this model does not take faces")
        swap = face_swap(self.pipe, b.input, a.input, method=a.method, warn_unsigned=False)
        photo = self._photo_to_paste_into(a) if paste_back else None
        return swap.pasted(photo, a.placement) if photo is not None else self.to_display(swap.result.image)

    def mix(self, a: WebInversion, b: WebInversion, start: int, end: int) -> Image.Image:
        """``a`` with the codes of layers ``start:end`` taken from ``b`` (style mixing; ``a`` keeps its offsets)."""
        return self.to_display(self.pipe.mix(a.result, b.result, start, end))

    def interpolate(self, a: WebInversion, b: WebInversion, t: float) -> Image.Image:
        """The image at fraction ``t`` from ``a`` to ``b``, codes and residual weights interpolated (both
        inverted by the same method: additive and multiplicative offsets do not mix)."""
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must be in [0, 1], got {t}")
        if a.method != b.method:
            raise ValueError(f"the two photos were inverted by {a.method} and {b.method}: invert both with one "
                             "method")
        return self.to_display(self.pipe.blend(a.result, b.result, t))


def generated_card(path: Path, pipe: InversionPipeline) -> str:
    """What the page says about a model without a card: a generator served alone, or a bundle (e.g. a user's
    joined runs): its generator and the methods it runs."""
    from ..methods import get_method

    G = pipe.generator
    generator = f"{G.resolution} px, {G.config.img_channels} channels, {G.num_ws} codes"
    kinds = [get_method(m) for m in pipe.available_methods()]
    trained = [k.label for k in kinds if k.components]
    untrained = ", ".join(k.label for k in kinds if not k.components)
    if not trained:
        return (f"**{path.name}**: a StyleGAN2 generator alone ({generator}), with no trained encoders. It runs the "
                f"methods that need nothing trained: {untrained}.")
    return (f"**{path.name}** (no model card): a StyleGAN2 generator ({generator}) with trained "
            f"{', '.join(trained)}; it also runs {untrained}.")


def strength_slider(direction: Direction) -> dict:
    """The strength slider for ``direction``: its range, step and meaning by kind, set to its default strength."""
    from ..editing.styleclip import StyleCLIPDirection

    default = float(direction.default_strength)
    if isinstance(direction, StyleCLIPDirection):  # the official multiplier is 0.1: a fine scale
        span, step, meaning = max(1.0, 2 * abs(default)), 0.02, "the mapper's offset times this (StyleCLIP)"
    elif isinstance(direction, GANSpaceDirection):
        span, step, meaning = max(5.0, 2 * abs(default)), 0.1, "the principal coordinate's value in stds (GANSpace)"
    else:
        span, step, meaning = max(5.0, 2 * abs(default)), 0.1, "the step along the direction: w + strength · d"
    return {"minimum": -span, "maximum": span, "step": step, "value": default, "label": f"strength: {meaning}"}


def menu_names(models: Sequence[str]) -> dict[str, str]:
    """The page's name of each served model -> the model: a catalogue name as it is, a folder by its last two parts
    (numbered where two would read the same). The page and its API never show a server path."""
    names: dict[str, str] = {}
    for model in models:
        name, n = model_label(model), 2
        while name in names:
            name, n = f"{model_label(model)} ({n})", n + 1
        names[name] = model
    return names


def model_label(model: str) -> str:
    """A served model as the menu shows it: a catalogue name as it is, a path by its last two parts (the server's
    folders are not the visitor's business)."""
    return model if model in {a.name for a in CATALOGUE} else "/".join(Path(model).parts[-2:])


def model_card_summary(folder: Path) -> str:
    """The start of a model's ``MODEL_CARD.md`` for the page: its title and first paragraph, what it was trained
    on, and its limitations (where it is weak)."""
    path = Path(folder) / "MODEL_CARD.md"
    if not path.is_file():
        return f"**{Path(folder).name}**: no model card."
    sections: dict[str, list[str]] = {}
    current = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip().lower()
        elif line.startswith("# ") and not current:
            sections.setdefault("title", []).append(line[2:].strip())
        else:
            sections.setdefault(current, []).append(line)
    intro = next((p for p in "\n".join(sections.get("", [])).split("\n\n") if p.strip()), "")
    first_sentence = re.split(r"(?<=[.])\s", intro.strip(), maxsplit=1)[0]
    data = next((line for line in sections.get("data and licence", []) if line.startswith("- Data:")), "")
    weak = [line for line in sections.get("limitations", []) if line.startswith("- ")]
    parts = [f"**{' '.join(sections.get('title', [Path(folder).name]))}**. {first_sentence}"]
    if data:
        parts.append("**Trained on:** " + data.removeprefix("- Data:").strip())
    if weak:
        parts.append("**Where it is weak:**\n\n" + "\n".join(weak))
    return "\n\n".join(parts)


# --- result files -----------------------------------------------------------------------------------------------


class ResultFiles:
    """The files the page hands out (results to show and download), with meaningful names, written atomically
    into a folder of our own; each request gets its own subfolder, so a file being sent is never rewritten
    (Gradio's cache keys PIL outputs by content, and two requests with one result shared one file). Files older
    than ``keep_seconds`` are deleted, and the folder when the server stops."""

    def __init__(self, keep_seconds: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="hyperinverter-web-"))
        self.keep_seconds = keep_seconds
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()
        atexit.register(shutil.rmtree, self.folder, True)

    def write(self, name: str, data: bytes) -> str:
        self.sweep()
        path = self.folder / uuid.uuid4().hex / file_name_part(name, fallback="result")  # (a direction's name in it)
        path.parent.mkdir()
        atomic_write_bytes(path, data, durable=False)
        return str(path)

    def image(self, name: str, image: Image.Image | torch.Tensor) -> str:
        return self.write(f"{name}.png", image_bytes(image, ".png"))

    def sweep(self, *, now: float | None = None) -> int:
        """Delete the request folders older than ``keep_seconds`` (at most once a minute); returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            if now - self._last_sweep < 60 and now >= self._last_sweep:
                return 0
            self._last_sweep = now
        settle_memory()  # once a minute, give the heap that requests freed back to the system
        removed = 0
        for child in self.folder.iterdir():
            try:
                if now - child.stat().st_mtime > self.keep_seconds:
                    shutil.rmtree(child)
                    removed += 1
            except FileNotFoundError:  # another request swept it
                continue
        return removed


class UserResults:
    """What each open page has inverted, kept on the server under the page's key: at most ``capacity`` pages,
    each for ``keep_seconds`` after its last use (the least recently used go first). Gradio's own per-page state
    holds only the key, so memory is bounded by the capacity, not by the number of visitors."""

    def __init__(self, capacity: int, keep_seconds: int) -> None:
        self.capacity, self.keep_seconds = capacity, keep_seconds
        self._entries: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def entry(self, token: dict | None, model: str) -> dict:
        """The page's results for ``model`` (a new, empty entry when it has none, or had another model's)."""
        key = (token or {}).get("key") or uuid.uuid4().hex
        now = time.monotonic()
        with self._lock:
            for old in [k for k, (used, _) in self._entries.items() if now - used > self.keep_seconds]:
                del self._entries[old]
            _, entry = self._entries.pop(key, (now, None))
            if entry is None or entry["model"] != model:
                entry = {"key": key, "model": model, "items": [], "second": None}
            self._entries[key] = (now, entry)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry

    def is_current(self, entry: dict) -> bool:
        """Whether ``entry`` is still its page's results (not dropped, nor replaced by another model's)."""
        with self._lock:
            return self._entries.get(entry["key"], (0.0, None))[1] is entry

    def __len__(self) -> int:
        return len(self._entries)


def token(entry: dict) -> dict:
    """What Gradio keeps for a page: the key to its results, and their model."""
    return {"key": entry["key"], "model": entry["model"]}


# --- the Gradio page ---------------------------------------------------------------------------------------------

# The example galleries (elem_id -> what their tiles are). Gradio shows each example as a button holding an image
# with an empty alt, which a screen reader announces as an unnamed button, and no parameter of gr.Dataset names it
# (sample_labels shows text instead of the images). This script, run once per page, names each tile after what it
# is and its file, and again whenever Gradio re-renders the tiles (another model's examples, another page of them).
EXAMPLE_KINDS = {"in-domain": "held-out example", "real": "real photo"}
NAME_EXAMPLE_TILES = """() => {
  const kinds = KINDS;
  const name = () => {
    for (const [id, kind] of Object.entries(kinds)) {
      for (const tile of document.querySelectorAll(`#${id} button.gallery-item`)) {
        const image = tile.querySelector("img");
        if (!image) continue;  // (its image loads after the button)
        let file = new URL(image.src, document.baseURI).pathname.split("/").pop();
        try { file = decodeURIComponent(file); } catch (e) {}
        tile.setAttribute("aria-label", `${kind}: ${file}`);
      }
    }
  };
  new MutationObserver(name).observe(document.body, {childList: true, subtree: true, attributes: true,
                                                     attributeFilter: ["src"]});
  name();
}""".replace("KINDS", json.dumps(EXAMPLE_KINDS))


# Gradio refuses a file over its own limit (twice ours: WebLimits.transport_bytes) with a toast that names neither
# the file's size nor our limit; one between the two is sent, stored, then refused by read_upload. This script, run
# once per page, refuses a file over our limit in the browser, before it is sent: it stops the photo fields' file
# chooser and drop events (caught on their way down to the field) and says, in an alert of its own (Gradio's own
# elements are re-rendered by Gradio), the file's name, its size and the limit, as read_upload words them.
REFUSE_LARGE_UPLOADS = """() => {
  const limit = LIMIT_BYTES, limitMb = "LIMIT_MB", fields = FIELDS;
  const inField = (node) => node instanceof Element && fields.some((id) => node.closest(`#${id}`));
  const refuse = (event, files) => {
    const big = Array.from(files || []).find((file) => file.size > limit);
    if (!big) return;
    event.stopPropagation();
    event.preventDefault();
    if (event.target instanceof HTMLInputElement) event.target.value = "";  // (the same file may be chosen again)
    let note = document.getElementById("upload-refused");
    if (!note) {
      note = document.createElement("div");
      note.id = "upload-refused";
      note.setAttribute("role", "alert");
      note.style.cssText = "position: fixed; top: 1em; right: 1em; z-index: 1000; max-width: 32em; " +
        "padding: 0.8em 1em; border-radius: 6px; background: #fee2e2; color: #7f1d1d; font-weight: 600; " +
        "box-shadow: 0 2px 8px rgba(0, 0, 0, 0.25)";
      document.body.appendChild(note);
    }
    note.textContent = `${big.name}: is ${(big.size / 2 ** 20).toFixed(1)} MB; this server takes photos up to ` +
      `${limitMb} MB`;
    clearTimeout(note.hideTimer);
    note.hideTimer = setTimeout(() => note.remove(), 20000);
  };
  document.addEventListener("change", (event) => {
    const input = event.target;
    if (input instanceof HTMLInputElement && input.type === "file" && inField(input)) refuse(event, input.files);
  }, true);
  document.addEventListener("drop", (event) => {
    if (inField(event.target)) refuse(event, event.dataTransfer && event.dataTransfer.files);
  }, true);
}"""


# Gradio's slider clamps a value typed into its box to the slider's range as the box loses focus, without an input
# event: a strength of 8 typed (and edited, as the command line takes it) became 5 in the box, the edit left at 8,
# and the next sweep used 5. The handlers take and check what was typed (see `checked` in build_app); this
# script, run once per page, keeps the box of these sliders (elem_ids) from clamping it.
KEEP_TYPED_SLIDER_VALUES = """() => {
  const sliders = SLIDERS;
  document.addEventListener("blur", (event) => {
    const box = event.target;
    if (box instanceof HTMLInputElement && box.type === "number" && sliders.some((id) => box.closest(`#${id}`))) {
      event.stopPropagation();  // (caught on its way down: Gradio's own listener is on the box)
    }
  }, true);
}"""


def refuse_large_uploads_script(limits: WebLimits, fields: Sequence[str]) -> str:
    """:data:`REFUSE_LARGE_UPLOADS` for ``limits`` and the photo fields of these elem_ids."""
    return (REFUSE_LARGE_UPLOADS.replace("LIMIT_BYTES", str(limits.upload_bytes))
            .replace("LIMIT_MB", f"{limits.max_upload_mb:g}").replace("FIELDS", json.dumps(list(fields))))


@functools.cache
def checked_file_data(field: str) -> type:
    """Gradio's payload class of a file field, checking first what an API client sent: a number, a list, null's
    ``path``, a dict without one, each said in one line naming ``field``. Gradio's own check raised inside (the
    client got ``{"error": null}``, the server log a pydantic traceback)."""
    import gradio as gr
    from gradio.data_classes import FileData
    from gradio.utils import get_upload_folder, is_in_or_equal, is_static_file
    from gradio_client.utils import is_file_obj_with_meta, is_http_url_like
    from pydantic import ConfigDict, ValidationError

    wanted = (f'{field}: expected an uploaded file, {{"path": <what /gradio_api/upload answered>, "meta": '
              '{"_type": "gradio.FileData"}} (gradio_client: handle_file(path))')

    class CheckedFileData(FileData):
        model_config = ConfigDict(title="FileData")  # (the API's documentation, as Gradio's own)

        @classmethod
        def model_validate(cls, obj, **kwargs):
            if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
                raise gr.Error(f"{wanted}, got {repr(obj)[:80]}", print_exception=False)
            try:
                return super().model_validate(obj, **kwargs)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(map(str, first["loc"]))
                raise gr.Error(f"{wanted}; {where + ': ' if where else ''}{first['msg']}"[:400],
                               print_exception=False) from None

        @classmethod
        def refuse_foreign(cls, obj: object) -> None:
            """Refuse, before Gradio handles it, a payload whose path is a URL (Gradio downloaded what the client
            named) or a server file outside Gradio's upload folder (Gradio refused it, but the client got
            ``{"error": null}`` and the server log a traceback). The model's examples are served files: taken."""
            if not is_file_obj_with_meta(obj) or not isinstance(obj.get("path"), str):
                return  # (model_validate says what is wrong with it)
            path = obj["path"]
            if is_http_url_like(path):
                why = "a URL, which this server does not fetch: upload the file"
            elif "\0" in path or not (is_static_file(path) or is_in_or_equal(path, get_upload_folder())):
                why = "not a file uploaded to this server"
            else:
                return
            raise gr.Error(f"{wanted}; its path is {why}, got {path[:80]!r}", print_exception=False)

    return CheckedFileData


@contextlib.contextmanager
def private_upload_folder() -> Iterator[Path]:
    """Gradio's folder of uploads for this server alone, removed when it stops (unless ``$GRADIO_TEMP_DIR`` names
    one: then that). Gradio keeps every server's uploads in one folder per machine, each file under a name made of
    its content, and a server that stops deletes the files it received: a second server on the machine, stopped
    (or a page of it closed), deleted the photo that this one had been given too ("no longer on the server")."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        yield Path(os.environ["GRADIO_TEMP_DIR"])
        return
    folder = Path(tempfile.mkdtemp(prefix="hyperinverter-web-"))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)  # (read by Gradio as the page is built and as it is served)
    try:
        yield folder
    finally:
        del os.environ["GRADIO_TEMP_DIR"]
        shutil.rmtree(folder, ignore_errors=True)  # (ours: made above)


def settle_memory(*, arenas: int | None = None) -> bool:
    """Keep a long-running server's memory from creeping up with its request threads (glibc only; elsewhere a
    no-op that returns False). ``arenas``: cap glibc's per-thread malloc arenas (call before the threads start);
    without it, give freed heap memory back to the system (:mod:`hyperinverter.memory`)."""
    return memory.cap_arenas(arenas) if arenas is not None else memory.trim()


def user_message(e: BaseException) -> str:
    """What the page says about a failed request: our errors as they are (they name the upload, never a server
    path); anything else as its kind only, its details in the server log."""
    if isinstance(e, Cancelled):
        return "Cancelled."
    if isinstance(e, (InputError, ImportError, ValueError)):
        return str(e).strip("'\"")
    logger.exception("the web page hit an internal error")
    return f"Internal error ({type(e).__name__}); the server log has the details."


def build_app(models: Sequence[str], *, device: str | torch.device = "auto", examples: Sequence[Path] = (),
              limits: WebLimits = DEFAULT_LIMITS, dtype: str | torch.dtype = "fp32",
              content_rows: tuple[float, float] | None = None):
    """A Gradio ``Blocks`` page over the given models (pipeline folders or catalogue names), loaded on first use.
    ``examples``: real photos offered after each face model's own held-out images. ``dtype``: the precision the
    models run in: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (GPUs). ``content_rows``: of the models that are a
    generator alone (see :meth:`InversionPipeline.from_pretrained`)."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before Gradio is imported: nothing leaves
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError("the web demo needs Gradio: pip install 'hyperinverter[web]'") from e
    from ..align import NoFaceFoundError
    from ..errors import CheckpointError

    if not models:
        raise ValueError("no model to serve: give --model, or install a bundled model")
    from ..device import resolve_device
    from ..precision import resolve_dtype

    # Models load on first use: a precision the device cannot run (fp16 on a CPU) is refused now, not then.
    dtype = resolve_dtype(dtype, resolve_device(device))
    models = list(models)
    from ..catalogue import local_model_path

    served = menu_names(models)
    # The example images (held-out ones inside each model, the bundled photos) are served from where they lie, and
    # nothing else of those folders: a model folder holds its weights, and perhaps a user's notes.
    gr.set_static_paths([str(p) for m in models for p in model_examples(local_model_path(m))]
                        + [str(p) for p in examples])
    sessions: dict[str, WebSession] = {}
    loading = threading.Lock()
    files = ResultFiles(limits.keep_seconds)
    cancel_flags: dict[str, threading.Event] = {}
    running: dict[str, threading.Event] = {}  # Gradio's page (session hash) -> the cancel flag of its inversion
    departed: OrderedDict[str, None] = OrderedDict()  # pages closed lately (bounded)
    cancelled: OrderedDict[str, float] = OrderedDict()  # page -> when it last pressed Cancel (bounded)
    results = UserResults(limits.max_pages, limits.keep_seconds)
    expected = (NoFaceFoundError, InputError, ImportError, ValueError, Cancelled)

    def served_name(name: object) -> str:
        if not isinstance(name, str) or name not in served:  # (the menu's choices: an API client may send anything)
            raise gr.Error(f"unknown model {str(name)[:80]!r}; this server has {', '.join(served)}",
                           print_exception=False)  # (an expected refusal: no traceback in the server log)
        return name

    def session(name: str) -> WebSession:
        served_name(name)
        with loading:
            if name not in sessions:
                try:
                    sessions[name] = WebSession.from_model(served[name], device=device, limits=limits,
                                                           content_rows=content_rows,
                                                           dtype=dtype)
                except (FileNotFoundError, CheckpointError):
                    logger.exception("cannot load %s", served[name])
                    raise gr.Error(f"cannot load {name}: its files do not load (the server log says why)",
                                   print_exception=False) from None  # (logged above, with its cause)
            return sessions[name]

    def refuse_unless(ok: bool, field: str, wanted: str, value: object) -> None:
        """An API client's value of the wrong type, said in one line naming the field (Gradio passes what it
        was sent: a checkbox's 123 was ticked, a face's list was the first face)."""
        if not ok:
            raise gr.Error(f"{field} must be {wanted}, got {repr(value)[:40]}", print_exception=False)

    def given_number(value: object, what: str) -> bool:
        """Whether ``value`` is a number: a warning on the page where its slider's box was emptied (None), an error
        where an API client sent another kind (no API client sees a warning: it got nothing back, unexplained)."""
        if value is None:
            gr.Warning(f"{what} must be a number, got nothing (its box is empty)")
            return False
        refuse_unless(isinstance(value, (int, float)) and not isinstance(value, bool), what, "a number", value)
        # (NaN or infinity reach the page only from an API client, which never saw the warning it got)
        refuse_unless(math.isfinite(value), what, "a finite number", value)
        return True

    def boxes(**ticked: object) -> None:
        for field, value in ticked.items():
            refuse_unless(isinstance(value, bool), field, "true or false (a checkbox)", value)

    def page_entry(state: dict | None, name: object, label: object = None) -> dict:
        """The page's results for model ``name``, once ``name`` and the face ``label`` are of the right kind (an
        unknown model's name replaced the page's results with an empty entry before it was refused)."""
        refuse_unless(label is None or isinstance(label, str), "label", "the name of a face (the face menu's)",
                      label)
        return results.entry(state, served_name(name))

    def pick(entry: dict, label: str | None, quiet: bool = False) -> WebInversion | None:
        """The face ``label`` names (the first without a label), or None without a photo. A label that names no
        face of the photo is refused, or None where ``quiet``: it was the first face, so an edit queued behind the
        next photo's inversion, or an API client's typo, edited a face no one asked for."""
        items = entry["items"]
        if not items or label in (None, ""):
            return items[0] if items else None
        item = next((it for it in items if it.label == label), None)
        if item is None and not quiet:
            known = ", ".join(repr(it.label) for it in items)
            raise gr.Error(f"label {label!r} names no face of the inverted photo (its faces: {known}): pick one from "
                           "the face menu", print_exception=False)
        return item

    def downloads(name: str, s: WebSession, item: WebInversion) -> list[str]:
        from ..inversion.files import inversion_bytes

        # The model as the page names it (what `--model` takes for a catalogue one), not the server's folder.
        record = inversion_bytes(item.result.to("cpu"), source=item.stem, model=name, method=item.method,
                                 generator=s.pipe.fingerprint, placement=item.placement, dtype=s.pipe.dtype)
        return [files.image(item.stem, s.pipe.content(item.result.image.cpu())),
                files.image(f"{item.stem}_compare", s.comparison(item)),
                files.write(f"{item.stem}.safetensors", record)]

    # --- handlers: each returns every output it owns, so a failure clears what would be stale ---
    def on_model(name, state):
        s = session(name)
        names = sorted(s.directions)
        num_ws = s.pipe.generator.num_ws
        real = [str(p) for p in examples] if s.takes_faces else []
        entry = results.entry(state, name)
        entry.update(items=[], second=None)  # a new page, or another model: nothing of before applies
        return (token(entry), gr.update(choices=names, value=names[0] if names else None),
                gr.update(value=s.takes_faces, interactive=s.takes_faces),  # (fashion-32's could only find no face)
                gr.update(value=None, label=" | ".join(s.comparison_labels())),
                gr.update(choices=s.methods(), value=s.pipe.default_method), s.card,
                gr.Dataset(samples=[[str(p)] for p in s.examples], visible=bool(s.examples)),
                gr.update(visible=bool(s.examples)),
                gr.Dataset(samples=[[p] for p in real], visible=bool(real)), gr.update(visible=bool(real)),
                gr.update(choices=[], value=None), "", None, None, None, None,
                gr.update(maximum=num_ws - 1, value=min(num_ws - 1, max(1, num_ws // 2))),  # (num_ws: always empty)
                gr.update(maximum=num_ws, value=num_ws), None,
                # Face swapping is for models of faces (fashion-32's Swap could only say it was not one).
                gr.update(value=None, visible=s.takes_faces), gr.update(visible=s.takes_faces))

    def on_preview(photo):
        """The upload as the page shows it (downscaled like every upload), or what is wrong with it."""
        if photo is None:
            return None, ""
        try:
            image = read_upload(photo, limits)
            image.thumbnail((512, 512))
            return files.image(_safe_stem(Path(photo).name), image), ""
        except Exception as e:  # noqa: BLE001 - the page says what kind, the log has the rest
            return None, f"**{user_message(e)}**"

    def on_method(name, method, shown):
        # A comparison on show keeps the labels of the method that made it (on_invert, on_pick set them).
        s = session(name)
        try:
            inverter = s.pipe.inverter(method)
        except (KeyError, ValueError):  # (a name typed into the menu, an API client's: on_invert says so)
            inverter = None  # (its comparison's labels failed here, a traceback in the server log)
        label = gr.update() if shown or inverter is None else gr.update(label=" | ".join(s.comparison_labels(method)))
        defaults = {} if inverter is None else inverter.options
        # The range is in the label, not the field's bounds: Gradio refused a value out of them before on_invert
        # (a bare "Value -5 is less than minimum value 1.", the last result left on show) and rounded 2.5 to 2.
        fields = [gr.update(visible=key in defaults, value=defaults.get(key),
                            label=step_label(key, defaults.get(key))) for key in STEP_OPTIONS]
        return label, *fields

    def comparison(s: WebSession, item: WebInversion):
        """The comparison of ``item`` to show, labelled by the method that made it (not the one now chosen)."""
        return gr.update(value=files.image(f"{item.stem}_compare", s.comparison(item)),
                         label=" | ".join(s.comparison_labels(item.method)))

    def on_invert(name, method, photo, align, state, photo_b, pivot_steps=None, steps=None, request=None,
                  progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        page = getattr(request, "session_hash", None)
        if page is not None and page in departed:  # (queued by a page that has been closed since: no work)
            return state, None, gr.update(), "", None, None, None, None, None
        if cancelled_while_queued(page):  # (Cancel came while it waited for another page's work: nothing is done)
            return state, gr.update(), gr.update(), "**Cancelled.**", *(gr.update(),) * 5
        boxes(align=align)
        s = session(name)
        entry = results.entry(state, name)
        flag = cancel_flags.setdefault(entry["key"], threading.Event())
        flag.clear()
        if page is not None:
            running[page] = flag

        def report(step: int, total: int) -> None:
            if flag.is_set() or client_gone(page):
                raise Cancelled
            progress((step, total), desc=f"{method}: step")

        entry["items"] = []
        state = token(entry)
        try:  # (the flag stays up through both photos' inversions: Cancel stops the second one too)
            try:
                options = step_options(s.pipe.inverter(method), (pivot_steps, steps))
                found = s.invert(photo, align=align, method=method, progress=report, options=options,
                                 name=Path(photo).name if isinstance(photo, str) else "photo")
            except Exception as e:  # noqa: BLE001 - the page says what kind, the log has the rest
                message = user_message(e)
                if isinstance(e, expected):
                    gr.Warning(message)
                return state, None, gr.update(choices=[], value=None), f"**{message}**", None, None, None, None, None
            if not results.is_current(entry):  # the page's results were replaced meanwhile: these are not its own
                dropped = (f"**The model was switched, or this page's results expired, meanwhile: {name}'s "
                           "inversion is dropped.**")
                return (gr.update(), gr.update(), gr.update(), dropped, *(gr.update(),) * 5)
            entry["items"] = found
            second = entry["second"]
            if photo_b is not None and (second is None or second.method != found[0].method):
                try:  # blends and mixes need both photos inverted by one method
                    entry["second"] = s.invert(photo_b, align=align, method=method, name=Path(photo_b).name,
                                               progress=report, options=options, largest_only=True)[0]
                except expected as e:
                    gr.Warning(f"the second photo: {user_message(e)}")
        finally:
            cancel_flags.pop(entry["key"], None)
            running.pop(page, None)
        labels = [it.label for it in found]
        where = f"{len(found)} face(s), left to right" if align else "the centred square of the photo"
        label = s.pipe.inverter(method).label
        status = f"{label}: **{sum(it.seconds for it in found):.2f} s** for {where}"
        first = found[0]
        return (state, comparison(s, first),
                gr.update(choices=labels, value=labels[0]), status, downloads(name, s, first), None, None, None, None)

    def client_gone(page: str | None) -> bool:
        """Whether Gradio has given up the page's running event because its client's stream closed: a closed tab,
        or an API client that went away (it opens no heartbeat, so unload never comes for it). Gradio's queue is
        not public: where it is not as read here, nothing is known to have gone."""
        try:
            events = [event for jobs in app._queue.active_jobs if jobs for event in jobs]
        except (AttributeError, TypeError):
            return False
        return page is not None and any(getattr(event, "session_hash", None) == page
                                        and getattr(event, "alive", True) is False for event in events)

    def cancelled_while_queued(page: str | None) -> bool:
        """Whether the page pressed Cancel after its running inversion joined Gradio's queue (before it started, so
        no flag was there to set). Gradio's queue is not public: where it is not as read here, nothing is known."""
        pressed = cancelled.get(page) if page is not None else None
        if pressed is None:
            return False
        try:
            joined = [event.enqueue_time for jobs in app._queue.active_jobs if jobs for event in jobs
                      if getattr(event, "session_hash", None) == page and getattr(event.fn, "name", "") == "on_invert"]
        except (AttributeError, TypeError):
            return False
        return bool(joined) and pressed > max(joined)

    def on_cancel(state, request=None):
        page = getattr(request, "session_hash", None)
        if page is not None:  # (an inversion still waiting in the queue sees it when it starts)
            cancelled[page] = time.monotonic()  # (Gradio's enqueue_time is on this clock)
            cancelled.move_to_end(page)
            while len(cancelled) > 4096:
                cancelled.popitem(last=False)
        flag = cancel_flags.get((state or {}).get("key", ""))
        if flag is not None:  # an inversion of this page is running
            flag.set()

    def on_leave(request=None):
        """A page was closed (Gradio's unload): its running inversion stops at its next step, as Cancel stops it,
        and what it had queued does no work, so that a visitor who has gone does not hold the model for others."""
        page = getattr(request, "session_hash", None)
        if page is None:
            return
        departed[page] = None
        while len(departed) > 4096:
            departed.popitem(last=False)
        flag = running.get(page)
        if flag is not None:
            flag.set()

    # Gradio hands a handler the request where the parameter is annotated with its class (postponed annotations
    # of this module would not resolve to it).
    for handler in (on_invert, on_leave, on_cancel):
        handler.__annotations__["request"] = gr.Request

    # The handlers below use a page's results: each hands its key back (Gradio forgets a page's state
    # ``keep_seconds`` after it was last set, not used), says when there is nothing to use (``quiet``: not where it
    # follows another step, which has said so), and says what went wrong instead of failing in Gradio.
    kept = f"a page's results are kept {limits.keep_seconds // 60} minutes after their last use"
    needs_photo = f"invert a photo first ({kept})"
    needs_two = f"invert a photo and upload a second one first ({kept})"

    def attempt(make, *args, about: str = ""):
        try:
            return make(*args)
        except Exception as e:  # noqa: BLE001 - the page says what kind, the log has the rest
            gr.Warning(about + user_message(e))
            return None

    def on_pick(name, state, label):
        entry = page_entry(state, name, label)
        item = pick(entry, label, quiet=True)
        if item is None and entry["items"]:  # (a face of a photo no longer shown, picked while the next was inverted)
            gr.Warning(f"label {label!r} names no face of the inverted photo: the comparison is left as it is")
            return gr.update(), gr.update(), token(entry)
        if item is None:
            return None, None, token(entry)
        s = session(name)
        shown = attempt(lambda: (comparison(s, item), downloads(name, s, item)))
        return (*(shown or (None, None)), token(entry))

    def on_direction(name, direction):
        # (an API client's list was a TypeError: the edit that follows names it as an unknown direction)
        chosen = session(name).directions.get(direction) if isinstance(direction, str) else None
        return gr.update(**strength_slider(chosen)) if chosen is not None else gr.update()

    def to_edit(entry, label, direction, strength, quiet=False):
        """The picked face to edit, or None (said, unless ``quiet``) without a photo, a direction or a strength."""
        refuse_unless(direction is None or isinstance(direction, str), "direction", "the name of a direction",
                      direction)
        item = pick(entry, label, quiet)
        if item is None or not direction:
            if not quiet:
                gr.Warning(needs_photo if item is None else "choose a direction")
            return None
        return item if given_number(strength, "strength") else None

    def on_edit(name, state, label, direction, strength, paste, every_face=False, quiet=False):
        boxes(paste=paste, every_face=every_face)
        entry = page_entry(state, name, label)
        item = to_edit(entry, label, direction, strength, quiet)
        if item is None:
            return None, token(entry)
        s = session(name)
        # Every face of the photo (the faces menu's), edited alike: in a row, or pasted back into one photo.
        faces = entry["items"] if every_face and len(entry["items"]) > 1 else [item]
        image = attempt(lambda: s.edit_faces(faces, direction, strength, paste_back=paste))
        if image is None:
            return None, token(entry)
        stem = item.stem if len(faces) == 1 else item.photo_stem or item.stem
        suffix = "_photo" if paste and item.placement is not None else ""
        return files.image(f"{stem}_{direction}{strength:+g}{suffix}", image), token(entry)

    def on_sweep(name, state, label, direction, strength):
        entry = page_entry(state, name, label)
        item = to_edit(entry, label, direction, strength)
        image = None if item is None else attempt(session(name).sweep, item, direction, strength)
        if image is None:
            return None, token(entry)
        return files.image(f"{item.stem}_{direction}_sweep{abs(strength):g}", image), token(entry)

    def on_second(name, method, photo, align, state, pivot_steps=None, steps=None):
        """The second photo inverted; the face swap of the photo before it is cleared (a click makes this one's)."""
        boxes(align=align)
        refuse_unless(method is None or isinstance(method, str), "method", "the name of a method", method)
        entry = page_entry(state, name)
        entry["second"] = None
        if photo is None:
            return token(entry), None
        s = session(name)
        found = attempt(lambda: s.invert(photo, align=align, method=method,
                                         options=step_options(s.pipe.inverter(method), (pivot_steps, steps)),
                                         name=Path(photo).name if isinstance(photo, str) else "photo",
                                         largest_only=True),
                        about="the second photo: ")  # (its errors say "the photo", as the first one's do)
        entry["second"] = found[0] if found else None
        return token(entry), None

    def on_blend(name, state, label, t, quiet=False):
        entry = page_entry(state, name, label)
        item, other = pick(entry, label, quiet), entry["second"]
        if item is None or other is None:
            if not quiet:
                gr.Warning(needs_two)
            return None, token(entry)
        if not given_number(t, "t"):
            return None, token(entry)
        image = attempt(session(name).interpolate, item, other, t)
        if image is None:
            return None, token(entry)
        return files.image(f"{item.stem}_to_{other.stem}_t{t:g}", image), token(entry)

    def on_mix(name, state, label, start, end, quiet=False):
        entry = page_entry(state, name, label)
        item, other = pick(entry, label, quiet), entry["second"]
        if item is None or other is None:
            if not quiet:
                gr.Warning(needs_two)
            return None, token(entry)
        if not (given_number(start, "the first layer to mix") and given_number(end, "the layer to mix to")):
            return None, token(entry)
        if not (float(start).is_integer() and float(end).is_integer()):  # (int() of inf raised; 2.5 was mixed as 2)
            gr.Warning(f"the layers to mix must be whole numbers, got {start!r} and {end!r}")
            return None, token(entry)
        image = attempt(session(name).mix, item, other, int(start), int(end))
        if image is None:
            return None, token(entry)
        return files.image(f"{item.stem}_mix{int(start)}-{int(end)}_{other.stem}", image), token(entry)

    def on_swap(name, state, label, paste):
        boxes(paste=paste)
        entry = page_entry(state, name, label)
        item, other = pick(entry, label), entry["second"]
        if item is None or other is None:
            gr.Warning(f"invert a photo and upload a second one first: its face goes onto the first photo's ({kept})")
            return None, token(entry)
        image = attempt(lambda: session(name).swap(item, other, paste_back=paste))
        if image is None:
            return None, token(entry)
        suffix = "_photo" if paste and item.placement is not None else ""
        return files.image(f"{item.stem}_swap_{other.stem}{suffix}", image), token(entry)

    def quietly(handler):
        """``handler`` where it follows another step (which has said what is missing): it says nothing of that."""
        def follow(*args):
            return handler(*args, quiet=True)

        return follow

    with gr.Blocks(title="hyperinverter", analytics_enabled=False,
                   delete_cache=(max(60, limits.keep_seconds // 4), limits.keep_seconds)) as app:
        gr.Markdown("# hyperinverter\nInvert a photo into the model's StyleGAN2 generator with any of its methods, "
                    "then edit it. Runs on this machine: nothing is sent elsewhere, and uploads and results are "
                    f"deleted after {limits.keep_seconds // 60} minutes.")
        state = gr.State(None, time_to_live=limits.keep_seconds)
        with gr.Row():
            model = gr.Dropdown(list(served), value=next(iter(served)), label="model", elem_id="model")
            # An API client's name the server does not serve is named by session(), in one line: Gradio's own check
            # of the choices came first (a traceback in the server log, the name said back whole). No handler sets the
            # menu, so the page keeps no copy of it with its class's check (see `checked` below).
            model.preprocess = lambda payload: payload
            # Choices come with the model (on_model); the handlers check values, so API clients may send any.
            method = gr.Dropdown([], label="method (W / W+ / PTI optimise: slow, with a progress bar)",
                                 allow_custom_value=True, elem_id="method")
            align = gr.Checkbox(value=True, label="align faces (dlib 68 landmarks)", elem_id="align")
            # Shown for the methods that take them (on_method), at most their official counts: fewer is quicker.
            # No bounds or rounding of Gradio's: step_options checks the value and the page says what is wrong.
            step_fields = [gr.Number(label=step_label(key, None), visible=False, elem_id=key.replace("_", "-"))
                           for key in STEP_OPTIONS]
        card = gr.Markdown(elem_id="model-card")
        with gr.Row():
            with gr.Column():
                # A file field, not an image field: what is uploaded is read by our code, so a file that is not
                # an image gets our message (Gradio's image field fails before any handler, naming a server path).
                # Every suffix the package reads, so that a file chooser that does not know HEIC still offers it.
                photo = gr.File(label="photo", file_types=["image", *IMAGE_SUFFIXES], type="filepath", elem_id="photo")
                preview = gr.Image(type="filepath", label="your photo", interactive=False, elem_id="preview",
                                   height=200)
            compare = gr.Image(type="filepath", format="png", label="input | result", interactive=False,
                               elem_id="compare")
        with gr.Row():
            run = gr.Button("Invert", variant="primary", elem_id="invert")
            stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
            face = gr.Dropdown([], label="face", elem_id="face", allow_custom_value=True)
        status = gr.Markdown(elem_id="status")
        result_files = gr.File(label="downloads: result, comparison, inversion file (w and Δθ)",
                               file_count="multiple", interactive=False)
        in_domain_note = gr.Markdown("**Examples from the model's own held-out data** (what it was trained for):",
                                     visible=False)
        in_domain = gr.Dataset(components=[preview], samples=[], label="held-out examples", elem_id="in-domain")
        real_note = gr.Markdown("**Real photos** that come with hyperinverter (how far they lie from what the model "
                                "was trained on, and so how well it does on them, is in its card above):",
                                visible=False, elem_id="real-note")
        real = gr.Dataset(components=[preview], samples=[], label="real photos", visible=False, elem_id="real")
        gr.Markdown("## Edit")
        with gr.Row():
            direction = gr.Dropdown([], label="direction", allow_custom_value=True, elem_id="direction")
            strength = gr.Slider(-5.0, 5.0, value=3.0, step=0.1, label="strength", elem_id="strength")
            with gr.Column():
                paste = gr.Checkbox(value=False, label="paste back into the photo", elem_id="paste")
                every_face = gr.Checkbox(value=False, label="edit every face of the photo", elem_id="every-face")
                sweep = gr.Button(f"Sweep ±strength ({SWEEP_STEPS} edits)", elem_id="sweep")
        edited = gr.Image(type="filepath", format="png", label="edited", interactive=False, elem_id="edited")
        gr.Markdown("## A second photo: interpolate (codes and residual weights), mix styles, swap faces")
        with gr.Row():
            photo_b = gr.File(label="second photo", file_types=["image", *IMAGE_SUFFIXES], type="filepath",
                              elem_id="photo-b")
            with gr.Column():
                t = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="t", elem_id="t")
                blended = gr.Image(type="filepath", format="png", label="blend", interactive=False, elem_id="blend")
            with gr.Column():
                # The model sets both (on_model); these values are what the API documents as defaults, so they fit
                # every generator (8 px and up have 4 layers of codes or more).
                start = gr.Slider(0, 18, value=2, step=1, label="mix from layer", elem_id="mix-start")
                end = gr.Slider(0, 18, value=4, step=1, label="to layer (exclusive)", elem_id="mix-end")
                mixed = gr.Image(type="filepath", format="png", label="first photo, these layers' codes from the "
                                 "second", interactive=False, elem_id="mixed")
            with gr.Column():
                swap = gr.Button("Swap faces", elem_id="swap")
                # E2Style's face swapping; with "paste back into the photo" the face goes into the first photo.
                swapped = gr.Image(type="filepath", format="png", label="the second photo's face on the first",
                                   interactive=False, elem_id="swapped")

        # An API client's payload of the photo fields is checked before Gradio's own check (which raised inside). Set
        # on the fields, not by a subclass (Gradio writes a .pyi beside the module of one): no handler may update
        # them with gr.update, which makes the page a copy of the field from its class.
        for field in (photo, photo_b):
            field.data_model = checked_file_data(field.label)
        # Gradio moves a file payload into its cache before any check of the field's: a URL was downloaded, a
        # foreign path refused unexplained. The payloads of the photo fields are checked before it, on every event.
        gradio_validate_inputs = app.validate_inputs

        def validate_inputs(block_fn, inputs):
            for field, payload in zip(block_fn.inputs, inputs):
                if field is photo or field is photo_b:
                    field.data_model.refuse_foreign(payload)
            gradio_validate_inputs(block_fn, inputs)

        app.validate_inputs = validate_inputs
        model_outputs = [state, direction, align, compare, method, card, in_domain, in_domain_note, real, real_note,
                         face, status, edited, blended, mixed, result_files, start, end, photo_b, swapped, swap]
        edit_inputs = [model, state, face, direction, strength, paste, every_face]
        blend_inputs = [model, state, face, t]
        mix_inputs = [model, state, face, start, end]
        invert_outputs = [state, compare, face, status, result_files, edited, blended, mixed, swapped]
        # One public API endpoint per action (what `gradio_client` and the load benchmark call); the chained
        # repeats that keep the page consistent are callable but undocumented.
        queued = {"concurrency_id": "models"}
        # The events that read the sliders (every `quiet` one does) take what was typed: emptied (None) or beyond the
        # slider. Gradio's own check refused both before the handler (the old result left on show, a toast naming no
        # field or nothing at all, a traceback in the server log), where the handlers say what is wrong and take a
        # strength beyond the slider as the command line does. Not by lifting the check on the sliders: Gradio
        # keeps a page's own copy, with its class's check, of a component a handler updated (the model sets the layer
        # sliders' range, a direction the strength's). Their other inputs are a menu's or a box's values as sent.
        checked = {**queued, "preprocess": False}
        quiet = {**checked, "api_visibility": "undocumented"}
        app.load(on_model, [model, state], model_outputs, api_name="model")
        app.load(None, js=NAME_EXAMPLE_TILES)  # (in the browser only)
        app.load(None, js=refuse_large_uploads_script(limits, ["photo", "photo-b"]))
        app.load(None, js=KEEP_TYPED_SLIDER_VALUES.replace("SLIDERS", json.dumps(["strength", "t", "mix-start",
                                                                                  "mix-end"])))
        model.change(on_model, [model, state], model_outputs, api_visibility="undocumented")
        in_domain.click(lambda sample: sample[0], [in_domain], [photo], api_visibility="undocumented")
        real.click(lambda sample: sample[0], [real], [photo], api_visibility="undocumented")
        # A preview reads the upload, no model: it waits for other previews only, not behind others' inversions
        # (minutes of W optimisation), and says at once what is wrong with a file.
        photo.change(on_preview, [photo], [preview, status], api_name="preview", concurrency_id="previews")
        inverting = run.click(on_invert, [model, method, photo, align, state, photo_b, *step_fields], invert_outputs,
                              api_name="invert", **queued)
        inverting.then(quietly(on_edit), edit_inputs, [edited, state], **quiet).then(
            quietly(on_blend), blend_inputs, [blended, state], **quiet).then(
            quietly(on_mix), mix_inputs, [mixed, state], **quiet)
        stop.click(on_cancel, [state], None, queue=False, api_name="cancel")
        method.change(on_method, [model, method, compare], [compare, *step_fields], api_visibility="undocumented")
        face.change(on_pick, [model, state, face], [compare, result_files, state], api_name="pick", **queued).then(
            quietly(on_edit), edit_inputs, [edited, state], **quiet)
        # .input (not .release): arrow keys move a slider too; only the last value waits in the queue. Not .change,
        # which also fires when a model or direction sets the slider: those steps make their own edit, quietly.
        strength.input(on_edit, edit_inputs, [edited, state], api_name="edit", trigger_mode="always_last",
                       **checked)
        # A direction brings its own strength (and range): the edit follows once the slider holds it.
        direction.change(on_direction, [model, direction], [strength], api_visibility="undocumented").then(
            quietly(on_edit), edit_inputs, [edited, state], trigger_mode="always_last", **quiet)
        for option in (paste, every_face):
            option.change(quietly(on_edit), edit_inputs, [edited, state], trigger_mode="always_last", **quiet)
        # In the edit's place (cleared with it by a new photo or model); the slider brings the single edit back.
        sweep.click(on_sweep, [model, state, face, direction, strength], [edited, state], api_name="sweep", **checked)
        photo_b.change(on_second, [model, method, photo_b, align, state, *step_fields], [state, swapped],
                       api_name="second",
                       **queued).then(quietly(on_blend), blend_inputs, [blended, state], **quiet).then(
            quietly(on_mix), mix_inputs, [mixed, state], **quiet)
        t.input(on_blend, blend_inputs, [blended, state], api_name="blend", trigger_mode="always_last", **checked)
        start.input(on_mix, mix_inputs, [mixed, state], api_name="mix", trigger_mode="always_last", **checked)
        end.input(on_mix, mix_inputs, [mixed, state], trigger_mode="always_last", **quiet)
        # A slider's reset button sets it without an input event (the result stayed at the value before, the slider
        # showing another); it comes with a release event, as letting go of the slider does (an edit again, alike).
        released = ((strength, on_edit, edit_inputs, edited), (t, on_blend, blend_inputs, blended),
                    (start, on_mix, mix_inputs, mixed), (end, on_mix, mix_inputs, mixed))
        for slider, handler, inputs, output in released:
            slider.release(quietly(handler), inputs, [output, state], trigger_mode="always_last", **quiet)
        swap.click(on_swap, [model, state, face, paste], [swapped, state], api_name="swap", **queued)
        app.unload(on_leave)
    app.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    app.hyperinverter_files, app.hyperinverter_results = files, results  # for tests
    return app
