"""Edit directions in W / W+ and their files.

Edits change the codes only; the image's generator offsets (Δθ) are reused unchanged, as in the
HyperInverter and HyperStyle papers.

Files read: InterFaceGAN ``.pt`` tensors ``[1, w_dim]`` or ``[1, num_ws, w_dim]`` (and ``.npy`` boundaries),
GANSpace ``.pt`` dicts ``{comp: [n,1,w_dim], mean: [1,w_dim], std: [n]}`` (a basis: the component,
layer range and value are chosen by the caller), official StyleCLIP latent mappers (``w + α·M(w)``, see
:mod:`hyperinverter.editing.styleclip`), and our ``.safetensors`` direction files.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import InputError, SchemaError
from ..io.checkpoints import load_weights_only, read_metadata_json, read_safetensors, save_safetensors
from ..io.files import refuse_special_file
from .ganspace import GANSpaceBasis, compute_ganspace

logger = logging.getLogger(__name__)


# A direction is a vector in one generator's W space. The codes its mapping network gives these fixed latents
# are recorded with a direction found on a generator, so that using it on another model can be told apart
# (see ``w_space_mismatch``); the same generator stored in another precision gives codes within the tolerance.
W_PROBE_SAMPLES = 4
W_PROBE_TOLERANCE = 0.1  # of the probe codes' spread: bf16 weights move them ~1 %, another generator ~100 %


@torch.no_grad()
def w_probe(G) -> torch.Tensor:
    """``[W_PROBE_SAMPLES, w_dim]`` fp32 (CPU): ``G``'s codes for fixed latents, untruncated."""
    from ..generate import z_from_seeds

    # (fixed for good, as the direction files record them: torch's draw of seeds 0-3, not `generate`'s NVIDIA one)
    z = z_from_seeds(range(W_PROBE_SAMPLES), G.z_dim, draw="torch")
    return G.mapping(z.to(G.w_avg.device), truncation_psi=1.0)[:, 0].float().cpu()


def w_space_mismatch(direction: object, G) -> str | None:
    """Why ``direction`` seems to come from another generator's W space than ``G``'s, or None (same space, or
    a direction that records no probe: official files, a vector given as it is)."""
    probe = getattr(direction, "w_probe", None)
    if probe is None:
        return None
    if probe.shape[1] != G.w_dim:
        return f"it was found in a {probe.shape[1]}-d W space, this generator's is {G.w_dim}-d"
    here = w_probe(G)
    spread = float(probe.std()) or 1.0
    distance = float((here - probe).abs().max()) / spread
    if distance <= W_PROBE_TOLERANCE:
        return None
    return (f"it was found on another generator (this model's mapping network puts the latents it records "
            f"{distance:.2g}x their spread from where that generator put them; up to {W_PROBE_TOLERANCE:g}x is the "
            f"same W space), so its edit may not mean here what its name says")


@runtime_checkable
class Direction(Protocol):
    name: str

    def apply(self, ws: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        """``ws: [B, num_ws, w_dim]`` -> edited codes of the same shape."""
        ...


MAX_STRENGTH = 1e300  # (beyond it the codes overflow; 10**400 overflowed math.isfinite)


def check_strength(strength: object, what: str = "strength") -> None:
    """A ``TypeError`` or ``ValueError`` naming ``what`` unless ``strength`` is a number within ±``MAX_STRENGTH``
    (NaN was taken, and every edit was a NaN image blamed on the model)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"{what} must be a number, got {strength!r}")
    # (compared as a Python float: a numpy float32 cast the bound to its own type, with an overflow RuntimeWarning)
    try:
        within = -MAX_STRENGTH < float(strength) < MAX_STRENGTH  # (NaN fails the range)
    except OverflowError:  # (an integer past a float's range: 10**400)
        within = False
    if not within:
        raise ValueError(f"{what} must be a finite number within ±1e300, got {str(strength)[:24]}")


def _check_strength(name: str, strength: float) -> None:
    check_strength(strength, f"direction {name!r}: its default strength")


@dataclass(frozen=True)
class LinearDirection:
    """InterFaceGAN-style: ``w + strength · d`` on every layer (``d: [1, w_dim]``) or per layer (``[num_ws, w_dim]``)."""

    vector: torch.Tensor
    name: str = "direction"
    default_strength: float = 3.0
    w_probe: torch.Tensor | None = field(default=None, repr=False, compare=False)  # see w_space_mismatch

    def __post_init__(self) -> None:
        if self.vector.ndim != 2:
            raise ValueError(f"direction {self.name!r} must be [1|num_ws, w_dim], got {tuple(self.vector.shape)}")
        if not bool(torch.isfinite(self.vector).all()):  # (else every edit is a NaN image, blamed on the model)
            raise ValueError(f"direction {self.name!r} holds NaN or infinite values")
        _check_strength(self.name, self.default_strength)

    def apply(self, ws: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        strength = self.default_strength if strength is None else strength
        rows, w_dim = self.vector.shape
        if ws.shape[2] != w_dim or rows not in (1, ws.shape[1]):
            raise ValueError(f"direction {self.name!r} of shape {tuple(self.vector.shape)} does not fit codes "
                             f"{tuple(ws.shape[1:])}")
        return ws + strength * self.vector.to(ws)[None]


@dataclass(frozen=True)
class GANSpaceDirection:
    """GANSpace edit: set principal coordinate ``index`` (measured on layer 0, in units of its std) to
    ``strength`` on layers ``start:end``. Setting, not adding, is the rule of the official code."""

    basis: GANSpaceBasis
    index: int
    start: int
    end: int
    default_strength: float
    name: str = "ganspace"
    w_probe: torch.Tensor | None = field(default=None, repr=False, compare=False)  # see w_space_mismatch

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.basis.num_components:
            raise ValueError(f"component {self.index} out of range (basis has {self.basis.num_components})")
        if not 0 <= self.start < self.end:
            raise ValueError(f"bad layer range {self.start}:{self.end}")
        _check_strength(self.name, self.default_strength)

    def apply(self, ws: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        strength = self.default_strength if strength is None else strength
        if self.end > ws.shape[1]:
            raise ValueError(f"direction {self.name!r} edits layers {self.start}:{self.end} but codes have {ws.shape[1]}")
        if ws.shape[2] != self.basis.comp.shape[1]:
            raise ValueError(f"direction {self.name!r} is a basis of {self.basis.comp.shape[1]}-d codes, but the codes "
                             f"are {ws.shape[2]}-d")
        comp = self.basis.comp[self.index].to(ws)
        std = self.basis.std[self.index].to(ws)
        coord = ((ws[:, 0] - self.basis.mean.to(ws)) @ comp) / std  # [B]
        delta = (strength - coord)[:, None] * comp[None] * std  # [B, w_dim]
        out = ws.clone()
        out[:, self.start : self.end] += delta[:, None]
        return out


def direction_rows(vector: torch.Tensor) -> torch.Tensor:
    """A direction's ``[w_dim]`` or ``[1, rows, w_dim]`` (e4e's ``pose.pt``) as ``[rows, w_dim]``; other shapes as
    they are (the caller says what is wrong with them)."""
    if vector.ndim == 3 and vector.shape[0] == 1:
        return vector[0]
    return vector[None] if vector.ndim == 1 else vector


def _vector(tensor: object, path: Path, layers: tuple[int, int] | None = None, num_ws: int | None = None
            ) -> torch.Tensor:
    """A direction tensor -> ``[rows, w_dim]``: ``[w_dim]``, ``[rows, w_dim]`` and ``[1, rows, w_dim]`` are read.

    ``layers``: ``(start, end)``, the rows the edit keeps (the others become zero): E2Style's official edits
    change rows 0-7 of its ``[18, 512]`` directions. A one-row direction is first repeated over ``num_ws`` rows."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise SchemaError(path, f"a direction must be a float tensor, got {getattr(tensor, 'dtype', type(tensor))}")
    vector = direction_rows(tensor.float())
    if vector.ndim != 2 or vector.numel() == 0:
        raise SchemaError(path, f"a direction must be [w_dim], [rows, w_dim] or [1, rows, w_dim], got "
                          f"{list(tensor.shape)}")
    if not bool(torch.isfinite(vector).all()):
        raise SchemaError(path, "the direction holds NaN or infinite values")
    if layers is not None:  # (the range was ignored: the edit changed every layer)
        start, end = layers
        if vector.shape[0] == 1:
            if num_ws is None:
                raise SchemaError(path, f"holds one vector for every layer: layers {start}:{end} need the model's "
                                  "number of layers (edit --layers with --model), or a file with one row per layer")
            vector = vector.expand(num_ws, -1)
        if not 0 <= start < end <= vector.shape[0]:
            raise SchemaError(path, f"layers {start}:{end} are not within its {vector.shape[0]} rows")
        kept = torch.zeros(vector.shape[0], 1, dtype=torch.bool)
        kept[start:end] = True
        vector = torch.where(kept, vector, torch.zeros_like(vector))
    if not bool(vector.any()):  # (every edit would be the input itself, at any strength)
        raise SchemaError(path, "the direction is all zeros" + (" on those layers" if layers else ""))
    if vector.shape[0] > 1 and torch.allclose(vector, vector[:1].expand_as(vector)):
        vector = vector[:1]  # e.g. pose.pt: identical rows, a plain W direction
    return vector


def _probe(tensor: object, path: Path) -> torch.Tensor | None:
    """A direction file's ``w_probe`` (optional): ``[W_PROBE_SAMPLES, w_dim]``, finite floats."""
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.ndim != 2 \
            or tensor.shape[0] != W_PROBE_SAMPLES or not bool(torch.isfinite(tensor).all()):
        raise SchemaError(path, f"'w_probe' must be {W_PROBE_SAMPLES} rows of finite codes, got "
                          f"{getattr(tensor, 'dtype', type(tensor).__name__)} {list(getattr(tensor, 'shape', []))}")
    return tensor.float()


def _basis(comp: object, mean: object, std: object, path: Path) -> GANSpaceBasis:
    """A GANSpace basis from its three tensors, each checked: ``comp [n, w_dim]`` (or ``[n, 1, w_dim]``),
    ``mean [w_dim]`` (or ``[1, w_dim]``), ``std [n]`` positive."""
    tensors = {"comp": comp, "mean": mean, "std": std}
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise SchemaError(path, f"GANSpace {key!r} must be a finite float tensor")
    if comp.numel() == 0:  # (no component: a reshape error inside, an internal error)
        raise SchemaError(path, f"GANSpace 'comp' holds no components, got {list(comp.shape)}")
    comp_t = comp.float().reshape(comp.shape[0], -1) if comp.ndim >= 2 else None
    if comp_t is None or comp.ndim > 3 or (comp.ndim == 3 and comp.shape[1] != 1):
        raise SchemaError(path, f"GANSpace 'comp' must be [n, w_dim] or [n, 1, w_dim], got {list(comp.shape)}")
    mean_t, std_t = mean.float().reshape(-1), std.float().reshape(-1)
    n, w_dim = comp_t.shape
    if mean_t.shape != (w_dim,) or std_t.shape != (n,):
        raise SchemaError(path, f"GANSpace sizes do not agree: comp is [{n}, {w_dim}], so mean must have {w_dim} "
                          f"values (it has {mean_t.numel()}) and std {n} (it has {std_t.numel()})")
    if bool((std_t <= 0).any()):
        raise SchemaError(path, "GANSpace 'std' must be positive")
    return GANSpaceBasis(comp=comp_t, mean=mean_t, std=std_t)


def _number(meta: dict, key: str, path: Path, kind: type, default=None):
    value = meta.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or \
            (kind is float and not math.isfinite(value)):
        raise SchemaError(path, f"'{key}' must be {'a finite number' if kind is float else 'an integer'}, "
                          f"got {value!r}")
    return kind(value)


def check_component_applies(direction: Direction, index: int | None, source: str | os.PathLike) -> None:
    """An ``InputError`` where a component ``index`` was given for a direction that is not a GANSpace basis
    (``edit --component 3`` on a vector direction was ignored without a word)."""
    if index is not None and not isinstance(direction, GANSpaceDirection):
        raise InputError(source, f"is one direction, not a GANSpace basis: a component index ({index}) does not "
                         "apply to it")


def load_direction(
    path: str | Path,
    *,
    name: str | None = None,
    index: int | None = None,
    start: int | None = None,
    end: int | None = None,
    strength: float | None = None,
    num_ws: int | None = None,
) -> LinearDirection | GANSpaceDirection:
    """Read a direction file of any supported format; every problem names the file and the field.

    GANSpace bases need ``index``, ``start``, ``end`` and ``strength`` unless the file (ours) records them. For a
    vector direction, ``start`` and ``end`` (both or neither) keep its edit to those layers; ``num_ws``, the model's
    number of layers, lets a one-row vector be kept to some.
    """
    path = Path(path)
    refuse_special_file(path, SchemaError, "a direction file")
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such direction file", str(path))
    name = name or path.stem

    def vector_of(tensor: object) -> torch.Tensor:
        if (start is None) != (end is None):
            raise ValueError("give the layers of a vector direction as both start and end")
        return _vector(tensor, path, None if start is None else (start, end), num_ws)

    suffix = path.suffix.lower()  # (up.SAFETENSORS, as some systems name files)
    if suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        meta = read_metadata_json(path, metadata, "direction", "a direction file")
        kind = meta.get("kind")
        stored_name = meta.get("name", name)
        if not isinstance(stored_name, str):
            raise SchemaError(path, f"'name' must be a string, got {stored_name!r}")
        wanted = {"linear": ("vector",), "ganspace": ("comp", "mean", "std")}.get(kind)
        if wanted is None:
            raise SchemaError(path, f"'kind' must be 'linear' or 'ganspace', got {kind!r}")
        absent = [k for k in wanted if k not in tensors]
        if absent:
            raise SchemaError(path, f"a {kind} direction file needs the tensors {absent}")
        probe = _probe(tensors.get("w_probe"), path)
        if kind == "linear":
            default = _number(meta, "strength", path, float, 3.0)
            return LinearDirection(vector_of(tensors["vector"]), name=stored_name,
                                   default_strength=strength if strength is not None else default, w_probe=probe)
        spec = {"index": _number(meta, "index", path, int), "start": _number(meta, "start", path, int),
                "end": _number(meta, "end", path, int), "strength": _number(meta, "strength", path, float)}
        spec.update({k: v for k, v in dict(index=index, start=start, end=end, strength=strength).items()
                     if v is not None})
        return _ganspace(_basis(tensors["comp"], tensors["mean"], tensors["std"], path), spec, stored_name, path,
                         w_probe=probe)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e):  # an object array, which only pickle could read
                raise SchemaError(path, f"is not a plain numeric .npy array ({e}); pickled arrays are refused"
                                  ) from None
            raise SchemaError(path, f"is not a readable .npy file ({e})") from None  # e.g. a truncated header
        except (OSError, EOFError) as e:  # (an empty file is an EOFError)
            raise SchemaError(path, f"is not a readable .npy file ({e or type(e).__name__})") from None
        if array.dtype.kind not in "fiu":
            raise SchemaError(path, f"a direction must hold numbers, got dtype {array.dtype}")
        vector = vector_of(torch.from_numpy(array.astype(np.float32)))
        return LinearDirection(vector, name=name, default_strength=3.0 if strength is None else strength)
    if suffix == ".npz":  # GANSpace's own dump (harskish/ganspace): lat_comp, lat_mean, lat_stdev
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in ("lat_comp", "lat_mean", "lat_stdev") if key in archive}
        except (ValueError, OSError, EOFError) as e:  # (a pickled member, a truncated or foreign file)
            raise SchemaError(path, f"is not a readable GANSpace .npz file ({e or type(e).__name__})") from None
        missing = sorted({"lat_comp", "lat_mean", "lat_stdev"} - set(arrays))
        if missing:
            raise SchemaError(path, f"is not a GANSpace .npz file: missing {missing}")
        odd = sorted(f"{k}: {a.dtype}" for k, a in arrays.items() if a.dtype.kind not in "fiu")
        if odd:  # (complex arrays lost their imaginary part, with numpy's warning and its source line)
            raise SchemaError(path, f"a GANSpace basis must hold real numbers, got {odd}")
        comp, mean, std = (torch.from_numpy(arrays[k].astype(np.float32)) for k in ("lat_comp", "lat_mean",
                                                                                     "lat_stdev"))
        spec = {"index": index, "start": start, "end": end, "strength": strength}
        return _ganspace(_basis(comp, mean, std, path), spec, name, path)
    obj = load_weights_only(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and any(
            str(k).startswith("mapper.") for k in obj["state_dict"]):
        from .styleclip import (  # an official StyleCLIP latent mapper
            DEFAULT_STRENGTH,
            load_styleclip_direction,
        )

        return load_styleclip_direction(path, name=name, strength=DEFAULT_STRENGTH if strength is None else strength)
    if isinstance(obj, torch.Tensor):
        return LinearDirection(vector_of(obj), name=name, default_strength=3.0 if strength is None else strength)
    if isinstance(obj, dict):
        missing = {"comp", "mean", "std"} - set(obj)
        if missing:
            raise SchemaError(path, f"is not a GANSpace file: missing {sorted(missing)}")
        basis = _basis(*(torch.as_tensor(obj[k]) if isinstance(obj[k], np.ndarray) else obj[k]
                         for k in ("comp", "mean", "std")), path)
        return _ganspace(basis, dict(index=index, start=start, end=end, strength=strength), name, path)
    raise SchemaError(path, f"holds a {type(obj).__name__}; expected a direction tensor or a GANSpace dict")


def misfit(direction: Direction, path: str | os.PathLike, G) -> SchemaError | None:
    """The error for a model's direction file that cannot edit its generator ``G``'s codes (another W space's
    width, layers past its last: the edit itself, on one code, says), or None."""
    try:
        direction.apply(torch.zeros(1, G.num_ws, G.w_dim))
    except ValueError as e:
        return SchemaError(path, f"does not fit this model's generator: {e}")
    return None


def load_model_directions(model_dir: str | Path, *, skipped: list[Exception] | None = None, G=None
                          ) -> dict[str, LinearDirection | GANSpaceDirection]:
    """The named directions a model folder ships in ``directions/*.safetensors``, by file name order. A file that
    cannot be read, or (given the model's generator ``G``) cannot edit its codes, is an error, or, given
    ``skipped``, is left out and its error appended there."""
    folder = Path(model_dir) / "directions"
    found = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            direction = load_direction(path)
            error = None if G is None else misfit(direction, path, G)  # (an FFHQ one copied into a smaller model's)
            if error is not None:
                raise error
            found.append(direction)
        except (InputError, OSError) as e:
            if skipped is None:
                raise
            logger.warning("leaving out the direction %s", e)
            skipped.append(e)
    return {d.name: d for d in found}


PRINCIPAL_SAMPLES = 20_000  # mapped codes: enough to settle the leading components


def principal_directions(G, *, count: int = 6, num_samples: int = PRINCIPAL_SAMPLES) -> dict[str, GANSpaceDirection]:
    """The first ``count`` principal directions of ``G``'s W (GANSpace) on every layer, named by rank, default
    strength 3 (the coordinate set to 3 stds). ``num_samples`` mapped codes settle the leading components well."""
    basis = compute_ganspace(G, num_samples=num_samples, num_components=count)
    names = [f"principal direction {i + 1}" for i in range(count)]
    return {name: GANSpaceDirection(basis, i, 0, G.num_ws, 3.0, name=name) for i, name in enumerate(names)}


PRINCIPAL_NAME = re.compile(r"principal direction (\d+)")


def principal_direction(name: str, G, *, start: int | None = None, end: int | None = None,
                        strength: float | None = None) -> GANSpaceDirection | None:
    """``"principal direction N"``, as :func:`principal_directions` (and the web page) name them: ``G``'s N-th
    principal direction in W (the same one), on layers ``start:end`` (default every layer); None for another
    name."""
    match = PRINCIPAL_NAME.fullmatch(name.strip())
    if match is None:
        return None
    rank = int(match.group(1))
    if not 1 <= rank <= G.w_dim:
        raise SchemaError(name, f"names no principal direction of this generator (they are 1 to {G.w_dim})")
    basis = compute_ganspace(G, num_samples=PRINCIPAL_SAMPLES, num_components=rank)
    return GANSpaceDirection(basis, rank - 1, 0 if start is None else start, G.num_ws if end is None else end,
                             3.0 if strength is None else strength, name=name.strip())


def edit_directions(model_dir: str | Path, G, *, skipped: list[Exception] | None = None
                    ) -> tuple[dict[str, Direction], str | None]:
    """The directions to edit a model with: the named ones it ships, else ``G``'s first principal directions
    (a generator alone, a user's own bundle), with a note that says so (None when the model ships its own).
    ``skipped``: see :func:`load_model_directions` (a server serves the model without its unreadable files, and
    without those that do not fit ``G``)."""
    named = load_model_directions(model_dir, skipped=skipped, G=G)
    if named:
        return named, None
    principal = principal_directions(G)
    return principal, (f"the model ships no named directions: its generator's first {len(principal)} principal "
                       "directions in W (GANSpace, on every layer) stand in")


def _ganspace(basis: GANSpaceBasis, spec: dict, name: str, path: Path,
              w_probe: torch.Tensor | None = None) -> GANSpaceDirection:
    missing = [k for k in ("index", "start", "end", "strength") if spec.get(k) is None]
    if missing:
        raise SchemaError(path, f"is a GANSpace basis: give {missing} (component index, layer range start:end, "
                          "and the value to set the coordinate to)")
    try:
        return GANSpaceDirection(basis, int(spec["index"]), int(spec["start"]), int(spec["end"]),
                                 float(spec["strength"]), name=name, w_probe=w_probe)
    except ValueError as e:
        raise SchemaError(path, str(e)) from None


def save_direction(direction: LinearDirection | GANSpaceDirection, path: str | Path, *,
                   record: dict | None = None) -> Path:
    """Write our self-describing ``.safetensors`` direction file (atomic). ``record``: more to keep in its metadata
    (how it was found: a SeFa eigenvalue, say), which reading it ignores."""
    path = Path(path)
    if isinstance(direction, LinearDirection):
        meta = {"kind": "linear", "name": direction.name, "strength": direction.default_strength}
        tensors = {"vector": direction.vector}
    else:
        meta = {"kind": "ganspace", "name": direction.name, "index": direction.index, "start": direction.start,
                "end": direction.end, "strength": direction.default_strength}
        tensors = {"comp": direction.basis.comp, "mean": direction.basis.mean, "std": direction.basis.std}
    if direction.w_probe is not None:
        tensors["w_probe"] = direction.w_probe
    meta = {**(record or {}), **meta}  # (what reading it takes comes from the direction itself)
    save_safetensors(path, tensors, metadata={"direction": json.dumps(meta)})
    return path
