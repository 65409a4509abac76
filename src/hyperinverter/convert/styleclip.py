"""Official StyleCLIP latent-mapper files (orpatashnik/StyleCLIP ``mapper/``) as a :class:`StyleCLIPMapper`.

A mapper file is ``torch.save({'state_dict': ..., 'opts': {...}})`` with keys
``mapper.{course,medium,fine}_mapping.mapping.{1..4}.{weight,bias}`` (``course`` is the official spelling of
"coarse"), each weight ``[512, 512]`` and bias ``[512]``, and the ``decoder.*`` it was trained with (not used).
The options ``no_coarse_mapper``, ``no_medium_mapper`` and ``no_fine_mapper`` remove a level and its keys. The file
is read weights-only (no code from it runs) and strictly: every missing, unexpected or mis-shaped key is named.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, NonFiniteWeightsError
from ..io.checkpoints import instantiate_strict, key_problems, listing, load_weights_only
from ..models.styleclip import LAYERS_PER_LEVEL, LEVELS, W_DIM, StyleCLIPMapper

logger = logging.getLogger(__name__)

# our level name -> (the official module name, the option that disables it)
OFFICIAL_LEVELS = {"coarse": ("course_mapping", "no_coarse_mapper"), "medium": ("medium_mapping", "no_medium_mapper"),
                   "fine": ("fine_mapping", "no_fine_mapper")}


def official_keys(levels: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """The keys (and shapes) an official mapper file with ``levels`` holds -> ``{key: shape}``."""
    keys = {}
    for level in levels:
        module = OFFICIAL_LEVELS[level][0]
        for i in range(1, LAYERS_PER_LEVEL + 1):
            keys[f"mapper.{module}.mapping.{i}.weight"] = (W_DIM, W_DIM)
            keys[f"mapper.{module}.mapping.{i}.bias"] = (W_DIM,)
    return keys


def _flag(opts: dict, key: str, path: Path) -> bool:
    value = opts.get(key, False)  # the official argparse default
    if not isinstance(value, bool):
        raise CheckpointError(path, f"option {key!r} must be true or false, got {value!r}")
    return value


def _levels(opts: object, path: Path) -> tuple[str, ...]:
    if not isinstance(opts, dict):
        raise CheckpointError(path, f"'opts' must be the training options (a dict), got {type(opts).__name__}")
    if opts.get("work_in_stylespace"):
        raise CheckpointError(path, "is a StyleSpace mapper (work_in_stylespace): only W+ mappers are supported")
    levels = tuple(level for level, (_, flag) in OFFICIAL_LEVELS.items() if not _flag(opts, flag, path))
    if not levels:
        raise CheckpointError(path, "its options disable all three levels (no_coarse/medium/fine_mapper): it maps "
                              "nothing")
    return levels


def load_styleclip_mapper(path: str | os.PathLike) -> StyleCLIPMapper:
    """Read an official StyleCLIP mapper ``.pt`` -> :class:`StyleCLIPMapper` (CPU, eval, no gradients).

    ``CheckpointError`` (naming the file) when it is not a mapper file, disables every level, or its keys do not
    match its options exactly.
    """
    path = Path(path)
    obj = load_weights_only(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(path, "is not a StyleCLIP mapper file: expected a dict with 'state_dict' and 'opts'")
    if "opts" not in obj:
        raise CheckpointError(path, "is not a StyleCLIP mapper file: it has no 'opts' (which say which levels it "
                              "maps)")
    levels = _levels(obj["opts"], path)
    state = obj["state_dict"]
    odd = sorted(str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if odd:
        raise CheckpointError(path, f"'state_dict' must map names to tensors; it does not under {odd[:8]}")
    # The official coach saves the whole net: the mapper and the generator it was trained on (``decoder.*``), which
    # an edit of the codes does not use.
    state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    problems = key_problems(official_keys(levels), state)
    if problems:
        enabled = ", ".join(levels)
        raise CheckpointError(path, f"does not match a StyleCLIP mapper of levels {enabled} (from its opts): "
                              + "; ".join(problems))
    non_finite = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if non_finite:
        raise NonFiniteWeightsError(path, f"holds NaN or infinite values in {listing(non_finite)}")
    ours = {}
    for level in levels:
        prefix = f"mapper.{OFFICIAL_LEVELS[level][0]}."
        ours.update({f"{level}.{k[len(prefix):]}": v.float() for k, v in state.items() if k.startswith(prefix)})
    mapper = instantiate_strict(lambda: StyleCLIPMapper(levels), ours, source=str(path))
    logger.info("%s: StyleCLIP mapper of levels %s (rows %s)", path, ", ".join(levels),
                ", ".join(f"{s}-{e - 1}" for name, s, e in LEVELS if name in levels))
    return mapper.eval().requires_grad_(False)
