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
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .components import load_component, save_component_module
from .convert.errors import CheckpointError
from .convert.gan_files import load_gan
from .device import resolve_device
from .editing.directions import Direction
from .inversion.base import InversionResult
from .io.checkpoints import atomic_write_bytes, replace_directory
from .io.images import center_square, pil_to_tensor
from .models.hyperinverter import HyperInverter
from .models.weight_delta import WeightDelta

logger = logging.getLogger(__name__)

PIPELINE_FORMAT = "hyperinverter-pipeline"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_pipeline(model: HyperInverter, path: str | Path, *, dtype: torch.dtype | None = None,
                  align_scale: float = 1.0) -> Path:
    """Write a pipeline folder atomically (built in a temporary folder, then moved into place).

    ``align_scale``: the face-crop scale (see :func:`hyperinverter.align.ffhq_quad`) that matches the
    framing of the training images; 1.0 is FFHQ's.
    """
    from .convert.gan_files import save_gan

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    save_gan(tmp / "generator", model.generator, dtype=dtype)
    components = ["generator", "w_encoder"]
    save_component_module(tmp / "w_encoder", model.w_encoder, dtype=dtype)
    if model.has_phase2:
        save_component_module(tmp / "feature_encoder", model.feature_encoder, dtype=dtype)
        save_component_module(tmp / "hypernetwork", model.hypernetwork, dtype=dtype)
        components += ["feature_encoder", "hypernetwork"]
    index = {"format": PIPELINE_FORMAT, "format_version": 1, "method": "hyperinverter",
             "encoder_resolution": model.encoder_resolution, "align_scale": align_scale, "components": components}
    atomic_write_bytes(tmp / "pipeline.json", (json.dumps(index, indent=2) + "\n").encode())
    replace_directory(tmp, path)
    return path


class InversionPipeline:
    """HyperInverter inference: ``invert`` -> ``InversionResult``; ``edit`` and ``interpolate`` reuse Δθ."""

    def __init__(self, model: HyperInverter, *, device: str | torch.device = "auto", align_scale: float = 1.0) -> None:
        self.device = resolve_device(device)
        self.align_scale = align_scale
        # Channels-last conv weights match the channels-last activations (faster oneDNN/cuDNN kernels).
        self.model = model.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)

    @property
    def generator(self):
        return self.model.generator

    # --- loading and saving ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | torch.device = "auto") -> InversionPipeline:
        """Load a pipeline folder, or a catalogue name (bundled or downloaded models)."""
        from .hub import local_model_path

        path = local_model_path(name_or_path)
        index_path = path / "pipeline.json"
        if not index_path.is_file():
            raise CheckpointError(f"{path} is not a pipeline folder: it has no pipeline.json")
        index = json.loads(index_path.read_text())
        if index.get("format") != PIPELINE_FORMAT:
            raise CheckpointError(f"{index_path} is not a {PIPELINE_FORMAT} index")
        generator = load_gan(path / "generator").generator
        parts = {name: load_component(path / name) for name in index["components"] if name != "generator"}
        model = HyperInverter(generator=generator, w_encoder=parts["w_encoder"],
                              feature_encoder=parts.get("feature_encoder"), hypernetwork=parts.get("hypernetwork"),
                              encoder_resolution=int(index["encoder_resolution"]))
        return cls(model, device=device, align_scale=float(index.get("align_scale", 1.0)))

    def save_pretrained(self, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        return save_pipeline(self.model, path, dtype=dtype, align_scale=self.align_scale)

    # --- inputs -----------------------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor | Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """PIL images or paths -> ``[B,C,R,R]`` in [-1,1] at the generator's resolution and channel count.

        A non-square image gives its centred square (never squashed); align faces first for face models.

        Tensors are passed through (they must already be in [-1,1] with the generator's channel count).
        """
        G = self.generator
        if isinstance(images, torch.Tensor):
            x = images if images.ndim == 4 else images[None]
        else:
            tensors = []
            for item in images:
                if not isinstance(item, Image.Image):
                    from .io.images import read_image

                    item = read_image(item)
                tensors.append(pil_to_tensor(center_square(item), size=G.resolution, channels=G.config.img_channels))
            x = torch.cat(tensors)
        if x.shape[1] != G.config.img_channels:
            raise ValueError(f"images have {x.shape[1]} channels; this generator makes {G.config.img_channels}")
        return x.to(self.device, torch.float32)

    # --- inference --------------------------------------------------------------------------------------
    @torch.no_grad()
    def invert(
        self,
        images: torch.Tensor | Sequence[Image.Image | str | Path],
        *,
        batch_size: int = 8,
        phase2: bool = True,
    ) -> InversionResult:
        """Invert ``images``; the batch is split into chunks of ``batch_size`` (results do not depend on it)."""
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
        return InversionResult.cat(results)

    @torch.no_grad()
    def render(self, ws: torch.Tensor, weight_delta: WeightDelta | None = None) -> torch.Tensor:
        return self.generator.synthesis(ws.to(self.device), weight_delta=weight_delta, noise_mode="const")

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
            raise ValueError("steps must be >= 2")
        return torch.cat([self.blend(a, b, t) for t in torch.linspace(0, 1, steps).tolist()])

    @torch.no_grad()
    def blend(self, a: InversionResult, b: InversionResult, t: float) -> torch.Tensor:
        """The image at fraction ``t`` of the way from ``a`` to ``b`` (codes and Δθ lerped) -> ``[1,C,R,R]``."""
        if len(a) != 1 or len(b) != 1:
            raise ValueError("interpolate takes one image per end point")
        delta = None
        if a.weight_delta is not None and b.weight_delta is not None:
            delta = a.weight_delta.lerp(b.weight_delta, t)
        return self.render(torch.lerp(a.ws, b.ws, t), delta)
