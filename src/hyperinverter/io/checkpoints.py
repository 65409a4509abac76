"""Our own weight format, and the one strict way to put weights into a module.

A component is a folder with ``config.json`` and ``model.safetensors``; the config is also stored in the
safetensors metadata, so a lone ``.safetensors`` file is self-describing. Every safetensors file of ours
(components, inversion files, directions, training checkpoints) is read and written here.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..errors import CheckpointError, NonFiniteWeightsError, SchemaError
from ..memory import FilePages
from .files import (
    _PROC_FD,
    COMPONENT_FORMAT,
    COMPONENT_INDEX,
    WRITER_TAG,
    atomic_write_bytes,
    refuse_special_file,
)

logger = logging.getLogger(__name__)

FORMAT = COMPONENT_FORMAT
FORMAT_VERSION = 1
CONFIG_NAME = COMPONENT_INDEX
WEIGHTS_NAME = "model.safetensors"
M = TypeVar("M", bound=nn.Module)


# --- safetensors files ----------------------------------------------------------------------------------


def encode_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file (for writing several files as one group). A file without metadata of its
    own is marked ``written_by`` (``io.files.written_by_us``); the writers' own keys mark the others."""
    return safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                             metadata=dict(metadata) if metadata else {"written_by": WRITER_TAG})


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None, *, durable: bool = True, replace_any: bool = False
                     ) -> Path:
    """Write a safetensors file atomically (and durably unless told otherwise); ``replace_any``: see
    :func:`~hyperinverter.io.files.atomic_write_group`."""
    return atomic_write_bytes(path, encode_safetensors(tensors, metadata), durable=durable, replace_any=replace_any)


MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own bound


def _parse_header(head: bytes, read_rest: Callable[[int], bytes], path: Path) -> dict[str, str]:
    if len(head) < 8:
        raise CheckpointError(path, "is not a safetensors file (shorter than its 8-byte header size)")
    (size,) = struct.unpack("<Q", head[:8])
    if size > MAX_HEADER_BYTES:
        raise CheckpointError(path, f"is not a safetensors file (declares a {size}-byte header)")
    raw = read_rest(size)
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(path, f"is not a safetensors file (its header is not JSON: {e})") from None
    except RecursionError:  # (a header of 10**6 nested brackets; the Rust reader refuses it too)
        raise CheckpointError(path, "is not a safetensors file (its header nests too deeply)") from None
    if len(raw) != size or not isinstance(header, dict):
        raise CheckpointError(path, "is not a safetensors file (truncated or malformed header)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(path, "has malformed safetensors metadata")
    return metadata


def _metadata_of(data: bytes, path: Path) -> dict[str, str]:
    return _parse_header(data[:8], lambda n: data[8 : 8 + n], path)


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the metadata of a safetensors file (its header), without reading the tensors."""
    path = Path(path)
    refuse_special_file(path, CheckpointError, "a .safetensors file")
    try:
        with open(path, "rb") as f:
            return _parse_header(f.read(8), f.read, path)
    except IsADirectoryError:
        raise CheckpointError(path, "is a folder, not a .safetensors file") from None


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors, metadata). Any file name works, also one that is not valid UTF-8."""
    path = Path(path)
    refuse_special_file(path, CheckpointError, "a .safetensors file")
    try:
        with open(path, "rb") as f:
            text = os.fspath(path)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # the Rust reader takes UTF-8 names only: read it through our open file
                text = str(_PROC_FD / str(f.fileno())) if _PROC_FD.is_dir() else ""
            if text:
                with safe_open(text, framework="pt") as st:
                    return {k: st.get_tensor(k) for k in st.keys()}, dict(st.metadata() or {})
            data = f.read()
            return load_safetensors_bytes(data), _metadata_of(data, path)
    except IsADirectoryError:
        raise CheckpointError(path, "is a folder, not a .safetensors file") from None
    except (FileNotFoundError, PermissionError):
        raise
    except (SafetensorError, OSError, ValueError, struct.error) as e:
        raise CheckpointError(path, f"is not a readable safetensors file ({e})") from None


def read_metadata_json(path: Path, metadata: Mapping[str, str], key: str, what: str) -> dict[str, Any]:
    """The JSON object stored under ``key`` in a safetensors file's metadata, or ``SchemaError``."""
    if key not in metadata:
        raise SchemaError(path, f"is not {what}: its metadata has no {key!r} record")
    try:
        value = json.loads(metadata[key])
    except (ValueError, RecursionError) as e:  # (JSON nested 100,000 deep is a RecursionError)
        raise SchemaError(path, f"its {key!r} metadata is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise SchemaError(path, f"its {key!r} metadata must be a JSON object, got {type(value).__name__}")
    return value


def check_zip_records(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse, before any record is read, a torch zip archive whose records declare far more bytes together than
    the file holds, or that are encrypted or compressed otherwise than zip's deflate. torch.save stores its tensors
    as they are (torch.jit.save deflates its code), so the declared sizes stay near the file's; a zip bomb's do
    not (a 3 MB file made the reader, ours or torch's, decompress 3 GB before it looked at the record, 6 GB
    resident; split over many records, each stayed under the file's size)."""
    size, infos = path.stat().st_size, archive.infolist()
    odd = next((i for i in infos if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
                or i.flag_bits & 0x1), None)
    if odd is not None:
        raise CheckpointError(path, f"its record {odd.filename!r} is encrypted or compressed in a way torch does "
                              "not write")
    declared = sum(i.file_size for i in infos)
    if declared > 8 * size + (1 << 20):  # (room for deflated code, none for a bomb's thousandfold)
        raise CheckpointError(path, f"its records declare {declared:,} bytes, far more than the whole file holds "
                              f"({size:,}): a zip bomb, not a checkpoint")


def load_weights_only(path: str | os.PathLike, *, allowed_globals: Iterable[type] = ()) -> Any:
    """``torch.load(weights_only=True)`` to the CPU: tensors and plain containers only, never code from the file.

    Every way a file can fail (truncated, not a torch file, pickled objects) is a ``CheckpointError``.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a torch checkpoint file")
    refuse_special_file(path, CheckpointError, "a torch checkpoint file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                check_zip_records(archive, path)
        with torch.serialization.safe_globals(list(allowed_globals)), warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")  # (torch's own warnings, with a source line, reached the terminal)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        for warning in said:  # (torch's notes on the file's format, such as its deprecated storages: -v shows them)
            logger.info("%s: %s", path, " ".join(str(warning.message).split()))
        if any(t.is_meta for t in _tensors_in(loaded)):  # (shapes without values: an .item() failed inside)
            raise CheckpointError(path, "holds tensors without values (on the meta device), not weights")
        repeating = next((t for t in _tensors_in(loaded) if _repeats_many_values(t)), None)
        if repeating is not None:
            raise CheckpointError(path, f"holds a tensor of size {tuple(repeating.shape)} (stride "
                                  f"{repeating.stride()}) that repeats a few stored values, which a network's weights "
                                  "never do")
        return loaded
    except (FileNotFoundError, PermissionError, CheckpointError):
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, _unpickling_cause(str(e))) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            IndexError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"is not a readable torch checkpoint ({type(e).__name__}: {_cut(str(e))})"
                              ) from None


def _repeats_many_values(tensor: torch.Tensor, limit: int = 16 << 20) -> bool:
    """A view over more than ``limit`` bytes that its storage does not hold (stride 0, overlapping rows): a small
    file that declares a huge weight this way makes the model built from its shapes ask for that memory. A small
    repeated tensor (a saved ``latent_avg.expand(18, 512)``) is harmless and taken."""
    stored = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
    needed = tensor.numel() * tensor.element_size()
    return needed > max(stored, limit)


def _cut(message: str, limit: int = 300) -> str:
    """torch's message on one line, at most ``limit`` characters (it quotes a damaged record whole: megabytes)."""
    message = " ".join(message.split())
    return message if len(message) <= limit else f"{message[:limit]}..."


def _tensors_in(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """The tensors in a loaded checkpoint's containers (dicts, lists, tuples), to a bounded depth."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 16 and isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item, depth + 1)
    elif depth < 16 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item, depth + 1)


def _unpickling_cause(message: str) -> str:
    """torch's long weights-only message -> what went wrong: code the file asks to run, or a damaged file."""
    if "WeightsUnpickler error:" in message:  # (in the first paragraph for some globals: builtins' eval was lost)
        detail = message.split("WeightsUnpickler error:", 1)[1].split("\n\n", 1)[0]
    else:
        paragraphs = [p.strip() for p in message.split("\n\n") if p.strip()]
        skip = ("Weights only load failed", "Check the documentation", "Please file an issue")
        detail = " ".join(p for p in paragraphs if not p.startswith(skip))
    detail = _cut(" ".join(detail.split()).split(" Please use `torch.serialization", 1)[0])  # (not: allow it anyway)
    if "GLOBAL" in detail or "global" in detail:
        return f"refusing to load it: it asks to run code, not only to hold tensors ({detail})"
    return f"is not a readable torch checkpoint ({detail or 'unpickling failed'})"


# --- strict loading ---------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def listing(keys: Sequence[str], limit: int = 12) -> str:
    """``['a', 'b', ...]`` with at most ``limit`` entries, then how many more."""
    keys = list(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def key_problems(expected: Mapping[str, torch.Tensor | Sequence[int] | None], given: Mapping[str, torch.Tensor], *,
                 may_lack: Callable[[str], bool] = lambda key: False) -> list[str]:
    """What stops ``given`` tensors from filling exactly the ``expected`` keys (each with its shape, or None for
    any shape): missing, unexpected and mis-shaped keys, each listed. ``may_lack``: keys that may be absent."""
    def shape(value: object) -> tuple[int, ...] | None:
        return None if value is None else tuple(value.shape if isinstance(value, torch.Tensor) else value)

    missing = sorted(k for k in expected if k not in given and not may_lack(k))
    unexpected = sorted(k for k in given if k not in expected)
    misshaped = sorted(f"{k}: file {tuple(given[k].shape)} vs model {shape(v)}" for k, v in expected.items()
                       if k in given and shape(v) is not None and tuple(given[k].shape) != shape(v))
    listed = (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped))
    return [f"{what}: {listing(keys)}" for what, keys in listed if keys]


def check_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
                     pages: FilePages | None = None) -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected, mis-shaped and non-finite tensor. ``pages``:
    drop each tensor's file pages once it is checked (see ``instantiate_strict``)."""
    expected = module.state_dict()
    problems = key_problems(expected, state_dict)
    # (integer weights were loaded into float parameters, and the model gave NaN images)
    not_floating = sorted(f"{k}: {t.dtype}" for k, t in state_dict.items()
                          if k in expected and expected[k].is_floating_point() and not t.is_floating_point())
    if not_floating:
        problems.append(f"not floating-point: {listing(not_floating)}")
    if problems:
        raise CheckpointError(source, f"does not match {type(module).__name__}: " + "; ".join(problems))
    refuse_non_finite(state_dict, source=source, pages=pages)


def refuse_non_finite(state_dict: Mapping[str, torch.Tensor], *, source: str | None,
                      pages: FilePages | None = None) -> None:
    """Raise ``NonFiniteWeightsError`` naming every floating tensor that holds NaN or infinity. ``pages``: see
    :func:`check_state_dict`."""
    non_finite = []
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            non_finite.append(name)
        if pages is not None:
            pages.drop(tensor)
    non_finite.sort()
    if non_finite:
        raise NonFiniteWeightsError(source, f"holds NaN or infinite values in {listing(non_finite)}")


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` that first names every missing, unexpected, mis-shaped and non-finite
    tensor (``source`` says where the weights came from)."""
    check_state_dict(module, state_dict, source=source)
    module.load_state_dict(dict(state_dict), strict=True)


def instantiate_strict(build: Callable[[], M], state_dict: Mapping[str, torch.Tensor], *, source: str,
                       fresh_from_file: bool = False) -> M:
    """``build()`` a module and load ``state_dict`` into it strictly, without first allocating random weights.

    The module is built on the meta device and checked against the file before any memory is allocated, so a
    config that does not fit its weights (or asks for absurd sizes) fails fast and cheaply. Constructors initialise
    through :mod:`hyperinverter.models.init`, which does no arithmetic on meta tensors: their Python meta kernels
    import Dynamo and SymPy, about 1 s of a command's start.

    ``fresh_from_file``: ``state_dict`` is a safetensors file's tensors as read (``read_safetensors``), unchanged.
    Such tensors are the file's memory map, whose pages join the resident set as they are read, beside the weights
    they are copied into; each tensor's pages are then dropped once it is checked, and again once copied, so one
    copy of the weights is resident, not two (a full-size bundle: peak 2.42 -> 1.76 GB while loading, with
    ``memory.large_blocks_mapped``). Dropped pages read back from the file, so a tensor changed in place would lose
    its changes: only a caller that just read the file passes True.
    """
    try:
        with torch.device("meta"):
            module = build()
    # sizes torch cannot make (10**12 overflows; 10**30 does not fit torch's int64, a TypeError) and sizes of 0 that
    # a constructor divides by (a hypernetwork's hidden_dim, a discriminator's channel_base)
    except (ValueError, RuntimeError, ArithmeticError, MemoryError, TypeError) as e:
        raise CheckpointError(source, f"its config describes a network that cannot be built: {e}") from None
    pages = FilePages() if fresh_from_file else None
    check_state_dict(module, state_dict, source=source, pages=pages)
    # module.to_empty(device="cpu"), but through empty_strided: empty_like of a meta tensor imports SymPy (0.5 s)
    module = module._apply(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu"))
    targets = module.state_dict(keep_vars=True)  # the keys and shapes are the file's (checked above)
    with torch.no_grad():
        for name, tensor in state_dict.items():
            targets[name].copy_(tensor)
            if pages is not None:
                pages.drop(tensor)
    return module


def unique_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``module``'s state with every shared tensor once -> (tensors, aliases: other name -> stored name).

    A parameter shared by several submodules (HyperStyle's shared hypernetwork) appears under each of their names
    in ``state_dict``; files store it once."""
    first: dict[int, str] = {}
    tensors, aliases = {}, {}
    for name, value in module.state_dict(keep_vars=True).items():
        if id(value) in first:
            aliases[name] = first[id(value)]
        else:
            first[id(value)] = name
            tensors[name] = value.detach()
    return tensors, aliases


def with_aliases(tensors: dict[str, torch.Tensor], aliases: object, source: Path) -> dict[str, torch.Tensor]:
    """``tensors`` with the names of :func:`unique_state`'s aliases filled in again (checked)."""
    if not aliases:
        return tensors
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise SchemaError(source, "'aliases' must map tensor names to stored tensor names")
    unknown = sorted(v for v in aliases.values() if v not in tensors)
    if unknown:
        raise SchemaError(source, f"'aliases' point to tensors the file does not hold: {listing(unknown)}")
    stored = sorted(k for k in aliases if k in tensors)
    if stored:  # (an alias replaced a tensor of the file without a word where the shapes agreed)
        raise SchemaError(source, f"'aliases' name tensors the file holds itself: {listing(stored)}")
    return {**tensors, **{alias: tensors[stored] for alias, stored in aliases.items()}}


# --- component folders ------------------------------------------------------------------------------------


def save_component(directory: Path, state_dict: Mapping[str, torch.Tensor], *, model_type: str,
                   config: dict[str, Any], extras: dict[str, Any] | None = None,
                   dtype: torch.dtype | None = None) -> None:
    """Write ``directory/{config.json, model.safetensors}``; floating tensors are cast to ``dtype`` if given."""
    directory = Path(directory)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": model_type,
              "config": config, "extras": extras or {}}
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state_dict.items()}
    overflowed = sorted(k for k, v in tensors.items() if v.is_floating_point() and v is not state_dict[k]
                        and not bool(torch.isfinite(v).all()) and bool(torch.isfinite(state_dict[k]).all()))
    if overflowed:
        raise ValueError(f"tensors {listing(overflowed)} exceed {dtype}'s range: store this model in a wider dtype")
    save_safetensors(directory / WEIGHTS_NAME, tensors, metadata={"hyperinverter": json.dumps(header)})
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(header, indent=2) + "\n").encode())


def _check_header(header: object, where: Path) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise SchemaError(where, f"must hold a JSON object, got {type(header).__name__}")
    if header.get("format") != FORMAT:
        raise SchemaError(where, f"'format' must be {FORMAT!r}, got {header.get('format')!r}: not a hyperinverter "
                          "model file")
    version = header.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise SchemaError(where, f"'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SchemaError(where, f"was written by a newer hyperinverter (format v{version}; this one reads "
                          f"v{FORMAT_VERSION})")
    if not isinstance(header.get("model_type"), str):
        raise SchemaError(where, f"'model_type' must be a string, got {header.get('model_type')!r}")
    if not isinstance(header.get("config"), dict):
        raise SchemaError(where, f"'config' must be a JSON object, got {type(header.get('config')).__name__}")
    if not isinstance(header.get("extras", {}), dict):
        raise SchemaError(where, f"'extras' must be a JSON object, got {type(header['extras']).__name__}")
    return header


def read_component(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a component folder or a lone ``.safetensors`` file -> (checked header, float32 state dict)."""
    path = Path(path)
    if path.is_dir():
        cfg_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_path.is_file() or not weights_path.is_file():
            raise CheckpointError(path, f"is not a hyperinverter model folder: it needs {CONFIG_NAME} and "
                                  f"{WEIGHTS_NAME}")
        try:
            header = json.loads(cfg_path.read_bytes())
        except ValueError as e:
            raise SchemaError(cfg_path, f"is not valid JSON ({e})") from None
        except RecursionError:
            raise SchemaError(cfg_path, "nests too deeply to be a model config") from None
        header = _check_header(header, cfg_path)
        tensors, _ = read_safetensors(weights_path)
    else:
        tensors, metadata = read_safetensors(path)
        header = _check_header(read_metadata_json(path, metadata, "hyperinverter", "a hyperinverter model file"),
                               path)
    tensors = with_aliases(tensors, (header.get("extras") or {}).get("aliases"), path)
    return header, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def config_from_header(config_class: type, header: Mapping[str, Any], *, source: Path) -> Any:
    """``config_class.from_dict(header["config"])``, with any problem reported against ``source`` (the
    component's ``config.json`` when ``source`` is its folder)."""
    source = source / CONFIG_NAME if source.is_dir() else source
    try:
        return config_class.from_dict(header["config"])
    except (TypeError, ValueError) as e:
        raise SchemaError(source, f"its config does not describe a valid {config_class.__name__}: {e}") from None
