"""StyleCLIP's latent mapper (Patashnik et al. 2021), inference only: ``Δw = M(w)`` on a 18-row W+ code.

``M`` is a LevelsMapper: W+ rows 0-3 (coarse), 4-7 (medium) and 8-17 (fine) each go through their own MLP of a
normalisation and four equalised-lr linear layers (512 -> 512, lr multiplier 0.01, leaky ReLU 0.2 with gain √2 after
every layer, the last one too). A level the mapper was trained without outputs zeros. The numerics follow the
official code, so that the released mappers give the released edits (see :class:`LayerAxisNorm`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import init

W_DIM = 512
NUM_WS = 18
# (level, first row, end row) of the W+ code; the split of a 1024-px StyleGAN2's 18 rows.
LEVELS: tuple[tuple[str, int, int], ...] = (("coarse", 0, 4), ("medium", 4, 8), ("fine", 8, NUM_WS))
LAYERS_PER_LEVEL = 4
LR_MUL = 0.01


class LayerAxisNorm(nn.Module):
    """``x / rms(x)`` over dim 1 of ``[B, rows, w_dim]``: across the rows of the level, not across the features.

    The official mapper reuses StyleGAN's PixelNorm (written for ``[B, w_dim]``, normalising over dim 1) on 3-D
    W+ slices, so it normalises each feature over the level's rows. That is a quirk, but the released mappers
    were trained with it; it is reproduced exactly here (eps 1e-8 inside the square root, as there).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + self.eps)


class EqualLinearLReLU(nn.Module):
    """Equalised-lr linear layer and leaky ReLU: ``lrelu(x @ (W·lr_mul/√in)ᵀ + b·lr_mul, 0.2) · √2``.

    Stored parameters are the raw ones (``W ~ N(0, 1/lr_mul²)`` at init, ``b = 0``), as in StyleGAN2 checkpoints,
    so that files load unchanged. The bias is added along the last dim (the feature axis), also for 3-D input.
    """

    def __init__(self, in_features: int, out_features: int, *, lr_mul: float = LR_MUL,
                 negative_slope: float = 0.2, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.randn(out_features, in_features, over=lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.lr_mul = lr_mul
        self.scale = lr_mul / math.sqrt(in_features)
        self.negative_slope = negative_slope
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(x, self.negative_slope) * self.gain

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, lr_mul={self.lr_mul}"


class LevelMapper(nn.Module):
    """One level's MLP: ``mapping = [LayerAxisNorm, EqualLinearLReLU × layers]`` (parameter keys
    ``mapping.{1..layers}.{weight,bias}``, as in the official files: index 0 is the norm, which has none)."""

    def __init__(self, w_dim: int = W_DIM, layers: int = LAYERS_PER_LEVEL, lr_mul: float = LR_MUL) -> None:
        super().__init__()
        self.mapping = nn.Sequential(LayerAxisNorm(), *(EqualLinearLReLU(w_dim, w_dim, lr_mul=lr_mul)
                                                        for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mapping(x)


class StyleCLIPMapper(nn.Module):
    """LevelsMapper: ``ws [B, 18, 512]`` -> ``Δws [B, 18, 512]`` (zeros on the levels it has no MLP for).

    ``levels``: the levels that have an MLP (the official ``no_{coarse,medium,fine}_mapper`` options remove
    some). Parameter keys: ``{level}.mapping.{1..4}.{weight,bias}`` for each level present.
    """

    def __init__(self, levels: tuple[str, ...] = ("coarse", "medium", "fine")) -> None:
        super().__init__()
        known = [name for name, _, _ in LEVELS]
        unknown = sorted(set(levels) - set(known))
        if unknown or not levels:
            raise ValueError(f"levels must be a non-empty subset of {known}, got {list(levels)}")
        self.levels = tuple(name for name in known if name in levels)
        for name in self.levels:
            self.add_module(name, LevelMapper())

    @staticmethod
    def check_codes(ws: torch.Tensor, what: str = "the StyleCLIP mapper") -> None:
        """``ValueError`` unless ``ws`` is ``[B, 18, 512]``: the level split is defined for those codes only."""
        if ws.ndim != 3 or tuple(ws.shape[1:]) != (NUM_WS, W_DIM):
            raise ValueError(f"{what} edits W+ codes of {NUM_WS} rows × {W_DIM} (a 1024-px StyleGAN2 with w_dim "
                             f"{W_DIM}; its levels are rows 0-3, 4-7 and 8-17), but these codes are "
                             f"{list(ws.shape[1:]) if ws.ndim == 3 else list(ws.shape)}")

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        self.check_codes(ws)
        parts = []
        for name, start, end in LEVELS:
            rows = ws[:, start:end]
            parts.append(getattr(self, name)(rows) if name in self.levels else torch.zeros_like(rows))
        return torch.cat(parts, dim=1)
