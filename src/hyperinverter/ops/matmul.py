"""``bias + a @ b`` for the hypernetworks' products, by the kernel measured fastest for each on CPUs (:func:`kernel`).

A hypernetwork's last product maps a code per input channel to a layer's whole kernel: ``[B·I, D] @ [D, O·k·k]``,
9.4 MB of output for a 512-channel layer. PyTorch hands fp32 products on a CPU to MKL's sgemm; the same product as
a 1x1 convolution over an ``[M, 1]`` map in channels-last layout, whose output memory is exactly the row-major
``[M, N]`` result, runs through oneDNN. On this repository's 2-core CPU, for the products the rule below takes,
sgemm ran at 104-211 GFLOP/s and the convolution at 139-428 over three runs (``benchmarks/bench_matmul.py``,
``benchmarks/results/matmul-cpu.md``). The convolution reorders ``b`` on every call, so it only pays from
:data:`CONVOLVE_FROM_ROWS` rows of ``a`` and :data:`CONVOLVE_FROM_MACS` multiply-adds up.

A code times a weight (``[B, K] @ [K, N]``, few rows, a large ``b``) is bound by reading ``b``: MKL's sgemv reads it
on one core, oneDNN's inner product on every core when ``b`` is stored transposed (``b.t()`` contiguous, the
``[N, K]`` weight of a linear layer; :func:`transposed_storage`). Per HyperInverter ``w1`` (``K`` 128, ``N``
65,536) on the same CPU, sgemm from the plain layout against oneDNN from the transposed one: 1.30 against 0.83 ms
at one row, 4.99 against 2.06 at four, 7.18 against 2.88 at 32 (``make bench``); at one row the gain depends on the
hour (1.48 against 0.75 ms in one probe, 1.38 against 1.45 in another). sgemm from the transposed layout was
slower at one row (3.5 ms) and between the two at four and more. HyperStyle's shared ``w2`` (``[512, 262144]``):
35.7 against 27.9 ms per hypernetwork call at one row, 121 against 49 at four (with its second product).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

# Measured per shape (K of 128 and 512, M of 1-2048, N of 3-65536): with fewer rows the per-call reorder of b made the
# convolution slower (M=128, N=4608, K=128: 1.19 ms against 0.88, and 1.95 against 1.30); with fewer multiply-adds
# it gained little or lost.
CONVOLVE_FROM_ROWS = 256
CONVOLVE_FROM_MACS = 2**24
# Whether this PyTorch build has oneDNN's inner product (checked once: inner_product_applies runs per product).
HAS_INNER_PRODUCT = hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_inference(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Eager CPU fp32 inference (no autograd, no autocast) with oneDNN enabled: where its kernels may take a product.

    Not under ``torch.compile``: inductor picks its own kernel for aten's product, and the checks below would
    break the graph (Dynamo does not trace ``torch.backends.mkldnn.is_available``)."""
    if torch.compiler.is_compiling():
        return False
    tensors = (a, b) if bias is None else (a, b, bias)
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def convolves(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`addmm` runs ``a @ b`` as a oneDNN convolution: eager CPU fp32 inference (no autograd, no
    autocast) on a product from :data:`CONVOLVE_FROM_ROWS` rows and :data:`CONVOLVE_FROM_MACS` multiply-adds up."""
    if not _onednn_inference(a, b, bias):
        return False  # without oneDNN, PyTorch's own convolution would be slower than sgemm
    (m, k), n = a.shape, b.shape[1]
    return m >= CONVOLVE_FROM_ROWS and m * n * k >= CONVOLVE_FROM_MACS


def inner_product_applies(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether oneDNN's inner product can take ``a @ b``: eager CPU fp32 inference on a ``b`` stored transposed
    (``b.t()`` contiguous; see the module docstring)."""
    return stored_transposed(b) and HAS_INNER_PRODUCT and _onednn_inference(a, b, bias)


if HAS_INNER_PRODUCT:
    # FlopCounterMode counts aten's products; count the inner product alike (the benchmarks' work figures: without
    # this, HyperStyle's count missed 12.1 GFLOP per image). The formula reads the default overload's arguments.
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _inner_product_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        *rows, k = x_shape
        return 2 * k * w_shape[0] * int(torch.Size(rows).numel())


Kernel = Literal["convolution", "inner_product", "torch"]


def kernel(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> Kernel:
    """The kernel :func:`addmm` runs ``bias + a @ b`` with: oneDNN's convolution for large products
    (:func:`convolves`), else oneDNN's inner product for a ``b`` stored transposed (:func:`inner_product_applies`),
    else PyTorch's product (MKL's sgemm on CPUs)."""
    if convolves(a, b, bias):
        return "convolution"
    return "inner_product" if inner_product_applies(a, b, bias) else "torch"


def stored_transposed(b: torch.Tensor) -> bool:
    """Whether the matrix ``b`` is held as the transposed view of a contiguous one (:func:`transposed_storage`)."""
    return b.dim() == 2 and b.t().is_contiguous() and not b.is_contiguous()


def transposed_storage(b: torch.Tensor) -> torch.Tensor:
    """``b: [K, N]`` (same values) stored as the transposed view of a contiguous ``[N, K]``: the layout in which
    :func:`addmm` reads a large ``b`` fastest for few rows of ``a``."""
    return b.t().contiguous().t()


def addmm(bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``bias + a @ b`` as ``torch.addmm`` (``a: [M, K]``, ``b: [K, N]``, ``bias: [N]`` or None), a contiguous
    ``[M, N]``, by the kernel :func:`kernel` picks."""
    assert a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0], f"cannot multiply {tuple(a.shape)} @ {tuple(b.shape)}"
    assert bias is None or bias.shape == (b.shape[1],), f"bias {tuple(bias.shape)} != ({b.shape[1]},)"
    chosen = kernel(a, b, bias)
    if chosen == "convolution":
        return addmm_by_convolution(bias, a, b)
    if chosen == "inner_product":
        return addmm_by_inner_product(bias, a, b)
    return a @ b if bias is None else torch.addmm(bias, a, b)


def addmm_by_inner_product(bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``bias + a @ b`` as oneDNN's inner product (a linear layer whose ``[N, K]`` weight is ``b.t()``); fastest for a
    ``b`` stored transposed, where no copy is made."""
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), bias, "none", [], "")


def addmm_by_convolution(bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``bias + a @ b`` as a 1x1 convolution (whatever its size): ``a``'s rows as the pixels of a ``[1, K, M, 1]`` map
    in channels-last layout, ``b`` as ``N`` filters of ``K`` channels. The output keeps the input's layout, so its
    memory is the row-major ``[M, N]`` product and the final reshape is a view."""
    (m, k), n = a.shape, b.shape[1]
    x = a.contiguous().view(1, m, 1, k).permute(0, 3, 1, 2)
    y = F.conv2d(x, b.t()[:, :, None, None], bias)  # [1, N, M, 1]
    return y.permute(0, 2, 3, 1).reshape(m, n)
