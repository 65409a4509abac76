"""The web demo (``hyperinverter web``): upload a photo, invert it with any method of the model, edit it,
interpolate.

:class:`WebSession` is the logic, plain Python on the pipeline (tested without a browser); :func:`build_app`
wires sessions to a Gradio page (the optional ``web`` extra). Everything runs on the machine that serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..editing.directions import Direction, load_model_directions
from ..errors import ImageReadError
from ..io.images import enlarge_nearest, make_grid, read_image, tensor_to_pil
from ..methods import InversionResult
from ..pipeline import InversionPipeline

logger = logging.getLogger(__name__)

@dataclass
class WebInversion:
    """One inverted face (or whole image): its model-size input, the result, and where it sits in its photo."""

    label: str
    input: torch.Tensor  # [1,C,R,R] in [-1,1]
    result: InversionResult  # one sample
    method: str  # the method that inverted it
    photo: Image.Image | None = None  # the photo it was aligned from, for pasting edits back
    placement: dict | None = None


class WebSession:
    """Invert, edit and interpolate with one pipeline, returning display-ready PIL images."""

    def __init__(self, pipe: InversionPipeline, directions: Mapping[str, Direction] | None = None, *,
                 detector=None, display_size: int = 256) -> None:
        self.pipe = pipe
        self.directions = dict(directions or {})
        self.detector = detector  # a face detector for alignment (None: alignment unavailable)
        self.display_size = display_size

    @classmethod
    def from_model(cls, model: str | Path, *, device: str | torch.device = "auto", display_size: int = 256,
                   ) -> WebSession:
        """A pipeline folder or catalogue name, with its shipped directions and (if installed) dlib alignment."""
        from ..align import optional_detector
        from ..catalogue import local_model_path

        path = local_model_path(model)
        detector, why_not = optional_detector()
        if why_not:
            logger.warning(why_not)
        return cls(InversionPipeline.from_pretrained(path, device=device), load_model_directions(path),
                   detector=detector, display_size=display_size)

    def methods(self) -> list[str]:
        """The methods this model runs, its default first."""
        names = self.pipe.available_methods()
        return [self.pipe.default_method] + [n for n in names if n != self.pipe.default_method]

    def invert(self, photo: Image.Image | str | Path, *, align: bool, method: str | None = None
               ) -> list[WebInversion]:
        """Every face of ``photo`` (an upload's file, or a PIL image) FFHQ-aligned (``align``), or its centred
        square, inverted in one batch by ``method`` (default: the model's).

        Raises ``ImageReadError`` for an upload that is not a readable image, ``NoFaceFoundError`` when aligning a
        photo without a face, ``ImportError`` when alignment is asked for but dlib is not installed.
        """
        if photo is None:
            raise ImageReadError("the upload", "no image given")
        from ..inversion.batch import photo_pictures

        G = self.pipe.generator
        if align and self.detector is None:
            raise ImportError("face alignment needs dlib: pip install 'hyperinverter[align]'")
        # The same reading rules as files (EXIF, transparency, 16-bit ...); errors never show server paths.
        photo = read_image(photo, name="the uploaded photo")
        pictures = photo_pictures(photo, "photo", Path("the photo"), resolution=G.resolution,
                                  channels=G.config.img_channels, detector=self.detector if align else None,
                                  align_scale=self.pipe.align_scale)
        batch = torch.cat([p.image for p in pictures])
        method = method or self.pipe.default_method
        result = self.pipe.invert(batch, method=method)
        return [WebInversion(p.name, batch[i : i + 1], result.select(i), method, photo if p.placement else None,
                             p.placement) for i, p in enumerate(pictures)]

    def to_display(self, images: torch.Tensor) -> Image.Image:
        """``[N,C,R,R]`` -> one row, enlarged to about display_size."""
        images = enlarge_nearest(images.cpu(), self.display_size)
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
        if direction not in self.directions:
            raise ValueError(f"unknown direction {direction!r}; this model has {sorted(self.directions) or 'none'}")
        edited = self.pipe.edit(item.result, self.directions[direction], strength)
        if paste_back and item.placement is not None and item.photo is not None:
            from ..align import paste_back_placement

            face = tensor_to_pil(edited.cpu())[0].convert("RGB")
            return paste_back_placement(item.photo.convert("RGB"), face, item.placement)
        return self.to_display(edited)

    def interpolate(self, a: WebInversion, b: WebInversion, t: float) -> Image.Image:
        """The image at fraction ``t`` from ``a`` to ``b``, codes and residual weights interpolated (both
        inverted by the same method: additive and multiplicative offsets do not mix)."""
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must be in [0, 1], got {t}")
        if a.method != b.method:
            raise ValueError(f"the two photos were inverted by {a.method} and {b.method}: invert both with one "
                             "method")
        return self.to_display(self.pipe.blend(a.result, b.result, t))


# --- the Gradio page ---------------------------------------------------------------------------------------


def build_app(models: Sequence[str], *, device: str | torch.device = "auto", examples: Sequence[Path] = ()):
    """A Gradio ``Blocks`` page over the given models (pipeline folders or catalogue names), loaded on first use."""
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError("the web demo needs Gradio: pip install 'hyperinverter[web]'") from e
    from ..align import NoFaceFoundError
    from ..errors import CheckpointError

    if not models:
        raise ValueError("no model to serve: give --model, or install a bundled model")
    sessions: dict[str, WebSession] = {}

    def session(name: str) -> WebSession:
        if name not in sessions:
            try:
                sessions[name] = WebSession.from_model(name, device=device)
            except (FileNotFoundError, CheckpointError) as e:
                raise gr.Error(f"cannot load {name}: {e}") from None
        return sessions[name]

    def user_error(e: Exception):
        return gr.Error(str(e).strip("'\""))

    def on_model(name):
        s = session(name)
        names = sorted(s.directions)
        return (gr.update(choices=names, value=names[0] if names else None),
                gr.update(value=s.pipe.generator.config.img_channels == 3 and s.detector is not None),
                gr.update(label=" | ".join(s.comparison_labels())),
                gr.update(choices=s.methods(), value=s.pipe.default_method))

    def on_method(name, method):
        return gr.update(label=" | ".join(session(name).comparison_labels(method)))

    def on_invert(name, method, photo, align):
        s = session(name)
        try:
            found = s.invert(photo, align=align, method=method)
        except (NoFaceFoundError, ImageReadError, ImportError) as e:
            raise user_error(e) from None
        labels = [it.label for it in found]
        note = f"{len(found)} face(s) found" if align else "inverted the centred square of the photo"
        return found, s.comparison(found[0]), gr.update(choices=labels, value=labels[0]), note

    def on_reinvert(name, method, photo, align):
        if photo is None:
            return None, None, gr.update(), ""
        return on_invert(name, method, photo, align)

    def pick(found, label):
        return next((it for it in found if it.label == label), found[0])

    # Edits and blends follow every change of their inputs; before anything is inverted they show nothing.
    def on_pick(name, found, label):
        return session(name).comparison(pick(found, label)) if found else None

    def on_edit(name, found, label, direction, strength, paste):
        if not found or not direction:
            return None
        return session(name).edit(pick(found, label), direction, strength, paste_back=paste)

    def on_second(name, method, photo, align):
        if photo is None:
            return None
        try:
            return session(name).invert(photo, align=align, method=method)[0]
        except (NoFaceFoundError, ImageReadError, ImportError) as e:
            raise user_error(e) from None

    def on_blend(name, found, label, other, t):
        if not found or other is None:
            return None
        try:
            return session(name).interpolate(pick(found, label), other, t)
        except ValueError as e:
            raise user_error(e) from None

    with gr.Blocks(title="hyperinverter") as app:
        gr.Markdown("# HyperInverter\nPhase I finds one code *w*; Phase II predicts residual generator weights "
                    "Δθ, and the result is G(w; θ+Δθ). Edits move *w* and keep Δθ. Every method of the model can "
                    "be chosen (HyperStyle: multiplicative offsets refined over iterations). Runs on this "
                    "machine.")
        items = gr.State(None)
        second = gr.State(None)
        with gr.Row():
            model = gr.Dropdown(list(models), value=models[0], label="model")
            method = gr.Dropdown([], label="method")
            align = gr.Checkbox(value=True, label="align faces (dlib 68 landmarks)")
        with gr.Row():
            photo = gr.Image(type="filepath", label="photo")
            compare = gr.Image(type="pil", format="png", label="input | Phase I (W) | HyperInverter",
                               interactive=False)
        with gr.Row():
            run = gr.Button("Invert", variant="primary")
            face = gr.Dropdown([], label="face")
            status = gr.Markdown()
        if examples:
            gr.Examples([[str(p)] for p in examples], inputs=[photo])
        gr.Markdown("## Edit")
        with gr.Row():
            direction = gr.Dropdown([], label="direction")
            strength = gr.Slider(-5.0, 5.0, value=3.0, step=0.5, label="strength (GANSpace: the coordinate's value)")
            paste = gr.Checkbox(value=False, label="paste back into the photo")
        edited = gr.Image(type="pil", format="png", label="edited", interactive=False)
        gr.Markdown("## Interpolate (codes and residual weights)")
        with gr.Row():
            photo_b = gr.Image(type="filepath", label="second photo")
            t = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="t")
            blended = gr.Image(type="pil", format="png", label="blend", interactive=False)

        edit_inputs = [model, items, face, direction, strength, paste]
        blend_inputs = [model, items, face, second, t]
        app.load(on_model, [model], [direction, align, compare, method])
        model.change(on_model, [model], [direction, align, compare, method])
        # Another method inverts what is on the page again (both photos: blends need one method).
        method.change(on_method, [model, method], [compare]).then(
            on_reinvert, [model, method, photo, align], [items, compare, face, status]).then(
            on_second, [model, method, photo_b, align], [second]).then(
            on_edit, edit_inputs, [edited]).then(on_blend, blend_inputs, [blended])
        run.click(on_invert, [model, method, photo, align], [items, compare, face, status]).then(
            on_edit, edit_inputs, [edited]).then(on_blend, blend_inputs, [blended])
        face.change(on_pick, [model, items, face], [compare]).then(on_edit, edit_inputs, [edited])
        for trigger in (direction.change, strength.release, paste.change):
            trigger(on_edit, edit_inputs, [edited])
        photo_b.change(on_second, [model, method, photo_b, align], [second]).then(on_blend, blend_inputs,
                                                                                     [blended])
        t.release(on_blend, blend_inputs, [blended])
    return app
