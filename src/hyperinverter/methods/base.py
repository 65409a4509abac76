"""The contract every inversion method shares, so that editing, files, metrics, benchmarks and apps treat them
alike.

A method is an :class:`Inverter`: a module over a frozen generator that turns images into an
:class:`InversionResult` (codes, optional generator offsets, the reconstruction, and what it made on the way).
Its trainable parts are *components* (saved as folders of a pipeline bundle); its per-call choices are keyword
*options* with the official defaults; its fixed architecture choices are *settings* stored in the bundle.
"""

from __future__ import annotations

import operator
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config_base import check_value
from ..device import resolve_device, synchronize
from ..io.images import check_content_rows
from ..models.stylegan2 import Generator
from ..models.weight_delta import WeightDelta
from ..precision import dtype_name, reduced_precision, resolve_dtype


def whole_number(value: object) -> int | None:
    """``value`` as an ``int`` where it is a whole number of any kind (numpy's and a 0-d integer tensor's too), else
    None (a bool, a float, a string)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_batch_size(value: object) -> int:
    """``value`` as a batch size (a whole number of 1 or more, numpy's too), else a ``ValueError`` naming it."""
    whole = whole_number(value)
    if whole is None or whole < 1:  # (np.int64(2) was refused; "2" was a TypeError inside)
        raise ValueError(f"batch_size must be a whole number of 1 or more, got {value!r}")
    return whole


@dataclass
class InversionResult:
    """What an inverter returns for a batch of B images.

    ``ws``: ``[B, num_ws, w_dim]`` codes (W-space methods repeat one w over all rows).
    ``image``: the reconstruction ``[B, C, R, R]`` in [-1, 1].
    ``weight_delta``: per-sample generator offsets (additive or multiplicative), or None.
    ``initial_image``: the method's first pass, when it has one (HyperInverter's Phase I image, the W-encoder
    start of an iterative method).
    ``steps``: the images of every iteration or stage, in order (iterative and multi-stage methods), each
    ``[B, C, R, R]``; empty for single-pass methods.
    ``timings``: seconds per stage, summed over the batch.
    ``method``, ``dtype``: the method that made it and the precision it ran in (``"fp32"``, ``"bf16"``,
    ``"fp16"``), set by :meth:`Inverter.invert`; ``save_result`` records them.
    """

    ws: torch.Tensor
    image: torch.Tensor
    weight_delta: WeightDelta | None = None
    initial_image: torch.Tensor | None = None
    steps: list[torch.Tensor] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    method: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        # ValueErrors, not asserts: a result built by hand from one's own codes is an API input (an assert was an
        # AssertionError, or nothing under python -O, and a numpy array an AttributeError).
        def shape(t: object) -> object:
            return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__

        if not isinstance(self.ws, torch.Tensor) or self.ws.ndim != 3:
            raise ValueError(f"ws must be a tensor [B, num_ws, w_dim], got {shape(self.ws)}")
        b = self.ws.shape[0]
        if not isinstance(self.image, torch.Tensor) or self.image.ndim != 4 or self.image.shape[0] != b:
            raise ValueError(f"image must be a tensor [B, C, R, R] with the {b} sample(s) of ws, got "
                             f"{shape(self.image)}")
        for name in ("ws", "image"):
            if not getattr(self, name).is_floating_point():  # (integer codes failed inside interpolate and edits)
                raise ValueError(f"{name} must hold floats, got {getattr(self, name).dtype}")
        if self.weight_delta is not None and not isinstance(self.weight_delta, WeightDelta):
            raise TypeError(f"weight_delta must be a WeightDelta or None, got {type(self.weight_delta).__name__}")
        if not isinstance(self.steps, (list, tuple)):
            raise TypeError(f"steps must be a list of tensors, got {type(self.steps).__name__}")
        if self.weight_delta is not None and self.weight_delta.batch_size != b:
            raise ValueError(f"weight_delta holds {self.weight_delta.batch_size} sample(s), ws {b}")
        for extra in ([self.initial_image] if self.initial_image is not None else []) + list(self.steps):
            if not isinstance(extra, torch.Tensor) or extra.shape != self.image.shape:
                raise ValueError(f"initial_image and steps must be tensors {tuple(self.image.shape)}, got "
                                 f"{shape(extra)}")

    def __len__(self) -> int:
        return self.ws.shape[0]

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())

    def _map(self, fn, delta_fn) -> InversionResult:
        return InversionResult(
            ws=fn(self.ws), image=fn(self.image),
            weight_delta=delta_fn(self.weight_delta) if self.weight_delta is not None else None,
            initial_image=fn(self.initial_image) if self.initial_image is not None else None,
            steps=[fn(s) for s in self.steps], timings=dict(self.timings), method=self.method, dtype=self.dtype)

    def select(self, index: int | slice) -> InversionResult:
        """Samples at ``index`` (an int, negative from the end, keeps a batch dimension of 1; or a slice that
        selects at least one)."""
        if not isinstance(index, slice):
            index = whole_number(index)
            if index is None:
                raise TypeError("select takes an integer or a slice")
        elif not range(len(self))[index]:  # (an empty result failed later, in edit, mix or render)
            raise IndexError(f"the slice {index} selects none of {len(self)} image(s)")
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} is out of range for {len(self)} image(s)")
            index %= len(self)  # (slice(-1, 0) would be empty)
            index = slice(index, index + 1)
        return self._map(lambda t: t[index], lambda d: d.select(index))

    def to(self, device: torch.device | str) -> InversionResult:
        """Every tensor on ``device`` (checked as a pipeline's: a name torch does not know was a RuntimeError)."""
        if device is not None and not isinstance(device, torch.dtype):
            device = resolve_device(device)
        return self._map(lambda t: t.to(device), lambda d: d.to(device))

    def float(self) -> InversionResult:
        """Every tensor in fp32 (what ran under reduced precision leaves this way)."""
        return self._map(lambda t: t.float(), lambda d: d.to(torch.float32))

    @staticmethod
    def cat(results: list[InversionResult]) -> InversionResult:
        """One result for the batches in ``results``, in order (one result is returned as it is: a full-size
        HyperInverter's Δθ is 90 MB per image, and a copy of it made the peak of a pipeline's inversion)."""
        if isinstance(results, InversionResult) or not isinstance(results, Iterable):
            raise TypeError(f"cat takes a list of InversionResults, got {type(results).__name__}")
        results = list(results)
        if not results:  # ("min() arg is an empty sequence")
            raise ValueError("cat needs at least one result")
        for i, r in enumerate(results):
            if not isinstance(r, InversionResult):
                raise TypeError(f"results[{i}] must be an InversionResult, got {type(r).__name__}")
            first = results[0]
            if r.ws.shape[1:] != first.ws.shape[1:] or r.image.shape[1:] != first.image.shape[1:]:
                raise ValueError(f"results[{i}] comes from another model than results[0] (codes "
                                 f"{tuple(r.ws.shape[1:])} and {tuple(first.ws.shape[1:])}, images "
                                 f"{tuple(r.image.shape[1:])} and {tuple(first.image.shape[1:])})")
            if (r.weight_delta is None) != (first.weight_delta is None):  # (the offsets of all were dropped)
                raise ValueError(f"results[{i}] and results[0] differ in having generator offsets (Δθ): results of "
                                 "methods with and without them cannot be joined")
        if len(results) == 1:
            return results[0]

        def cat_optional(items):
            return torch.cat(items) if items and all(i is not None for i in items) else None

        deltas = [r.weight_delta for r in results]
        timings: dict[str, float] = {}
        for r in results:
            for k, v in r.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        n_steps = min(len(r.steps) for r in results)
        return InversionResult(
            ws=torch.cat([r.ws for r in results]),
            image=torch.cat([r.image for r in results]),
            weight_delta=WeightDelta.cat(deltas) if all(d is not None for d in deltas) else None,
            initial_image=cat_optional([r.initial_image for r in results]),
            steps=[torch.cat([r.steps[i] for r in results]) for i in range(n_steps)],
            timings=timings,
            method=results[0].method if len({r.method for r in results}) == 1 else None,
            dtype=results[0].dtype if len({r.dtype for r in results}) == 1 else None,
        )


class Stopwatch:
    """Seconds per named stage, with the device synchronised so that GPU work is counted where it happens."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.laps: dict[str, float] = {}
        self._last = self._now()
        # Compiled, a lap splits the graph (it reads the host's clock): kept out of it, without Dynamo's warning.
        # Only where Dynamo is loaded (torch.compile loads it): importing it takes about 1 s of a command's start.
        if "torch._dynamo" in sys.modules:
            self.lap = torch.compiler.disable(self.lap)

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


class Inverter(nn.Module):
    """An inversion method over a frozen generator.

    Subclasses set the class attributes, hold their trainable networks as submodules, and implement
    :meth:`forward` (differentiable, used by training) which :meth:`invert` runs without gradients.

    Class attributes:
        name: the registry name (``hyperinverter``, ``phase1``, ...).
        label: how people call it in tables and pictures.
        initial_label: the name of ``InversionResult.initial_image`` in pictures, or None if it has none.
        components: the roles of the trainable networks a bundle stores for it (``()``: it needs none and runs
            on any generator, like optimisation).
        options: the keyword options of :meth:`invert`, with the official defaults.
        summary: one line for ``hyperinverter methods``.
        accepts_discriminator: it takes the domain's discriminator (``discriminator=``) when the model ships one
            (optimisation methods compare discriminator features when LPIPS is not installed).
        official_antialias: its official code reduces the photo with an antialiasing filter (the pSp family's data
            transforms: PIL's ``Resize(256)``), not as HyperInverter's model does (``F.interpolate`` on the tensor);
            its training targets (and HyperStyle's hypernetwork input) are reduced so, and its encoders read so
            unless trained otherwise (the ``encoder_antialias`` setting, see :meth:`reading_settings`).
    """

    name: ClassVar[str]
    label: ClassVar[str]
    initial_label: ClassVar[str | None] = None
    components: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[Mapping[str, Any]] = {}
    summary: ClassVar[str] = ""
    accepts_discriminator: ClassVar[bool] = False
    official_antialias: ClassVar[bool] = False
    _content_rows: tuple[float, float] | None = None
    _encoder_antialias: bool | None = None

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> Inverter:
        super().train(mode)
        self.generator.eval()  # the generator is frozen: never in training mode
        return self

    # --- what a bundle stores ---------------------------------------------------------------------------
    def parts(self) -> dict[str, nn.Module]:
        """The trainable networks, by role (``components``), as a bundle saves them."""
        return {role: getattr(self, role) for role in self.components}

    def offset_names(self) -> frozenset[str] | None:
        """The synthesis parameters whose offsets (Δθ) every result of this method holds, or None where that is not
        fixed (no offsets, or offsets of whatever the method tunes); an inversion file of the method is checked
        against it."""
        return None

    def settings(self) -> dict[str, Any]:
        """JSON-able architecture choices a bundle stores beside the parts (e.g. the encoders' input size)."""
        return {}

    @property
    def content_rows(self) -> tuple[float, float] | None:
        """The rows of the generator's square images that hold the domain's content, where it is not square (cars:
        (0.125, 0.875)); photos are fitted into them (``io.images.fit_to_canvas``). Methods that read it set it,
        checked, and store it with :meth:`content_settings`."""
        return self._content_rows

    @content_rows.setter
    def content_rows(self, rows: tuple[float, float] | list[float] | None) -> None:
        self._content_rows = None if rows is None else check_content_rows(rows)

    def content_settings(self) -> dict[str, Any]:
        """``content_rows`` as a setting (none for a square domain, so that square bundles read as before)."""
        return {} if self.content_rows is None else {"content_rows": list(self.content_rows)}

    @property
    def encoder_antialias(self) -> bool:
        """Whether its encoder reads images reduced with antialiasing (``resize_for_encoder``): as the encoder was
        trained, by default as the method's official code (``official_antialias``). A HyperStyle trained here on
        a HyperInverter Phase I reads with that encoder's setting; a pSp-family W encoder imported as ``phase1``
        with antialiasing."""
        return self.official_antialias if self._encoder_antialias is None else self._encoder_antialias

    @encoder_antialias.setter
    def encoder_antialias(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"encoder_antialias must be true or false, got {value!r}")
        self._encoder_antialias = value

    def reading_settings(self) -> dict[str, Any]:
        """``encoder_antialias`` as a setting, where it is not the method's default (so that bundles read as
        before)."""
        reading = self.encoder_antialias
        return {} if reading == self.official_antialias else {"encoder_antialias": reading}

    @classmethod
    def create(cls, generator: Generator, *, preset: str = "tiny") -> Inverter:
        """An untrained instance sized for ``generator`` (the networks of ``preset``), to train or to test with.
        Methods without trained parts need nothing but the generator."""
        if cls.components:
            raise NotImplementedError(f"{cls.__name__} must say how to build its untrained parts (create)")
        return cls(generator)

    @classmethod
    def from_parts(cls, generator: Generator, parts: Mapping[str, nn.Module], settings: Mapping[str, Any]) -> Inverter:
        """Rebuild the method from its loaded parts and settings (the inverse of :meth:`parts`/:meth:`settings`)."""
        return cls(generator, **parts, **settings)

    # --- inversion --------------------------------------------------------------------------------------
    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` completed with the defaults; an unknown option, a value of another type than its default's,
        or (where a method checks them) a bad value, is a ``ValueError`` naming it. Cheap: batch jobs call it before
        their first image."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{self.name} has no option {unknown}; its options: {dict(self.options) or 'none'}")
        options = {key: _plain_scalar(value) for key, value in options.items()}
        for key, value in options.items():
            _check_option_type(self.name, key, value, self.options[key])
        return {**self.options, **options}

    def forward(self, images: torch.Tensor, *, stopwatch: Stopwatch | None = None, **options) -> InversionResult:
        raise NotImplementedError

    def input_sides(self) -> tuple[int, ...]:
        """The sizes of square images it inverts: the generator's resolution and, for a method that reads images
        through its encoder alone (an ``encoder_resolution``, a square domain), that encoder's input size (an
        E2Style restoration input degraded there, as the official code degrades its 256-px inputs)."""
        sides = (self.generator.resolution,)
        encoder = getattr(self, "encoder_resolution", None)
        return sides if encoder is None or self.content_rows is not None else (*sides, encoder)

    def encoder_view(self, photos: torch.Tensor) -> torch.Tensor | None:
        """Photos ``[B, C, s, s]`` (any side) as this method's encoder reads them, an input of its encoder's size
        (:meth:`input_sides`), as its official scripts make it from the photo as read: resized there (the pSp
        family's ``Resize(256)``: ``encoder_antialias``), or resized to the generator's size (HyperInverter's
        ``Resize(output_size)``, PIL's bilinear) and reduced from that by the model (``F.interpolate``). None for a
        method that does not read images through its encoder alone (it compares them at the generator's size)."""
        sides = self.input_sides()
        if len(sides) < 2:
            return None
        from .phase1 import resize_for_encoder  # (phase1 builds on this module)

        if not self.encoder_antialias and photos.shape[-1] != sides[0]:
            photos = F.interpolate(photos, size=(sides[0], sides[0]), mode="bilinear", align_corners=False,
                                   antialias=True)
        return resize_for_encoder(photos, sides[1], antialias=self.encoder_antialias)

    def invert(self, images: torch.Tensor, *, dtype: str | torch.dtype | None = None, **options) -> InversionResult:
        """Images ``[B, C, R, R]`` in [-1, 1] at the generator's resolution (or another of ``input_sides``) -> their
        inversion, with timings.

        ``dtype``: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (GPUs): the precision the networks run in
        (:mod:`hyperinverter.precision`); the result is fp32 either way.
        """
        G, sides = self.generator, self.input_sides()
        if (images.ndim != 4 or images.shape[1] != G.config.img_channels or images.shape[2] != images.shape[3]
                or images.shape[3] not in sides):
            shapes = " or ".join(f"[B, {G.config.img_channels}, {side}, {side}]" for side in sides)
            raise ValueError(f"{self.name} inverts images {shapes}, got {tuple(images.shape)}")
        options = self.check_options(options)
        dtype = resolve_dtype(dtype, images.device)
        stopwatch = Stopwatch(images.device)
        # In eval mode, and back as it was: a method made by ``create()`` is in training mode, where its BatchNorms
        # normalised by the batch (an image alone and in a batch differed) and overwrote their statistics.
        training = [m for m in self.modules() if m.training]
        for module in training:
            module.training = False
        try:
            with torch.no_grad(), reduced_precision(images.device, dtype):
                result = self(images, stopwatch=stopwatch, **options)
        finally:
            for module in training:
                module.training = True
        self._check_result(result, images.shape[0])
        result = result.float()
        result.timings = dict(stopwatch.laps)
        result.method, result.dtype = self.name, dtype_name(dtype)
        return result

    def _check_result(self, result: object, batch: int) -> None:
        """A ``TypeError`` or ``ValueError`` naming the method unless ``result`` keeps the contract of :meth:`invert`
        for ``batch`` images (a registered method's wrong shapes reached editing and files, or failed inside)."""
        G = self.generator
        if not isinstance(result, InversionResult):
            raise TypeError(f"method {self.name} returned {type(result).__name__}, not an InversionResult")
        image = (batch, G.config.img_channels, G.resolution, G.resolution)
        for what, tensor, shape in (("ws", result.ws, (batch, G.num_ws, G.w_dim)), ("image", result.image, image)):
            if tuple(tensor.shape) != shape:  # (floats: InversionResult holds no other)
                raise ValueError(f"method {self.name} returned {what} {tuple(tensor.shape)} {tensor.dtype}; the "
                                 f"contract is floats {list(shape)}")


def _plain_scalar(value: Any) -> Any:
    """A numpy scalar, a 0-d array or a 0-d tensor as the Python number it holds, anything else as it is (a sweep
    over ``np.arange`` steps was refused as "steps must be a positive integer, got np.int64(2)")."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0) \
            or (isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_meta):
        return value.item()
    return value


def _check_option_type(method: str, key: str, value: Any, default: Any) -> None:
    """A value given as a plain scalar (what ``--option KEY=VALUE`` gives) must have its default's type, as a config
    value its annotation's (a float option also takes a whole number, and must be finite). Callables (an API caller's
    progress callback) and options whose default is None are the method's to check; a list or a tensor for a plain
    option is refused (``optimize_noise=[False]`` was taken as true)."""
    plain = (type(None), bool, int, float, str)
    if default is None or not isinstance(default, plain) or (callable(value) and not isinstance(value, plain)):
        return
    check_value(value, type(default), f"option {key} of {method}")
