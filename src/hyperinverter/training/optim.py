"""Optimisers by name. ``ranger`` is the one the pSp family (pSp, e4e, ReStyle, HyperStyle, E2Style) trains with."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class Ranger(torch.optim.RAdam):
    """Ranger as the pSp-family code uses it: RAdam (rectified, threshold 5) with gradient centralisation and a
    Lookahead (every ``k`` steps the weights move ``alpha`` of the way to where they went, and restart there).

    Defaults are the official constructor's: betas (0.95, 0.999), eps 1e-5, ``k`` 6, ``alpha`` 0.5. Gradient
    centralisation subtracts each gradient's mean over every dimension but the first, for weights with more than
    one dimension (biases are left alone). The Lookahead's slow weights are optimiser state, so checkpoints keep
    them.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-4, betas: tuple[float, float] = (0.95, 0.999),
                 eps: float = 1e-5, weight_decay: float = 0.0, k: int = 6, alpha: float = 0.5) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        for group in self.param_groups:
            group.setdefault("lookahead_k", k)
            group.setdefault("lookahead_alpha", alpha)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.ndim > 1:
                    p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.ndim)), keepdim=True))
        # The slow weights start where the fast ones were before their first step (RAdam's own state must be
        # created by RAdam, so they are kept aside until it has been).
        first = {p: p.detach().clone() for group in self.param_groups for p in group["params"]
                 if p.grad is not None and "slow" not in self.state[p]}
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if p in first:
                    state["slow"] = first[p]
                    state["lookahead_step"] = 0
                state["lookahead_step"] += 1
                if state["lookahead_step"] % group["lookahead_k"] == 0:
                    state["slow"].add_(p - state["slow"], alpha=group["lookahead_alpha"])
                    p.copy_(state["slow"])
        return loss


def make_optimizer(name: str, params: Iterable[nn.Parameter], *, lr: float) -> torch.optim.Optimizer:
    """``"adam"`` (HyperInverter's) or ``"ranger"`` (the pSp family's)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "ranger":
        return Ranger(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; known: adam, ranger")
