"""Official PTI outputs as a PTI inversion: the tuned generator as Δθ against its original, the pivot as the codes.

PTI (danielroich/PTI) writes per image a pivot ``embeddings/<img>/PTI/0.pt`` (a tensor ``[1, num_ws, w_dim]``) and
a tuned generator ``checkpoints/model_<run>_<img>.pt``: ``torch.save(G)`` of the NVIDIA persistent generator, a zip
archive whose pickle names ``torch_utils.persistence``. It is read with the whitelisting unpickler (no code from
the file runs); then ``Δθ = θ_tuned − θ_original`` on every synthesis parameter is an additive
:class:`WeightDelta`, and the result is edited, interpolated, saved and exported like any PTI result made here.

PTI tunes only the synthesis network and renders with the original noise buffers, so a tuned generator whose
mapping network or noise buffers differ from the original was not tuned from it: that is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..io.checkpoints import load_weights_only
from ..methods.base import InversionResult
from ..models.stylegan2 import Generator
from ..models.weight_delta import WeightDelta

logger = logging.getLogger(__name__)


def pti_weight_delta(tuned: Generator, original: Generator, *, source: str = "the tuned generator") -> WeightDelta:
    """``θ_tuned − θ_original`` on every synthesis parameter, ``[1, *shape]`` each (an additive Δθ)."""
    if tuned.config.to_dict() != original.config.to_dict():
        differing = sorted(k for k, v in original.config.to_dict().items() if tuned.config.to_dict().get(k) != v)
        raise CheckpointError(source, f"has another architecture than the original generator ({', '.join(differing)} "
                              "differ)")
    tuned_state, original_state = tuned.state_dict(), original.state_dict()
    untuned = sorted(k for k in original_state if (k.startswith("mapping.") or k.endswith(".noise_const"))
                     and not torch.equal(tuned_state[k].float(), original_state[k].float()))
    if untuned:
        raise CheckpointError(source, f"was not tuned from this original generator: PTI leaves the mapping network "
                              f"and the noise buffers alone, but {untuned[:4]} differ")
    deltas = {name: (p.detach().float() - original_state[f"synthesis.{name}"].float()).unsqueeze(0)
              for name, p in tuned.synthesis.named_parameters()}
    changed = sum(bool(d.any()) for d in deltas.values())
    if changed == 0:
        logger.warning("%s equals the original generator: its Δθ is zero", source)
    logger.info("%s: Δθ on %d of %d synthesis parameters", source, changed, len(deltas))
    return WeightDelta(deltas, mode="add")


def read_pti_pivot(path: str | Path, generator: Generator) -> torch.Tensor:
    """PTI's pivot file (``torch.save`` of a ``[1, num_ws, w_dim]`` tensor) -> ``ws [1, num_ws, w_dim]``."""
    path = Path(path)
    pivot = load_weights_only(path)
    if isinstance(pivot, dict) and len(pivot) == 1:  # a pivot saved inside a dict
        pivot = next(iter(pivot.values()))
    expected = (generator.num_ws, generator.w_dim)
    if not isinstance(pivot, torch.Tensor) or pivot.ndim not in (2, 3) or tuple(pivot.shape[-2:]) != expected \
            or pivot.numel() != expected[0] * expected[1]:  # (a batch of pivots was a reshape error inside)
        got = tuple(pivot.shape) if isinstance(pivot, torch.Tensor) else type(pivot).__name__
        raise CheckpointError(path, f"must hold a pivot [1, {expected[0]}, {expected[1]}] for this generator, got {got}")
    if not pivot.is_floating_point():  # (a complex pivot lost its imaginary part with a warning)
        raise CheckpointError(path, f"must hold a pivot of real codes, got a {pivot.dtype} tensor")
    pivot = pivot.reshape(1, *expected).float()
    if not bool(torch.isfinite(pivot).all()):
        raise CheckpointError(path, "holds NaN or infinite codes")
    return pivot


@torch.no_grad()
def load_pti_inversion(tuned: str | Path, pivot: str | Path, original: Generator) -> InversionResult:
    """A PTI result from the official files: the pivot as the codes, the tuned generator as Δθ on ``original``."""
    from .gan_files import load_generator

    tuned_path = Path(tuned)
    device = original.w_avg.device
    tuned_generator = load_generator(tuned_path, device=device)
    ws = read_pti_pivot(pivot, original).to(device)
    delta = pti_weight_delta(tuned_generator, original, source=str(tuned_path))
    image = original.synthesis(ws, weight_delta=delta, noise_mode="const")
    return InversionResult(ws=ws, image=image, weight_delta=delta)
