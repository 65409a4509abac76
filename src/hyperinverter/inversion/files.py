"""Per-image inversion files: ``ws`` and every Δθ tensor in one safetensors file, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..convert.errors import CheckpointError
from ..io.checkpoints import atomic_save_file
from ..models.weight_delta import WeightDelta
from .base import InversionResult

_DELTA = "delta."


def save_inversion(path: str | Path, result: InversionResult, *, source: str = "", model: str = "",
                   placement: dict | None = None) -> Path:
    """Store one image's codes (``ws [1,num_ws,w_dim]``) and Δθ (``delta.<param> [1,*shape]``).

    ``placement``: where the aligned face sits in the ``source`` photo (see ``AlignedFace.placement``).
    """
    if len(result) != 1:
        raise ValueError("save_inversion stores one image; select it first")
    tensors = {"ws": result.ws}
    meta = {"source": source, "model": model, "mode": None, "placement": placement}
    if result.weight_delta is not None:
        meta["mode"] = result.weight_delta.mode
        tensors.update({_DELTA + k: v for k, v in result.weight_delta.items()})
    atomic_save_file(tensors, Path(path), metadata={"inversion": json.dumps(meta)})
    return Path(path)


def load_inversion(path: str | Path) -> tuple[torch.Tensor, WeightDelta | None, dict]:
    """-> (ws, weight_delta or None, metadata: source, model, mode and placement)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["inversion"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not an inversion file: {e}") from None
    deltas = {k[len(_DELTA):]: v for k, v in tensors.items() if k.startswith(_DELTA)}
    delta = WeightDelta(deltas, mode=meta["mode"]) if deltas else None
    meta.setdefault("placement", None)  # files written before placements were kept
    return tensors["ws"], delta, meta
