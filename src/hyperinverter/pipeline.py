"""``InversionPipeline``: load a HyperInverter model, invert images, edit, interpolate. Device-generic.

A saved pipeline is a folder::

    pipeline.json            {"format": "hyperinverter-pipeline", "encoder_resolution": ..., "components": [...]}
    generator/               config.json + model.safetensors (the frozen StyleGAN2)
    w_encoder/               Phase I encoder E1
    feature_encoder/         Phase II encoder E2 (absent for a Phase-I-only model)
    hypernetwork/            the per-layer hypernetworks
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .components import load_component, save_component_module
from .convert.gan_files import load_gan
from .device import resolve_device
from .editing.directions import Direction
from .errors import CheckpointError, NonFiniteError, SchemaError
from .inversion.base import InversionResult
from .io.files import PIPELINE_FORMAT, PIPELINE_INDEX, atomic_write_bytes, staged_directory
from .io.images import center_square, pil_to_tensor, read_image
from .models.hyperinverter import HyperInverter
from .models.weight_delta import WeightDelta

logger = logging.getLogger(__name__)

PIPELINE_COMPONENTS = ("generator", "w_encoder", "feature_encoder", "hypernetwork")
MAX_ENCODER_RESOLUTION = 2048


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def non_finite_samples(images: torch.Tensor) -> list[int]:
    """Indices of the samples of ``[B, ...]`` that hold NaN or infinite values."""
    return torch.nonzero(~torch.isfinite(images).flatten(1).all(dim=1)).flatten().tolist()


def ensure_finite(images: torch.Tensor, what: str) -> torch.Tensor:
    """``images``, or ``NonFiniteError`` when any value is NaN or infinite (never a silently black picture)."""
    bad = non_finite_samples(images)
    if bad:
        raise NonFiniteError(None, f"{what} holds NaN or infinite values (samples {bad[:8]}): the model's weights "
                             "or an option (such as the truncation) are not usable")
    return images


def save_pipeline(model: HyperInverter, path: str | Path, *, dtype: torch.dtype | None = None,
                  align_scale: float = 1.0) -> Path:
    """Write a pipeline folder atomically (built beside ``path``, then swapped in).

    An existing folder at ``path`` is replaced only if it is a pipeline we wrote; anything else is an error and
    is left untouched. ``align_scale``: the face-crop scale (see :func:`hyperinverter.align.ffhq_quad`) that
    matches the framing of the training images; 1.0 is FFHQ's.
    """
    from .convert.gan_files import save_gan

    with staged_directory(path, "pipeline") as tmp:
        save_gan(tmp / "generator", model.generator, dtype=dtype)
        components = ["generator", "w_encoder"]
        save_component_module(tmp / "w_encoder", model.w_encoder, dtype=dtype)
        if model.has_phase2:
            save_component_module(tmp / "feature_encoder", model.feature_encoder, dtype=dtype)
            save_component_module(tmp / "hypernetwork", model.hypernetwork, dtype=dtype)
            components += ["feature_encoder", "hypernetwork"]
        index = {"format": PIPELINE_FORMAT, "format_version": 1, "method": "hyperinverter",
                 "encoder_resolution": model.encoder_resolution, "align_scale": align_scale,
                 "components": components}
        atomic_write_bytes(tmp / PIPELINE_INDEX, (json.dumps(index, indent=2) + "\n").encode())
    return Path(path)


def read_pipeline_index(folder: Path) -> dict:
    """``pipeline.json`` of ``folder``, checked field by field; every problem names the file and the field."""
    path = Path(folder) / PIPELINE_INDEX
    if not path.is_file():
        raise CheckpointError(folder, f"is not a pipeline folder: it has no {PIPELINE_INDEX}")
    try:
        index = json.loads(path.read_bytes())
    except ValueError as e:
        raise SchemaError(path, f"is not valid JSON ({e})") from None
    if not isinstance(index, dict):
        raise SchemaError(path, f"must hold a JSON object, got {type(index).__name__}")
    if index.get("format") != PIPELINE_FORMAT:
        raise SchemaError(path, f"'format' must be {PIPELINE_FORMAT!r}, got {index.get('format')!r}")
    version = index.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > 1:
        raise SchemaError(path, f"'format_version' {version!r} is not one this hyperinverter reads (1)")
    if index.get("method", "hyperinverter") != "hyperinverter":
        raise SchemaError(path, f"'method' {index.get('method')!r} is not a method this hyperinverter knows")
    size = index.get("encoder_resolution")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= MAX_ENCODER_RESOLUTION \
            or size % 16:
        raise SchemaError(path, f"'encoder_resolution' must be a multiple of 16 from 16 to "
                          f"{MAX_ENCODER_RESOLUTION}, got {size!r}")
    scale = index.get("align_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < 10):
        raise SchemaError(path, f"'align_scale' must be a number in (0, 10), got {scale!r}")
    components = index.get("components")
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise SchemaError(path, f"'components' must be a list of names, got {components!r}")
    unknown = sorted(set(components) - set(PIPELINE_COMPONENTS))
    if unknown:
        raise SchemaError(path, f"'components' names unknown parts {unknown}; known: {list(PIPELINE_COMPONENTS)}")
    for needed in ("generator", "w_encoder"):
        if needed not in components:
            raise SchemaError(path, f"'components' must include {needed!r}, got {components}")
    if ("feature_encoder" in components) != ("hypernetwork" in components):
        raise SchemaError(path, "'components' must list both feature_encoder and hypernetwork, or neither")
    absent = [c for c in components if not (Path(folder) / c).is_dir()]
    if absent:
        raise CheckpointError(folder, f"is incomplete: pipeline.json lists {absent}, which are not there")
    return index


class InversionPipeline:
    """HyperInverter inference: ``invert`` -> ``InversionResult``; ``edit`` and ``interpolate`` reuse Δθ.

    ``name``: how the model was asked for (a catalogue name or a path); inversion files record it.
    """

    def __init__(self, model: HyperInverter, *, device: str | torch.device = "auto", align_scale: float = 1.0,
                 name: str = "") -> None:
        self.device = resolve_device(device)
        self.align_scale = align_scale
        self.name = name
        # Channels-last conv weights match the channels-last activations (faster oneDNN/cuDNN kernels).
        self.model = model.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self._fingerprint: str | None = None

    @property
    def generator(self):
        return self.model.generator

    @property
    def fingerprint(self) -> str:
        """The generator's fingerprint (:func:`hyperinverter.inversion.files.generator_fingerprint`)."""
        if self._fingerprint is None:
            from .inversion.files import generator_fingerprint

            self._fingerprint = generator_fingerprint(self.generator)
        return self._fingerprint

    # --- loading and saving ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | torch.device = "auto") -> InversionPipeline:
        """Load a pipeline folder, or a catalogue name (bundled or downloaded models)."""
        from .hub import local_model_path

        path = local_model_path(name_or_path)
        index = read_pipeline_index(path)
        generator = load_gan(path / "generator").generator
        parts = {name: load_component(path / name) for name in index["components"] if name != "generator"}
        try:
            model = HyperInverter(generator=generator, w_encoder=parts["w_encoder"],
                                  feature_encoder=parts.get("feature_encoder"),
                                  hypernetwork=parts.get("hypernetwork"),
                                  encoder_resolution=index["encoder_resolution"])
        except ValueError as e:
            raise CheckpointError(path, str(e)) from None
        return cls(model, device=device, align_scale=float(index.get("align_scale", 1.0)),
                   name=os.fsdecode(name_or_path))

    def save_pretrained(self, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        return save_pipeline(self.model, path, dtype=dtype, align_scale=self.align_scale)

    # --- inputs -----------------------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor | Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """PIL images or paths -> ``[B,C,R,R]`` in [-1,1] at the generator's resolution and channel count.

        Files go through :func:`hyperinverter.io.images.read_image`. A non-square image gives its centred square
        (never squashed); align faces first for face models. Tensors are passed through (they must already be in
        [-1,1] with the generator's channel count).
        """
        G = self.generator
        if isinstance(images, torch.Tensor):
            x = images if images.ndim == 4 else images[None]
        else:
            tensors = [pil_to_tensor(center_square(read_image(item)), size=G.resolution,
                                     channels=G.config.img_channels) for item in images]
            if not tensors:
                raise ValueError("no images given")
            x = torch.cat(tensors)
        if x.ndim != 4 or x.shape[1] != G.config.img_channels:
            raise ValueError(f"images must be [B,{G.config.img_channels},H,W] for this generator, got "
                             f"{tuple(x.shape)}")
        return x.to(self.device, torch.float32)

    # --- inference --------------------------------------------------------------------------------------
    @torch.no_grad()
    def invert(
        self,
        images: torch.Tensor | Sequence[Image.Image | str | Path],
        *,
        batch_size: int = 8,
        phase2: bool = True,
        check_finite: bool = True,
    ) -> InversionResult:
        """Invert ``images``; the batch is split into chunks of ``batch_size`` (results do not depend on it).

        A reconstruction with NaN or infinite values raises ``NonFiniteError`` (``check_finite=False`` returns it,
        for callers that report such samples one by one).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = self.prepare(images)
        results = []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            t0 = time.perf_counter()
            ws = self.model.encode_w(chunk)
            w_image = self.generator.synthesis(ws, noise_mode="const")
            _sync(self.device)
            t1 = time.perf_counter()
            delta, image = None, w_image
            if phase2 and self.model.has_phase2:
                delta = self.model.predict_delta(chunk, w_image)
                image = self.generator.synthesis(ws, weight_delta=delta, noise_mode="const")
            _sync(self.device)
            t2 = time.perf_counter()
            results.append(InversionResult(ws=ws, image=image, weight_delta=delta, w_image=w_image,
                                           timings={"phase1": t1 - t0, "phase2": t2 - t1}))
        result = InversionResult.cat(results)
        if check_finite:
            ensure_finite(result.image, "the reconstruction")
        return result

    @torch.no_grad()
    def render(self, ws: torch.Tensor, weight_delta: WeightDelta | None = None) -> torch.Tensor:
        images = self.generator.synthesis(ws.to(self.device), weight_delta=weight_delta, noise_mode="const")
        return ensure_finite(images, "the rendered image")

    def load_result(self, path: str | Path) -> tuple[InversionResult, dict]:
        """An inversion file (written by ``invert``) rendered by this model -> (result, its record).

        A file made with another model (other code or Δθ shapes, or another generator's fingerprint) is an error
        that says so, rather than a meaningless image.
        """
        from .inversion.files import check_fits, load_inversion

        ws, delta, record = load_inversion(path)
        check_fits(path, ws, delta, record, self.generator, model=repr(self.name or "this model"),
                   fingerprint=self.fingerprint)
        ws = ws.to(self.device)
        delta = delta.to(self.device) if delta is not None else None
        return InversionResult(ws=ws, image=self.render(ws, delta), weight_delta=delta), record

    @torch.no_grad()
    def edit(self, result: InversionResult, direction: Direction, strength: float | None = None) -> torch.Tensor:
        """Edit the codes only and render with the image's own Δθ (as in the paper)."""
        ws = direction.apply(result.ws.to(self.device), strength)
        delta = result.weight_delta.to(self.device) if result.weight_delta is not None else None
        return self.render(ws, delta)

    @torch.no_grad()
    def interpolate(self, a: InversionResult, b: InversionResult, steps: int = 8) -> torch.Tensor:
        """Lerp both ``ws`` and every layer's Δθ from ``a`` to ``b`` (one sample each) -> ``[steps,C,R,R]``."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        return torch.cat([self.blend(a, b, t) for t in torch.linspace(0, 1, steps).tolist()])

    @torch.no_grad()
    def blend(self, a: InversionResult, b: InversionResult, t: float) -> torch.Tensor:
        """The image at fraction ``t`` of the way from ``a`` to ``b`` (codes and Δθ lerped) -> ``[1,C,R,R]``."""
        if len(a) != 1 or len(b) != 1:
            raise ValueError("interpolate takes one image per end point")
        if a.ws.shape != b.ws.shape:
            raise ValueError(f"the two end points come from different models (codes {tuple(a.ws.shape)} and "
                             f"{tuple(b.ws.shape)})")
        delta = None
        if a.weight_delta is not None and b.weight_delta is not None:
            delta = a.weight_delta.lerp(b.weight_delta, t)
        return self.render(torch.lerp(a.ws, b.ws.to(a.ws), t), delta)
