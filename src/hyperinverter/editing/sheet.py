"""A labelled picture of GANSpace components, to name directions by eye."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..generate import z_from_seeds
from ..io.images import MAX_PICTURE_SIDE, label_font, save_image, tensor_to_pil
from ..models.stylegan2 import Generator
from .directions import GANSpaceDirection
from .ganspace import GANSpaceBasis


def parse_layer_range(spec: str, num_ws: int) -> tuple[int, int]:
    """``'start:end'`` (either side may be empty: ``':5'``, ``'3:'``) -> a range checked against ``num_ws``."""
    try:
        start_text, end_text = spec.split(":")
        start = int(start_text) if start_text.strip() else 0
        end = int(end_text) if end_text.strip() else num_ws
    except ValueError:
        raise ValueError(f"layer range {spec!r} must look like 'start:end'") from None
    if not 0 <= start < end <= num_ws:
        raise ValueError(f"layer range {spec!r} does not fit a generator with {num_ws} ws (0:{num_ws})")
    return start, end


@torch.no_grad()
def render_ganspace_sheet(
    G: Generator,
    basis: GANSpaceBasis,
    path: str | Path,
    *,
    components: Sequence[int] | int = 8,
    layers: tuple[int, int] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    strength: float = 3.0,
    steps: int = 5,
    truncation_psi: float = 0.7,
) -> Path:
    """One row per component; per seed, the sample and its coordinate set to ``-strength..+strength`` on
    ``layers`` (default: every layer). Components may be a count (the first n) or a list of indices."""
    from PIL import Image, ImageDraw

    start, end = layers if layers is not None else (0, G.num_ws)
    if not 0 <= start < end <= G.num_ws:
        raise ValueError(f"layer range {start}:{end} does not fit a generator with {G.num_ws} ws")
    indices = list(range(min(components, basis.num_components))) if isinstance(components, int) else list(components)
    bad = [i for i in indices if not 0 <= i < basis.num_components]
    if bad or not indices:
        shown = ", ".join(map(str, (bad or indices)[:8])) + (", ..." if len(bad or indices) > 8 else "")
        raise ValueError(f"components [{shown}] out of range (the basis has {basis.num_components}: 0 to "
                         f"{basis.num_components - 1})")
    tile = max(G.resolution, 64)
    pad, label_w, header_h, gap = 2, 150, 34, 10
    per_seed = (steps + 1) * (tile + pad)
    width, height = label_w + len(seeds) * (per_seed + gap), header_h + len(indices) * (tile + pad)
    if max(width, height) > MAX_PICTURE_SIDE:
        raise ValueError(f"{len(seeds)} seed(s) and {len(indices)} component(s) make a sheet of {width} x {height} "
                         f"px (at most {MAX_PICTURE_SIDE} a side); give fewer --seeds or --components")
    device = G.w_avg.device
    ws = G.mapping(z_from_seeds(seeds, G.z_dim).to(device), truncation_psi=truncation_psi)
    values = torch.linspace(-strength, strength, steps).tolist()
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = label_font(12)

    def tiles(images: torch.Tensor) -> list:
        return [im.convert("RGB").resize((tile, tile), Image.NEAREST) for im in tensor_to_pil(images)]

    original = tiles(G.synthesis(ws, noise_mode="const"))
    draw.text((4, 2), "coordinate set to", fill="black", font=font)
    draw.text((4, 18), f"value on layers {start}:{end}", fill="black", font=font)
    for s, seed in enumerate(seeds):
        x0 = label_w + s * (per_seed + gap)
        draw.text((x0, 2), f"seed {seed}", fill="black", font=font)
        for j, label in enumerate(["orig"] + [f"{v:+.1f}" for v in values]):
            draw.text((x0 + j * (tile + pad) + 2, 18), label, fill="black", font=font)
    for row, i in enumerate(indices):
        y0 = header_h + row * (tile + pad)
        draw.text((4, y0 + tile // 2 - 14), f"PC{i}", fill="black", font=label_font(16))
        draw.text((4, y0 + tile // 2 + 4), f"std {float(basis.std[i]):.3g}", fill="black", font=font)
        direction = GANSpaceDirection(basis, i, start, end, strength, name=f"pc{i}")
        # Every value for every seed in one synthesis call: tile v * len(seeds) + s.
        edits = tiles(G.synthesis(torch.cat([direction.apply(ws, v) for v in values]), noise_mode="const"))
        for s in range(len(seeds)):
            x0 = label_w + s * (per_seed + gap)
            row = [original[s]] + [edits[v * len(seeds) + s] for v in range(len(values))]
            for j, im in enumerate(row):
                sheet.paste(im, (x0 + j * (tile + pad), y0))
    return save_image(sheet, path)
