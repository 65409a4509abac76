"""The directions a model ships (``<model>/directions/*.safetensors``), listed and looked up by name.

Users name an edit (``--direction yaw``) instead of a file path; a path still works, so that their own files
(trained with ``hyperinverter directions train``, or InterFaceGAN / GANSpace downloads) need no registration.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .directions import GANSpaceDirection, LinearDirection, load_direction, misfit, principal_direction

DIRECTION_SUFFIXES = (".safetensors", ".pt", ".pth", ".npy")


@dataclass(frozen=True)
class CatalogueEntry:
    """One direction file of a model. ``layers``: the layer range it edits (``None``: every layer);
    ``metadata``: the file's direction record (attribute, held-out accuracy, ... for trained ones).
    ``error``: why the file cannot be read (the other fields are then empty)."""

    name: str
    path: Path
    kind: str
    layers: tuple[int, int] | None
    strength: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def attribute(self) -> str | None:
        value = self.metadata.get("attribute")
        return value if isinstance(value, str) else None

    @property
    def accuracy(self) -> float | None:
        value = self.metadata.get("accuracy")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def describe_layers(self, num_ws: int | None = None) -> str:
        if self.layers is None:
            return "all" if num_ws is None else f"all (0:{num_ws})"
        return f"{self.layers[0]}:{self.layers[1]}"


def _model_folder(model: str | os.PathLike) -> Path:
    from ..catalogue import local_model_path

    return local_model_path(model)


def edited_layers(direction: LinearDirection | GANSpaceDirection) -> tuple[int, int] | None:
    """The range of layers an edit changes; ``None`` for a W direction (all). Rows that are zero do not count."""
    if isinstance(direction, GANSpaceDirection):
        return direction.start, direction.end
    if direction.vector.shape[0] == 1:
        return None
    nonzero = [i for i, row in enumerate(direction.vector) if bool(row.abs().sum() > 0)]
    if not nonzero or (nonzero[0], nonzero[-1] + 1) == (0, direction.vector.shape[0]):
        return None
    return nonzero[0], nonzero[-1] + 1


def _record(path: Path) -> dict[str, Any]:
    from ..io.checkpoints import read_safetensors_metadata

    try:
        record = json.loads(read_safetensors_metadata(path).get("direction", "{}"))
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def direction_catalogue(model_dir: str | os.PathLike, G=None) -> list[CatalogueEntry]:
    """The directions of a model (a catalogue name or a folder), by file name. A file that cannot be read, or
    (given the model's generator ``G``) cannot edit its codes, is listed with its ``error``, so that one bad file
    does not hide the others."""
    folder = _model_folder(model_dir) / "directions"
    entries = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            direction = load_direction(path)
        except (InputError, OSError) as e:
            entries.append(CatalogueEntry(path.stem, path, "unreadable", None, None, error=str(e)))
            continue
        error = None if G is None else misfit(direction, path, G)
        if error is not None:
            entries.append(CatalogueEntry(direction.name, path, "misfit", None, None, error=str(error)))
            continue
        kind = "ganspace" if isinstance(direction, GANSpaceDirection) else "linear"
        entries.append(CatalogueEntry(direction.name, path, kind, edited_layers(direction),
                                      direction.default_strength, _record(path)))
    return entries


def _find(entries: list[CatalogueEntry], name: str) -> CatalogueEntry | None:
    for entry in entries:
        if name == entry.name:
            return entry
    for entry in entries:  # the file's own name, where the stored name differs
        if name == entry.path.stem:
            return entry
    return None


def _looks_like_path(text: str) -> bool:
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(s in text for s in separators) or text.lower().endswith(DIRECTION_SUFFIXES) or text in (".", "..")


def resolve_direction(
    model_dir: str | os.PathLike | None,
    name_or_path: str | os.PathLike,
    *,
    name: str | None = None,
    index: int | None = None,
    start: int | None = None,
    end: int | None = None,
    strength: float | None = None,
    generator=None,
) -> LinearDirection | GANSpaceDirection:
    """A direction by the name of a model's catalogue entry, or by a file path; the keyword arguments are
    those of :func:`~hyperinverter.editing.load_direction` (overrides of what the file records).

    A bare name (no folder separator, no direction-file suffix) is looked up in the model's catalogue first,
    then as a file in the current folder, then, given the ``generator``, as ``"principal direction N"`` (its
    principal directions, as the web page offers them); an unknown name is an error that lists the model's
    directions. ``model_dir`` may be None (paths only)."""
    text = os.fspath(name_or_path)
    overrides = {"name": name, "index": index, "start": start, "end": end, "strength": strength,
                 "num_ws": None if generator is None else generator.num_ws}
    if _looks_like_path(text) or (model_dir is None and os.path.isfile(text)):
        return load_direction(text, **overrides)
    entries = direction_catalogue(model_dir) if model_dir is not None else []
    entry = _find(entries, text)
    if entry is not None:
        return load_direction(entry.path, **overrides)
    if os.path.exists(text) and not os.path.isdir(text):  # (a named pipe too: load_direction names it)
        return load_direction(text, **overrides)
    principal = principal_direction(text, generator, start=start, end=end, strength=strength) if generator else None
    if principal is not None:
        return principal
    if model_dir is None:
        raise FileNotFoundError(errno.ENOENT, "no such direction file", text)
    known = ", ".join(e.name for e in entries) or "none"
    principal = " or 'principal direction N'" if generator is not None else ""
    raise InputError(text, f"is neither a direction of model {os.fspath(model_dir)} (it has: {known}{principal}) "
                     "nor a direction file")
