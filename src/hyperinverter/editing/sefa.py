"""SeFa (closed-form factorisation, Shen & Zhou, CVPR 2021): edit directions in W from a generator's weights alone,
as e4e's ``editings/sefa.py`` computes and applies them.

For the layers ``L`` it takes the style (affine) weights of those modulated convolutions, each ``[w_dim, in_ch]``,
side by side, scales every column to unit length and eigen-decomposes ``W·Wᵀ`` (``np.linalg.eig``, whose order
is kept: e4e does not sort it). Each eigenvector is a direction, added to the codes as ``w + d·v`` on some rows.

Layer numbers are e4e's: 0 is rosinality's ``conv1`` (our ``b4.conv1``), ``l ≥ 1`` its ``convs[l-1]`` (ours:
``b8.conv0``, ``b8.conv1``, ``b16.conv0``, ...); layer ``l`` is styled by row ``l`` of the W+ code, and ``"all"``
is every one of them.

**Rows edited.** e4e edits rows ``l-1`` for each ``l`` in ``L`` but 0 (rows 1-4 for its default 2, 3, 4, 5;
rows 0 to ``n-2`` of ``n`` layers for ``"all"``), one row before the layers it factorised. ``rows="official"``
(the default) does the same, so that its edits are e4e's; ``rows="styled"`` edits rows ``L`` themselves, those
that style the factorised layers, as the SeFa paper means.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .directions import LinearDirection, w_probe

DEFAULT_LAYERS = (2, 3, 4, 5)  # e4e's (its notebook and sefa.edit's callers)
E4E_DISTANCE = 15.0  # e4e's distances end at 15 (its notebook: 0 to 15; its paper: -15 to 15)
# A direction's default strength, where none is given: 2 standard deviations of the generator's codes along it, as
# `directions train` sets its boundaries'. e4e's 15 is about 9 such deviations on faces-64, whose faces break there.
SPREAD_SAMPLES = 10_000
RowRule = Literal["official", "styled"]


def modulated_convs(G) -> list[str]:
    """The modulated convolutions of ``G`` (``"b4.conv1"``, ``"b8.conv0"``, ...) by e4e's layer number: entry
    ``l`` is styled by W+ row ``l`` (toRGB layers are not counted)."""
    names = [info.name for info in G.synthesis.layers() if info.kind == "conv"]
    assert [info.w_index for info in G.synthesis.layers() if info.kind == "conv"] == list(range(len(names)))
    return names


def check_layers(layers: Sequence[int] | str, num_layers: int) -> tuple[int, ...]:
    """``layers`` as e4e's layer numbers, checked against a generator of ``num_layers`` modulated convolutions:
    ``"all"`` is every one; a number out of range, given twice, or not an integer is a ``ValueError`` naming it."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"SeFa layers must be layer numbers or 'all', got {layers!r}")
        return tuple(range(num_layers))
    try:
        given = list(layers)
    except TypeError:
        raise TypeError(f"SeFa layers must be a sequence of layer numbers or 'all', got {layers!r}") from None
    if not given:
        raise ValueError("SeFa needs at least one layer")
    for layer in given:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"SeFa layer {layer!r} is not a layer number")
        if not 0 <= layer < num_layers:
            raise ValueError(f"SeFa layer {layer} is out of range: this generator's modulated convolutions are 0 to "
                             f"{num_layers - 1} (0: the 4-px one, l: rosinality's convs[l-1])")
    twice = sorted({int(layer) for layer in given if given.count(layer) > 1})
    if twice:  # (e4e would stack those weights twice, and add to their row once)
        raise ValueError(f"SeFa layers {twice} given more than once")
    return tuple(int(layer) for layer in given)


@dataclass(frozen=True)
class Factorisation:
    """SeFa's result: ``vectors [n, w_dim]`` (unit rows) with their ``eigenvalues [n]``, in ``np.linalg.eig``'s
    order (e4e's: not sorted), and the W+ ``rows`` their edits change."""

    layers: tuple[int, ...]
    rows: tuple[int, ...]
    row_rule: RowRule
    vectors: torch.Tensor
    eigenvalues: torch.Tensor
    num_ws: int

    def direction(self, index: int, *, strength: float, name: str | None = None,
                  probe: torch.Tensor | None = None) -> LinearDirection:
        """Direction ``index`` as ours: ``w + strength·v`` on the rows (e4e's ``code[:, rows] += v * d``)."""
        if not 0 <= index < len(self.vectors):
            raise ValueError(f"SeFa direction {index} is out of range (there are {len(self.vectors)})")
        vector = torch.zeros(self.num_ws, self.vectors.shape[1])
        vector[list(self.rows)] = self.vectors[index]
        return LinearDirection(vector, name=name or f"sefa_{index}", default_strength=strength, w_probe=probe)

    def record(self, index: int) -> dict[str, Any]:
        """What a direction file keeps of its factorisation (beside kind, name and strength)."""
        return {"method": "sefa", "component": index, "eigenvalue": float(self.eigenvalues[index]),
                "sefa_layers": list(self.layers), "rows": list(self.rows), "row_rule": self.row_rule}


@torch.no_grad()
def factorize_weight(G, layers: Sequence[int] | str = DEFAULT_LAYERS, *, rows: RowRule = "official") -> Factorisation:
    """e4e's ``factorize_weight`` on ``G``: the eigenvectors of ``W·Wᵀ`` for the style weights of ``layers`` (see the
    module's note on the rows)."""
    if rows not in ("official", "styled"):
        raise ValueError(f"rows must be 'official' or 'styled', got {rows!r}")
    names = modulated_convs(G)
    layers = check_layers(layers, len(names))
    edited = tuple(layer - 1 for layer in layers if layer != 0) if rows == "official" else tuple(sorted(layers))
    if not edited:
        raise ValueError("SeFa layers [0] edit no row with e4e's rows (row l-1 for each layer l but 0): add a "
                         "layer, or edit the rows they style (rows='styled', --rows styled)")
    # e4e's stacking order: conv1 first, then convs[l-1] in the order given (it sets the float32 sums of W·Wᵀ).
    order = ([0] if 0 in layers else []) + [layer for layer in layers if layer != 0]
    weights = [G.synthesis.get_submodule(names[layer]).affine.weight.detach().float().cpu().numpy().T
               for layer in order]
    weight = np.concatenate(weights, axis=1).astype(np.float32)
    norms = np.linalg.norm(weight, axis=0, keepdims=True)
    if not bool((norms > 0).all()):  # (the unit scaling would divide by zero: NaN directions)
        column = int(np.flatnonzero(norms[0] == 0)[0])
        for layer, w in zip(order, weights):
            if column < w.shape[1]:
                break
            column -= w.shape[1]
        raise ValueError(f"SeFa layer {layer} ({names[layer]}): the style weights of its input channel {column} are "
                         "all zero, so they cannot be scaled to unit length")
    weight = weight / norms
    eigenvalues, eigenvectors = np.linalg.eig(weight.dot(weight.T))
    if np.iscomplexobj(eigenvectors):  # (W·Wᵀ is symmetric: only rounding can make a pair complex)
        if float(np.abs(eigenvectors.imag).max()) > 1e-4:
            raise ValueError("SeFa: the factorisation of these layers' weights gave complex directions")
        eigenvalues, eigenvectors = eigenvalues.real, eigenvectors.real
    return Factorisation(layers=layers, rows=edited, row_rule=rows, vectors=torch.from_numpy(eigenvectors.T.copy()),
                         eigenvalues=torch.from_numpy(eigenvalues.copy()), num_ws=G.num_ws)


@torch.no_grad()
def default_strengths(G, vectors: torch.Tensor, *, num_samples: int = SPREAD_SAMPLES) -> list[float]:
    """For each row of ``vectors``: 2 standard deviations of ``G``'s codes (``mapping(z)``, seeded, untruncated)
    along it, to 2 significant digits."""
    z = torch.randn(num_samples, G.z_dim, generator=torch.Generator().manual_seed(0))
    w = G.mapping(z.to(G.w_avg.device), truncation_psi=1.0)[:, 0].double().cpu()
    spread = (w @ vectors.double().T).std(dim=0)
    return [float(f"{2 * float(s):.2g}") if s > 0 else 1.0 for s in spread]


def sefa_directions(G, layers: Sequence[int] | str = DEFAULT_LAYERS, *, count: int | None = 5,
                    strength: float | None = None, rows: RowRule = "official", prefix: str = "sefa"
                    ) -> dict[str, LinearDirection]:
    """The first ``count`` SeFa directions of ``G`` (None: all ``w_dim``) in e4e's order, named
    ``PREFIX_0``, ``PREFIX_1``, ... (``PREFIX_i`` is e4e's ``semantics`` index i), each an edit ``w + s·v`` on the
    rows :func:`factorize_weight` says. Default strength: ``strength``, or 2 standard deviations of ``G``'s codes
    along the direction (``E4E_DISTANCE``, 15, edits as far as e4e's notebook). They record ``G``'s W space
    (see ``w_space_mismatch``). The eigenvalues are :func:`factorize_weight`'s."""
    factorisation = factorize_weight(G, layers, rows=rows)
    return named_directions(G, factorisation, count=len(factorisation.vectors) if count is None else count,
                            strength=strength, prefix=prefix)


def named_directions(G, factorisation: Factorisation, *, count: int, strength: float | None = None,
                     prefix: str = "sefa") -> dict[str, LinearDirection]:
    """The first ``count`` directions of ``factorisation`` (of ``G``), as :func:`sefa_directions` gives them."""
    total = len(factorisation.vectors)
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or not 1 <= count <= total:
        raise ValueError(f"count must be 1 to {total} (the generator's w_dim), got {count!r}")
    strengths = [strength] * count if strength is not None else default_strengths(G, factorisation.vectors[:count])
    probe = w_probe(G)
    return {f"{prefix}_{i}": factorisation.direction(i, name=f"{prefix}_{i}", strength=strengths[i], probe=probe)
            for i in range(count)}
