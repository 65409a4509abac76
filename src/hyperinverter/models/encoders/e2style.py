"""E2Style ("A Simple Baseline for StyleGAN Inversion"): a shallow IR-SE trunk with three efficient heads, and
feed-forward refinement stages.

One stage encoder (official ``BackboneEncoderFirstStage`` / ``BackboneEncoderRefineStage``):

- the IR-SE trunk runs only its first three stages; the fourth (``body`` units after the 1/16 down-sampling in
  the official 1/2-strided layout) is built, so that released checkpoints load, but never run;
- three heads read the ends of stages 3, 2 and 1 (1/8, 1/4 and 1/2 of the input), deepest first. Each is BatchNorm,
  ``adaptive_avg_pool2d`` to ``p×p`` (official 7×7 for all three: overlapping windows of different sizes, e.g.
  32 -> 7 takes [0,5), [4,10), ...), flatten and one linear layer with no activation; they predict 9, 5 and 4 of
  18 W+ rows (keys ``output_layer_3``, ``output_layer_4``, ``output_layer_5``; BN at ``.0``, linear at ``.3``).

:class:`E2StyleEncoders` holds every stage: stage 1 (``encoder_firststage``) reads the image; stage ``t`` > 1
(``encoder_refinestage_list.{t-2}``) reads ``cat(x, pool(ŷ_{t-1}))`` (the image first, then the previous stage's
reconstruction pooled to the encoder's input size, not clamped) and adds its output to the codes. Stage 1 adds
``latent_avg``. The key set is the official checkpoint's without ``decoder.*``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...config_base import MAX_STAGES, MAX_STYLES, SerializableConfig, check_count
from .backbones import TrunkConfig, TrunkHost

OFFICIAL_HEAD_ROWS = (9, 5, 4)  # of 18, deepest head first
PAPER_POOL_SIZES = (7, 5, 3)  # the paper's table; the released code pools every head to 7x7


def split_rows(n_styles: int, proportion: tuple[int, ...] = OFFICIAL_HEAD_ROWS) -> tuple[int, int, int]:
    """``n_styles`` rows split among the three heads in the official 9:5:4 proportion (largest remainders, at least
    one row each), deepest head first: 18 -> (9, 5, 4), 10 -> (5, 3, 2), 8 -> (4, 2, 2)."""
    if n_styles < 3:
        raise ValueError(f"three heads need at least 3 rows, got {n_styles}")
    total = sum(proportion)
    exact = [n_styles * p / total for p in proportion]
    rows = [max(1, int(e)) for e in exact]
    by_remainder = sorted(range(3), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in itertools.cycle(by_remainder):
        if sum(rows) == n_styles:
            break
        if sum(rows) < n_styles:
            rows[i] += 1
        elif rows[i] > 1:
            rows[i] -= 1
    return tuple(rows)  # type: ignore[return-value]


@dataclass(frozen=True)
class E2StyleEncoderConfig(SerializableConfig):
    """One stage encoder. ``in_channels``: the image's (stage 1); refinement stages take twice as many.
    ``pool_sizes`` and ``head_rows``: per head, deepest first (``head_rows`` None: ``n_styles`` split 9:5:4)."""

    trunk: TrunkConfig = TrunkConfig()
    in_channels: int = 3
    input_size: int = 256
    n_styles: int = 18
    w_dim: int = 512
    pool_sizes: tuple[int, int, int] = (7, 7, 7)
    head_rows: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.trunk.backbone != "ir_se":
            raise ValueError(f"E2Style's trunk is IR-SE, got {self.trunk.backbone!r}")
        if self.input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {self.input_size}")
        check_count("n_styles", self.n_styles, MAX_STYLES)
        rows = self.rows
        if sum(rows) != self.n_styles or min(rows) < 1:
            raise ValueError(f"head_rows {rows} must be positive and sum to n_styles {self.n_styles}")
        if min(self.pool_sizes) < 1:
            raise ValueError(f"pool_sizes must be positive, got {self.pool_sizes}")

    @property
    def rows(self) -> tuple[int, int, int]:
        return self.head_rows if self.head_rows is not None else split_rows(self.n_styles)


class E2StyleEncoder(TrunkHost):
    """``[B,in_channels,R,R]`` -> code offsets ``[B,n_styles,w_dim]`` (one stage)."""

    config_class = E2StyleEncoderConfig

    def __init__(self, config: E2StyleEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self._adopt_trunk(c.trunk, c.in_channels)
        units = self.backbone.units
        # Body indices ending stages 1, 2, 3 (official 256 px IR-SE50: 2, 6, 20); stage 4 never runs.
        self.tap_indices = tuple(end - 1 for end in itertools.accumulate(units[:3]))
        widths = self.backbone.widths
        for name, channels, pool, rows in zip(("output_layer_3", "output_layer_4", "output_layer_5"),
                                              (widths[2], widths[1], widths[0]), c.pool_sizes, c.rows):
            head = nn.Sequential(nn.BatchNorm2d(channels), nn.AdaptiveAvgPool2d((pool, pool)), nn.Flatten(),
                                 nn.Linear(channels * pool * pool, rows * c.w_dim))
            self.add_module(name, head)

    def heads(self) -> list[nn.Sequential]:
        """Deepest first: the heads on the ends of stages 3, 2 and 1."""
        return [self.output_layer_3, self.output_layer_4, self.output_layer_5]

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ends of stages 1, 2, 3 (strides 2, 4, 8): ``[B,C1,R/2,R/2]``, ``[B,C2,R/4,R/4]``, ``[B,C3,R/8,R/8]``."""
        c = self.config
        assert x.ndim == 4 and x.shape[1:] == (c.in_channels, c.input_size, c.input_size), (
            f"expected [B,{c.in_channels},{c.input_size},{c.input_size}], got {tuple(x.shape)}")
        x = self.backbone.stem(x)
        taps = []
        for index, unit in enumerate(self.backbone.body[: self.tap_indices[-1] + 1]):
            x = unit(x)
            if index in self.tap_indices:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        taps = self.taps(x)
        codes = [head(tap).reshape(x.shape[0], rows, c.w_dim)
                 for head, tap, rows in zip(self.heads(), reversed(taps), c.rows)]
        codes = torch.cat(codes, dim=1)
        assert codes.shape == (x.shape[0], c.n_styles, c.w_dim), f"codes {tuple(codes.shape)}"
        return codes


@dataclass(frozen=True)
class E2StyleConfig(SerializableConfig):
    """Every stage: ``encoder`` is stage 1's config (refinement stages: the same with twice the input channels)."""

    encoder: E2StyleEncoderConfig = E2StyleEncoderConfig()
    stages: int = 3

    def __post_init__(self) -> None:
        check_count("stages", self.stages, MAX_STAGES)

    def refine_config(self) -> E2StyleEncoderConfig:
        import dataclasses

        return dataclasses.replace(self.encoder, in_channels=2 * self.encoder.in_channels)


class E2StyleEncoders(nn.Module):
    """Every stage encoder and the ``latent_avg`` the codes start from (the official keys without ``decoder.*``)."""

    config_class = E2StyleConfig

    def __init__(self, config: E2StyleConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder_firststage = E2StyleEncoder(config.encoder)
        self.encoder_refinestage_list = nn.ModuleList(
            E2StyleEncoder(config.refine_config()) for _ in range(config.stages - 1))
        self.register_buffer("latent_avg", torch.zeros(config.encoder.n_styles, config.encoder.w_dim))

    @property
    def stages(self) -> int:
        return self.config.stages

    @property
    def input_size(self) -> int:
        return self.config.encoder.input_size

    def stage(self, index: int) -> E2StyleEncoder:
        """Stage ``index`` (0-based) of :attr:`stages`."""
        return self.encoder_firststage if index == 0 else self.encoder_refinestage_list[index - 1]

    def first_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 1: ``x`` ``[B,C,R,R]`` at the encoder's size -> codes ``[B,n_styles,w_dim]`` (latent_avg added)."""
        return self.encoder_firststage(x) + self.latent_avg

    def refine_codes(self, index: int, codes: torch.Tensor, x: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Stage ``index`` > 0: the codes plus its output on ``cat(x, pool(previous))`` (the image first; the previous
        reconstruction average-pooled to the encoder's size, not clamped)."""
        assert index >= 1, "stage 0 is first_codes"
        size = self.input_size
        if previous.shape[-1] > size:  # the official face_pool: 1024 -> 256
            previous = F.adaptive_avg_pool2d(previous, size)
        elif previous.shape[-1] < size:  # a generator smaller than the encoder's input: as the image is resized
            previous = F.interpolate(previous, size=(size, size), mode="bilinear", align_corners=False)
        return codes + self.stage(index)(torch.cat([x, previous.to(x.dtype)], dim=1))
