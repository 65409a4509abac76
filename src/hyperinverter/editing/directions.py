"""Edit directions in W / W+ and their files.

Edits change the codes only; the image's generator offsets (Δθ) are reused unchanged, as in the
HyperInverter and HyperStyle papers.

Files read: InterFaceGAN ``.pt`` tensors ``[1, w_dim]`` or ``[1, num_ws, w_dim]`` (and ``.npy`` boundaries),
GANSpace ``.pt`` dicts ``{comp: [n,1,w_dim], mean: [1,w_dim], std: [n]}`` (a basis: the component,
layer range and value are chosen by the caller), and our ``.safetensors`` direction files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..convert.errors import CheckpointError
from ..io.checkpoints import atomic_save_file
from .ganspace import GANSpaceBasis

logger = logging.getLogger(__name__)


@runtime_checkable
class Direction(Protocol):
    name: str

    def apply(self, ws: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        """``ws: [B, num_ws, w_dim]`` -> edited codes of the same shape."""
        ...


@dataclass(frozen=True)
class LinearDirection:
    """InterFaceGAN-style: ``w + strength · d`` on every layer (``d: [1, w_dim]``) or per layer (``[num_ws, w_dim]``)."""

    vector: torch.Tensor
    name: str = "direction"
    default_strength: float = 3.0

    def __post_init__(self) -> None:
        assert self.vector.ndim == 2, f"direction must be [1|num_ws, w_dim], got {tuple(self.vector.shape)}"

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

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.basis.num_components:
            raise ValueError(f"component {self.index} out of range (basis has {self.basis.num_components})")
        if not 0 <= self.start < self.end:
            raise ValueError(f"bad layer range {self.start}:{self.end}")

    def apply(self, ws: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        strength = self.default_strength if strength is None else strength
        if self.end > ws.shape[1]:
            raise ValueError(f"direction {self.name!r} edits layers {self.start}:{self.end} but codes have {ws.shape[1]}")
        comp = self.basis.comp[self.index].to(ws)
        std = self.basis.std[self.index].to(ws)
        coord = ((ws[:, 0] - self.basis.mean.to(ws)) @ comp) / std  # [B]
        delta = (strength - coord)[:, None] * comp[None] * std  # [B, w_dim]
        out = ws.clone()
        out[:, self.start : self.end] += delta[:, None]
        return out


def _load_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a plain tensor file
        raise CheckpointError(f"cannot read direction file {path}: {e}") from None


def _basis_from_pca_dict(d: dict, path: Path) -> GANSpaceBasis:
    missing = {"comp", "mean", "std"} - set(d)
    if missing:
        raise CheckpointError(f"{path} is not a GANSpace file: missing {sorted(missing)}")
    comp = torch.as_tensor(d["comp"]).float()
    comp = comp.reshape(comp.shape[0], -1)
    return GANSpaceBasis(comp=comp, mean=torch.as_tensor(d["mean"]).float().reshape(-1),
                         std=torch.as_tensor(d["std"]).float().reshape(-1))


def load_direction(
    path: str | Path,
    *,
    name: str | None = None,
    index: int | None = None,
    start: int | None = None,
    end: int | None = None,
    strength: float | None = None,
) -> LinearDirection | GANSpaceDirection:
    """Read a direction file of any supported format. GANSpace bases need ``index``, ``start``, ``end``
    and ``strength`` unless the file (ours) records them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such direction file: {path}")
    name = name or path.stem
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("direction", "{}"))
        tensors = load_file(str(path))
        kind = meta.get("kind")
        if kind == "linear":
            return LinearDirection(tensors["vector"], name=meta.get("name", name),
                                   default_strength=strength if strength is not None else meta.get("strength", 3.0))
        if kind == "ganspace":
            basis = GANSpaceBasis(tensors["comp"], tensors["mean"], tensors["std"])
            spec = {k: meta.get(k) for k in ("index", "start", "end", "strength")}
            spec.update({k: v for k, v in dict(index=index, start=start, end=end, strength=strength).items()
                         if v is not None})
            return _ganspace(basis, spec, meta.get("name", name), path)
        raise CheckpointError(f"{path} has no direction metadata (kind must be 'linear' or 'ganspace')")
    if path.suffix == ".npy":
        vector = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        return LinearDirection(vector.reshape(-1, vector.shape[-1]), name=name,
                               default_strength=3.0 if strength is None else strength)
    obj = _load_torch(path)
    if isinstance(obj, torch.Tensor):
        vector = obj.float()
        if vector.ndim == 3:  # [1, num_ws, w_dim]
            vector = vector[0]
        vector = vector.reshape(-1, vector.shape[-1])
        if vector.shape[0] > 1 and torch.allclose(vector, vector[:1].expand_as(vector)):
            vector = vector[:1]  # e.g. pose.pt: identical rows, a plain W direction
        return LinearDirection(vector, name=name, default_strength=3.0 if strength is None else strength)
    if isinstance(obj, dict):
        basis = _basis_from_pca_dict(obj, path)
        return _ganspace(basis, dict(index=index, start=start, end=end, strength=strength), name, path)
    raise CheckpointError(f"{path} holds a {type(obj).__name__}; expected a direction tensor or a GANSpace dict")


def load_model_directions(model_dir: str | Path) -> dict[str, LinearDirection | GANSpaceDirection]:
    """The named directions a model folder ships in ``directions/*.safetensors``, by file name order."""
    folder = Path(model_dir) / "directions"
    found = [load_direction(p) for p in sorted(folder.glob("*.safetensors"))] if folder.is_dir() else []
    return {d.name: d for d in found}


def _ganspace(basis: GANSpaceBasis, spec: dict, name: str, path: Path) -> GANSpaceDirection:
    missing = [k for k in ("index", "start", "end", "strength") if spec.get(k) is None]
    if missing:
        raise ValueError(f"{path} is a GANSpace basis: give {missing} (component index, layer range start:end, "
                         "and the value to set the coordinate to)")
    return GANSpaceDirection(basis, int(spec["index"]), int(spec["start"]), int(spec["end"]),
                             float(spec["strength"]), name=name)


def save_direction(direction: LinearDirection | GANSpaceDirection, path: str | Path) -> Path:
    """Write our self-describing ``.safetensors`` direction file (atomic)."""
    path = Path(path)
    if isinstance(direction, LinearDirection):
        meta = {"kind": "linear", "name": direction.name, "strength": direction.default_strength}
        tensors = {"vector": direction.vector}
    else:
        meta = {"kind": "ganspace", "name": direction.name, "index": direction.index, "start": direction.start,
                "end": direction.end, "strength": direction.default_strength}
        tensors = {"comp": direction.basis.comp, "mean": direction.basis.mean, "std": direction.basis.std}
    atomic_save_file(tensors, path, metadata={"direction": json.dumps(meta)})
    return path
