"""Trainers for HyperInverter's two phases, sharing one loop.

Phase I (``train_w_encoder``): E1 with L2 + perceptual + identity losses on real images, optionally mixed
with synthetic pairs ``(w, G(w))`` and a latent loss, since G is known.
Phase II (``train_hypernetwork``): E1 and G frozen; the feature encoder and the hypernetworks learn with L2 + perceptual +
identity, then (from ``adv_start``) a non-saturating adversarial loss against the generator's own
discriminator, fine-tuned with lazy R1, as in the official schedule.

The best model is chosen on a validation split of the training folder, never on the test set.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..convert.gan_files import load_gan
from ..device import resolve_device
from ..methods.hyperinverter import HyperInverter
from ..methods.phase1 import Phase1
from ..models.encoders import FeatureEncoder, FeatureEncoderConfig, WEncoder, WEncoderConfig
from ..models.hypernetwork import HyperNetwork
from ..pipeline import InversionPipeline, save_pipeline
from .checkpointing import resume_latest, save_checkpoint
from .distributed import init_distributed, local_device
from .run import (
    PRECISIONS,
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


@dataclass
class InversionTrainingConfig:
    run_dir: str
    data: str
    generator: str  # our GAN folder (with discriminator) or an NVIDIA pickle
    steps: int
    # encoders
    encoder_resolution: int = 256
    backbone: str = "ir_se"
    backbone_depth: int | None = None
    backbone_units: tuple[int, int, int, int] | None = None
    backbone_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    # Pretrained trunk for the encoder being trained (the official code starts both encoders from the ArcFace IR-SE50,
    # model_ir_se50.pth, or from torchvision's ImageNet ResNet-34); None = random initialisation.
    backbone_init: str | None = None
    # Phase II
    w_encoder: str | None = None  # the Phase I pipeline folder (required for Phase II)
    feature_channels: int = 512
    feature_size: int = 8
    hidden_dim: int = 128
    regressor_width: int = 64
    targets: str = "conv_without_bias"
    # losses
    l2_weight: float = 1.0
    lpips_weight: float = 0.0
    lpips_net: str = "alex"
    id_weight: float = 0.0
    id_model: str = "sface"  # "sface" (offline, needs the [id] extra) or "arcface" (model_ir_se50.pth)
    id_model_path: str | None = None  # the SFace ONNX / ArcFace .pth file; None = the default location
    # Face box (top, bottom, left, right) as fractions of the image: the pSp/FFHQ crop (35:223, 32:220 at
    # 256 px, = losses.identity.FFHQ_CROP); None = the whole image (for faces framed tighter than FFHQ).
    id_crop: tuple[float, float, float, float] | None = (35 / 256, 223 / 256, 32 / 256, 220 / 256)
    id_samples: int | None = None  # identity loss on the first N samples of each batch only (it is costly on CPU)
    dfeat_weight: float = 0.0  # discriminator-feature perceptual loss (offline)
    # Compare images average-pooled to this size (the official code pools to 256 before L2, LPIPS and ID);
    # None = full resolution. The adversarial loss always sees full resolution.
    loss_resolution: int | None = None
    latent_weight: float = 1.0  # Phase I, synthetic pairs only
    synthetic_fraction: float = 0.0  # Phase I: share of each batch made of synthetic pairs
    adv_weight: float = 0.0  # Phase II adversarial stage
    adv_start: int | None = None
    lr_d: float = 1e-4
    r1_gamma: float = 10.0
    r1_interval: int = 16
    # optimisation
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    hflip: bool = True
    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    val_fraction: float = 0.05
    val_every: int = 500
    val_max_images: int = 256
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: bool = True
    progress: bool = True
    tensorboard: bool = True
    preload: bool = True  # False: read each batch from disk (data sets larger than memory)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if not 0 <= self.synthetic_fraction <= 1:
            raise ValueError("synthetic_fraction must be in [0, 1]")
        if self.adv_weight > 0 and self.adv_start is None:
            raise ValueError("adv_weight > 0 needs adv_start (the step where the adversarial stage begins)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.id_samples is not None and self.id_samples < 1:
            raise ValueError("id_samples must be >= 1 (or None for the whole batch)")


@dataclass
class InversionTrainingResult:
    run_dir: Path
    final_model: Path | None
    best_model: Path | None
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


def _backbone_kwargs(cfg: InversionTrainingConfig, in_channels: int) -> dict:
    return dict(backbone=cfg.backbone, depth=cfg.backbone_depth, units=cfg.backbone_units,
                widths=cfg.backbone_widths, in_channels=in_channels)


class ReconstructionLoss(torch.nn.Module):
    """Weighted L2 + LPIPS + identity + discriminator-feature terms; returns the total and its parts."""

    def __init__(self, cfg: InversionTrainingConfig, discriminator, device: torch.device) -> None:
        super().__init__()
        self.cfg = cfg
        self.lpips = self.identity = self.dfeat = None
        if cfg.lpips_weight > 0:
            from ..losses.lpips import LPIPS

            self.lpips = LPIPS.from_files(cfg.lpips_net).to(device)
        if cfg.id_weight > 0:
            from ..losses.identity import IdentityLoss, load_identity_embedder

            embedder = load_identity_embedder(cfg.id_model, device, path=cfg.id_model_path)
            self.identity = IdentityLoss(embedder, crop=cfg.id_crop).to(device)
        if cfg.dfeat_weight > 0:
            if discriminator is None:
                raise ValueError("dfeat_weight > 0 needs a generator file that holds its discriminator")
            from ..losses.discriminator_features import DiscriminatorFeatureLoss

            self.dfeat = DiscriminatorFeatureLoss(discriminator).to(device)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        # Losses in fp32 whatever the autocast: small differences of nearly equal images lose bits in bf16.
        output, target = output.float(), target.float()
        full_output, full_target = output, target  # the discriminator features need its own resolution
        if cfg.loss_resolution is not None and output.shape[-1] > cfg.loss_resolution:
            output = F.adaptive_avg_pool2d(output, cfg.loss_resolution)
            target = F.adaptive_avg_pool2d(target, cfg.loss_resolution)
        parts: dict[str, torch.Tensor] = {"l2": F.mse_loss(output, target)}
        total = cfg.l2_weight * parts["l2"]
        if self.lpips is not None:
            parts["lpips"] = self.lpips(output, target).mean()
            total = total + cfg.lpips_weight * parts["lpips"]
        if self.identity is not None:
            n = cfg.id_samples or output.shape[0]
            parts["id"] = self.identity(output[:n], target[:n]).mean()
            total = total + cfg.id_weight * parts["id"]
        if self.dfeat is not None:
            parts["dfeat"] = self.dfeat(full_output, full_target).mean()
            total = total + cfg.dfeat_weight * parts["dfeat"]
        return total, {f"loss/{k}": float(v.detach()) for k, v in parts.items()}


def _init_backbone(encoder: torch.nn.Module, cfg: InversionTrainingConfig) -> None:
    """Load ``cfg.backbone_init`` into the encoder's trunk (strictly; a 1-channel stem sums the RGB kernel)."""
    if cfg.backbone_init is None:
        return
    from ..convert.backbones import load_ir_se_trunk, load_torchvision_resnet

    load = load_ir_se_trunk if cfg.backbone == "ir_se" else load_torchvision_resnet
    skipped = load(encoder, cfg.backbone_init, adapt_input_channels=True)
    logger.info("encoder trunk initialised from %s (skipped %d file keys)", cfg.backbone_init, len(skipped))


def _load_split(cfg: InversionTrainingConfig, resolution: int, channels: int, split: str) -> torch.Tensor:
    from ..data.folder import ImageFolderDataset
    dataset = ImageFolderDataset(cfg.data, resolution=resolution, channels=channels, split=split,
                                 val_fraction=cfg.val_fraction, seed=cfg.seed)
    logger.info("%s images: %s", split, dataset)
    # The validation split is small and read every val_every steps: always in memory.
    return training_images(dataset, preload=cfg.preload or split == "val", progress=cfg.progress)


def _with_phase1(model: Phase1) -> dict[str, Phase1]:
    """The methods a trained model's bundle holds: Phase I alone, and HyperInverter when Phase II is trained."""
    phase1 = Phase1(model.generator, w_encoder=model.w_encoder, encoder_resolution=model.encoder_resolution)
    return {"phase1": phase1} if type(model) is Phase1 else {"phase1": phase1, model.name: model}


def _fit(cfg: InversionTrainingConfig, phase: int, *, images: torch.Tensor | None,
         val_images: torch.Tensor | None) -> InversionTrainingResult:
    device = resolve_device(local_device(cfg.device))
    ctx = init_distributed(device)
    run_dir = prepare_run_dir(Path(cfg.run_dir), cfg, ctx)
    torch.manual_seed(cfg.seed)

    need_d = cfg.dfeat_weight > 0 or (phase == 2 and cfg.adv_weight > 0)
    gan = load_gan(cfg.generator, with_discriminator=need_d, device=device)
    if need_d and gan.discriminator is None:
        raise ValueError(f"{cfg.generator} holds no discriminator, but dfeat_weight > 0 or the adversarial stage needs "
                         "one: use our GAN folder or an NVIDIA pickle with D")
    G = gan.generator
    channels = G.config.img_channels
    if phase == 1:
        model = Phase1(G, w_encoder=WEncoder(WEncoderConfig(**_backbone_kwargs(cfg, channels), w_dim=G.w_dim)),
                       encoder_resolution=cfg.encoder_resolution)
        trainable = model.w_encoder
        _init_backbone(model.w_encoder, cfg)
    else:
        if cfg.w_encoder is None:
            raise ValueError("Phase II needs w_encoder: the folder of a trained Phase I model")
        phase1 = InversionPipeline.from_pretrained(cfg.w_encoder, device=device).inverter("phase1")
        feature_encoder = FeatureEncoder(FeatureEncoderConfig(**_backbone_kwargs(cfg, channels), input_size=phase1.encoder_resolution,
                                           n_styles=G.num_ws, feature_channels=cfg.feature_channels,
                                           feature_size=cfg.feature_size))
        _init_backbone(feature_encoder, cfg)
        hypernetwork = HyperNetwork.from_generator(G, targets=cfg.targets, feature_channels=cfg.feature_channels,
                                                   feature_size=cfg.feature_size, hidden_dim=cfg.hidden_dim,
                                                   inner_channels=cfg.regressor_width)
        model = HyperInverter(G, w_encoder=phase1.w_encoder.requires_grad_(False),
                              feature_encoder=feature_encoder, hypernetwork=hypernetwork,
                              encoder_resolution=phase1.encoder_resolution)
        trainable = torch.nn.ModuleDict({"feature_encoder": feature_encoder, "hypernetwork": hypernetwork})
    model = model.to(device)
    trainable.train().requires_grad_(True)
    ctx.broadcast_parameters(trainable)
    criterion = ReconstructionLoss(cfg, gan.discriminator, device)

    opt = torch.optim.Adam(trainable.parameters(), lr=cfg.lr)
    D, opt_d = None, None
    if phase == 2 and cfg.adv_weight > 0:
        D = copy.deepcopy(gan.discriminator).train().requires_grad_(True)
        ratio = cfg.r1_interval / (cfg.r1_interval + 1)
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d * ratio, betas=(0.0, 0.99**ratio))
    modules = {"trainable": trainable, **({"D": D} if D is not None else {})}
    optimizers = {"main": opt, **({"D": opt_d} if opt_d is not None else {})}
    # Loss scaling only where fp16 gradients can underflow (CUDA); bf16 has fp32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")

    start_step, position, best_val = 0, 0, float("inf")
    if cfg.resume:
        resumed = resume_latest(run_dir / "checkpoints", modules=modules, optimizers=optimizers, scaler=scaler)
        if resumed is not None:
            start_step, progress = resumed
            position, best_val = progress["position"], progress.get("best_val", float("inf"))

    if images is None:
        images = _load_split(cfg, G.resolution, channels, "train")
    if val_images is None and cfg.val_fraction > 0:
        val_images = _load_split(cfg, G.resolution, channels, "val")
    local_bs = ctx.local_batch_size(cfg.batch_size)
    micro = local_bs // cfg.grad_accum
    if micro * cfg.grad_accum != local_bs:
        raise ValueError(f"per-rank batch {local_bs} is not divisible by grad_accum={cfg.grad_accum}")
    sampler = BatchSampler(len(images), cfg.batch_size, seed=cfg.seed, position=position)
    run_log = RunLogger(run_dir, enabled=ctx.is_main, tensorboard=cfg.tensorboard, start_step=start_step)
    n_show = min(8, len(val_images) if val_images is not None else len(images))
    show = uint8_to_float((val_images if val_images is not None else images)[:n_show]).to(device)

    def validate() -> float:
        model.eval()
        with torch.no_grad():
            x = uint8_to_float(val_images[: cfg.val_max_images]).to(device)
            losses = [criterion(model(x[i : i + 16]).image, x[i : i + 16])[0] * len(x[i : i + 16])
                      for i in range(0, len(x), 16)]
        trainable.train()
        return float(sum(losses) / len(x))

    history, window = [], []
    best_path = run_dir / "best"
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (cfg.progress and ctx.is_main),
               desc=f"train {'w-encoder' if phase == 1 else 'hypernetwork'}", mininterval=5.0)
    t0 = time.perf_counter()
    for step in range(start_step, cfg.steps):
        gen = step_generator(cfg.seed, step)
        real_all = uint8_to_float(images[sampler.next()])
        if cfg.hflip:
            real_all = random_hflip(real_all, gen)
        n_syn = round(cfg.synthetic_fraction * cfg.batch_size) if phase == 1 else 0
        z_all = torch.randn(n_syn, G.z_dim, generator=gen)
        x_all = real_all
        w_target_all = None
        if n_syn:
            with torch.no_grad():
                w_target_all = G.mapping(z_all.to(device)).cpu()
                synthetic = G.synthesis(w_target_all.to(device), noise_mode="const").cpu()
            x_all = torch.cat([real_all[n_syn:], synthetic])
        x = ctx.shard(x_all).to(device)
        is_syn = ctx.shard(torch.arange(cfg.batch_size) >= cfg.batch_size - n_syn).to(device)
        w_target = None
        if w_target_all is not None:
            padded = torch.zeros(cfg.batch_size, *w_target_all.shape[1:])
            padded[cfg.batch_size - n_syn :] = w_target_all
            w_target = ctx.shard(padded).to(device)
        adversarial = D is not None and step >= cfg.adv_start
        stats: dict[str, float] = {}

        opt.zero_grad(set_to_none=True)
        for m in range(cfg.grad_accum):
            # Strided like the rank shards: a micro-batch holds the same samples as a rank would, so BatchNorm
            # statistics (and thus the gradients) of 1 process x N micro-batches equal N ranks x 1.
            sl = slice(m, None, cfg.grad_accum)
            with autocast(device, cfg.precision):
                out = model(x[sl])
            loss, parts = criterion(out.image, x[sl])
            stats.update(parts)
            if phase == 1 and w_target is not None and bool(is_syn[sl].any()):
                sel = is_syn[sl]
                latent = F.mse_loss(out.ws[sel], w_target[sl][sel])
                loss = loss + cfg.latent_weight * latent
                stats["loss/latent"] = float(latent.detach())
            if adversarial:
                requires = [p.requires_grad for p in D.parameters()]
                D.requires_grad_(False)
                with autocast(device, cfg.precision):
                    adv = F.softplus(-D(out.image)).float().mean()
                for p, r in zip(D.parameters(), requires):
                    p.requires_grad_(r)
                loss = loss + cfg.adv_weight * adv
                stats["loss/adv"] = float(adv.detach())
            scaler.scale(loss / cfg.grad_accum).backward()
            stats["loss/total"] = float(loss.detach())
        scaler.unscale_(opt)
        ctx.all_reduce_gradients(trainable.parameters())
        scaler.step(opt)
        scaler.update()

        if adversarial:
            D.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            with torch.no_grad(), autocast(device, cfg.precision):
                fake = model(x).image
            with autocast(device, cfg.precision):
                # The official Phase II discriminator loss carries a factor 1/2.
                d_loss = 0.5 * (F.softplus(D(fake)).float().mean() + F.softplus(-D(x)).float().mean())
            scaler.scale(d_loss).backward()
            scaler.unscale_(opt_d)
            ctx.all_reduce_gradients(D.parameters())
            scaler.step(opt_d)
            scaler.update()
            stats["loss/D"] = float(d_loss.detach())
            if step % cfg.r1_interval == 0:
                opt_d.zero_grad(set_to_none=True)
                real_r = x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(D(real_r).sum(), real_r, create_graph=True)
                r1 = grad.square().sum(dim=[1, 2, 3]).mean()
                (r1 * cfg.r1_gamma / 2 * cfg.r1_interval).backward()
                ctx.all_reduce_gradients(D.parameters())
                opt_d.step()

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
        if val_images is not None and (done % cfg.val_every == 0 or done == cfg.steps):
            val = validate()
            history.append({"step": done, "val/loss": val})
            run_log.scalars(done, {"val/loss": val})
            if val < best_val:
                best_val = val
                if ctx.is_main:
                    save_pipeline(_with_phase1(model), best_path, default_method=model.name)
        if done % cfg.sample_every == 0 or done == cfg.steps:
            model.eval()
            with torch.no_grad():
                out = model(show)
            trainable.train()
            first = out.initial_image if out.initial_image is not None else out.image
            run_log.images(done, "input-phase1-final", torch.cat([show, first, out.image]), nrow=n_show)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ctx.check_in_sync(trainable, "trainable")
            if ctx.is_main:
                save_checkpoint(run_dir / "checkpoints", done, modules=modules, optimizers=optimizers, scaler=scaler,
                                progress={"position": sampler.position, "best_val": best_val},
                                keep=cfg.keep_checkpoints)
    bar.close()
    run_log.close()
    final = None
    if ctx.is_main:
        final = save_pipeline(_with_phase1(model), run_dir / "final", default_method=model.name)
    ctx.barrier()
    return InversionTrainingResult(run_dir, final, best_path if best_path.exists() else None, cfg.steps, history)


def train_w_encoder(cfg: InversionTrainingConfig, *, images: torch.Tensor | None = None,
                    val_images: torch.Tensor | None = None) -> InversionTrainingResult:
    """Phase I: train E1. ``images``/``val_images`` (uint8 ``[N,C,R,R]``) bypass ``cfg.data``."""
    return _fit(cfg, 1, images=images, val_images=val_images)


def train_hypernetwork(cfg: InversionTrainingConfig, *, images: torch.Tensor | None = None,
                       val_images: torch.Tensor | None = None) -> InversionTrainingResult:
    """Phase II: train the feature encoder and the hypernetworks with E1 and G frozen."""
    return _fit(cfg, 2, images=images, val_images=val_images)
