"""Read NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles without running any code from them.

Why this module exists: NVIDIA's ``network-snapshot-*.pkl`` files are plain ``pickle.dump(dict)`` files
whose networks are ``torch_utils.persistence`` objects. Each one is stored as a call to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` carries the *full source
text* of the module defining the network class; the stock loader ``exec()``s that text. On top of that,
any pickle can name any importable callable (``os.system``, ``builtins.eval``...) and have it called.

So we never use the stock machinery. A ``pickle.Unpickler`` subclass resolves only a short whitelist
of globals, each to a harmless stand-in of our own:

* ``_reconstruct_persistent_obj`` -> a :class:`PersistentNode` that keeps ``class_name``, ``state`` and
  ``module_src`` (as text only: it is never compiled or executed);
* ``dnnlib.util.EasyDict`` -> a plain ``dict`` subclass;
* torch tensor/parameter rebuild functions -> our own versions that check types and bounds and build
  plain CPU tensors (parameter state, hooks and python attributes are dropped);
* ``torch.storage._load_from_bytes`` -> ``torch.load(..., weights_only=True)`` of the embedded record
  (the stock function uses ``weights_only=False``, a second code-execution gadget);
* a few inert builtins (``OrderedDict``, ``set``, ``torch.Size``...) and numpy scalar/array rebuilding.

Anything else raises :class:`UnsafePickleError` naming the global, before it is called.

PTI's tuned generators (``torch.save(G)``) are zip torch archives whose ``data.pkl`` references the same
persistence function; they are read with the same unpickler, storages coming from the archive records.

The result is a flat ``state_dict`` per network, built in the same order as ``module.state_dict()``,
plus the constructor kwargs, so our own model classes can be built and loaded strictly.
"""

from __future__ import annotations

import _compat_pickle
import collections
import errno
import io
import logging
import math
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, naming
from ..io.checkpoints import check_zip_records
from ..io.files import refuse_special_file

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

NETWORK_KEYS: tuple[str, ...] = ("G", "D", "G_ema")
PERSISTENCE_VERSION = 6


class UnsafePickleError(CheckpointError):
    """The file references something outside the whitelist; nothing from it was executed."""


# --- inert stand-ins for pickled objects ------------------------------------------------------------


class _Sealed:
    """Base for our stand-ins: a pickle must not be able to mutate them through BUILD (``__setstate__``)."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise UnsafePickleError(
            f"unexpected object state for a {type(self).__name__} in an NVIDIA network pickle"
        )


class PersistentNode(_Sealed):
    """One ``torch_utils.persistence`` object: class name, ``__dict__`` and source text (never run)."""

    __slots__ = ("class_name", "module_src", "state")

    def __init__(self, class_name: str, module_src: str, state: dict[str, Any]) -> None:
        self.class_name = class_name
        self.module_src = module_src
        self.state = state

    def __repr__(self) -> str:
        return f"PersistentNode({self.class_name!r}, {len(self.state)} attributes)"


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access); only the items matter."""


class _LoadedTensor(_Sealed):
    """A rebuilt tensor, boxed so that pickle BUILD cannot call ``Tensor.__setstate__`` (``set_``) on it."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class _StorageRef(_Sealed):
    """Raw bytes of one storage and the dtype it is read as."""

    __slots__ = ("untyped", "dtype")

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype) -> None:
        self.untyped = untyped
        self.dtype = dtype

    def numel(self) -> int:
        return self.untyped.nbytes() // self.dtype.itemsize


class _Marker(_Sealed):
    """Names a class (``torch.Tensor``, ``numpy.ndarray``, ``torch.FloatStorage``) without exposing it."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype | None = None) -> None:
        self.name = name
        self.dtype = dtype

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise UnsafePickleError(f"refusing to call {self.name!r}: not allowed in an NVIDIA network pickle")

    def __repr__(self) -> str:
        return f"<{self.name}>"


_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,  # numel of an untyped storage counts bytes
}

_TENSOR_MARKER = _Marker("torch.Tensor")
_PARAMETER_MARKER = _Marker("torch.nn.Parameter")
_NDARRAY_MARKER = _Marker("numpy.ndarray")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x: object) -> tuple[int, ...] | None:
    if isinstance(x, (tuple, list)) and all(_is_int(v) for v in x):
        return tuple(x)
    return None


def _latin1_bytes(text: object, encoding: object = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode of a {type(text).__name__} with {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    if args:  # bytes(n) would allocate n bytes on the pickle's say-so
        raise UnsafePickleError("refusing builtins.bytes with arguments")
    return b""


class _CheckedArray(np.ndarray):
    """What a pickled numpy array is rebuilt as: its state (set by pickle's BUILD) must hold its own values."""

    def __setstate__(self, state: object) -> None:
        # (version, shape, dtype, is_fortran, data); numpy allocates an object array of any shape it is told
        # before it looks at the data, and fills it with objects of the pickle's choosing.
        dtype = state[-3] if isinstance(state, tuple) and len(state) in (4, 5) else None
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(state[-1], (bytes, bytearray)):
            raise UnsafePickleError("refusing a numpy array record that is not a plain numeric array")
        super().__setstate__(state)


# --- the unpickler ------------------------------------------------------------------------------------


StorageLoader = Callable[[tuple], _StorageRef]


class _WhitelistUnpickler(pickle.Unpickler):
    """Resolves only whitelisted globals, each to a stand-in; ``source`` names the file in errors.

    Subclasses may resolve a few more globals (calling ``super().find_class`` for the rest) and set
    ``kind``, the kind of file named in refusals.
    """

    kind = "an NVIDIA network pickle"

    def __init__(
        self, file: io.BufferedIOBase, source: str, storage_loader: StorageLoader | None = None
    ) -> None:
        super().__init__(file)
        self._source = source
        self._storage_loader = storage_loader
        self._tensor_builders: tuple[Callable[..., _LoadedTensor], ...] = (
            self._rebuild_tensor_v2,
            self._rebuild_parameter,
            self._rebuild_parameter_with_state,
        )
        allowed: dict[tuple[str, str], object] = {
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): self._reconstruct_persistent_obj,
            ("dnnlib.util", "EasyDict"): EasyDict,
            ("torch._utils", "_rebuild_tensor_v2"): self._tensor_builders[0],
            ("torch._utils", "_rebuild_parameter"): self._tensor_builders[1],
            ("torch._utils", "_rebuild_parameter_with_state"): self._tensor_builders[2],
            # Lives in torch._tensor; older notes spell it torch._utils.
            ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type_v2,
            ("torch._utils", "_rebuild_from_type_v2"): self._rebuild_from_type_v2,
            ("torch.storage", "_load_from_bytes"): self._load_from_bytes,
            ("torch", "Tensor"): _TENSOR_MARKER,
            ("torch._tensor", "Tensor"): _TENSOR_MARKER,
            ("torch.nn.parameter", "Parameter"): _PARAMETER_MARKER,
            ("torch.nn", "Parameter"): _PARAMETER_MARKER,
            ("torch", "Size"): torch.Size,
            ("torch", "device"): torch.device,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("builtins", "slice"): slice,
            # Protocol-2 pickles (torch.save's default) spell bytes as _codecs.encode(text, 'latin1').
            ("_codecs", "encode"): _latin1_bytes,
            ("builtins", "bytes"): _empty_bytes,
            ("numpy", "dtype"): np.dtype,
            ("numpy", "ndarray"): _NDARRAY_MARKER,
        }
        for np_module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(np_module, "scalar")] = self._np_scalar
            allowed[(np_module, "_reconstruct")] = self._np_reconstruct
        for name, dtype in _STORAGE_DTYPES.items():
            allowed[("torch", name)] = _Marker(f"torch.{name}", dtype)
        allowed[("torch.storage", "UntypedStorage")] = allowed[("torch", "UntypedStorage")]
        self._allowed = allowed

    # pickle hooks

    def find_class(self, module: str, name: str) -> object:
        # Overriding find_class skips pickle's own Python 2 name mapping (__builtin__ -> builtins...).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        obj = self._allowed.get((module, name))
        if obj is not None:
            return obj
        # torch dtypes (torch.float32, ...) pickle as module attributes; they are inert values.
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafePickleError(self._source, f"refusing to load '{module}.{name}': not an allowed global in "
                                f"{self.kind}")

    def persistent_load(self, pid: object) -> object:
        if self._storage_loader is None:
            raise UnsafePickleError(self._source, f"refusing persistent id {pid!r}: plain NVIDIA network pickles do "
                                    "not use them")
        return self._storage_loader(pid)

    # whitelisted callables

    def _fail(self, message: str) -> CheckpointError:
        return CheckpointError(self._source, message)

    def _reconstruct_persistent_obj(self, meta: object) -> PersistentNode:
        if not isinstance(meta, dict):
            raise self._fail(f"persistent object metadata is a {type(meta).__name__}, not a dict")
        version = meta.get("version")
        if version != PERSISTENCE_VERSION:
            raise self._fail(
                f"unsupported torch_utils.persistence version {version!r} (expected {PERSISTENCE_VERSION})"
            )
        if meta.get("type") != "class":
            raise self._fail(f"unsupported persistent object type {meta.get('type')!r} (expected 'class')")
        class_name, module_src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
        # Python may pickle object state as (dict_state, slots_state).
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if state is None:
            state = {}
        if not isinstance(class_name, str) or not isinstance(state, dict):
            raise self._fail(
                f"malformed persistent object (class_name={class_name!r}, state {type(state).__name__})"
            )
        return PersistentNode(class_name, module_src if isinstance(module_src, str) else "", dict(state))

    def _load_from_bytes(self, data: object) -> _StorageRef:
        if not isinstance(data, (bytes, bytearray)):
            raise self._fail(f"tensor storage record is a {type(data).__name__}, not bytes")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
                obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's message is long and recommends weights_only=False; keep only the culprit.
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            culprit = f"'{found.group(1)}'" if found else "an unsupported object"
            raise UnsafePickleError(self._source, f"refusing to load {culprit} from a tensor storage record: not "
                                    "allowed in an NVIDIA network pickle") from e
        if isinstance(obj, torch.storage.TypedStorage):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
                return _StorageRef(obj.untyped(), obj.dtype)
        if isinstance(obj, torch.UntypedStorage):
            return _StorageRef(obj, torch.uint8)
        raise self._fail(f"tensor storage record holds a {type(obj).__name__}, not a storage")

    def _rebuild_tensor_v2(
        self,
        storage: object,
        storage_offset: object,
        size: object,
        stride: object,
        requires_grad: object = False,
        backward_hooks: object = None,
        metadata: object = None,
    ) -> _LoadedTensor:
        shape, strides = _int_tuple(size), _int_tuple(stride)
        well_typed = isinstance(storage, _StorageRef) and _is_int(storage_offset)
        if not well_typed or shape is None or strides is None:
            raise self._fail(
                f"malformed tensor record (storage {type(storage).__name__}, offset {storage_offset!r}, "
                f"size {size!r}, stride {stride!r})"
            )
        if metadata:
            raise self._fail(f"unsupported tensor metadata {metadata!r}")
        offset = int(storage_offset)
        # Tensor.set_ does not bound-check against the storage, so we must.
        if len(shape) != len(strides) or offset < 0 or min(shape + strides, default=0) < 0:
            raise self._fail(f"invalid tensor geometry (offset {offset}, size {shape}, stride {strides})")
        if 0 not in shape:
            last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
            if last >= storage.numel():
                raise self._fail(
                    f"tensor of size {shape} (stride {strides}, offset {offset}) reaches past its storage "
                    f"of {storage.numel()} elements"
                )
            # A view that repeats its values (stride 0, overlapping rows) has more than its storage holds: an 800 KB
            # file declared a [32, 10**9] weight of one value, and loading it asked for 128 GB. A network's tensors
            # never repeat their values.
            if math.prod(shape) > storage.numel() - offset:
                raise self._fail(
                    f"tensor of size {shape} (stride {strides}) has more values than the {storage.numel() - offset} "
                    "its storage holds: it repeats them, which a network's tensors never do"
                )
        tensor = torch.empty(0, dtype=storage.dtype).set_(storage.untyped, offset, shape, strides)
        return _LoadedTensor(tensor)

    def _rebuild_parameter(
        self, data: object, requires_grad: object, backward_hooks: object
    ) -> _LoadedTensor:
        if not isinstance(data, _LoadedTensor):
            raise self._fail(f"parameter data is a {type(data).__name__}, not a tensor")
        return data  # we only need the values; Parameter-ness and hooks are dropped

    def _rebuild_parameter_with_state(
        self, data: object, requires_grad: object, backward_hooks: object, state: object
    ) -> _LoadedTensor:
        # The stock function setattr()s every entry of `state` on the parameter; we drop it.
        return self._rebuild_parameter(data, requires_grad, backward_hooks)

    def _rebuild_from_type_v2(
        self, func: object, new_type: object, args: object, state: object
    ) -> _LoadedTensor:
        if not any(func is f for f in self._tensor_builders):
            raise UnsafePickleError(self._source, f"refusing _rebuild_from_type_v2 with inner function {func!r}: only "
                                    "tensor/parameter rebuild functions are allowed")
        if new_type is not _TENSOR_MARKER and new_type is not _PARAMETER_MARKER:
            raise UnsafePickleError(self._source, f"refusing _rebuild_from_type_v2 to type {new_type!r}: only "
                                    "torch.Tensor and torch.nn.Parameter are allowed")
        if not isinstance(args, tuple):
            raise self._fail(f"_rebuild_from_type_v2 arguments are a {type(args).__name__}, not a tuple")
        return func(*args)  # python attributes in `state` are dropped

    def _np_reconstruct(self, cls: object, shape: object, dtype: object) -> np.ndarray:
        if cls is not _NDARRAY_MARKER:
            raise UnsafePickleError(self._source, f"refusing numpy _reconstruct of {cls!r}: only numpy.ndarray is "
                                    "allowed")
        # numpy pickles an empty array and sets its values from the file's bytes (BUILD); a larger shape here
        # would be memory that the file asks for without holding it (a 60-byte record asked for gigabytes)
        if _int_tuple(shape) != (0,):
            raise self._fail(f"malformed numpy array record (shape {shape!r}; numpy pickles (0,))")
        return _np_multiarray._reconstruct(_CheckedArray, shape, dtype)

    def _np_scalar(self, dtype: object, data: object = None) -> np.generic:
        # A numpy scalar's record holds its bytes; without them numpy fills a zero value of any size it is told
        # (a void dtype of 2 GB), and an object dtype hands back whatever object it is given.
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
                or len(data) != dtype.itemsize:
            raise self._fail(f"malformed numpy scalar record (dtype {dtype!r}, "
                             f"{len(data) if isinstance(data, bytes) else type(data).__name__} bytes)")
        return _np_multiarray.scalar(dtype, data)


# --- public API -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PickledNetwork:
    """One network from an NVIDIA pickle, as data: constructor kwargs and a flat state dict."""

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    module_src: str = field(default="", repr=False)  # text only, kept for sniffing (e.g. SG2 vs SG3)


def load_nvidia_pickle(path: str | Path) -> dict[str, PickledNetwork]:
    """Read the networks (``G``, ``D``, ``G_ema``; ``G_ema`` required) of an NVIDIA ``.pkl``.

    Also reads a PTI-style zip archive (``torch.save(G)``), returned as ``{'G_ema': network}``.
    Never executes code from the file; raises :class:`UnsafePickleError` if it asks for any.
    """
    path = Path(path)
    refuse_special_file(path, CheckpointError, "an NVIDIA network pickle")
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such NVIDIA network pickle", str(path))
    is_zip = zipfile.is_zipfile(path)
    try:
        root = _read_zip_archive(path) if is_zip else _read_plain_pickle(path)
    except CheckpointError as e:
        if e.source is not None:
            raise
        raise naming(e, path) from None  # a refusal raised by a stand-in, which does not know the file
    except OSError:
        raise
    except Exception as e:  # a damaged file fails in many ways inside pickle/zipfile
        raise CheckpointError(path, f"is not a readable NVIDIA network pickle: {type(e).__name__}: {e}") from e

    if is_zip and isinstance(root, PersistentNode):
        root = {"G_ema": root}
    if not isinstance(root, dict):
        raise CheckpointError(path, f"holds a {type(root).__name__}, not a dict of networks (NVIDIA pickle)")
    if "G_ema" not in root:
        raise CheckpointError(path, f"has no 'G_ema' network; its keys are: {sorted(map(str, root))}")

    networks: dict[str, PickledNetwork] = {}
    for key in NETWORK_KEYS:
        node = root.get(key)
        if node is None:
            continue
        if not isinstance(node, PersistentNode):
            raise CheckpointError(path, f"{key!r} is a {type(node).__name__}, not a pickled network module")
        state_dict: dict[str, torch.Tensor] = {}
        try:
            _flatten(node, "", state_dict, f"{path} [{key}]", set())
            init_kwargs = _to_plain(node.state.get("_init_kwargs") or {})
        except RecursionError:  # (the unpickler builds any depth; walking 3,000 nested modules was an internal error)
            raise CheckpointError(path, f"{key!r} nests its modules or arguments too deeply to be a network"
                                  ) from None
        networks[key] = PickledNetwork(
            class_name=node.class_name,
            init_kwargs=init_kwargs,
            state_dict=state_dict,
            module_src=node.module_src,
        )
        if node.state.get("_init_args"):
            logger.warning("%s [%s]: positional constructor arguments are ignored", path, key)
    summary = ", ".join(f"{k} ({n.class_name}, {len(n.state_dict)} tensors)" for k, n in networks.items())
    logger.info("read %s: %s", path, summary)
    return networks


# --- readers ------------------------------------------------------------------------------------------


def _read_plain_pickle(path: Path) -> object:
    with open(path, "rb") as f:
        head = f.read(1)
        if head != b"\x80":  # PROTO opcode: every pickle of protocol >= 2 starts with it
            what = "empty" if not head else "not a pickle file (no pickle protocol header)"
            raise CheckpointError(path, f"is {what}; expected an NVIDIA network .pkl")
        f.seek(0)
        return _WhitelistUnpickler(f, source=str(path)).load()


def _read_zip_archive(
    path: Path, *, unpickler: type[_WhitelistUnpickler] = _WhitelistUnpickler, torchscript: bool = False
) -> object:
    """Unpickle ``<archive>/data.pkl`` of a torch zip file, storages read from ``<archive>/data/<key>``.

    A TorchScript archive (one with ``code/``) is refused unless ``torchscript``: then its ``data.pkl`` is
    read like any other, by ``unpickler``, and its code records are never read.
    """
    with zipfile.ZipFile(path) as archive:
        check_zip_records(archive, path)
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pickles) != 1:
            raise CheckpointError(path, f"is a zip archive but not a torch.save file ({len(pickles)} data.pkl records)")
        prefix = pickles[0][: -len("data.pkl")]
        if not torchscript and any(n.startswith(prefix + "code/") for n in names):
            raise CheckpointError(path, "is a TorchScript archive, not a pickled network")
        byteorder_record = prefix + "byteorder"
        if byteorder_record in names:
            order = archive.read(byteorder_record).decode("ascii", "replace").strip()
            if order != sys.byteorder:
                raise CheckpointError(path, f"was written on a {order}-endian machine; this one is {sys.byteorder}")

        records = set(names)
        untyped_by_key: dict[str, torch.UntypedStorage] = {}

        def load_storage(pid: tuple) -> _StorageRef:
            if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
                raise UnsafePickleError(path, f"refusing persistent id {pid!r}: only tensor storages are allowed")
            _, storage_type, key, _location, numel = pid  # location ignored: everything loads on CPU
            if not isinstance(storage_type, _Marker) or storage_type.dtype is None:
                raise CheckpointError(path, f"storage record of unknown type {storage_type!r}")
            if not isinstance(key, str) or "/" in key or not _is_int(numel) or numel < 0:
                raise CheckpointError(path, f"malformed storage record {pid!r}")
            dtype = storage_type.dtype
            if key not in untyped_by_key:
                record = f"{prefix}data/{key}"
                if record not in records:
                    raise CheckpointError(path, f"storage record {record!r} is missing")
                data = archive.read(record)
                nbytes = numel * dtype.itemsize
                if len(data) < nbytes:
                    raise CheckpointError(path, f"storage record {record!r} has {len(data)} bytes, expected {nbytes}")
                untyped_by_key[key] = _bytes_to_storage(data[:nbytes])
            return _StorageRef(untyped_by_key[key], dtype)

        with archive.open(pickles[0]) as f:
            data_pkl = io.BytesIO(f.read())
        return unpickler(data_pkl, source=str(path), storage_loader=load_storage).load()


def _bytes_to_storage(data: bytes) -> torch.UntypedStorage:
    if not data:
        return torch.UntypedStorage(0)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage()


# --- flattening ---------------------------------------------------------------------------------------


def _flatten(
    node: PersistentNode, prefix: str, out: dict[str, torch.Tensor], where: str, path_ids: set[int]
) -> None:
    """Same walk and order as ``nn.Module.state_dict()``: parameters, persistent buffers, then children."""
    if id(node) in path_ids:
        raise CheckpointError(where, f"module {prefix.rstrip('.') or '<root>'} contains itself")
    state = node.state
    parameters = _mapping(state.get("_parameters"), f"{prefix}_parameters", where)
    buffers = _mapping(state.get("_buffers"), f"{prefix}_buffers", where)
    modules = _mapping(state.get("_modules"), f"{prefix}_modules", where)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in parameters.items():
        if value is not None:
            out[prefix + str(name)] = _as_tensor(value, prefix + str(name), where)
    for name, value in buffers.items():
        if value is not None and name not in non_persistent:
            out[prefix + str(name)] = _as_tensor(value, prefix + str(name), where)
    for name, child in modules.items():
        if child is None:
            continue
        if not isinstance(child, PersistentNode):
            raise CheckpointError(where, f"submodule {prefix}{name} is a {type(child).__name__}, not a network module")
        path_ids.add(id(node))
        _flatten(child, f"{prefix}{name}.", out, where, path_ids)
        path_ids.discard(id(node))


def _mapping(value: object, what: str, where: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CheckpointError(where, f"{what} is a {type(value).__name__}, not a dict")
    return value


def _as_tensor(value: object, key: str, where: str) -> torch.Tensor:
    if not isinstance(value, _LoadedTensor):
        raise CheckpointError(where, f"{key} is a {type(value).__name__}, not a tensor")
    return value.tensor.detach()


def _to_plain(value: object) -> Any:
    """EasyDicts -> dicts, numpy scalars -> Python numbers, arrays -> lists; recursively."""
    if isinstance(value, Mapping):
        return {_to_plain(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _to_plain(value.tolist())
    if isinstance(value, _LoadedTensor):
        return value.tensor.detach()
    return value
