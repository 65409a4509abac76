"""pSp's and e4e's trainer, on the shared loop: the W+ encoder learns through the frozen generator.

pSp: the reconstruction losses (L2, LPIPS or the offline perceptual loss, identity where it applies) and the
w-norm regulariser ``Σ_b ‖ws_b − w_avg‖_F / B``.

e4e adds, as its official coach:

- the progressive schedule: no delta row until ``progressive_start``, then one more every
  ``progressive_step_every`` steps (stage ``i``: rows ``1..i`` get their deltas);
- the delta regulariser ``Σ_{i=1..stage} mean_b ‖w_i − w_0‖₂``, in a progressive run only (as the official coach);
- the latent discriminator on W (an MLP: 3 × [Linear, LeakyReLU(0.2)] + Linear, plain Adam at lr 2e-5) fed real
  codes ``mapping(z)`` against the encoder's codes, with its R1 penalty every 16 steps, and the encoder's
  non-saturating loss on every active row. With ``w_pool_size`` > 0 (50, the README's ``--use_w_pool``) its codes
  go through the official pools of past codes, one for the real codes and one for the fakes: one random active row
  per fake sample; once a pool is full, each code is swapped with probability 1/2 for a stored code, which it
  replaces. Without the pools (``w_pool_size: 0``) the fakes are row 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..methods import InversionResult
from ..methods.phase1 import encoder_input_height
from ..methods.psp import E4E, PSP
from ..models.encoders import StyleCodeEncoder, StyleCodeEncoderConfig, TrunkConfig
from ..models.encoders.feature_encoder import check_style_groups
from .distributed import DistributedContext
from .encoders import EncoderTask, EncoderTrainingConfig
from .loop import Batch, Phase, TrainingResult, fit


@dataclass(kw_only=True)
class PspTrainingConfig(EncoderTrainingConfig):
    """``mode`` ``psp`` or ``e4e``; the encoder's ``trunk`` (IR-SE50 officially), its level split
    (``coarse_end``/``middle_end``: rows read c3 below the first, p2 below the second, p1 after) and
    ``feature_channels`` (default: W's size); the regulariser and e4e weights (official: w-norm 0 for inversion,
    delta 2e-4, latent adversarial 0.1)."""

    mode: str = "psp"
    trunk: TrunkConfig = TrunkConfig("ir_se", 50)
    coarse_end: int = 3
    middle_end: int = 7
    feature_channels: int | None = None
    optimizer: str = "ranger"
    w_norm_weight: float = 0.0
    # e4e
    progressive_start: int | None = None  # None: every delta row from step 0 (pSp ignores the schedule)
    progressive_step_every: int = 2000
    delta_reg_weight: float = 2e-4
    w_adv_weight: float = 0.0
    w_discriminator_lr: float = 2e-5
    w_r1_gamma: float = 10.0
    w_r1_interval: int = 16
    w_pool_size: int = 50  # 0: no pool (the fakes are row 0)
    random_noise: bool = True  # the official coaches' training forwards draw new noise maps

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("psp", "e4e"):
            raise ValueError(f"mode must be psp or e4e, got {self.mode!r}")
        if self.mode == "psp" and (self.progressive_start is not None or self.w_adv_weight > 0):
            raise ValueError("progressive_start and w_adv_weight are e4e's; set mode: e4e")
        check_style_groups(self.coarse_end, self.middle_end)  # (found once the models were built, naming no file)

    def stage(self, step: int, max_stage: int) -> int | None:
        """e4e's progressive stage at ``step`` (active delta rows), None when every row is active."""
        if self.mode != "e4e" or self.progressive_start is None:
            return None
        if step < self.progressive_start:
            return 0
        stage = 1 + (step - self.progressive_start) // self.progressive_step_every
        return None if stage >= max_stage else stage


class LatentDiscriminator(nn.Module):
    """e4e's discriminator on single codes ``[N, w_dim] -> [N]``: 3 × [Linear, LeakyReLU(0.2)] + Linear."""

    def __init__(self, w_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Linear(w_dim, 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        assert w.ndim == 2, f"expected [N, w_dim] codes, got {tuple(w.shape)}"
        return self.net(w).squeeze(1)


class LatentPool(nn.Module):
    """e4e's pool of past codes (CycleGAN's image pool), kept in buffers so that a resumed run continues it:
    until the pool is full every code goes in and is returned as it is; then each code is, with probability 1/2,
    returned as a random stored code that it replaces, else returned as it is."""

    def __init__(self, size: int, w_dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("codes", torch.zeros(size, w_dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def query(self, codes: torch.Tensor, coins: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``codes [N, w_dim]``; ``coins [N]`` uniform in [0, 1); ``slots [N]`` stored indices (drawn by the caller)."""
        out = codes.clone()
        for i, code in enumerate(codes):
            filled = int(self.filled)
            if filled < self.size:
                self.codes[filled] = code
                self.filled += 1
            elif coins[i] > 0.5:
                slot = int(slots[i])
                out[i] = self.codes[slot]
                self.codes[slot] = code
        return out


class PspTask(EncoderTask):
    """The reconstruction phase with pSp's and e4e's latent terms, and e4e's latent discriminator phases."""

    added_modules = frozenset({"W_pool_real"})  # (runs started before the real codes had their pool resume)

    def __init__(self, cfg: PspTrainingConfig, device: torch.device, **kwargs) -> None:
        super().__init__(cfg, device, **kwargs)
        self.encoder: StyleCodeEncoder = self.trainable
        self.max_stage = self.encoder.config.n_styles - 1
        self.W_D = self.pool = self.real_pool = None
        if cfg.w_adv_weight > 0:
            self.W_D = LatentDiscriminator(self.encoder.w_dim).to(device)
            self.opt_wd = torch.optim.Adam(self.W_D.parameters(), lr=cfg.w_discriminator_lr)
            self.modules["W_D"], self.optimizers["W_D"] = self.W_D, self.opt_wd
            if cfg.w_pool_size > 0:  # as the official coach: the real codes have a pool of their own
                self.pool = LatentPool(cfg.w_pool_size, self.encoder.w_dim).to(device)
                self.real_pool = LatentPool(cfg.w_pool_size, self.encoder.w_dim).to(device)
                self.modules["W_pool"], self.modules["W_pool_real"] = self.pool, self.real_pool

    def phases(self) -> list[Phase]:
        phases = super().phases()
        if self.W_D is not None:
            # Before the encoder's update, as the official coach.
            phases[:0] = [Phase("W_D", self.W_D, self.opt_wd),
                          Phase("W_D_r1", self.W_D, self.opt_wd, interval=self.cfg.w_r1_interval, regulariser=True)]
        return phases

    def before_step(self, step: int) -> None:
        self.encoder.progressive_stage = self.cfg.stage(step, self.max_stage)

    def batch(self, real: torch.Tensor, gen: torch.Generator, step: int) -> Batch:
        batch = super().batch(real, gen, step)
        if self.W_D is not None:
            G = self.method.generator
            batch["z"] = torch.randn(real.shape[0], G.z_dim, generator=gen)
            batch["row"] = torch.rand(real.shape[0], generator=gen)  # which active row each fake code is
            batch["pool_coin"] = torch.rand(real.shape[0], generator=gen)
            batch["pool_slot"] = torch.randint(max(self.cfg.w_pool_size, 1), (real.shape[0],), generator=gen)
            batch["real_pool_coin"] = torch.rand(real.shape[0], generator=gen)
            batch["real_pool_slot"] = torch.randint(max(self.cfg.w_pool_size, 1), (real.shape[0],), generator=gen)
        return batch

    def _real_w(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.method.generator.mapping(z)[:, 0]

    def loss(self, phase: Phase, batch: Batch, *, step: int, gen: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        if phase.name == "W_D":
            with torch.no_grad():
                ws = self.method.encode(batch["x"])
            real = self._real_w(batch["z"])
            if self.pool is None:
                fake = ws[:, 0]
            else:
                active = self.encoder.active_deltas()
                rows = (batch["row"] * (active + 1)).long().clamp(max=active)
                fake = self.pool.query(ws[torch.arange(len(ws), device=ws.device), rows], batch["pool_coin"],
                                       batch["pool_slot"])
                real = self.real_pool.query(real, batch["real_pool_coin"], batch["real_pool_slot"])
            loss = F.softplus(-self.W_D(real)).mean() + F.softplus(self.W_D(fake)).mean()
            return loss, {"loss/W_D": float(loss.detach())}
        if phase.name == "W_D_r1":
            real = self._real_w(batch["z"]).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.W_D(real).sum(), real, create_graph=True)
            r1 = grad.square().sum(dim=1).mean()
            return r1 * (self.cfg.w_r1_gamma / 2), {"loss/W_r1": float(r1.detach())}
        return super().loss(phase, batch, step=step, gen=gen)

    def reconstruction(self, x: torch.Tensor, *, gen: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, dict[str, float], InversionResult]:
        cfg = self.cfg
        loss, stats, out = super().reconstruction(x, gen=gen)
        ws = out.ws
        if cfg.w_norm_weight > 0:
            w_norm = (ws - self.method.generator.w_avg).flatten(1).norm(dim=1).mean()
            loss = loss + cfg.w_norm_weight * w_norm
            stats["loss/w_norm"] = float(w_norm.detach())
        if cfg.mode == "e4e":
            active = self.encoder.active_deltas()
            # As the official coach: only a progressive run regularises its deltas (progressive_steps set).
            if active > 0 and cfg.delta_reg_weight > 0 and cfg.progressive_start is not None:
                delta = (ws[:, 1 : active + 1] - ws[:, :1]).norm(dim=2).mean(dim=0).sum()
                loss = loss + cfg.delta_reg_weight * delta
                stats["loss/delta"] = float(delta.detach())
            if self.W_D is not None:
                adv = F.softplus(-self.W_D(ws[:, : active + 1].flatten(0, 1))).mean()
                loss = loss + cfg.w_adv_weight * adv
                stats["loss/w_adv"] = float(adv.detach())
            stats["stage"] = float(active)
        return loss, stats, out


def psp_task(cfg: PspTrainingConfig, device: torch.device, ctx: DistributedContext) -> PspTask:
    gan = cfg.load_generator(device, adversarial=cfg.adversarial)
    G = gan.generator
    rows = cfg.content_rows
    height = encoder_input_height(cfg.encoder_resolution, rows)
    encoder = StyleCodeEncoder(StyleCodeEncoderConfig(
        trunk=cfg.trunk, in_channels=G.config.img_channels, input_size=cfg.encoder_resolution, n_styles=G.num_ws,
        feature_channels=cfg.feature_channels or G.w_dim, coarse_end=cfg.coarse_end, middle_end=cfg.middle_end,
        w_dim=G.w_dim, mode=cfg.mode, input_height=height))
    cfg.init_trunk(encoder)
    method = (E4E if cfg.mode == "e4e" else PSP)(G, style_encoder=encoder, encoder_resolution=cfg.encoder_resolution,
                                                 content_rows=rows)
    return PspTask(cfg, device, method=method, trainable=encoder, gan=gan, bundle={method.name: method},
                   synthetic=True)


def train_psp(cfg: PspTrainingConfig, *, images: torch.Tensor | None = None,
              val_images: torch.Tensor | None = None) -> TrainingResult:
    """Train (or resume) a pSp or e4e encoder per ``cfg``."""
    return fit(cfg, lambda device, ctx: psp_task(cfg, device, ctx), images=images, val_images=val_images)
