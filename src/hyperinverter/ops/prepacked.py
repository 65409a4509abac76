"""Convolutions whose weights oneDNN reorders once, for inference on a CPU.

PyTorch hands oneDNN a plain weight on every call, and oneDNN reorders it into its blocked layout before it
convolves: one more pass over the weight per call, on a weight that is no longer in cache. For encoders (fixed
weights, small maps) that pass is a good part of a large layer's time. Measured at full-size HyperInverter's own
shapes on this repository's 2-core CPU (``benchmarks/results/prepacked-cpu.md``): the stride-2 512-channel heads of E2
on 16-px maps took 2.26 ms plain and 1.57 packed, a 1x1 1024->512 conv of the hypernetworks 0.34 and 0.18; convs
with small weights gained little or lost (the SE blocks' 1x1 convs at batch 1: 0.006 ms plain, 0.025-0.032 packed;
128->128 3x3, stride 2, on 128 px: 5.7 ms plain and 8.2 packed in one run, 5.3 and 5.1 in the next), so only
weights from :data:`PACK_FROM_BYTES` up are packed. inductor's freezing does the same for compiled models; this does
it in eager mode.

A :class:`PrepackedConv2d` packs its weight at its first call, for that call's input size, and from then on holds
it in oneDNN's layout only (no second copy). It reads and writes ``state_dict`` with ``nn.Conv2d``'s keys and plain
weights, and runs the plain convolution wherever the packed one does not apply: autograd through it, autocast to a
lower precision, another device or dtype.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from ..memory import kept_apart

logger = logging.getLogger(__name__)

# The smallest weight worth packing (1 MiB: 512->64 3x3, 256->256 3x3, 1024->512 1x1 and up). Below it the reorder
# a call saves is a few microseconds, and oneDNN's kernel for a packed weight was as fast or slower.
PACK_FROM_BYTES = 2**20


def available() -> bool:
    """Whether this PyTorch build has oneDNN and its packed-weight convolution."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


if available():
    # FlopCounterMode counts aten's convolutions; count the packed one alike (the benchmarks' work figures). The
    # formula reads the default overload's arguments, the only one used here.
    @register_flop_formula(torch.ops.mkldnn._convolution_pointwise)
    def _packed_conv_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape)


def packable(conv: nn.Module, min_bytes: int | None = None) -> bool:
    """A plain, zero-padded, ungrouped CPU fp32 ``nn.Conv2d`` whose weight holds ``min_bytes`` (default:
    :data:`PACK_FROM_BYTES`) or more."""
    min_bytes = PACK_FROM_BYTES if min_bytes is None else min_bytes
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and conv.weight.device.type == "cpu"
            and conv.weight.dtype == torch.float32 and conv.weight.numel() * 4 >= min_bytes)


class PrepackedConv2d(nn.Module):
    """An ``nn.Conv2d`` (groups 1, zero padding) for inference whose CPU fp32 weight lives in oneDNN's layout.

    The layout oneDNN picks depends on the input's size: a weight packed without one, or for another size, can be
    far slower than a plain one (a 1x1 1024->512 conv packed for 8x8 maps took 0.19 ms on them, 0.36 plain, but
    9.9 ms on 4x4 maps, 0.27 plain). So the weight is packed at the first call, for that call's size, and again when a call comes
    with another height or width. The batch does not matter: a weight packed for a batch of 2 ran as fast at 1, 4
    and 8 as one packed for them.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        assert type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros", (
            f"only plain zero-padded convolutions are packed, got {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding: tuple[int, int] = conv.padding  # type: ignore[assignment]
        self.bias = conv.bias
        self.weight_requires_grad = conv.weight.requires_grad  # (given back by to_conv2d, as the bias keeps its own)
        self._set_weight(conv.weight.detach())

    def _set_weight(self, weight: torch.Tensor) -> None:
        """A plain weight, packed again at the next call that can use it."""
        expected = (self.out_channels, self.in_channels, *self.kernel_size)
        assert tuple(weight.shape) == expected, f"weight {tuple(weight.shape)} != {expected}"
        self._plain, self._packed, self._packed_for = weight, None, None

    @property
    def weight(self) -> torch.Tensor:
        """The weight in the plain ``[O, I, kh, kw]`` layout (a copy while it is packed)."""
        return self._plain if self._packed is None else self._packed.to_dense()

    @property
    def packed(self) -> bool:
        return self._packed is not None

    @property
    def packed_for(self) -> tuple[int, int] | None:
        """The input height and width the weight is packed for (None while it is plain)."""
        return self._packed_for

    def _packed_applies(self, x: torch.Tensor) -> bool:
        weight = self._plain
        if weight is not None and (weight.device.type != "cpu" or weight.dtype != torch.float32):
            return False
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
            return False
        if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") != torch.float32:
            return False  # autocast casts the plain path's inputs; the packed weight is fp32
        grad = self.bias is not None and self.bias.requires_grad
        return not (torch.is_grad_enabled() and (x.requires_grad or grad))  # the packed op has no backward

    def _pack(self, input_shape: tuple[int, ...]) -> None:
        # A weight packed in the middle of a pass outlives it: a mapping of its own keeps it out of the heap the
        # pass's activations reuse.
        with kept_apart():
            weight = self.weight.contiguous().to_mkldnn()
            self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight, list(self.padding), list(self.stride), list(self.dilation), 1, list(input_shape))
            self._plain, self._packed_for = None, tuple(input_shape[-2:])
            del weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_applies(x):
            if tuple(x.shape[-2:]) != self._packed_for:
                if self._packed_for is not None:
                    logger.debug("packing %s again for %s inputs (was %s)", self, tuple(x.shape[-2:]),
                                 self._packed_for)
                self._pack(tuple(x.shape))
            return torch.ops.mkldnn._convolution_pointwise(x, self._packed, self.bias, list(self.padding),
                                                           list(self.stride), list(self.dilation), 1, "none", [], "")
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    # --- what nn.Module does with parameters: the weight takes part as a plain tensor ------------------
    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._set_weight(fn(self.weight))
        return self

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight  # before the bias, as nn.Conv2d
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        key = prefix + "weight"
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            missing_keys.append(key)
            return
        weight, shape = state_dict[key], (self.out_channels, self.in_channels, *self.kernel_size)
        if tuple(weight.shape) != shape:
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, the "
                              f"shape in current model is {shape}.")
            return
        current = self.weight
        self._set_weight(weight.detach().to(device=current.device, dtype=current.dtype).clone())

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles hold a plain weight (an opaque oneDNN tensor has no storage to copy)
        state = dict(self.__dict__)
        state["_plain"], state["_packed"], state["_packed_for"] = self.weight, None, None
        return state

    def to_conv2d(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` (a plain weight)."""
        weight = self.weight
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, bias=self.bias is not None,
                         device=weight.device, dtype=weight.dtype)
        conv.weight = nn.Parameter(weight, requires_grad=self.weight_requires_grad)
        conv.bias = self.bias
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


def _swap(module: nn.Module, convert, condition) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if condition(child):
            setattr(module, name, convert(child))
            count += 1
        else:
            count += _swap(child, convert, condition)
    return count


def prepack_convolutions(*modules: nn.Module, min_bytes: int | None = None) -> int:
    """Swap every :func:`packable` ``nn.Conv2d`` under ``modules`` (a method's trained parts, say) whose weight holds
    ``min_bytes`` (default: :data:`PACK_FROM_BYTES`) or more for a :class:`PrepackedConv2d`, for inference: from its
    first call on, each keeps its weight in oneDNN's layout only. Returns how many were swapped (0 without
    oneDNN)."""
    if not available():
        return 0
    count = sum(_swap(module, PrepackedConv2d, lambda m: packable(m, min_bytes)) for module in modules)
    logger.debug("%d convolutions of %s pack their weights", count, ", ".join(type(m).__name__ for m in modules))
    return count


def unpack_convolutions(module: nn.Module) -> int:
    """Undo :func:`prepack_convolutions` (before ``torch.compile``, which picks the convolutions' kernels itself, or
    training)."""
    return _swap(module, PrepackedConv2d.to_conv2d, lambda m: isinstance(m, PrepackedConv2d))


def parameter_count(module: nn.Module) -> int:
    """How many parameters ``module`` has, the packed convolutions' weights included."""
    packed = sum(m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                 for m in module.modules() if isinstance(m, PrepackedConv2d))
    return packed + sum(p.numel() for p in module.parameters())
