"""Per-sample generator weight offsets: HyperInverter's θ+Δθ and HyperStyle's θ·(1+Δθ)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

DeltaMode = Literal["add", "scale"]


@dataclass(frozen=True)
class WeightDelta(Mapping[str, torch.Tensor]):
    """Offsets for a subset of synthesis parameters, one per sample.

    ``tensors`` maps a synthesis parameter name (``"b8.conv0.weight"``, as in
    ``Generator.synthesis.offsettable_parameters()``) to a tensor ``[B, *param_shape]``.
    ``mode="add"`` means ``θ + Δθ`` (HyperInverter, PTI); ``mode="scale"`` means ``θ · (1 + Δθ)``
    (HyperStyle). Offsets apply to the raw stored parameter, before any equalised-lr gain.
    """

    tensors: Mapping[str, torch.Tensor]
    mode: DeltaMode = "add"
    _batch_size: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("add", "scale"):
            raise ValueError(f"WeightDelta mode must be 'add' or 'scale', got {self.mode!r}")
        if not self.tensors:
            raise ValueError("WeightDelta needs at least one tensor")
        sizes = {name: t.shape[0] for name, t in self.tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"WeightDelta tensors disagree on the batch size: {sizes}")
        object.__setattr__(self, "tensors", dict(self.tensors))
        object.__setattr__(self, "_batch_size", next(iter(sizes.values())))

    # Mapping interface -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    # Application -------------------------------------------------------------------------------
    def apply(self, name: str, param: torch.Tensor) -> torch.Tensor | None:
        """The per-sample parameter ``[B, *param.shape]`` for ``name``, or None if it has no offset."""
        delta = self.tensors.get(name)
        if delta is None:
            return None
        delta = delta.to(param.dtype)
        if self.mode == "add":
            return param.unsqueeze(0) + delta
        return param.unsqueeze(0) * (1 + delta)

    # Batch manipulation ------------------------------------------------------------------------
    def _map(self, fn) -> WeightDelta:
        return WeightDelta({k: fn(v) for k, v in self.tensors.items()}, mode=self.mode)

    def select(self, index: int | slice | Sequence[int] | torch.Tensor) -> WeightDelta:
        """Samples at ``index`` (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index])

    def to(self, *args, **kwargs) -> WeightDelta:
        return self._map(lambda t: t.to(*args, **kwargs))

    def tile(self, times: int) -> WeightDelta:
        """The batch ``times`` times over, in the order of ``torch.cat([codes] * times)``: one image's offsets under
        several codes (its edits at several strengths) in one synthesis call. For one sample a view, not a copy (a
        full-size HyperInverter's Δθ is 90 MB per image); for more, a copy."""
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a whole number of 1 or more, got {times!r}")
        if times == 1:
            return self
        if self.batch_size == 1:
            return self._map(lambda t: t.expand(times, *t.shape[1:]))
        return self._map(lambda t: t.repeat(times, *[1] * (t.ndim - 1)))

    def detach(self) -> WeightDelta:
        return self._map(lambda t: t.detach())

    def only(self, names: Iterable[str]) -> WeightDelta | None:
        """The offsets of the parameters in ``names`` (None if there are none)."""
        wanted = set(names)
        keep = {k: v for k, v in self.tensors.items() if k in wanted}
        return WeightDelta(keep, mode=self.mode) if keep else None

    def plus(self, other: WeightDelta) -> WeightDelta:
        """Offsets summed parameter by parameter (a parameter only one side offsets keeps that side's); both in
        the same mode. HyperStyle accumulates its iterations this way."""
        if self.mode != other.mode:
            raise ValueError(f"cannot add {self.mode!r} and {other.mode!r} offsets")
        names = dict.fromkeys([*self, *other])
        return WeightDelta({k: self[k] + other[k] if k in self and k in other else (self[k] if k in self else other[k])
                            for k in names}, mode=self.mode)

    @staticmethod
    def blend(a: WeightDelta | None, b: WeightDelta | None, t: float) -> WeightDelta | None:
        """Elementwise ``(1-t)·a + t·b``. A parameter that one side does not offset (or a side that is None)
        counts as a zero offset, which is "unchanged" in both modes; the two sides must share their mode."""
        if a is None and b is None:
            return None
        if a is not None and b is not None and a.mode != b.mode:
            raise ValueError(f"cannot interpolate {a.mode!r} and {b.mode!r} offsets (different methods' kinds of Δθ)")
        mode = (a if a is not None else b).mode
        out = {}
        for name in dict.fromkeys([*(a or {}), *(b or {})]):
            ref = a[name] if a is not None and name in a else b[name]
            start = a[name] if a is not None and name in a else torch.zeros_like(ref)
            end = b[name].to(ref) if b is not None and name in b else torch.zeros_like(ref)
            out[name] = torch.lerp(start, end, t)
        return WeightDelta(out, mode=mode)

    @staticmethod
    def cat(deltas: Iterable[WeightDelta]) -> WeightDelta:
        deltas = list(deltas)
        if not deltas:
            raise ValueError("nothing to concatenate")
        first = deltas[0]
        for d in deltas[1:]:
            if d.mode != first.mode or set(d) != set(first):
                raise ValueError("can only concatenate WeightDeltas with the same mode and parameter names")
        return WeightDelta({k: torch.cat([d[k] for d in deltas]) for k in first}, mode=first.mode)
