"""StyleGAN2 training for small domains: non-saturating loss, lazy R1, EMA generator, optional path-length
regularisation and style mixing, and an optional distillation warm start from a teacher generator.

Users with big GPUs will still train large generators with NVIDIA's repositories and import the pickle;
this trainer exists for custom small domains and for the bundled CPU demo models.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..convert.gan_files import load_gan
from ..device import resolve_device
from ..io.gan import save_gan
from ..models.stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from .checkpointing import resume_latest, save_checkpoint
from .distributed import init_distributed, local_device
from .run import (
    BatchSampler,
    RunLogger,
    autocast,
    mean_dict,
    prepare_run_dir,
    random_hflip,
    step_generator,
    training_images,
    uint8_to_float,
)

logger = logging.getLogger(__name__)

Teacher = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GeneratorTrainingConfig:
    run_dir: str
    data: str
    resolution: int
    steps: int
    img_channels: int = 3
    # generator / discriminator widths
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 16384
    channel_max: int = 512
    d_channel_base: int | None = None  # default: same as the generator
    d_channel_max: int | None = None
    init_from: str | None = None  # start from an existing generator file (any format)
    # optimisation
    batch_size: int = 16
    grad_accum: int = 1
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
    hflip: bool = False
    noise_mode: str = "random"  # per-pixel noise while training; "const" makes multi-process runs bit-comparable
    # distillation warm start: regress G(z) onto teacher(z) for the first distill_steps
    distill_teacher: str | None = None
    distill_steps: int = 0
    distill_lr: float = 0.002
    distill_train_d: bool = True
    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: bool = True
    progress: bool = True
    tensorboard: bool = True
    val_fraction: float = 0.02
    preload: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.distill_steps and not self.distill_teacher:
            raise ValueError("distill_steps > 0 needs distill_teacher")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")


def build_teacher(name: str, device: torch.device) -> tuple[Teacher, int]:
    """A teacher generator by name -> (z -> images in [-1,1], z_dim)."""
    if name == "dcgan-faces64":
        from ..data.sources import load_dcgan_faces

        net = load_dcgan_faces(device=device)
        return (lambda z: net(z[:, :, None, None])), 100
    raise ValueError(f"unknown distillation teacher {name!r}; known: ['dcgan-faces64']")


def requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _mix_styles(G: Generator, z: torch.Tensor, prob: float, gen: torch.Generator, update_w_avg: bool) -> torch.Tensor:
    ws = G.mapping(z, update_w_avg=update_w_avg)
    if prob > 0:
        n = z.shape[0]
        z2 = torch.randn(z.shape, generator=gen).to(z.device)
        cutoff = torch.randint(1, G.num_ws, (n,), generator=gen).to(z.device)
        mix = torch.rand(n, generator=gen).to(z.device) < prob
        layer = torch.arange(G.num_ws, device=z.device)[None, :]
        use_second = mix[:, None] & (layer >= cutoff[:, None])
        ws = torch.where(use_second[:, :, None], G.mapping(z2), ws)
    return ws


@dataclass
class _Schedule:
    """Lazy regularisation rescales lr and betas so the regularised updates keep their strength."""

    lr: float
    betas: tuple[float, float]
    interval: int

    def params(self) -> dict:
        ratio = self.interval / (self.interval + 1) if self.interval > 0 else 1.0
        return dict(lr=self.lr * ratio, betas=(self.betas[0] ** ratio, self.betas[1] ** ratio))


@dataclass
class GeneratorTrainingResult:
    run_dir: Path
    final_model: Path | None
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


def _load_images(cfg: GeneratorTrainingConfig) -> torch.Tensor:
    from ..data.folder import ImageFolderDataset

    dataset = ImageFolderDataset(cfg.data, resolution=cfg.resolution, channels=cfg.img_channels, split="train",
                                 val_fraction=cfg.val_fraction, seed=cfg.seed)
    logger.info("training images: %s", dataset)
    return training_images(dataset, preload=cfg.preload, progress=cfg.progress)


def train_generator(
    cfg: GeneratorTrainingConfig,
    *,
    images: torch.Tensor | None = None,
    teacher: Teacher | None = None,
) -> GeneratorTrainingResult:
    """Train (or resume) a StyleGAN2 per ``cfg``. ``images`` (uint8 ``[N,C,R,R]``) bypasses ``cfg.data``."""
    device = resolve_device(local_device(cfg.device))
    ctx = init_distributed(device)
    run_dir = prepare_run_dir(Path(cfg.run_dir), cfg, ctx)
    torch.manual_seed(cfg.seed)

    if cfg.init_from:
        gan = load_gan(cfg.init_from, with_discriminator=True)
        G = gan.generator.train().requires_grad_(True)
        D = gan.discriminator
    else:
        G = Generator(GeneratorConfig(resolution=cfg.resolution, img_channels=cfg.img_channels, z_dim=cfg.z_dim, w_dim=cfg.w_dim,
                      mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base, channel_max=cfg.channel_max))
        D = None
    if D is None:
        D = Discriminator(DiscriminatorConfig(resolution=cfg.resolution, img_channels=cfg.img_channels,
                          channel_base=cfg.d_channel_base or cfg.channel_base,
                          channel_max=cfg.d_channel_max or cfg.channel_max))
    G, D = G.to(device).train(), D.to(device).train().requires_grad_(True)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    ctx.broadcast_parameters(G)
    ctx.broadcast_parameters(D)

    if cfg.distill_steps and teacher is None:
        teacher, teacher_z = build_teacher(cfg.distill_teacher, device)
        if teacher_z != G.z_dim:
            raise ValueError(f"teacher {cfg.distill_teacher!r} takes z of {teacher_z} dims but z_dim={G.z_dim}")

    g_sched = _Schedule(cfg.lr_g, cfg.betas, cfg.pl_interval if cfg.pl_weight > 0 else 0)
    d_sched = _Schedule(cfg.lr_d, cfg.betas, cfg.r1_interval if cfg.r1_gamma > 0 else 0)
    opt_g = torch.optim.Adam(G.parameters(), eps=1e-8, **g_sched.params())
    opt_d = torch.optim.Adam(D.parameters(), eps=1e-8, **d_sched.params())
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")
    pl_mean = torch.zeros([], device=device)

    modules = {"G": G, "D": D, "G_ema": G_ema}
    optimizers = {"G": opt_g, "D": opt_d}
    start_step, position, cur_nimg = 0, 0, 0
    if cfg.resume:
        resumed = resume_latest(run_dir / "checkpoints", modules=modules, optimizers=optimizers, scaler=scaler)
        if resumed is not None:
            start_step, progress = resumed
            position, cur_nimg = progress["position"], progress["cur_nimg"]
            pl_mean.fill_(progress.get("pl_mean", 0.0))

    if images is None:
        images = _load_images(cfg)
    assert images.dtype == torch.uint8 and images.shape[1:] == (cfg.img_channels, cfg.resolution, cfg.resolution), (
        f"images must be uint8 [N,{cfg.img_channels},{cfg.resolution},{cfg.resolution}], got {images.dtype} "
        f"{tuple(images.shape)}"
    )
    local_bs = ctx.local_batch_size(cfg.batch_size)
    if local_bs % cfg.grad_accum:
        raise ValueError(f"per-rank batch {local_bs} is not divisible by grad_accum={cfg.grad_accum}")
    micro = local_bs // cfg.grad_accum
    sampler = BatchSampler(len(images), cfg.batch_size, seed=cfg.seed, position=position)
    run_log = RunLogger(run_dir, enabled=ctx.is_main, tensorboard=cfg.tensorboard, start_step=start_step)
    sample_z = torch.randn(16, G.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 12345)).to(device)

    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (cfg.progress and ctx.is_main),
               desc="train generator", mininterval=5.0)
    t0 = time.perf_counter()
    for step in range(start_step, cfg.steps):
        distilling = step < cfg.distill_steps
        gen = step_generator(cfg.seed, step)
        idx = sampler.next()
        real_all = uint8_to_float(images[idx])
        if cfg.hflip:
            real_all = random_hflip(real_all, gen)
        z_all = torch.randn(cfg.batch_size, G.z_dim, generator=gen)
        z_d_all = torch.randn(cfg.batch_size, G.z_dim, generator=gen)
        real = ctx.shard(real_all).to(device)
        z, z_d = ctx.shard(z_all).to(device), ctx.shard(z_d_all).to(device)
        stats: dict[str, float] = {}

        # --- generator -----------------------------------------------------------------------------
        requires_grad(G, True)
        requires_grad(D, False)
        opt_g.zero_grad(set_to_none=True)
        if distilling:
            for group in opt_g.param_groups:
                group["lr"] = cfg.distill_lr
        elif step == cfg.distill_steps and cfg.distill_steps:
            for group in opt_g.param_groups:
                group.update(g_sched.params())
        for m in range(cfg.grad_accum):
            zm = z[m * micro : (m + 1) * micro]
            with autocast(device, cfg.precision):
                if distilling:
                    with torch.no_grad():
                        target = teacher(zm)
                    fake = G.synthesis(G.mapping(zm, update_w_avg=True))
                    loss = F.l1_loss(fake, target) + F.mse_loss(fake, target)
                    stats["loss/distill"] = float(loss.detach())
                else:
                    ws = _mix_styles(G, zm, cfg.style_mixing, gen, update_w_avg=True)
                    loss = F.softplus(-D(G.synthesis(ws, noise_mode=cfg.noise_mode))).mean()
                    stats["loss/G"] = float(loss.detach())
            scaler.scale(loss / cfg.grad_accum).backward()
        ctx.all_reduce_gradients(G.parameters())
        scaler.step(opt_g)
        scaler.update()

        # --- generator path-length regularisation (lazy) ----------------------------------------------
        if not distilling and cfg.pl_weight > 0 and step % cfg.pl_interval == 0:
            opt_g.zero_grad(set_to_none=True)
            n = max(micro // 2, 1)
            ws = _mix_styles(G, z[:n], cfg.style_mixing, gen, update_w_avg=False)
            img = G.synthesis(ws, noise_mode=cfg.noise_mode)
            noise = torch.randn(img.shape, generator=gen).to(device) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            pl_mean.copy_(pl_mean.lerp(ctx.all_reduce_mean(lengths.mean().detach()), cfg.pl_decay))
            pl_penalty = (lengths - pl_mean).square().mean()
            (pl_penalty * cfg.pl_weight * cfg.pl_interval).backward()
            ctx.all_reduce_gradients(G.parameters())
            opt_g.step()
            stats["loss/pl"] = float(pl_penalty.detach())

        # --- discriminator -------------------------------------------------------------------------
        if not distilling or cfg.distill_train_d:
            requires_grad(G, False)
            requires_grad(D, True)
            opt_d.zero_grad(set_to_none=True)
            for m in range(cfg.grad_accum):
                sl = slice(m * micro, (m + 1) * micro)
                with autocast(device, cfg.precision):
                    with torch.no_grad():
                        fake = G.synthesis(_mix_styles(G, z_d[sl], cfg.style_mixing, gen, update_w_avg=False),
                                           noise_mode=cfg.noise_mode)
                    loss_fake = F.softplus(D(fake)).mean()
                    loss_real = F.softplus(-D(real[sl])).mean()
                    loss = loss_fake + loss_real
                scaler.scale(loss / cfg.grad_accum).backward()
                stats["loss/D"] = float(loss.detach())
            ctx.all_reduce_gradients(D.parameters())
            scaler.step(opt_d)
            scaler.update()

            if cfg.r1_gamma > 0 and step % cfg.r1_interval == 0:
                opt_d.zero_grad(set_to_none=True)
                real_r = real.detach().requires_grad_(True)
                logits = D(real_r)
                (grad,) = torch.autograd.grad(logits.sum(), real_r, create_graph=True)
                r1 = grad.square().sum(dim=[1, 2, 3]).mean()
                (r1 * (cfg.r1_gamma / 2) * cfg.r1_interval).backward()
                ctx.all_reduce_gradients(D.parameters())
                opt_d.step()
                stats["loss/r1"] = float(r1.detach())

        # --- EMA -----------------------------------------------------------------------------------
        cur_nimg += cfg.batch_size
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch_size / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)

        window.append(stats)
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            summary = mean_dict(window)
            summary["speed/img_per_s"] = cfg.batch_size * len(window) / max(time.perf_counter() - t0, 1e-9)
            t0, window = time.perf_counter(), []
            history.append({"step": done, **summary})
            run_log.scalars(done, summary)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in summary.items()}, refresh=False)
        if done % cfg.sample_every == 0 or done == cfg.steps:
            with torch.no_grad():
                run_log.images(done, "samples", G_ema(sample_z), nrow=8)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ctx.check_in_sync(G, "G")
            ctx.check_in_sync(D, "D")
        if ctx.is_main and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            save_checkpoint(run_dir / "checkpoints", done, modules=modules, optimizers=optimizers, scaler=scaler,
                            progress={"position": sampler.position, "cur_nimg": cur_nimg,
                                      "pl_mean": float(pl_mean)}, keep=cfg.keep_checkpoints)
    bar.close()
    run_log.close()

    final = None
    if ctx.is_main:
        final = run_dir / "final"
        save_gan(final, G_ema.cpu(), D.cpu().eval())
        logger.info("wrote the trained generator to %s", final)
    ctx.barrier()
    return GeneratorTrainingResult(run_dir=run_dir, final_model=final, steps=cfg.steps, history=history)
