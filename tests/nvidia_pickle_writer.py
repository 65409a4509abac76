"""Write files in the real NVIDIA stylegan2-ada-pytorch ``.pkl`` layout, without NVIDIA's code (test helper).

Each network becomes a tree of ``torch_utils.persistence`` objects mirroring the dotted state-dict keys:
every module is pickled as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {type, version: 6, module_src, class_name, state}``, where ``state`` looks like an ``nn.Module``
``__dict__`` (``_parameters`` holding ``nn.Parameter(requires_grad=False)``, ``_buffers``, ``_modules``,
hook OrderedDicts, ``_init_kwargs`` as ``dnnlib.util.EasyDict``, numpy.float64 gains...).

To make pickle emit those global names, fake ``torch_utils``/``dnnlib`` modules are put in ``sys.modules``
for the duration of the dump only (:func:`fake_nvidia_modules`).
"""

from __future__ import annotations

import contextlib
import math
import pickle
import re
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

DEFAULT_MODULE_SRC = "# stand-in for the network source text NVIDIA embeds; loaders must never run it\n"

NetworkSpec = tuple[str, dict, Mapping[str, "torch.Tensor | None"], set[str]]


def _reconstruct_persistent_obj(meta: dict) -> object:
    raise RuntimeError("fake torch_utils.persistence: this test helper only writes pickles")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"


class EasyDict(dict):
    """Pickles as ``dnnlib.util.EasyDict`` while the fake modules are installed."""


EasyDict.__module__ = "dnnlib.util"
EasyDict.__qualname__ = "EasyDict"


class FakePersistent:
    """Pickles exactly like a ``@persistence.persistent_class`` instance."""

    def __init__(self, class_name: str, state: dict, module_src: str) -> None:
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self) -> tuple:
        return (_reconstruct_persistent_obj, (self.meta,), None)


@contextlib.contextmanager
def fake_nvidia_modules() -> Iterator[None]:
    """Temporarily register ``torch_utils.persistence`` and ``dnnlib.util`` so pickle can name our fakes."""
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    if any(n in sys.modules for n in names):
        raise RuntimeError("real torch_utils/dnnlib modules are imported; refusing to shadow them")
    torch_utils, persistence = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dnnlib, util = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils.persistence = persistence
    util.EasyDict = EasyDict
    dnnlib.util = util
    sys.modules.update(dict(zip(names, [torch_utils, persistence, dnnlib, util])))
    try:
        yield
    finally:
        for n in names:
            sys.modules.pop(n, None)


def _easy(value: object) -> object:
    """Nested dicts -> EasyDict, as in NVIDIA's training configs."""
    if isinstance(value, Mapping):
        return EasyDict({k: _easy(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_easy(v) for v in value]
    return value


def _class_name(path: list[str]) -> str:
    """A plausible NVIDIA class name for the module at ``path`` (names are informative only)."""
    name = path[-1]
    in_synthesis = "synthesis" in path
    if name == "mapping":
        return "MappingNetwork"
    if name == "synthesis":
        return "SynthesisNetwork"
    if re.fullmatch(r"fc\d*|affine|embed|out", name):
        return "FullyConnectedLayer"
    if name == "torgb":
        return "ToRGBLayer"
    if name == "mbstd":
        return "MinibatchStdLayer"
    if re.fullmatch(r"b\d+", name):
        if in_synthesis:
            return "SynthesisBlock"
        return "DiscriminatorEpilogue" if name == "b4" else "DiscriminatorBlock"
    if re.fullmatch(r"conv\d*", name):
        return "SynthesisLayer" if in_synthesis else "Conv2dLayer"
    if name in ("fromrgb", "skip"):
        return "Conv2dLayer"
    return "Module"


def _module_state(init_kwargs: object) -> dict:
    """An ``nn.Module.__dict__`` as torch 1.x-2.x has it, empty."""
    return {
        "training": False,
        "_parameters": OrderedDict(),
        "_buffers": OrderedDict(),
        "_non_persistent_buffers_set": set(),
        "_backward_pre_hooks": OrderedDict(),
        "_backward_hooks": OrderedDict(),
        "_is_full_backward_hook": None,
        "_forward_hooks": OrderedDict(),
        "_forward_hooks_with_kwargs": OrderedDict(),
        "_forward_hooks_always_called": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_forward_pre_hooks_with_kwargs": OrderedDict(),
        "_state_dict_hooks": OrderedDict(),
        "_state_dict_pre_hooks": OrderedDict(),
        "_load_state_dict_pre_hooks": OrderedDict(),
        "_load_state_dict_post_hooks": OrderedDict(),
        "_modules": OrderedDict(),
        "_init_args": (),
        "_init_kwargs": init_kwargs,
    }


def build_network(
    class_name: str,
    init_kwargs: dict,
    state_dict: Mapping[str, torch.Tensor | None],
    buffer_names: set[str],
    *,
    module_src: str = DEFAULT_MODULE_SRC,
    non_persistent_buffers: Mapping[str, torch.Tensor] | None = None,
) -> FakePersistent:
    """The persistent-object tree of one network. ``None`` values register an empty parameter/buffer slot."""
    root_state = _module_state(_easy(init_kwargs))
    nodes: dict[str, dict] = {"": root_state}

    def node_for(parts: list[str]) -> dict:
        for depth in range(1, len(parts) + 1):
            key = ".".join(parts[:depth])
            if key not in nodes:
                state = _module_state(EasyDict())
                nodes[key] = state
                parent = nodes[".".join(parts[: depth - 1])]
                child = FakePersistent(_class_name(parts[:depth]), state, module_src)
                parent["_modules"][parts[depth - 1]] = child
        return nodes[".".join(parts)]

    def place(full_name: str, value: torch.Tensor | None, persistent: bool) -> None:
        *parents, leaf = full_name.split(".")
        state = node_for(parents)
        if full_name in buffer_names or not persistent:
            state["_buffers"][leaf] = None if value is None else value.detach().clone()
            if not persistent:
                state["_non_persistent_buffers_set"].add(leaf)
        else:
            param = None if value is None else torch.nn.Parameter(value.detach().clone(), requires_grad=False)
            state["_parameters"][leaf] = param
            if parents and param is not None and leaf == "weight" and param.ndim >= 2:
                # NVIDIA layers keep their gains as numpy.float64 attributes.
                state["weight_gain"] = np.float64(1 / math.sqrt(param[0].numel()))
                state["_init_kwargs"].update(in_features=param.shape[1], out_features=param.shape[0])

    for name, value in state_dict.items():
        place(name, value, persistent=True)
    for name, value in (non_persistent_buffers or {}).items():
        place(name, value, persistent=False)
    if "img_resolution" in init_kwargs:
        root_state["img_resolution"] = init_kwargs["img_resolution"]
    return FakePersistent(class_name, root_state, module_src)


def write_nvidia_pickle(
    path: str | Path,
    networks: Mapping[str, NetworkSpec],
    extra: dict | None = None,
    *,
    module_src: str = DEFAULT_MODULE_SRC,
    non_persistent_buffers: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    protocol: int = 3,
) -> None:
    """Write ``{'G', 'D', 'G_ema', 'training_set_kwargs': None, 'augment_pipe': None, **extra}`` like NVIDIA.

    ``networks`` maps a key to ``(class_name, init_kwargs, flat_state_dict, buffer_names)``. Missing keys
    are simply left out. ``non_persistent_buffers`` maps a network key to extra ``{dotted_name: tensor}``
    registered with ``persistent=False``. Protocol 3 is what NVIDIA's Python 3.7 wrote.
    """
    top: dict = {}
    for key in ("G", "D", "G_ema"):
        if key in networks:
            class_name, init_kwargs, state_dict, buffer_names = networks[key]
            top[key] = build_network(
                class_name, init_kwargs, state_dict, set(buffer_names), module_src=module_src,
                non_persistent_buffers=(non_persistent_buffers or {}).get(key),
            )
    top.update({"training_set_kwargs": None, "augment_pipe": None})
    for key, spec in networks.items():
        if key not in ("G", "D", "G_ema"):  # e.g. a persistent augment_pipe
            top[key] = build_network(*spec[:3], set(spec[3]), module_src=module_src)
    top.update(extra or {})
    with fake_nvidia_modules(), open(path, "wb") as f:
        pickle.dump(top, f, protocol=protocol)


def write_pti_checkpoint(
    path: str | Path, network: NetworkSpec, *, module_src: str = DEFAULT_MODULE_SRC
) -> None:
    """``torch.save(G)`` of one persistent network, as PTI writes its tuned generators (zip archive)."""
    class_name, init_kwargs, state_dict, buffer_names = network
    root = build_network(class_name, init_kwargs, state_dict, set(buffer_names), module_src=module_src)
    with fake_nvidia_modules():
        torch.save(root, path)
