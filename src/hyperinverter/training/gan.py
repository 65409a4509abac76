"""StyleGAN2 training for small domains: non-saturating loss, lazy R1, EMA generator, optional path-length
regularisation and style mixing, and an optional distillation warm start from a teacher generator.

Users with big GPUs will still train large generators with NVIDIA's repositories and import the pickle;
this trainer exists for custom small domains and for the bundled CPU demo models. It is a :class:`TrainingTask`
of the shared loop (:mod:`.loop`): phases ``G`` (or ``G_distill``), ``G_pl``, ``D`` and ``D_r1``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..catalogue import load_model_gan
from ..io.gan import save_gan
from ..models.stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from .distributed import DistributedContext
from .loop import Batch, Phase, RunConfig, TrainingResult, TrainingTask, fit, lazy_adam

logger = logging.getLogger(__name__)

Teacher = Callable[[torch.Tensor], torch.Tensor]


@dataclass(kw_only=True)
class GeneratorTrainingConfig(RunConfig):
    """The run (see :class:`RunConfig`), the networks (their own configs, nested) and the optimisation."""

    generator: GeneratorConfig | None = None  # the architecture (not needed with init_from, which has its own)
    discriminator: DiscriminatorConfig | None = None  # default: the generator's resolution, channels and widths
    init_from: str | None = None  # start from an existing generator (any file, a bundle or a catalogue name)
    # False: G stays as it is (from init_from) and only D trains: a discriminator for a generator that has none
    # (the discriminator-feature loss and the adversarial stages of the encoder trainers need one).
    train_generator: bool = True
    batch_size: int = 16
    val_fraction: float = 0.0  # a generator has no validation loss: every image trains (it held 2 % out for nothing)
    lr_g: float = 0.0025
    lr_d: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 1.0
    r1_interval: int = 16
    pl_weight: float = 0.0
    pl_interval: int = 4
    pl_decay: float = 0.01
    style_mixing: float = 0.0
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    noise_mode: str = "random"  # per-pixel noise while training; "const" makes multi-process runs bit-comparable
    # Train the synthesis network only (as StyleGAN-NADA and toonification fine-tunes do): every w keeps its
    # meaning, so codes and offsets found with the starting generator carry over to the fine-tuned one.
    freeze_mapping: bool = False
    # distillation: regress G(z) onto teacher(z) for the first distill_steps (see build_teacher for the teachers)
    distill_teacher: str | None = None
    distill_steps: int = 0
    distill_lr: float = 0.002
    distill_train_d: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distill_steps and not self.distill_teacher:
            raise ValueError("distill_steps > 0 needs distill_teacher")
        if self.generator is None and not self.init_from:
            raise ValueError("give the generator's architecture (generator:), or a file to start from (init_from)")
        if not self.train_generator and not self.init_from:
            raise ValueError("train_generator: false keeps the generator of init_from: give init_from")
        if self.freeze_mapping and not self.init_from:
            raise ValueError("freeze_mapping keeps the mapping of init_from: give init_from")
        if self.distill_teacher and self.distill_teacher.startswith("stylised:") and not self.init_from:
            raise ValueError(f"the teacher {self.distill_teacher!r} stylises the starting generator: give init_from")
        if self.noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be random, const or none, got {self.noise_mode!r}")

    def discriminator_config(self, g: GeneratorConfig) -> DiscriminatorConfig:
        """The discriminator's architecture: the config's own, else the generator ``g``'s widths."""
        return self.discriminator or DiscriminatorConfig(resolution=g.resolution, img_channels=g.img_channels,
                                                         channel_base=g.channel_base, channel_max=g.channel_max)


def build_teacher(name: str, device: torch.device, start: Generator | None = None) -> tuple[Teacher, int]:
    """A teacher by name -> (z -> images in [-1,1], z_dim).

    ``dcgan-faces64``: the pretrained DCGAN that made the faces64 data. ``stylised:STYLE`` (e.g.
    ``stylised:sketch``): the starting generator ``start`` (a frozen copy), its images rendered in ``STYLE``; with
    ``freeze_mapping`` the student learns G'(w) = STYLE(G(w)) for the same w (paired, so exactly aligned).
    """
    if name == "dcgan-faces64":
        from ..data.sources import load_dcgan_faces

        net = load_dcgan_faces(device=device)
        return (lambda z: net(z[:, :, None, None])), 100
    if name.startswith("stylised:") and start is not None:
        from ..data.sources import STYLES, stylise_images

        style = name.removeprefix("stylised:")
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r} in teacher {name!r} (known: {', '.join(STYLES)})")
        frozen = copy.deepcopy(start).eval().requires_grad_(False)
        return (lambda z: stylise_images(frozen.synthesis(frozen.mapping(z)), style)), frozen.z_dim
    raise ValueError(f"unknown distillation teacher {name!r}; known: dcgan-faces64, stylised:STYLE (with init_from)")


def mix_styles(G: Generator, z: torch.Tensor, prob: float, gen: torch.Generator, *,
               update_w_avg: bool) -> torch.Tensor:
    """``ws`` of ``z``; with probability ``prob`` the whole batch switches to second codes from one random layer on,
    as NVIDIA's ``run_G`` mixes (one coin and one cutoff per call, not per sample)."""
    ws = G.mapping(z, update_w_avg=update_w_avg)
    if prob > 0 and float(torch.rand((), generator=gen)) < prob:
        cutoff = int(torch.randint(1, G.num_ws, (), generator=gen))
        second = G.mapping(torch.randn(z.shape, generator=gen).to(z.device))
        ws = torch.cat([ws[:, :cutoff], second[:, cutoff:]], dim=1)
    return ws


def _check_same_architecture(section: str, asked, loaded) -> None:
    """A ValueError where the config's ``section`` (None: not given) differs from init_from's network's config."""
    differing = [] if asked is None else sorted(
        k for k, v in asked.to_dict().items() if loaded.to_dict().get(k) != v)
    if differing:
        pairs = ", ".join(f"{k} {getattr(asked, k)!r} against {getattr(loaded, k)!r}" for k in differing)
        raise ValueError(f"{section}: asks for another architecture than init_from's {section} ({pairs}): "
                         f"leave {section}: out (init_from gives it), or make them agree")


class GANTask(TrainingTask):
    """StyleGAN2: G (non-saturating, or distillation onto a teacher), lazy path length, D, lazy R1; EMA of G."""

    name = "train generator"
    saves = "generator"
    cleans_gradients = True  # as NVIDIA's loop: a NaN or infinite gradient is cleaned, not applied

    def __init__(self, cfg: GeneratorTrainingConfig, device: torch.device, ctx: DistributedContext, *,
                 teacher: Teacher | None = None) -> None:
        self.cfg, self.device, self.ctx = cfg, device, ctx
        if cfg.init_from:
            gan = load_model_gan(cfg.init_from, with_discriminator=True)  # (as a --model takes)
            G, D = gan.generator, gan.discriminator
            # (a section the file's network would override was ignored, and config.yaml recorded it)
            _check_same_architecture("generator", cfg.generator, G.config)
            if D is not None:
                _check_same_architecture("discriminator", cfg.discriminator, D.config)
        else:
            G, D = Generator(cfg.generator), None
        if D is None:
            if cfg.init_from:
                logger.info("%s holds no discriminator: D starts from scratch", cfg.init_from)
            d_config = cfg.discriminator_config(G.config)
            if (d_config.resolution, d_config.img_channels) != (G.resolution, G.config.img_channels):
                raise ValueError(f"discriminator: judges {d_config.img_channels}-channel {d_config.resolution}-px "
                                 f"images, the generator makes {G.config.img_channels}-channel {G.resolution}-px ones: "
                                 "set discriminator.resolution and img_channels to the generator's, or leave them out")
            D = Discriminator(d_config)
        self.G, self.D = G.to(device).train(), D.to(device).train()
        if cfg.freeze_mapping:
            self.G.mapping.requires_grad_(False)  # no phase trains it (the G phases train G.synthesis)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.resolution, self.channels = self.G.resolution, self.G.config.img_channels
        self.teacher = teacher
        if cfg.distill_steps and teacher is None:
            self.teacher, teacher_z = build_teacher(cfg.distill_teacher, device, self.G)
            if teacher_z != self.G.z_dim:
                raise ValueError(f"teacher {cfg.distill_teacher!r} takes z of {teacher_z} dims but z_dim={self.G.z_dim}")
        # Rescaled for lazy regularisation whether or not a regulariser runs, as NVIDIA's loop does (its intervals
        # stay 4 and 16 with a weight of 0).
        self.opt_g = lazy_adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas, reg_interval=cfg.pl_interval)
        self.opt_d = lazy_adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas, reg_interval=cfg.r1_interval)
        self.lr_g = self.opt_g.param_groups[0]["lr"]  # the adversarial lr; distillation runs at its own
        self.modules = {"G": self.G, "D": self.D, "G_ema": self.G_ema}
        self.optimizers = {"G": self.opt_g, "D": self.opt_d}
        self.pl_mean = torch.zeros([], device=device)
        self.cur_nimg = 0
        self.sample_z = torch.randn(16, self.G.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 12345))

    def phases(self) -> list[Phase]:
        cfg, n = self.cfg, self.cfg.distill_steps
        trained_g = self.G.synthesis if cfg.freeze_mapping else self.G
        phases = []
        if not cfg.train_generator:
            self.G.requires_grad_(False)
            return [Phase("D", self.D, self.opt_d)] + (
                [Phase("D_r1", self.D, self.opt_d, interval=cfg.r1_interval, regulariser=True)] if cfg.r1_gamma > 0 else [])
        if n:
            phases.append(Phase("G_distill", trained_g, self.opt_g, end=n))
        phases.append(Phase("G", trained_g, self.opt_g, start=n))
        if cfg.pl_weight > 0:
            phases.append(Phase("G_pl", trained_g, self.opt_g, interval=cfg.pl_interval, start=n, regulariser=True))
        d_start = 0 if cfg.distill_train_d else n
        phases.append(Phase("D", self.D, self.opt_d, start=d_start))
        if cfg.r1_gamma > 0:
            phases.append(Phase("D_r1", self.D, self.opt_d, interval=cfg.r1_interval, start=d_start,
                                regulariser=True))
        return phases

    def batch(self, real: torch.Tensor, gen: torch.Generator, step: int) -> Batch:
        z_dim, n = self.G.z_dim, real.shape[0]
        # As NVIDIA's loop: each phase its own codes.
        return {"real": real, **{key: torch.randn(n, z_dim, generator=gen) for key in ("z", "z_pl", "z_d")}}

    def before_step(self, step: int) -> None:
        # The distillation warm start regresses at its own lr; at its end the adversarial lr takes over (set at
        # every step: a resumed run builds its optimiser at the adversarial lr).
        if self.cfg.distill_steps:
            for group in self.opt_g.param_groups:
                group["lr"] = self.cfg.distill_lr if step < self.cfg.distill_steps else self.lr_g

    def loss(self, phase: Phase, batch: Batch, *, step: int, gen: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, G, D = self.cfg, self.G, self.D
        noise = {"noise_mode": cfg.noise_mode, "noise_generator": gen}
        update_w_avg = not cfg.freeze_mapping  # (every training call of the mapping, as NVIDIA's)
        if phase.name == "G_distill":
            with torch.no_grad():
                target = self.teacher(batch["z"])
            fake = G.synthesis(G.mapping(batch["z"], update_w_avg=update_w_avg))
            loss = F.l1_loss(fake, target) + F.mse_loss(fake, target)
            return loss, {"loss/distill": float(loss.detach())}
        if phase.name == "G":
            ws = mix_styles(G, batch["z"], cfg.style_mixing, gen, update_w_avg=update_w_avg)
            loss = F.softplus(-D(G.synthesis(ws, **noise))).mean()
            return loss, {"loss/G": float(loss.detach())}
        if phase.name == "G_pl":
            # Half the micro-batch, as NVIDIA's rounds take half of each of theirs.
            n = max(batch["z_pl"].shape[0] // 2, 1)
            ws = mix_styles(G, batch["z_pl"][:n], cfg.style_mixing, gen, update_w_avg=update_w_avg)
            if not ws.requires_grad:  # a frozen mapping (freeze_mapping): the lengths are still taken over ws
                ws = ws.detach().requires_grad_(True)
            img = G.synthesis(ws, **noise)
            pl_noise = torch.randn(img.shape, generator=gen).to(img.device) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            # As NVIDIA's, the penalty's mean is the updated one, gradient and all; the running mean kept is over
            # every rank's samples.
            penalty = (lengths - self.pl_mean.lerp(lengths.mean(), cfg.pl_decay)).square().mean()
            self.pl_mean.copy_(self.pl_mean.lerp(self.ctx.all_reduce_mean(lengths.mean().detach()), cfg.pl_decay))
            return penalty * cfg.pl_weight, {"loss/pl": float(penalty.detach())}
        if phase.name == "D":
            with torch.no_grad():
                fake = G.synthesis(mix_styles(G, batch["z_d"], cfg.style_mixing, gen, update_w_avg=update_w_avg),
                                   **noise)
            loss = F.softplus(D(fake)).mean() + F.softplus(-D(batch["real"])).mean()
            return loss, {"loss/D": float(loss.detach())}
        if phase.name == "D_r1":
            real = batch["real"].detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            return r1 * (cfg.r1_gamma / 2), {"loss/r1": float(r1.detach())}
        raise ValueError(f"unknown phase {phase.name!r}")

    def after_step(self, step: int, batch: Batch) -> None:
        cfg = self.cfg
        cur_nimg, self.cur_nimg = self.cur_nimg, self.cur_nimg + cfg.batch_size  # (the ramp-up reads the count before)
        if not cfg.train_generator:
            return  # G_ema is G, unchanged
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup is not None and not cfg.init_from:  # (NVIDIA's resume turns the ramp-up off)
            ema_nimg = min(ema_nimg, cur_nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch_size / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)

    def state(self) -> dict:
        return {"cur_nimg": self.cur_nimg, "pl_mean": float(self.pl_mean)}

    def load_state(self, state: dict) -> None:
        cur_nimg, pl_mean = state.get("cur_nimg", 0), state.get("pl_mean", 0.0)
        if isinstance(cur_nimg, bool) or not isinstance(cur_nimg, int) or cur_nimg < 0:
            raise ValueError(f"images seen {cur_nimg!r}, not a whole number of 0 or more")
        if isinstance(pl_mean, bool) or not isinstance(pl_mean, (int, float)) or not math.isfinite(pl_mean):
            raise ValueError(f"path-length mean {pl_mean!r}, not a finite number")
        self.cur_nimg = cur_nimg
        self.pl_mean.fill_(pl_mean)

    @torch.no_grad()
    def samples(self, images: torch.Tensor) -> tuple[str, torch.Tensor, int]:
        return "samples", self.G_ema(self.sample_z.to(self.device)), 8

    def save(self, path: Path) -> Path:
        save_gan(path, copy.deepcopy(self.G_ema).cpu(), copy.deepcopy(self.D).cpu().eval())
        logger.info("wrote the trained generator to %s", path)
        return path


def train_generator(cfg: GeneratorTrainingConfig, *, images: torch.Tensor | None = None,
                    teacher: Teacher | None = None) -> TrainingResult:
    """Train (or resume) a StyleGAN2 per ``cfg``. ``images`` (uint8 ``[N,C,R,R]``) bypass ``cfg.data``."""

    return fit(cfg, lambda device, ctx: GANTask(cfg, device, ctx, teacher=teacher), images=images)
