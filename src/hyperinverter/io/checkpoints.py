"""Our own weight format: a folder with ``config.json`` and ``model.safetensors``; atomic writes; strict loads.

The config is also stored in the safetensors metadata, so a lone ``.safetensors`` file is self-describing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..convert.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "hyperinverter"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# mkstemp/mkdtemp create private (0600/0700) entries; published files get the modes a plain open() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    ``durable=False`` skips the fsync: still never a partial file, but a power cut may lose the newest write
    (right for thousands of regenerable dataset files, wrong for checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_file(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.save_file`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_component(
    directory: Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_type: str,
    config: dict[str, Any],
    extras: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``directory/{config.json, model.safetensors}``; floating tensors are cast to ``dtype`` if given."""
    directory = Path(directory)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": model_type,
              "config": config, "extras": extras or {}}
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state_dict.items()
    }
    atomic_save_file(tensors, directory / WEIGHTS_NAME, metadata={"hyperinverter": json.dumps(header)})
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(header, indent=2) + "\n").encode())


def read_component(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a component folder or a lone ``.safetensors`` file -> (header, float32 state dict)."""
    path = Path(path)
    if path.is_dir():
        cfg_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_path.is_file() or not weights_path.is_file():
            raise CheckpointError(f"{path} is not a hyperinverter model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            header = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    else:
        weights_path, header = path, None
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read safetensors file {weights_path}: {e}") from None
    if header is None:
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="pt") as f:
            meta = f.metadata() or {}
        if "hyperinverter" not in meta:
            raise CheckpointError(f"{weights_path} carries no hyperinverter config in its metadata")
        header = json.loads(meta["hyperinverter"])
    if header.get("format") != FORMAT or "model_type" not in header or "config" not in header:
        raise CheckpointError(f"{path} has no valid hyperinverter header (format/model_type/config)")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer hyperinverter (format v{header['format_version']})")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return header, tensors


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` that names every missing, unexpected and mis-shaped key."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    misshaped = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped keys: {misshaped}")
    if problems:
        raise CheckpointError(f"{source} does not match {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)


def replace_directory(tmp_dir: Path, target: Path) -> None:
    """Move a fully written ``tmp_dir`` to ``target``, replacing an existing folder last."""
    target = Path(target)
    os.chmod(tmp_dir, DIR_MODE)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp_dir, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, target)
