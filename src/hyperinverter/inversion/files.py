"""Per-image inversion files: ``ws`` and every Δθ tensor in one safetensors file, with a checked record.

Tensors: ``ws [1, num_ws, w_dim]`` and ``delta.<synthesis parameter> [1, *shape]``. Metadata ``inversion``: the
``source`` image, the ``model`` name, the inversion ``method``, the ``generator`` fingerprint (see
:func:`generator_fingerprint`), the offset ``mode``, the face ``placement`` in the source photo (or null), and ``picture`` (this face's index and
the number of faces found in the photo, so that a resumed batch knows whether a photo is complete), and the
``dtype`` the networks ran in (``fp32``, ``bf16`` or ``fp16``; a file without it was made before reduced precision
existed, so in fp32), ``made_with``, a digest of the method's weights and options (or null), and ``source_sha256``,
the sha256 of the source file's bytes (or null), on which ``invert`` resumes. Its tensors are fp32 whatever the
``dtype``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SchemaError
from ..io.checkpoints import (
    encode_safetensors,
    read_metadata_json,
    read_safetensors,
    read_safetensors_metadata,
)
from ..io.images import PHOTO_READING
from ..io.work import fingerprint_of
from ..methods.base import InversionResult
from ..models.weight_delta import WeightDelta
from ..precision import PRECISIONS, dtype_name

logger = logging.getLogger(__name__)

_DELTA = "delta."


def generator_fingerprint(generator: torch.nn.Module) -> str:
    """A short hash of a generator's config and weights: inversion files record it, so that a file is never
    rendered by a generator it was not made for (its codes and Δθ would give a meaningless image)."""
    digest = hashlib.sha256(json.dumps(generator.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(generator.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def made_with_digest(inverter: torch.nn.Module, options: Mapping[str, Any] | None) -> str:
    """A short hash of a method's weights (:func:`method_fingerprint`), the options of its ``invert`` and how a
    photo file becomes what it reads (``PHOTO_READING``): inversion files record it, so that a re-run with a
    retrained encoder, other options or a new reading of its photos does not skip its inputs. The options are the
    ones that run, the method's own defaults included (an instance's, as ``create(preset="tiny")`` makes, were left
    out: its files were taken for those of the official settings); ``progress`` does not count."""
    effective = inverter.check_options(options or {})
    effective.pop("progress", None)
    return fingerprint_of([method_fingerprint(inverter), effective, PHOTO_READING])


def method_fingerprint(inverter: torch.nn.Module) -> str:
    """A short hash of a method: its generator, its name and settings, and its trained parts' weights. Work
    stored for a resumable run records it, so that a retrained encoder over the same generator is never scored
    from another's stored work."""
    return fingerprint_of([generator_fingerprint(inverter.generator), inverter.name, inverter.settings(),
                           inverter.parts()])


@dataclass(frozen=True)
class InversionRecord:
    """The checked metadata of an inversion file."""

    source: str
    model: str
    method: str
    generator: str | None
    mode: str | None
    placement: dict | None
    picture: dict | None
    dtype: str = "fp32"  # the precision that made it (see hyperinverter.precision)
    made_with: str | None = None  # a digest of the method's weights and options (`invert` resumes on it)
    source_sha256: str | None = None  # the source file's bytes (`invert` redoes a photo replaced under its name)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "model": self.model, "method": self.method, "generator": self.generator,
                "mode": self.mode, "placement": self.placement, "picture": self.picture, "dtype": self.dtype,
                "made_with": self.made_with, "source_sha256": self.source_sha256}


def inversion_bytes(result: InversionResult, *, source: str | os.PathLike = "", model: str = "", method: str = "",
                    generator: str | None = None, placement: dict | None = None,
                    picture: dict | None = None, dtype: str | torch.dtype = "fp32",
                    made_with: str | None = None, source_sha256: str | None = None) -> bytes:
    """The bytes of one image's inversion file (to write it together with its pictures). ``dtype``: the precision
    the inversion ran in (the pipeline's ``dtype``); ``made_with``: :func:`made_with_digest` of the method and its
    options; ``source_sha256``: the hex sha256 of the ``source`` file's bytes."""
    if len(result) != 1:
        raise ValueError("an inversion file stores one image; select it first")
    tensors = {"ws": result.ws}
    mode = None
    if result.weight_delta is not None:
        mode = result.weight_delta.mode
        tensors.update({_DELTA + k: v for k, v in result.weight_delta.items()})
    record = InversionRecord(os.fsdecode(source), model, method, generator, mode, placement, picture,
                             dtype_name(dtype), made_with, source_sha256)
    _check_placement(record.placement, Path("<new inversion file>"))
    return encode_safetensors(tensors, {"inversion": json.dumps(record.as_dict())})


def save_inversion(path: str | os.PathLike, result: InversionResult, **record: Any) -> Path:
    """Store one image's codes and Δθ atomically; ``record``: see :func:`inversion_bytes`."""
    from ..io.files import atomic_write_bytes, check_file_replaceable

    data = inversion_bytes(result, **record)
    # Checked as a safetensors file whatever its name (a user's notes.txt was written over), and as an inversion
    # (one never replaces a model's weights).
    check_file_replaceable(path, safetensors=True, replacing_with=data)
    return atomic_write_bytes(path, data, replace_any=True)  # (checked just above)


def _check_placement(placement: object, path: Path) -> None:
    if placement is None:
        return
    if not isinstance(placement, dict) or set(placement) != {"quad", "source_size"}:
        raise SchemaError(path, "'placement' must be null or {quad: 4 [x, y] points, source_size: [width, height]}")
    quad, size = placement["quad"], placement["source_size"]
    if not (isinstance(quad, list) and len(quad) == 4 and all(
            isinstance(p, list) and len(p) == 2 and all(_finite_number(v) for v in p) for p in quad)):
        raise SchemaError(path, f"'placement.quad' must be 4 [x, y] pairs of finite numbers, got {quad!r}")
    if not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise SchemaError(path, f"'placement.source_size' must be [width, height] in pixels, got {size!r}")


def _finite_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _record(meta: Mapping[str, Any], path: Path) -> InversionRecord:
    def text(key: str) -> str:
        value = meta.get(key, "")
        if not isinstance(value, str):
            raise SchemaError(path, f"'{key}' must be a string, got {value!r}")
        return value

    generator = meta.get("generator")
    if generator is not None and not isinstance(generator, str):
        raise SchemaError(path, f"'generator' must be a string, got {generator!r}")
    mode = meta.get("mode")
    if mode not in (None, "add", "scale"):
        raise SchemaError(path, f"'mode' must be null, 'add' or 'scale', got {mode!r}")
    picture = meta.get("picture")
    if picture is not None and not (isinstance(picture, dict) and set(picture) == {"index", "count"}
                                    and all(isinstance(picture[k], int) for k in picture)
                                    and 0 <= picture["index"] < picture["count"]):
        raise SchemaError(path, f"'picture' must be null or {{index, count}} with 0 <= index < count, got {picture!r}")
    _check_placement(meta.get("placement"), path)
    dtype = meta.get("dtype", "fp32")  # files from before reduced precision have none: they were made in fp32
    if not isinstance(dtype, str) or dtype not in PRECISIONS:
        raise SchemaError(path, f"'dtype' must be one of {', '.join(PRECISIONS)}, got {dtype!r}")
    made, source_sha256 = meta.get("made_with"), meta.get("source_sha256")
    if made is not None and not isinstance(made, str):
        raise SchemaError(path, f"'made_with' must be null or a string, got {made!r}")
    if source_sha256 is not None and not (isinstance(source_sha256, str) and len(source_sha256) == 64
                                          and all(c in "0123456789abcdef" for c in source_sha256)):
        raise SchemaError(path, f"'source_sha256' must be null or 64 lowercase hex digits, got {source_sha256!r}")
    return InversionRecord(text("source"), text("model"), text("method"), generator, mode, meta.get("placement"),
                           picture, dtype, made, source_sha256)


def read_inversion_record(path: str | os.PathLike) -> dict[str, Any]:
    """An inversion file's checked record alone (see :func:`load_inversion`), without reading its tensors."""
    path = Path(path)
    metadata = read_safetensors_metadata(path)
    return _record(read_metadata_json(path, metadata, "inversion", "an inversion file (written by `invert`)"),
                   path).as_dict()


def load_inversion(path: str | os.PathLike) -> tuple[torch.Tensor, WeightDelta | None, dict[str, Any]]:
    """-> (ws, Δθ or None, record as a dict: source, model, method, generator, mode, placement, picture, dtype,
    made_with, source_sha256). Checked."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    record = _record(read_metadata_json(path, metadata, "inversion", "an inversion file (written by `invert`)"),
                     path)
    ws = tensors.pop("ws", None)
    if ws is None:
        raise SchemaError(path, "has no 'ws' tensor")
    if ws.ndim != 3 or ws.shape[0] != 1 or not ws.is_floating_point():
        raise SchemaError(path, f"'ws' must be a float tensor [1, num_ws, w_dim], got {ws.dtype} {tuple(ws.shape)}")
    foreign = sorted(k for k in tensors if not k.startswith(_DELTA))
    if foreign:
        raise SchemaError(path, f"holds tensors that are neither 'ws' nor 'delta.*': {foreign[:8]}")
    integer = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if integer:  # (integer Δθ was rendered without a word, where integer codes were refused)
        raise SchemaError(path, f"Δθ tensors must be floats: {[f'{k} ({tensors[k].dtype})' for k in integer[:8]]}")
    deltas = {k[len(_DELTA):]: v.float() for k, v in tensors.items()}
    bad = sorted(k for k, v in deltas.items() if v.ndim < 1 or v.shape[0] != 1)
    if bad:
        raise SchemaError(path, f"Δθ tensors must be [1, *parameter shape]: {bad[:8]}")
    if (record.mode is None) != (not deltas):
        raise SchemaError(path, f"'mode' is {record.mode!r} but the file has {len(deltas)} Δθ tensors")
    non_finite = sorted(k for k, v in {"ws": ws, **tensors}.items() if not bool(torch.isfinite(v).all()))
    if non_finite:
        raise SchemaError(path, f"holds NaN or infinite values in {non_finite[:8]}")
    delta = WeightDelta(deltas, mode=record.mode) if deltas else None
    return ws.float(), delta, record.as_dict()


def check_fits(path: str | os.PathLike, ws: torch.Tensor, delta: WeightDelta | None, record: Mapping[str, Any],
               generator: torch.nn.Module, *, model: str, fingerprint: str) -> None:
    """Raise ``SchemaError`` unless an inversion file can be rendered by ``generator`` (the model ``model``)."""
    path = Path(path)
    made_by = f"model {record['model']!r}" if record.get("model") else "another model"
    expected = (generator.num_ws, generator.w_dim)
    if tuple(ws.shape[1:]) != expected:
        raise SchemaError(path, f"was inverted with {made_by}: its codes are {list(ws.shape[1:])}, but {model} "
                          f"takes {list(expected)}")
    if delta is not None:
        shapes = generator.synthesis.offsettable_parameters()
        wrong = [name for name, t in delta.items() if tuple(t.shape[1:]) != tuple(shapes.get(name, ()))]
        if wrong:
            raise SchemaError(path, f"was inverted with {made_by}: its Δθ does not fit {model}'s generator "
                              f"({wrong[:4]})")
    if record.get("generator") not in (None, fingerprint):
        raise SchemaError(path, f"was inverted with {made_by} (generator {record['generator']}), not with {model} "
                          f"(generator {fingerprint}); use it with --model {record['model'] or 'that model'}")
    if "generator" in record and record["generator"] is None:  # a file's record, not a result about to be saved
        # (every writer records it; a file without it is from before fingerprints, or edited: it cannot be checked)
        logger.warning("%s records no generator fingerprint: it is rendered with %s's generator unchecked, and "
                       "is a meaningless image if it was made with another", path, model)
