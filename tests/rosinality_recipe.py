"""Regenerate the official rosinality parity checkpoint from its seeded recipe (tests/fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"


def _tensor(entry: dict) -> torch.Tensor:
    if "values" in entry:
        return torch.tensor(entry["values"], dtype=getattr(torch, entry["dtype"]))
    gen = torch.Generator().manual_seed(entry["seed"])
    return torch.randn(entry["shape"], generator=gen, dtype=torch.float32) * entry["std"] + entry["mean"]


def build_rosinality_checkpoint() -> dict:
    """``{"g_ema": state_dict, "latent_avg": [512]}`` exactly as the reference run used."""
    recipe = json.loads((FIXTURES / "stylegan2_rosi32_recipe.json").read_text())
    g_ema = {}
    for entry in recipe["entries"]:
        t = _tensor(entry)
        checksum = float(t.double().abs().sum())
        assert abs(checksum - entry["checksum"]) <= 1e-9 * max(1.0, abs(entry["checksum"])), entry["key"]
        g_ema[entry["key"]] = t
    extra = {entry["key"]: _tensor(entry) for entry in recipe["extra"]}
    return {"g_ema": g_ema, "latent_avg": extra["latent_avg"]}
