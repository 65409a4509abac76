"""``InversionPipeline``: a generator and the inversion methods trained for it; invert, edit, interpolate.

A saved pipeline (a bundle) is a folder::

    pipeline.json     {"format": "hyperinverter-pipeline", "format_version": 2, "generator": "generator",
                       "default_method": "hyperinverter", "align_scale": 1.0,
                       "methods": {"phase1": {"components": {"w_encoder": "w_encoder"},
                                              "settings": {"encoder_resolution": 256}},
                                   "hyperinverter": {"components": {"w_encoder": "w_encoder",
                                                                    "feature_encoder": "feature_encoder",
                                                                    "hypernetwork": "hypernetwork"}, ...}}}
    generator/        config.json + model.safetensors (the frozen StyleGAN2)
    w_encoder/ ...    one folder per component (config.json + model.safetensors); methods may share one

Methods that need no components (optimisation) run on any bundle. Folders written before format 2 (one
HyperInverter, ``"components": [...]``) are read as the ``phase1`` and ``hyperinverter`` methods they hold.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .bounds import MAX_ALIGN_SCALE
from .convert.gan_files import load_gan
from .device import resolve_device
from .editing.directions import Direction, LinearDirection, check_strength, direction_rows
from .errors import CheckpointError, InputError, NonFiniteError, OutputError, SchemaError
from .io.components import load_component, save_component_module
from .io.files import (
    PIPELINE_FORMAT,
    PIPELINE_INDEX,
    atomic_write_bytes,
    copy_durably,
    pipeline_extras,
    staged_directory,
)
from .io.images import (
    check_content_rows,
    content_of,
    describe_content_rows,
    fit_to_canvas,
    photo_tensors,
    read_image,
)
from .memory import first_pass_mapped, large_blocks_mapped, trim
from .methods import InversionResult, Inverter, get_method, registered_methods
from .methods.base import check_batch_size, whole_number
from .models.stylegan2 import Discriminator, Generator
from .models.weight_delta import WeightDelta
from .ops.prepacked import prepack_convolutions, unpack_convolutions
from .precision import reduced_precision, resolve_dtype

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
MAX_ENCODER_RESOLUTION = 2048


def non_finite_samples(images: torch.Tensor) -> list[int]:
    """Indices of the samples of ``[B, ...]`` that hold NaN or infinite values."""
    return torch.nonzero(~torch.isfinite(images).flatten(1).all(dim=1)).flatten().tolist()


def _numpy_image(array: np.ndarray) -> Image.Image:
    """A numpy image as a photo library holds it (``H x W`` or ``H x W x C``, uint8) -> PIL."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"a numpy image must be uint8 H x W or H x W x 1/3/4, got {array.dtype} {array.shape}; for "
                         "floats, give a tensor [B, C, R, R] in [-1, 1]")
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


# Every frame is held (`interpolate` holds it three times: frames, the there-and-back sequence, the video: 240 are
# 9 GB at 1024 px, and its strip is one row of them). A longer sequence is made one frame at a time (blend).
MAX_INTERPOLATION_STEPS = 240


def _check_result(value: object, name: str) -> None:
    """A ``TypeError`` naming ``name`` unless ``value`` is an ``InversionResult`` (a path or None was an
    ``AttributeError`` deep inside)."""
    if not isinstance(value, InversionResult):
        raise TypeError(f"{name} must be an InversionResult (from invert, or load_result for a file), got "
                        f"{type(value).__name__}")
    _check_values(value.ws, f"{name}.ws")  # (a result moved to the meta device failed inside torch's copy)
    for key, offset in (value.weight_delta or {}).items():
        _check_values(offset, f"{name}'s offset {key}")


def _check_values(tensor: torch.Tensor, name: str) -> None:
    """A ``ValueError`` naming ``name`` where ``tensor`` holds no values (the meta device): torch's own error came
    from deep inside (``Tensor.item() cannot be called on meta tensors``)."""
    if tensor.is_meta:
        raise ValueError(f"{name} is a tensor on the meta device, which holds no values")


def _float_images(images: torch.Tensor) -> torch.Tensor:
    """An image tensor ``[B, C, H, W]`` (or one ``[C, H, W]``) as floats: uint8 in [0, 255] mapped to [-1, 1],
    floats as they are; any other dtype is a ``ValueError``."""
    _check_values(images, "images")
    x = images if images.ndim == 4 else images[None]
    if x.dtype == torch.uint8:  # e.g. torchvision.io.read_image
        return x.float() / 127.5 - 1
    if not x.is_floating_point():
        raise ValueError(f"image tensors must be floats in [-1, 1] or uint8 in [0, 255], got {x.dtype}")
    return x


def ensure_finite(images: torch.Tensor, what: str) -> torch.Tensor:
    """``images``, or ``NonFiniteError`` when any value is NaN or infinite (never a silently black picture)."""
    bad = non_finite_samples(images)
    if bad:
        raise NonFiniteError(None, f"{what} holds NaN or infinite values (samples {bad[:8]}): the model's weights "
                             "or an option (such as the truncation) are not usable")
    return images


def _strength_list(strengths: Iterable[float | None]) -> list[float | None]:
    """``edit_strengths``'s ``strengths`` as a list (one pass over an iterator), each checked."""
    if isinstance(strengths, (torch.Tensor, np.ndarray)) and strengths.ndim == 1:
        strengths = strengths.tolist()
    if isinstance(strengths, (str, bytes, torch.Tensor, np.ndarray)) or not isinstance(strengths, Iterable):
        raise TypeError(f"strengths must be a sequence of numbers, got {type(strengths).__name__}")
    strengths = list(strengths)
    if not strengths:
        raise ValueError("strengths is empty: give at least one")
    for strength in strengths:
        if strength is not None:
            check_strength(strength)
    # As floats: an integer past int64 (2**70) was torch's OverflowError inside the edit.
    return [None if strength is None else float(strength) for strength in strengths]


def _offset_kind(result: InversionResult) -> tuple | None:
    """What must match for results' offsets to be synthesised in one call: their mode and parameters."""
    delta = result.weight_delta
    return None if delta is None else (delta.mode, frozenset(delta))


def _edit_chunks(results: Sequence[InversionResult], most: int) -> Iterator[list[InversionResult]]:
    """``results`` in order, in runs of one kind of offsets holding at most ``most`` samples (a larger result
    alone)."""
    chunk: list[InversionResult] = []
    for result in results:
        if chunk and (_offset_kind(result) != _offset_kind(chunk[0])
                      or sum(map(len, chunk)) + len(result) > most):
            yield chunk
            chunk = []
        chunk.append(result)
    yield chunk


# --- the bundle index ---------------------------------------------------------------------------------------


def _check_settings(settings: object, where: str, path: Path) -> dict:
    if not isinstance(settings, dict):
        raise SchemaError(path, f"{where} must be a JSON object, got {settings!r}")
    size = settings.get("encoder_resolution")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)
                             or not 16 <= size <= MAX_ENCODER_RESOLUTION or size % 16):
        raise SchemaError(path, f"'encoder_resolution' must be a multiple of 16 from 16 to "
                          f"{MAX_ENCODER_RESOLUTION}, got {size!r}")
    if not isinstance(settings.get("encoder_antialias", False), bool):
        raise SchemaError(path, f"'encoder_antialias' must be true or false, got {settings['encoder_antialias']!r}")
    return settings


def _upgrade_v1(index: dict, path: Path) -> dict:
    """A format-1 index (one HyperInverter: ``components`` list, ``encoder_resolution``) as format 2."""
    components = index.get("components")
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise SchemaError(path, f"'components' must be a list of names, got {components!r}")
    known = ("generator", "w_encoder", "feature_encoder", "hypernetwork")
    unknown = sorted(set(components) - set(known))
    if unknown:
        raise SchemaError(path, f"'components' names unknown parts {unknown}; known: {list(known)}")
    for needed in ("generator", "w_encoder"):
        if needed not in components:
            raise SchemaError(path, f"'components' must include {needed!r}, got {components}")
    if ("feature_encoder" in components) != ("hypernetwork" in components):
        raise SchemaError(path, "'components' must list both feature_encoder and hypernetwork, or neither")
    if index.get("method", "hyperinverter") != "hyperinverter":
        raise SchemaError(path, f"'method' {index.get('method')!r} is not one a format-1 pipeline can hold")
    settings = _check_settings({"encoder_resolution": index.get("encoder_resolution")}, "the settings", path)
    methods = {"phase1": {"components": {"w_encoder": "w_encoder"}, "settings": settings}}
    if "hypernetwork" in components:
        methods["hyperinverter"] = {"components": {c: c for c in known[1:]}, "settings": settings}
    return {"format": PIPELINE_FORMAT, "format_version": FORMAT_VERSION, "generator": "generator",
            "default_method": "hyperinverter" if "hyperinverter" in methods else "phase1",
            "align_scale": index.get("align_scale", 1.0), "methods": methods}


def read_pipeline_index(folder: Path) -> dict:
    """``pipeline.json`` of ``folder`` as a checked format-2 index; every problem names the file and the field."""
    folder = Path(folder)
    path = folder / PIPELINE_INDEX
    if not path.is_file():
        raise CheckpointError(folder, f"is not a pipeline folder: it has no {PIPELINE_INDEX}")
    try:
        index = json.loads(path.read_bytes())
    except ValueError as e:
        raise SchemaError(path, f"is not valid JSON ({e})") from None
    except RecursionError:
        raise SchemaError(path, "nests too deeply to be a pipeline index") from None
    if not isinstance(index, dict):
        raise SchemaError(path, f"must hold a JSON object, got {type(index).__name__}")
    if index.get("format") != PIPELINE_FORMAT:
        raise SchemaError(path, f"'format' must be {PIPELINE_FORMAT!r}, got {index.get('format')!r}")
    version = index.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise SchemaError(path, f"'format_version' {version!r} is not one this hyperinverter reads "
                          f"(1 to {FORMAT_VERSION})")
    if version == 1:
        index = _upgrade_v1(index, path)
    if not _is_align_scale(index.get("align_scale", 1.0)):
        raise SchemaError(path, f"'align_scale' must be a number in (0, {MAX_ALIGN_SCALE}], got "
                          f"{index['align_scale']!r}")
    if not isinstance(index.get("faces", False), bool):
        raise SchemaError(path, f"'faces' must be true or false, got {index['faces']!r}")
    methods = index.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise SchemaError(path, f"'methods' must map method names to their parts, got {methods!r}")
    folders = [index.get("generator")]
    if "discriminator" in index:  # the domain's discriminator: the offline perceptual distance of optimisation
        folders.append(index["discriminator"])
    for name, entry in methods.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("components", {}), dict):
            raise SchemaError(path, f"'methods.{name}' must be {{components: {{role: folder}}, settings: {{...}}}}")
        _check_settings(entry.get("settings", {}), f"'methods.{name}.settings'", path)
        folders += list(entry.get("components", {}).values())
    if not isinstance(index.get("default_method"), str) or index["default_method"] not in methods:
        raise SchemaError(path, f"'default_method' {index.get('default_method')!r} is not one of its methods "
                          f"{sorted(methods)}")
    bad = sorted(str(f)[:80] for f in folders if not isinstance(f, str) or "/" in f or f.startswith("."))
    if bad:
        raise SchemaError(path, f"component folders must be plain names, got {bad}")
    absent = sorted({f for f in folders if not (folder / f).is_dir()})
    if absent:
        raise CheckpointError(folder, f"is incomplete: pipeline.json lists {absent}, which are not there")
    return index


def _is_align_scale(scale: object) -> bool:
    return isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 < scale <= MAX_ALIGN_SCALE


def save_pipeline(methods: Inverter | Mapping[str, Inverter], path: str | os.PathLike, *,
                  default_method: str | None = None, dtype: torch.dtype | None = None,
                  align_scale: float = 1.0, faces: bool | None = None, discriminator: Discriminator | None = None,
                  keep_extras_of: str | os.PathLike | None = None) -> Path:
    """Write a bundle atomically (built beside ``path``, then swapped in); the modules are not changed.

    An existing folder at ``path`` is replaced only if it is a pipeline we wrote; anything else is an error and
    is left untouched. Components shared by several methods are written once; methods that need no components
    are not stored (they run on any bundle). ``dtype``: store floating weights in it (e.g. ``torch.float16``).
    ``faces``: whether the model's inputs are FFHQ-aligned faces (None: not known; the web page then offers face
    alignment to any RGB model). ``discriminator``: the domain's discriminator, which optimisation methods use as
    their perceptual distance when LPIPS is not installed. ``keep_extras_of``: a bundle whose card, configs,
    directions, examples, pictures and stored generators (:func:`~hyperinverter.io.files.pipeline_extras`) the new
    one keeps, as when methods are added to it. Replacing a bundle that holds such extras keeps them when its
    generator holds the same weights (a retrained encoder saved back into its bundle) and is an ``OutputError``
    otherwise: they are never deleted silently.
    """
    from .io.gan import save_gan
    from .precision import PRECISIONS, dtype_name

    # (an integer or bool dtype wrote a ruined bundle without a word; "fp16" reached torch as a device string)
    dtype = None if dtype is None else PRECISIONS[dtype_name(dtype)]
    if not _is_align_scale(align_scale):  # (written, the bundle was refused only when it was next loaded)
        raise ValueError(f"align_scale must be a number in (0, {MAX_ALIGN_SCALE}], got {align_scale!r}")
    if faces is not None and not isinstance(faces, bool):
        raise ValueError(f"faces must be True, False or None, got {faces!r}")
    if discriminator is not None and not isinstance(discriminator, Discriminator):
        raise TypeError(f"discriminator must be a Discriminator or None, got {type(discriminator).__name__}")
    if not isinstance(methods, (Inverter, Mapping)):  # (a list or None failed inside dict())
        raise TypeError(f"methods must be an Inverter or a mapping of names to them, got {type(methods).__name__}")
    methods = {methods.name: methods} if isinstance(methods, Inverter) else dict(methods)
    for name, method in methods.items():  # (another name, or a bad index value, wrote a bundle that cannot load)
        if not isinstance(method, Inverter):
            raise TypeError(f"methods[{name!r}] must be an Inverter, got {type(method).__name__}")
        if name != method.name:
            raise ValueError(f"methods[{name!r}] is a {method.name} method: a bundle stores each under its own name")
    stored = {name: m for name, m in methods.items() if m.components}
    if not stored:
        raise ValueError("none of these methods has trained parts to save")
    generator = next(iter(stored.values())).generator
    if keep_extras_of is None:
        keep_extras_of = _extras_in_place(Path(path), generator)
    with staged_directory(path, "pipeline") as tmp:
        save_gan(tmp / "generator", generator, dtype=dtype)
        folders: dict[int, str] = {}  # id(component) -> its folder
        entries = {}
        for name, method in stored.items():
            components = {}
            for role, module in method.parts().items():
                if id(module) not in folders:
                    folder = role if role not in folders.values() else f"{name}_{role}"
                    save_component_module(tmp / folder, module, dtype=dtype)
                    folders[id(module)] = folder
                components[role] = folders[id(module)]
            entries[name] = {"components": components, "settings": method.settings()}
        default = default_method if default_method in entries else next(iter(entries))
        index = {"format": PIPELINE_FORMAT, "format_version": FORMAT_VERSION, "generator": "generator",
                 "default_method": default, "align_scale": align_scale, "methods": entries}
        if faces is not None:
            index["faces"] = faces
        if discriminator is not None:
            save_component_module(tmp / "discriminator", discriminator, dtype=dtype)
            index["discriminator"] = "discriminator"
        atomic_write_bytes(tmp / PIPELINE_INDEX, (json.dumps(index, indent=2) + "\n").encode())
        for extra in pipeline_extras(Path(keep_extras_of)) if keep_extras_of is not None else ():
            if not (tmp / extra.name).exists():  # a component of the same name was just written
                copy_durably(extra, tmp / extra.name)
    return Path(path)


def _extras_in_place(target: Path, generator: Generator) -> Path | None:
    """``target`` if it is a bundle whose extras replacing it would delete, and its generator is ``generator``'s
    weights (the extras fit the new bundle); None if it holds none; else an ``OutputError`` naming them."""
    if target.is_symlink() or not (target / PIPELINE_INDEX).is_file():
        return None
    extras = pipeline_extras(target)
    if not extras:
        return None
    try:
        check_same_weights(generator, load_gan(target / read_pipeline_index(target)["generator"]).generator,
                           source=os.fspath(target))
    except (InputError, OSError):  # another generator, or one that cannot be read
        names = ", ".join(e.name for e in extras)
        raise OutputError(target, f"holds {names}, made for another generator than this bundle's, which replacing "
                          "it would delete; nothing was changed: move them away, or choose another path") from None
    return target


def check_same_architecture(generator: Generator, other: Generator) -> None:
    """``ValueError`` unless ``other`` takes the same codes and offsets as ``generator`` (e.g. a fine-tuned copy)."""
    if other.config.to_dict() != generator.config.to_dict():
        differing = sorted(k for k, v in generator.config.to_dict().items() if other.config.to_dict().get(k) != v)
        raise ValueError(f"the other generator has another architecture ({', '.join(differing)} differ): offsets "
                         "predicted for this one cannot be applied to it")


def domain_rows(methods: Mapping[str, Inverter]) -> tuple[float, float] | None:
    """The rows of the generator's square that ``methods`` read as the domain (None: the whole square), or a
    ``ValueError`` where they differ: an encoder trained on cars' rows and one trained on whole squares cannot
    share the photos fitted for either. Methods with nothing trained (optimisation) take what they are given."""
    read = {name: m.content_rows for name, m in methods.items() if type(m).components or m.content_rows is not None}
    if len(set(read.values())) > 1:
        raise ValueError("the methods read different rows of the generator's images as the domain: " + "; ".join(
            f"{name} reads {describe_content_rows(rows)}" for name, rows in read.items()))
    return next(iter(read.values()), None)


def join_methods(methods: Mapping[str, Inverter], new: Mapping[str, Inverter], *, source: str,
                 atol: float = 1e-5) -> dict[str, Inverter]:
    """``methods`` and those of ``new`` (imported with their own copy of the generator) that ``methods`` lacks,
    over ``methods``' generator. A name already there keeps its method: every release ships its own Phase I, and
    the bundle's stays (a method that starts from its own W encoder, like HyperStyle, keeps it inside). The
    copies must hold the same weights (within ``atol``: releases store one generator in several layouts), else a
    ``CheckpointError`` names the parameter that differs most. ``mapping.w_avg`` is not compared: the pSp family
    stores its own average code beside the decoder, not in it."""
    generator = next(iter(methods.values())).generator
    checked = {id(generator)}
    for method in new.values():  # every one, also those the bundle keeps its own of: a mix-up is an error
        if id(method.generator) not in checked:
            check_same_weights(generator, method.generator, source=source, atol=atol)
            checked.add(id(method.generator))
    joined = dict(methods)
    for name, method in new.items():
        if name in joined:
            if name == "phase1" or _same_trained_parts(joined[name], method):
                logger.info("%s: keeping the bundle's %s", source, name)
            else:  # another model under the same name (e2style for a restoration task, a retrained encoder)
                logger.warning("%s: its %s holds other weights than the bundle's and is left out (a bundle holds one "
                               "method of each name; join it into another bundle to use it)", source, name)
            continue
        method.generator = generator
        _share_equal_parts(method, joined.values())
        joined[name] = method
    try:
        domain_rows(joined)
    except ValueError as e:
        raise CheckpointError(source, f"does not fit with the bundle: {e}") from None
    return joined


def _share_equal_parts(method: Inverter, others: Iterable[Inverter]) -> None:
    """Give ``method`` the very part one of ``others`` holds where it is the same network with the same weights (the
    Phase I W encoder a HyperStyle release starts from, loaded twice from two bundles), so that it is held and saved
    once."""
    from .io.work import fingerprint_of

    def kind(part: nn.Module) -> str:  # (cheap: the weights are compared only where a part of its kind is held)
        return fingerprint_of([type(part).__qualname__, getattr(part, "config", None)])

    held: dict[str, list[nn.Module]] = {}
    for other in others:
        for part in other.parts().values():
            held.setdefault(kind(part), []).append(part)
    for role, part in method.parts().items():
        same_kind = [p for p in held.get(kind(part), []) if p is not part]
        equal = next((p for p in same_kind if _same_weights(p, part)), None)
        if equal is not None:
            setattr(method, role, equal)


def _same_trained_parts(a: Inverter, b: Inverter) -> bool:
    """Whether two methods hold the same settings and trained weights (their generators aside)."""
    parts_a, parts_b = a.parts(), b.parts()
    return (type(a) is type(b) and a.settings() == b.settings() and parts_a.keys() == parts_b.keys()
            and all(_same_weights(parts_a[role], parts_b[role]) for role in parts_a))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks hold the same tensors, whatever their memory layouts: a bundle's loaded parts lie
    channels-last or transposed, and a fingerprint (which counts the layout) called a file's own copy of them, as
    read by import-official --add, "other weights"."""
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(
        state_a[k].dtype == state_b[k].dtype and state_a[k].shape == state_b[k].shape
        and torch.equal(state_a[k], state_b[k].to(state_a[k].device)) for k in state_a)


def check_same_weights(generator: Generator, other: Generator, *, source: str, atol: float = 1e-5,
                       rtol: float = 0.0, ours: str = "the bundle's", remedy: str = "it needs a bundle of its own"
                       ) -> None:
    """A ``CheckpointError`` on ``source`` unless ``other`` (what ``source`` was made with) holds ``generator``'s
    architecture and weights, each within ``atol + rtol * |weight|`` (``rtol``: a copy stored in fp16 is the same
    generator); ``ours`` names ``generator`` in the message. ``mapping.w_avg`` is not compared (see
    :func:`join_methods`)."""
    try:
        check_same_architecture(generator, other)
    except ValueError as e:
        raise CheckpointError(source, f"was made for another generator than {ours}: {e}") from None
    mine, theirs = generator.state_dict(), other.state_dict()
    gaps = {}
    for key in mine.keys() - {"mapping.w_avg"}:
        a, b = mine[key].float(), theirs[key].to(mine[key].device).float()
        gaps[key] = float(((a - b).abs() - rtol * a.abs()).max()), float((a - b).abs().max())
    worst = max(gaps, key=lambda k: gaps[k][0])
    if gaps[worst][0] > atol:
        raise CheckpointError(source, f"was trained with another generator than {ours} ({worst} differs by "
                              f"{gaps[worst][1]:.3g}); {remedy}")


# --- the pipeline -------------------------------------------------------------------------------------------


class InversionPipeline:
    """A generator and the methods trained for it: ``invert`` -> ``InversionResult``; ``edit``, ``interpolate``,
    ``mix`` and ``render`` work the same for every method (codes move, the image's own offsets stay).

    ``methods``: one inverter, or several by name, all over the same generator. ``default_method``: the one
    ``invert`` uses unless told (default: the first). ``name``: how the model was asked for (a catalogue name or
    a path); inversion files record it. ``align_scale``: the face-crop scale that matches the training framing.
    ``faces``: whether its inputs are aligned faces (None: not known).
    ``dtype``: the precision inversion and rendering run in: ``"fp32"`` (default), ``"bf16"`` (CPUs with native
    bf16, GPUs) or ``"fp16"`` (GPUs); see :mod:`hyperinverter.precision`. Images and codes come out in fp32.
    The methods (and ``discriminator``) are the pipeline's from then on: they are moved to ``device`` in the
    channels-last layout and frozen (eval mode, no gradients), in place, as an inference model is.
    ``prepack``: on a CPU in fp32, the trained parts' large convolution weights stay in oneDNN's layout from their
    first call on, instead of being reordered at every call (:mod:`hyperinverter.ops.prepacked`). The modules
    change in place, so ``from_pretrained`` does it for what it loads; a pipeline over modules that still train
    should not.
    """

    def __init__(self, methods: Inverter | Mapping[str, Inverter], *, default_method: str | None = None,
                 device: str | torch.device = "auto", align_scale: float = 1.0, faces: bool | None = None,
                 name: str = "", discriminator: Discriminator | None = None, dtype: str | torch.dtype = "fp32",
                 prepack: bool = False) -> None:
        methods = {methods.name: methods} if isinstance(methods, Inverter) else dict(methods)
        if not methods:
            raise ValueError("a pipeline needs at least one method")
        generators = {id(m.generator) for m in methods.values()}
        if len(generators) != 1:
            raise ValueError("every method of a pipeline must share one generator")
        self.device = resolve_device(device)
        self.dtype = dtype  # (checked by its setter)
        self.align_scale, self.faces = align_scale, faces
        self.name = name
        self.folder: Path | None = None  # the bundle folder it was loaded from (its directions), if any
        self._named_directions: dict[tuple, Direction] = {}  # what edit resolved by name, once (a basis costs)
        self._checked_directions: dict[int, Direction] = {}  # the direction objects edit was given, checked once
        self.discriminator = None if discriminator is None else discriminator.to(self.device).eval().requires_grad_(False)
        # Channels-last conv weights match the channels-last activations (faster oneDNN/cuDNN kernels).
        self.methods = {k: m.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
                        for k, m in methods.items()}
        if self.device.type == "cpu":
            if prepack and self.dtype == torch.float32:
                for method in self.methods.values():
                    prepack_convolutions(*method.parts().values())
            # Loading and the conversion above free as much as the weights take; give that back before the heap
            # keeps freed memory (full-size HyperInverter: 2.32 -> 1.73 GB resident after loading).
            trim()
        self._reuse_pending = self.device.type == "cpu"  # heap reuse comes on after the first pass (_first_pass)
        # Where the domain fills only these rows of the generator's square (cars), photos are fitted into them.
        self.content_rows: tuple[float, float] | None = domain_rows(self.methods)
        self.default_method = default_method or next(iter(methods))
        if self.default_method not in self.available_methods():
            raise ValueError(f"method {self.default_method!r} is not available here; available: "
                             f"{', '.join(self.available_methods())}")
        self._fingerprint: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The precision inversion and rendering run in (see the class); it may be set later, by name or dtype."""
        return self._dtype

    @dtype.setter
    def dtype(self, value: str | torch.dtype | None) -> None:
        # (checked as the constructor checks it: "bf16" set here reached torch.autocast as a string, and
        # torch.float16 ran on a CPU)
        self._dtype = resolve_dtype(value, self.device)

    @property
    def generator(self) -> Generator:
        return next(iter(self.methods.values())).generator

    def available_methods(self) -> list[str]:
        """The bundle's methods, then the registered methods that need no trained parts (they run anywhere)."""
        free = [n for n, cls in registered_methods().items() if not cls.components and n not in self.methods]
        return list(self.methods) + sorted(free)

    def inverter(self, method: str | None = None) -> Inverter:
        """The method ``method`` (default: the pipeline's default)."""
        name = method or self.default_method
        if not isinstance(name, str) or name not in self.methods:  # (get_method names what is not a name)
            try:
                cls = get_method(name)
            except ValueError as e:
                raise ValueError(f"{e}; this model runs {', '.join(self.available_methods())}") from None
            if cls.components:
                raise ValueError(f"this model has no trained {name} (it needs {', '.join(cls.components)}); "
                                 f"available: {', '.join(self.available_methods())}")
            extra = {"discriminator": self.discriminator} if cls.accepts_discriminator else {}
            self.methods[name] = cls(self.generator, **extra).to(self.device).eval()
        return self.methods[name]

    def compile(self, method: str | None = None) -> None:
        """Run ``method`` (default: the pipeline's) through ``torch.compile`` from now on: same results (to float
        rounding), its first call compiles (minutes cold, seconds once cached), later calls are faster. On a CPU it
        runs the bundled models about 1.5× faster and pays off from about 70 batches once inductor's cache holds
        the model's kernels, 800 the first time (``benchmarks/results/compile-cpu.md``); at full size
        (ffhq-1024) HyperInverter took only 3 % less, and 0.4 GB more memory
        (``benchmarks/results/hyperinverter-compile-717cd43-xeon``). Nothing needs it."""
        inverter = self.inverter(method)
        unpack_convolutions(inverter)  # compiled, inductor picks the convolutions' kernels; a packed weight is opaque
        inverter.compile()

    @property
    def fingerprint(self) -> str:
        """The generator's fingerprint (:func:`hyperinverter.inversion.files.generator_fingerprint`)."""
        if self._fingerprint is None:
            from .inversion.files import generator_fingerprint

            self._fingerprint = generator_fingerprint(self.generator)
        return self._fingerprint

    # --- loading and saving ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, method: str | None = None,
                        device: str | torch.device = "auto", dtype: str | torch.dtype = "fp32",
                        prepack: bool = True, content_rows: tuple[float, float] | None = None) -> InversionPipeline:
        """Load a bundle folder, or a catalogue name (bundled or downloaded models). ``method``: the default
        method from now on (default: the bundle's own). ``prepack``: see the class; the first inversion packs (700 MiB
        of weights at full size, about 9 ms per 9 MiB weight). Pass False to train what it loads: a packed weight is no
        longer a parameter (``ops.prepacked.unpack_convolutions`` turns it back into one).

        A generator alone (an NVIDIA pickle, a rosinality ``.pt``, our generator folder, or a catalogue name of one)
        gives a pipeline of the methods that need nothing trained, NVIDIA's projector (``w-opt``) by default, with
        the file's discriminator when it holds one. ``content_rows``: for such a generator of a domain that fills
        only some rows of its square (NVIDIA's cars: ``(0.125, 0.875)``), those rows, which photos are fitted into
        and scored on, as a bundle of that domain records them; a bundle must read the same rows or none be given.
        """
        from .catalogue import local_model_path

        if not isinstance(name_or_path, (str, os.PathLike)):  # (None, 3 or b"x" failed inside os.path, naming nothing)
            raise TypeError(f"name_or_path must be a model name or a path (str or os.PathLike), got "
                            f"{type(name_or_path).__name__}")
        if content_rows is not None:
            content_rows = check_content_rows(content_rows, "content_rows")
        path = local_model_path(name_or_path)
        bundle = (path / PIPELINE_INDEX).is_file()
        load = cls._load if bundle else cls._load_generator
        with large_blocks_mapped():  # what loading frees goes back to the system (hyperinverter.memory)
            pipe = load(path, pipeline_name=os.fsdecode(name_or_path), method=method, device=device, dtype=dtype,
                        prepack=prepack)
        if content_rows is not None and content_rows != pipe.content_rows:
            if bundle:
                raise CheckpointError(path, f"is a bundle whose methods read {describe_content_rows(pipe.content_rows)}"
                                      f", not the content rows {list(content_rows)} asked for")
            side = pipe.generator.resolution  # (no row at all: every photo failed, "height and width must be > 0")
            if round(content_rows[0] * side) >= round(content_rows[1] * side):
                raise ValueError(f"content_rows: {list(content_rows)} hold no row of the generator's {side}-px images")
            for inverter in pipe.methods.values():  # (a generator alone: methods with nothing trained)
                inverter.content_rows = content_rows
            pipe.content_rows = content_rows
        return pipe

    @classmethod
    def _load_generator(cls, path: Path, *, pipeline_name: str, method: str | None, device: str | torch.device,
                        dtype: str | torch.dtype, prepack: bool) -> InversionPipeline:
        """``from_pretrained``'s work on a generator file or folder: the methods that need nothing trained."""
        from .convert.gan_files import detect_format
        from .methods.projector import WProjection

        try:
            gan = load_gan(path, with_discriminator=detect_format(path) != "rosinality")
        except InputError as e:
            raise CheckpointError(path, f"is neither a pipeline folder (it has no {PIPELINE_INDEX}) nor a generator "
                                  f"({e.cause})") from None
        projector = WProjection(gan.generator, discriminator=gan.discriminator)
        return cls(projector, default_method=method, device=device, name=pipeline_name,
                   discriminator=gan.discriminator, dtype=dtype, prepack=prepack)

    @classmethod
    def _load(cls, path: Path, *, pipeline_name: str, method: str | None, device: str | torch.device,
              dtype: str | torch.dtype, prepack: bool) -> InversionPipeline:
        """``from_pretrained``'s work on a bundle folder, inside its memory policy."""
        index = read_pipeline_index(path)
        generator = load_gan(path / index["generator"]).generator
        loaded: dict[str, nn.Module] = {}  # folder -> component, so that shared components load once
        methods = {}
        for name, entry in index["methods"].items():
            try:
                method_class = get_method(name)
            except ValueError as e:
                raise SchemaError(path / PIPELINE_INDEX, str(e)) from None
            parts = {}
            for role, folder in entry.get("components", {}).items():
                if folder not in loaded:
                    loaded[folder] = load_component(path / folder)
                parts[role] = loaded[folder]
            missing = sorted(set(method_class.components) - set(parts))
            if missing:
                raise SchemaError(path / PIPELINE_INDEX, f"'methods.{name}' lacks the components {missing}")
            try:
                methods[name] = method_class.from_parts(generator, parts, entry.get("settings", {}))
            except (TypeError, ValueError, AttributeError) as e:  # (a part of another kind: an AttributeError)
                given = ", ".join(f"{role}: {type(part).__name__}" for role, part in parts.items())
                raise CheckpointError(path, f"its {name} does not fit together ({given}): {e}") from None
        methods = {n: methods[n] for n in index["methods"]}
        discriminator = None
        if "discriminator" in index:
            discriminator = load_component(path / index["discriminator"], expect="stylegan2-discriminator")
        pipe = cls(methods, default_method=method or index["default_method"], device=device,
                   align_scale=float(index.get("align_scale", 1.0)), faces=index.get("faces"), name=pipeline_name,
                   discriminator=discriminator, dtype=dtype, prepack=prepack)
        pipe.folder = path
        return pipe

    def save_pretrained(self, path: str | os.PathLike, *, dtype: torch.dtype | str | None = None) -> Path:
        """Write the bundle (see :func:`save_pipeline`)."""
        return save_pipeline(self.methods, path, default_method=self.default_method, dtype=dtype,
                             align_scale=self.align_scale, faces=self.faces, discriminator=self.discriminator)

    # --- inputs -----------------------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor | Image.Image | str | Path | bytes | np.ndarray
                | Sequence[Image.Image | str | Path | bytes | np.ndarray | torch.Tensor], *,
                size: int | None = None, warn_unsigned: bool = True) -> torch.Tensor:
        """An image, a path, or a sequence of them -> ``[B,C,R,R]`` in [-1,1] at the generator's resolution (or
        ``size``) and channel count.

        Files (a path, or a file's bytes) go through :func:`hyperinverter.io.images.read_image`, and so do PIL
        images and uint8 numpy images (``H x W`` or ``H x W x C``, as image libraries hold them). A non-square image
        gives its centred square (never squashed), or where the domain fills only some rows of the generator's
        square (``content_rows``: cars) the whole image squashed into them (:func:`~hyperinverter.io.images.
        fit_to_canvas`); align faces first for face models. Tensors are passed through:
        ``[B,C,R,R]`` (or one ``[C,R,R]``, or a list of either) with the generator's channel count and resolution,
        floats in [-1,1] or ``uint8`` in [0, 255]. Float tensors that hold no negative values are warned of (floats in
        [0, 1] given by mistake, a washed-out inversion); ``warn_unsigned=False`` where they were made from image
        files (:func:`~hyperinverter.io.images.pil_to_tensor`), in which a bright photo, no pixel below mid-grey (a
        white-background product shot), has none either.
        """
        return self._prepare(images, size=size, warn_unsigned=warn_unsigned)[0]

    def _prepare(self, images, *, size: int | None, warn_unsigned: bool) -> tuple[torch.Tensor, list]:
        """:meth:`prepare`, and per image the photo it was enlarged from, where it was (``photo_tensors``), else
        None."""
        G = self.generator
        if isinstance(images, (str, os.PathLike, Image.Image, bytes, bytearray, memoryview, np.ndarray)):
            images = [images]  # one image: a string is not a sequence of paths, nor are a file's bytes a sequence
        elif not isinstance(images, (torch.Tensor, Iterable)):  # (None was "'NoneType' object is not iterable")
            raise TypeError("images must be a tensor, an image, a path, or a list of images or paths; got "
                            f"{type(images).__name__}")
        if isinstance(images, torch.Tensor):
            images = [images]
        images = list(images)
        if images and all(isinstance(item, torch.Tensor) for item in images):  # a tensor, or a list of them
            if len({tuple(item.shape[-3:]) for item in images}) > 1:
                raise ValueError(f"the image tensors differ in shape: {[tuple(i.shape) for i in images][:4]}")
            # Each converted before they are joined: torch.cat promotes a uint8 image among floats to floats in
            # [0, 255] (taken for [-1, 1] with a warning), and an integer or bool one without a word.
            parts = [_float_images(item) for item in images]
            x = torch.cat(parts)
            given_as_floats = [item.is_floating_point() for item, part in zip(images, parts) for _ in part]
            originals = [None] * len(x)
        else:
            images = [_numpy_image(item) if isinstance(item, np.ndarray) else item for item in images]
            side = size or G.resolution
            pairs = [photo_tensors(fit_to_canvas(read_image(item), self.content_rows, side=side), size=side,
                                   channels=G.config.img_channels) for item in images]
            if not pairs:
                raise ValueError("no images given")
            x = torch.cat([tensor for tensor, _ in pairs])
            originals = [original for _, original in pairs]
            given_as_floats = [False] * len(x)  # (files and uint8 images: a bright photo may lack dark pixels)
        expected = (G.config.img_channels, size or G.resolution, size or G.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images must be [B, {', '.join(map(str, expected))}] for this generator, got "
                             f"{tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("no images given (an empty batch)")
        peak = float(x.detach().abs().max())  # one pass for both checks: NaN and infinities carry through max
        if not math.isfinite(peak):
            raise NonFiniteError(None, "the input images hold NaN or infinite values")
        if peak > 1e4:  # (3e38 overflowed inside, and the NaN image blamed the model's weights)
            raise ValueError(f"the images given hold values up to {peak:.3g}: inversion expects [-1, 1]")
        if peak > 1.5:
            logger.warning("the images given hold values up to %.3g: inversion expects [-1, 1] (uint8 images are "
                           "converted; for floats in [0, 255] or [0, 1], rescale first)", peak)
        elif warn_unsigned and any(given_as_floats):
            # Floats in [0, 1] (torchvision's ToTensor) were inverted as a washed-out photo without a word; a photo in
            # [-1, 1] has pixels below mid-grey.
            unsigned = [i for i in torch.nonzero(x.detach().flatten(1).amin(dim=1) >= 0).flatten().tolist()
                        if given_as_floats[i]]
            if unsigned:
                logger.warning("image(s) %s given hold no negative values: inversion expects [-1, 1] (for floats in "
                               "[0, 1], as torchvision's ToTensor gives, rescale with x * 2 - 1)", unsigned[:8])
        return x.to(self.device, torch.float32), originals

    # --- inference --------------------------------------------------------------------------------------
    def invert(self, images: torch.Tensor | Sequence[Image.Image | str | Path], *, method: str | None = None,
               batch_size: int = 8, check_finite: bool = True, dtype: str | torch.dtype | None = None,
               at_encoder_size: bool = False, warn_unsigned: bool = True,
               originals: Sequence[torch.Tensor | None] | None = None, **options: Any) -> InversionResult:
        """Invert ``images`` with ``method`` (default: the pipeline's), in chunks of ``batch_size`` (results do
        not depend on it). ``options``: the method's own (see ``hyperinverter methods``). ``dtype``: this call's
        precision (default: the pipeline's ``dtype``). ``at_encoder_size``: the images are at the size the
        method's encoder reads (an E2Style restoration input degraded there, as it was trained), not the
        generator's; for the encoder methods, which read the images through their encoder alone. ``warn_unsigned``:
        see :meth:`prepare` (False: the images were read from files, in [-1, 1]). ``originals``: per image, the photo
        ``[1, C, s, s]`` it was enlarged from to the generator's size, or None (``io.images.photo_tensors``; paths and
        PIL images carry theirs): a method that reads images through its encoder alone reads that photo resized to
        its input (``Inverter.encoder_view``), as the official scripts resize the photo as read.

        A reconstruction with NaN or infinite values raises ``NonFiniteError`` (``check_finite=False`` returns
        it, for callers that report such samples one by one).
        """
        batch_size = check_batch_size(batch_size)
        inverter = self.inverter(method)
        size = None
        if at_encoder_size:
            size = getattr(inverter, "encoder_resolution", None)
            if size not in inverter.input_sides():
                why = ("reads its domain's rows of the generator's images" if size is not None
                       else "compares its images with the input")
                raise ValueError(f"{inverter.name} {why} at the generator's {self.generator.resolution} px: give it "
                                 "images of that size")
        x, read = self._prepare(images, size=size, warn_unsigned=warn_unsigned)
        if originals is not None:
            originals = list(originals)
            if len(originals) != len(x):
                raise ValueError(f"originals holds {len(originals)} photo(s) for {len(x)} image(s)")
            read = originals
        if not at_encoder_size and any(photo is not None for photo in read):
            x = self._encoder_views(inverter, x, read)
        dtype = self.dtype if dtype is None else resolve_dtype(dtype, self.device)
        with self._first_pass():
            result = InversionResult.cat([inverter.invert(x[i : i + batch_size], dtype=dtype, **options)
                                          for i in range(0, x.shape[0], batch_size)])
        if check_finite:
            ensure_finite(result.image, "the reconstruction")
        return result

    def _encoder_views(self, inverter: Inverter, x: torch.Tensor, originals: list[torch.Tensor | None]
                       ) -> torch.Tensor:
        """``x`` as ``inverter``'s encoder reads it, each image from its original photo where it has one (else from
        itself: the same values the method reads from it); ``x`` itself for a method that compares images at the
        generator's size."""
        views = []
        for i, photo in enumerate(originals):
            if photo is not None and (not isinstance(photo, torch.Tensor) or photo.ndim != 4
                                      or photo.shape[:2] != (1, x.shape[1]) or photo.shape[2] != photo.shape[3]):
                got = tuple(photo.shape) if isinstance(photo, torch.Tensor) else type(photo).__name__
                raise ValueError(f"originals[{i}] must be a photo [1, {x.shape[1]}, s, s] or None, got {got}")
            view = inverter.encoder_view(x[i : i + 1] if photo is None else photo.to(x))
            if view is None:
                return x
            views.append(view)
        return torch.cat(views)

    def content(self, images: torch.Tensor) -> torch.Tensor:
        """What of generator images ``[..., R, R]`` is shown and written: the rows that hold the domain where it
        fills only some (``content_rows``: a car's 384 of 512, as the official cars codes save their results); the
        images themselves for a square domain. Any square size (another generator's rendering, ``--render-with``)."""
        if not isinstance(images, torch.Tensor) or images.ndim < 3 or images.shape[-1] != images.shape[-2]:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be square generator images [..., R, R], got {shape}")
        return content_of(images, self.content_rows)

    @torch.no_grad()
    def render(self, ws: torch.Tensor, weight_delta: WeightDelta | None = None, *,
               generator: Generator | None = None) -> torch.Tensor:
        """Codes (and offsets) -> images, by this pipeline's generator or another one of the same architecture (used
        as it is where it sits on this pipeline's device in fp32, as the pipeline's own; else a copy moved there)."""
        G = self.generator if generator is None else self._on_device(generator)
        if not isinstance(ws, torch.Tensor) or ws.ndim != 3 or tuple(ws.shape[1:]) != (G.num_ws, G.w_dim):
            shape = tuple(ws.shape) if isinstance(ws, torch.Tensor) else type(ws).__name__
            raise ValueError(f"codes must be [B, {G.num_ws}, {G.w_dim}] for this generator, got {shape}")
        _check_values(ws, "ws (the codes)")
        if weight_delta is not None and not isinstance(weight_delta, WeightDelta):  # (a dict: AttributeError)
            raise TypeError(f"weight_delta must be a WeightDelta or None, got {type(weight_delta).__name__}")
        for name, offset in (weight_delta or {}).items():
            _check_values(offset, f"the offset {name}")
        if weight_delta is not None:  # (a result kept on the CPU, as invert_files keeps them, failed on a GPU)
            weight_delta = weight_delta.to(self.device)
        with self._first_pass(), reduced_precision(self.device, self.dtype):
            images = G.synthesis(ws.to(self.device), weight_delta=weight_delta, noise_mode="const")
        return ensure_finite(images.float(), "the rendered image")

    def _on_device(self, module: nn.Module) -> nn.Module:
        """``module`` where its tensors are on this pipeline's device in fp32 (reduced precision runs under autocast),
        else a copy of it moved there: a caller's module is never moved or converted (a half-precision generator
        failed inside its first layer)."""
        device = torch.empty(0, device=self.device).device  # ("cuda" is "cuda:0" on a tensor)
        tensors = [*module.parameters(), *module.buffers()]
        if all(t.device == device and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors):
            return module
        return copy.deepcopy(module).to(device, torch.float32)

    @contextlib.contextmanager
    def _first_pass(self) -> Iterator[None]:
        """The CPU heap policy around inference: this pipeline's first pass in :func:`memory.first_pass_mapped`,
        later ones with heap reuse (no page faults on their large activations)."""
        if not self._reuse_pending:
            yield
            return
        with first_pass_mapped():
            yield
        self._reuse_pending = False

    def adapt(self, result: InversionResult, generator: Generator, *, min_resolution: int | None = None
              ) -> torch.Tensor:
        """Domain adaptation (HyperStyle §5): the inversion's codes and offsets, predicted with this pipeline's
        generator, rendered by ``generator``, a fine-tuned copy of it (a style, another domain).

        As the official script, only the offsets of the synthesis convs at ``min_resolution`` and above are kept
        (default: an eighth of the resolution, so 128-1024 px for a 1024-px generator; coarse layers and ToRGBs
        come from ``generator`` alone). Unlike it, the codes are the inversion's own (the script takes them from a
        ReStyle-e4e encoder, which the package does not have) and the noise maps are the fixed ones (the script
        draws new ones), so a rendering repeats.
        """
        if not isinstance(generator, nn.Module):  # (a path or a name was an AttributeError inside)
            raise TypeError("generator must be a loaded Generator (hyperinverter.convert.gan_files.load_generator), "
                            f"got {type(generator).__name__}")
        if min_resolution is not None:
            whole = whole_number(min_resolution)
            if whole is None or not 1 <= whole <= self.generator.resolution:  # (above it, every offset was dropped)
                raise ValueError(f"min_resolution must be a whole number from 1 to the generator's resolution, "
                                 f"{self.generator.resolution}, got {min_resolution!r}")
            min_resolution = whole
        _check_result(result, "result")
        check_same_architecture(self.generator, generator)
        min_resolution = min_resolution or self.generator.resolution // 8
        delta = result.weight_delta
        if delta is not None:
            delta = delta.only(f"{layer.name}.weight" for layer in self.generator.synthesis.layers()
                               if layer.kind == "conv" and layer.resolution >= min_resolution)
        return self.render(result.ws, None if delta is None else delta.to(self.device), generator=generator)

    def save_result(self, result: InversionResult, path: str | os.PathLike, *, method: str | None = None,
                    source: str | os.PathLike = "") -> Path:
        """Store one image's inversion (``result.select(i)``) as an inversion file, atomically: the file ``invert``
        writes, which :meth:`load_result`, ``edit``, ``interpolate`` and the rest read back with this model.
        ``method``: the method that made it, by default the one the result records (``invert`` records it; else
        the pipeline's default). ``source``: the image it was inverted from, if any."""
        from .inversion.files import check_fits, save_inversion

        _check_result(result, "result")
        offsets = ((f"offset {k}", t) for k, t in (result.weight_delta or {}).items())
        for what, tensor in (("codes", result.ws), *offsets):
            if not torch.isfinite(tensor).all():  # (written, the file could not be rendered when read back)
                raise NonFiniteError(None, f"the result's {what} hold NaN or infinite values: nothing was written")
        # (another model's result was written labelled with this model's name and generator)
        check_fits("the result", result.ws, result.weight_delta, {}, self.generator,
                   model=repr(self.name or "this model"), fingerprint=self.fingerprint)
        # (a W optimisation's result was recorded as the default method's, a bf16 one as fp32; a loaded file of
        # another bundle of this generator keeps the method it records, which this model may not hold)
        if method is None and result.method is not None and result.method not in self.available_methods():
            method = get_method(result.method).name
        else:
            method = self.inverter(method if method is not None else result.method).name
        return save_inversion(path, result.to("cpu"), source=source, model=self.name or "", method=method,
                              generator=self.fingerprint, dtype=result.dtype or self.dtype)

    def load_result(self, path: str | os.PathLike) -> tuple[InversionResult, dict]:
        """An inversion file (written by ``invert``) rendered by this model -> (result, its record).

        A file made with another model (other code or Δθ shapes, or another generator's fingerprint) is an error
        that says so, rather than a meaningless image.
        """
        from .inversion.files import check_fits, load_inversion

        ws, delta, record = load_inversion(path)
        check_fits(path, ws, delta, record, self.generator, model=repr(self.name or "this model"),
                   fingerprint=self.fingerprint)
        method = self.methods.get(record["method"])
        expected = method.offset_names() if method is not None and delta is not None else None
        missing = sorted(expected - set(delta)) if expected is not None else []
        if missing:  # (a lost layer's offset was taken as none without a word; another bundle's may lack some)
            logger.warning("%s: its Δθ lacks offsets that this model's %s predicts (%s%s); it is rendered without "
                           "them", path, record["method"], ", ".join(missing[:4]), ", ..." if len(missing) > 4 else "")
        ws = ws.to(self.device)
        delta = delta.to(self.device) if delta is not None else None
        # (without its method and precision, a loaded result saved again was recorded as the default method's)
        return InversionResult(ws=ws, image=self.render(ws, delta), weight_delta=delta, method=record["method"] or None,
                               dtype=record["dtype"]), record

    @torch.no_grad()
    def edit(self, result: InversionResult, direction: Direction | str | os.PathLike | torch.Tensor,
             strength: float | None = None) -> torch.Tensor:
        """Edit the codes only and render with the image's own Δθ (as in the papers).

        ``direction``: a direction object; the name of one this bundle ships (``hyperinverter directions list``)
        or a direction file, as ``edit --direction`` takes; or a vector ``[w_dim]`` / ``[1|num_ws, w_dim]`` /
        ``[1, num_ws, w_dim]`` (e4e's ``pose.pt`` as ``torch.load`` gives it) added ``strength`` times (default 1)."""
        return self.edit_strengths(result, direction, [strength])[0]

    @torch.no_grad()
    def edit_strengths(self, result: InversionResult, direction: Direction | str | os.PathLike | torch.Tensor,
                       strengths: Iterable[float | None]) -> torch.Tensor:
        """:meth:`edit` at each of ``strengths`` (None: the direction's default; a list, or e.g.
        ``np.linspace(-3, 3, 7)``), in one synthesis call -> ``[len(strengths), B, C, R, R]``. A single image's
        offsets are shared by its edits, not copied."""
        _check_result(result, "result")
        return self.edit_each([result], direction, strengths)[0]

    @torch.no_grad()
    def edit_each(self, results: Sequence[InversionResult],
                  direction: Direction | str | os.PathLike | torch.Tensor, strengths: Iterable[float | None], *,
                  batch_size: int = 8) -> list[torch.Tensor]:
        """:meth:`edit_strengths` of each of ``results`` (the faces of one photo, say) -> each one's
        ``[len(strengths), len(result), C, R, R]``, batched: consecutive results whose offsets are of one kind are
        synthesised together (each sample with its own Δθ), in calls of at most ``batch_size`` images (samples ×
        strengths; a result that alone makes more is one call)."""
        batch_size = check_batch_size(batch_size)
        if isinstance(results, InversionResult) or not isinstance(results, Sequence):
            raise TypeError(f"results must be a sequence of InversionResults, got {type(results).__name__}")
        if not results:
            raise ValueError("results is empty: give at least one")
        for i, result in enumerate(results):
            _check_result(result, f"results[{i}]")
        strengths = _strength_list(strengths)
        direction = self._resolved_direction(direction)
        self._check_w_space(direction)
        edited: list[torch.Tensor] = []
        for chunk in _edit_chunks(results, batch_size // len(strengths)):
            codes = torch.cat([r.ws.to(self.device) for r in chunk])
            # One result's offsets as they are (tiled as a view below); several: one copy, concatenated.
            deltas = [r.weight_delta.to(self.device) for r in chunk if r.weight_delta is not None]
            delta = (None if not deltas else deltas[0] if len(deltas) == 1 else WeightDelta.cat(deltas))
            images = self._render_edits(codes, delta, direction, strengths)
            start = 0
            for r in chunk:
                edited.append(images[:, start : start + len(r)])
                start += len(r)
        return edited

    def _resolved_direction(self, direction: Direction | str | os.PathLike | torch.Tensor) -> Direction:
        """``direction`` as :meth:`edit` takes it, as a direction object."""
        if isinstance(direction, torch.Tensor):
            _check_values(direction, "direction")
            if direction.dtype == torch.bool or direction.is_complex():  # (taken as 0/1, or its real part)
                raise ValueError(f"direction must be a tensor of real numbers, got {direction.dtype}")
            return LinearDirection(direction_rows(direction.detach().float()), default_strength=1.0)
        if isinstance(direction, (str, os.PathLike)):
            from .editing.catalogue import resolve_direction

            name = os.fspath(direction)
            key = self._direction_key(name)
            if key not in self._named_directions:
                if len(self._named_directions) >= 64:
                    self._named_directions.clear()
                self._named_directions[key] = resolve_direction(self.folder, name, generator=self.generator)
            return self._named_directions[key]
        if not callable(getattr(direction, "apply", None)):  # (None or a list was an AttributeError)
            raise TypeError("direction must be a direction, a name, a file or a tensor, got "
                            f"{type(direction).__name__}")
        return direction

    def _render_edits(self, codes: torch.Tensor, delta: WeightDelta | None, direction: Direction,
                      strengths: list[float | None]) -> torch.Tensor:
        """``codes`` ``[B, num_ws, w_dim]`` (on the device, with their offsets ``delta``) edited at each of
        ``strengths``, in one synthesis call -> ``[len(strengths), B, C, R, R]``."""
        ws = torch.cat([direction.apply(codes, strength) for strength in strengths])
        # Tiled on the device: moving a view of one sample's offsets would copy it for every strength.
        delta = delta.tile(len(strengths)) if delta is not None else None
        try:
            images = self.render(ws, delta)
        except NonFiniteError:
            moved = float((ws - codes.repeat(len(strengths), 1, 1)).abs().nan_to_num(nan=math.inf).max())
            if moved < 1e3:  # (codes lie within about ±10: a smaller move is not what broke the render)
                raise
            # The edit, not the model: it was blamed on "the model's weights or an option".
            raise NonFiniteError(None, f"the edited image holds NaN or infinite values: the edit moved the codes by "
                                 f"up to {moved:.3g}; give a smaller strength") from None
        return images.unflatten(0, (len(strengths), len(codes)))

    def _direction_key(self, name: str) -> tuple:
        """What the direction ``name`` is read from, as it is now: the file it may name (from the current folder)
        and the model's directions folder, with their times and sizes. A file written again, or another folder,
        is read again (the first reading of a name was kept for the pipeline's life)."""
        key: list = [name]
        for path in (Path(name), None if self.folder is None else self.folder / "directions"):
            try:
                stat = path.stat() if path is not None else None
            except (OSError, ValueError):  # (ValueError: a NUL in the name; resolve_direction names it)
                stat = None
            key.append(None if stat is None else (os.path.abspath(path), stat.st_mtime_ns, stat.st_size))
        return tuple(key)

    def _check_w_space(self, direction: Direction) -> None:
        """Warn, once per direction, when it was found on another generator (``w_space_mismatch``)."""
        from .editing.directions import w_space_mismatch

        if self._checked_directions.get(id(direction)) is direction:
            return
        if len(self._checked_directions) >= 64:
            self._checked_directions.clear()
        self._checked_directions[id(direction)] = direction  # (held, so that its id is not another's)
        why = w_space_mismatch(direction, self.generator)
        if why:
            logger.warning("direction %r: %s", getattr(direction, "name", "?"), why)

    @torch.no_grad()
    def interpolate(self, a: InversionResult, b: InversionResult, steps: int = 8) -> torch.Tensor:
        """Lerp both ``ws`` and every offset from ``a`` to ``b`` (one sample each) -> ``[steps,C,R,R]``."""
        whole = whole_number(steps)
        if whole is None or not 2 <= whole <= MAX_INTERPOLATION_STEPS:
            raise ValueError(f"steps must be a whole number from 2 to {MAX_INTERPOLATION_STEPS}, got {steps!r} "
                             "(a longer sequence: blend one frame at a time)")
        steps = whole
        return torch.cat([self.blend(a, b, t) for t in torch.linspace(0, 1, steps).tolist()])

    @torch.no_grad()
    def blend(self, a: InversionResult, b: InversionResult, t: float) -> torch.Tensor:
        """The image at fraction ``t`` of the way from ``a`` to ``b`` (codes and offsets lerped) -> ``[1,C,R,R]``.

        When only one end has offsets (a W method and HyperInverter, say), the other end counts as no offset.
        """
        _check_result(a, "a")
        _check_result(b, "b")
        if len(a) != 1 or len(b) != 1:
            raise ValueError("interpolate takes one image per end point")
        if a.ws.shape != b.ws.shape:
            raise ValueError(f"the two end points come from different models (codes {tuple(a.ws.shape)} and "
                             f"{tuple(b.ws.shape)})")
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 <= t <= 1.0:  # (NaN fails the range)
            raise ValueError(f"t must be a number in [0, 1], got {t!r}")
        ends = [None if r.weight_delta is None else r.weight_delta.to(self.device) for r in (a, b)]
        codes = [r.ws.to(self.device, torch.float32) for r in (a, b)]  # (float64 codes: lerp refused the mix)
        return self.render(torch.lerp(*codes, t), WeightDelta.blend(*ends, t))

    @torch.no_grad()
    def mix(self, a: InversionResult, b: InversionResult, start: int, end: int) -> torch.Tensor:
        """Style mixing: ``a``'s codes with rows ``start:end`` taken from ``b``, rendered with ``a``'s own
        generator offsets -> ``[B,C,R,R]``.

        These are the semantics of editing with kept offsets: the offsets (Δθ, and the noise of methods that fit
        it) were fitted to ``a``'s photo and stay with it, and ``b`` contributes codes only (coarse rows carry pose
        and shape, fine rows colour and texture). ``b`` holds one image (mixed into every sample of ``a``) or as
        many as ``a``.
        """
        _check_result(a, "a")
        _check_result(b, "b")
        num_ws = a.ws.shape[1]
        given = {"start": start, "end": end}
        start, end = whole_number(start), whole_number(end)
        for name, value in (("start", start), ("end", end)):
            if value is None:
                raise TypeError(f"the layer range's {name} must be an integer, got {given[name]!r}")
        if not 0 <= start < end <= num_ws:
            raise ValueError(f"layer range {start}:{end} is empty or outside the codes' rows 0:{num_ws} (it needs "
                             f"0 <= start < end <= {num_ws})")
        if a.ws.shape[1:] != b.ws.shape[1:]:
            raise ValueError(f"the two images come from different models (codes {tuple(a.ws.shape[1:])} and "
                             f"{tuple(b.ws.shape[1:])})")
        if len(b) not in (1, len(a)):
            raise ValueError(f"mix takes one image for b, or as many as a ({len(a)}); got {len(b)}")
        ws = a.ws.to(self.device).clone()
        ws[:, start:end] = b.ws[:, start:end].to(ws)
        delta = a.weight_delta.to(self.device) if a.weight_delta is not None else None
        return self.render(ws, delta)
