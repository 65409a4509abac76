"""Training checkpoints in one safetensors file: weights, optimiser, grad scaler and progress.

No pickle anywhere: optimiser states are flattened into tensors plus JSON metadata. Files are
written atomically, the last ``keep`` are kept, and resuming takes the newest readable one.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, NonFiniteWeightsError
from ..io.checkpoints import (
    load_state_dict_strict,
    read_metadata_json,
    read_safetensors,
    save_safetensors,
    unique_state,
    with_aliases,
)

logger = logging.getLogger(__name__)

# The whole name: a user's `keep-checkpoint-00000002.safetensors` beside them was taken for the newest checkpoint
# (it sorts last), and `a-checkpoint-...` was pruned with ours.
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d{8,})\.safetensors$")


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta[prefix] = {"type": type(opt).__name__, "param_groups": sd["param_groups"], "scalars": scalars}


# Switches that PyTorch versions add to their optimisers' groups (and fill in when loading an older state).
_VERSION_KEYS = frozenset({"params", "foreach", "maximize", "capturable", "differentiable", "fused",
                           "decoupled_weight_decay"})


# The hyperparameters a run's config sets: a resumed run takes them from its config (a changed lr takes effect, as
# the resume message says), and the rest (moments, step counts) from the checkpoint.
CONFIGURED_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")


def _load_optimizer(path: Path, name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Restore ``opt`` from a checkpoint's flattened state, if it is the state of the same kind of optimiser (its
    recorded type; in files from before the type was recorded, the hyperparameters its groups name). Its
    ``CONFIGURED_HYPERPARAMETERS`` stay as this run built them."""
    prefix = f"optim.{name}"
    if prefix not in meta:
        raise CheckpointError(f"{path} has no optimiser state for {name!r}")
    stored = _unflatten_optimizer(prefix, tensors, meta)
    kind, current = meta[prefix].get("type"), type(opt).__name__
    if kind is None:
        named = [set(group) - _VERSION_KEYS for group in stored["param_groups"]]
        same = named == [set(group) - _VERSION_KEYS for group in opt.param_groups]
    else:
        same = kind == current
    if not same:
        raise CheckpointError(f"{path} holds the state of another optimiser ({kind or 'another kind'}) for "
                              f"{name!r} than this run's ({current})")
    configured = [{key: group[key] for key in CONFIGURED_HYPERPARAMETERS if key in group} for group in opt.param_groups]
    try:
        opt.load_state_dict(stored)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: the optimiser state for {name!r} does not fit ({e})") from None
    for group, values in zip(opt.param_groups, configured):  # (the state resumes; the settings are this run's)
        group.update(values)


def _unflatten_optimizer(prefix: str, tensors: dict, meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}.state."
    for name, value in tensors.items():
        if name.startswith(head):
            idx, key = name[len(head) :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta[prefix]["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta[prefix]["param_groups"]}


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write ``directory/checkpoint-{step}.safetensors`` atomically and prune to the newest ``keep``."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"step": step, "progress": progress or {}, "modules": sorted(modules)}
    meta["aliases"] = {}
    for name, module in modules.items():
        state, aliases = unique_state(module)  # a shared parameter once
        tensors.update({f"module.{name}.{key}": value for key, value in state.items()})
        meta["aliases"].update({f"module.{name}.{key}": f"module.{name}.{value}" for key, value in aliases.items()})
    for name, opt in (optimizers or {}).items():
        _flatten_optimizer(f"optim.{name}", opt, tensors, meta)
    if scaler is not None and scaler.is_enabled():
        meta["scaler"] = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in scaler.state_dict().items()}
    path = directory / f"checkpoint-{step:08d}.safetensors"
    # safetensors refuses shared storage; clone so every entry owns its memory.
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    # Durable (file and folder flushed) before any older checkpoint is deleted: a power cut keeps one. The run
    # folder is ours (prepared_run_dir): a checkpoint of this name that no longer reads back is replaced.
    save_safetensors(path, tensors, metadata={"training": json.dumps(meta)}, replace_any=True)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint file was written at, from its name."""
    return int(CHECKPOINT_NAME.search(Path(path).name).group(1))


def list_checkpoints(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if CHECKPOINT_NAME.search(p.name)), key=checkpoint_step)


def load_checkpoint(
    path: Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    added_modules: frozenset[str] = frozenset(),
) -> tuple[int, dict[str, Any]]:
    """Restore everything saved by ``save_checkpoint``; returns ``(step, progress)``. Strict, but for
    ``added_modules``: stateful parts a later version of a trainer added (e4e's pool of real codes), which a
    checkpoint of an earlier one lacks; they resume as built."""
    try:
        tensors, metadata = read_safetensors(path)
        meta = read_metadata_json(path, metadata, "training", "a training checkpoint")
        if not isinstance(meta.get("modules"), list) or not isinstance(meta.get("step"), int):
            raise CheckpointError(path, "is not a complete training checkpoint (no modules or step)")
        problem = _record_problem(path, meta, tensors) or _progress_problem(meta.get("progress", {}))
        if problem:  # (a damaged record: resume_latest falls back to an older checkpoint)
            raise CheckpointError(path, f"is not a readable training checkpoint ({problem})")
    except OSError as e:
        raise CheckpointError(path, f"is not a readable training checkpoint ({e})") from None
    tensors = with_aliases(tensors, meta.get("aliases"), path)
    try:
        held = set(meta["modules"])
        if held != set(modules) and not (held < set(modules) and set(modules) - held <= added_modules):
            raise CheckpointError(f"{path} holds modules {meta['modules']}, expected {sorted(modules)}")
        for name, module in modules.items():
            if name not in held:
                logger.info("%s holds no %s (a checkpoint of an earlier version): it starts as built", path, name)
                continue
            head = f"module.{name}."
            sd = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
            load_state_dict_strict(module, sd, source=f"{path} [{name}]")
        for name, opt in (optimizers or {}).items():
            _load_optimizer(path, name, opt, tensors, meta)
    except NonFiniteWeightsError:
        raise  # a diverged run: resume_latest falls back to an older checkpoint
    except CheckpointError as e:
        raise CheckpointMismatchError(f"{e}. The run folder belongs to a run with another configuration: resume "
                                      "it with that configuration, or start this one in a new run_dir") from None
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    return int(meta["step"]), meta["progress"]


# The progress record's fingerprints of the frozen modules. (Under "frozen" they were of another form of
# io.work.fingerprint_of, which hashed large tensors in one stream: such checkpoints are not checked.)
FROZEN_KEY = "frozen_weights"


def _record_problem(path: Path, meta: dict, tensors: dict) -> str | None:
    """What is wrong with a checkpoint's record of its step, modules and optimisers, or None. (Each was read as it
    came: a step of -100 trained 106 steps into files no run lists, 10**9 ended the run untrained, and a damaged
    optimiser record was an internal error.)"""
    step, named = meta["step"], CHECKPOINT_NAME.search(Path(path).name)
    if isinstance(step, bool) or step < 0:
        return f"its step is {step!r}, not a whole number of 0 or more"
    if named and step != int(named.group(1)):
        return f"its step is {step}, but its name says {int(named.group(1))}"
    if not all(isinstance(name, str) for name in meta["modules"]):
        return "its modules are not a list of names"
    for key, record in meta.items():
        if not key.startswith("optim."):
            continue
        if not (isinstance(record, dict) and isinstance(record.get("param_groups"), list)
                and all(isinstance(g, dict) for g in record["param_groups"])
                and isinstance(record.get("scalars"), dict)
                and all(i.isdigit() and isinstance(v, dict) for i, v in record["scalars"].items())
                and isinstance(record.get("type", ""), str)):
            return f"its optimiser record {key!r} is damaged"
    for name in tensors:
        if name.startswith("optim.") and not re.fullmatch(r"optim\..+\.state\.\d+\..+", name):
            return f"its optimiser tensor {name!r} is not named as a state"
    if not isinstance(meta.get("scaler", {}), dict):
        return "its gradient scaler's state is not a record"
    return None


def _progress_problem(progress: object) -> str | None:
    """What is wrong with a checkpoint's progress record (the loop's own keys), or None."""
    if not isinstance(progress, dict):
        return f"its progress is a {type(progress).__name__}, not a record"
    position, best = progress.get("position", 0), progress.get("best_val", 0.0)
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        return f"its sample position is {position!r}, not a whole number of 0 or more"
    if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best):  # (NaN: best/ never again)
        return f"its best validation loss is {best!r}, not a number"
    for key in ("task", FROZEN_KEY):
        if not isinstance(progress.get(key, {}), dict):
            return f"its {key} state is a {type(progress[key]).__name__}, not a record"
    window = progress.get("window", [])  # (the logged steps' statistics since the last log line)
    if not isinstance(window, list) or not all(
            isinstance(s, dict) and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                        for k, v in s.items()) for s in window):
        return "its statistics since the last log line are not a list of records of numbers"
    return None


class CheckpointMismatchError(CheckpointError):
    """A readable training checkpoint whose modules or optimisers do not fit the model being trained."""


def resume_latest(directory: Path, **kwargs) -> tuple[int, dict[str, Any]] | None:
    """Load the newest readable checkpoint in ``directory``; a corrupt newest one falls back to older.

    A readable checkpoint of a different model raises :class:`CheckpointMismatchError`.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            result = load_checkpoint(path, **kwargs)
        except CheckpointMismatchError:
            raise  # readable but of another model: falling back or starting afresh would lose the run
        except CheckpointError as e:
            logger.warning("skipping unreadable checkpoint %s: %s", path, e)
            continue
        logger.info("resumed from %s (step %d)", path, result[0])
        return result
    return None
