"""E2Style's trainer, on the shared loop: one stage per run, earlier stages frozen.

As the official code (``training/coach.py``, reference §6.3): stage 1 trains the first encoder; stage t > 1 loads
the model of stage t−1 (``init_from``), freezes its stages (no gradients, eval mode, so BatchNorm keeps its running
statistics) and trains a new refinement encoder on ``cat(x, pool(ŷ_{t−1}))``, whose trunk starts from
``backbone_init`` but for its 6-channel stem, which keeps its own initialisation. The loss is on the last stage's
image: L2 1.0, LPIPS 0.8, the multi-layer identity loss 0.5 and the multi-layer face-parsing loss 1.0 (official
weights). Offline, LPIPS is replaced by the discriminator-feature loss (docs/losses.md), the identity levels come
from SFace, and the parsing loss is off unless ``parsing_model_path`` names the official ``parsing.pth``; the run
log and the model card say so.

``task``: a restoration task (``inpainting``, ``sr2``..``sr32``, ``colorization``, ``denoising``; ``sr1,2,4,8,16,32``
or ``sr`` draws the factor per image, as the official super-resolution data): the input is degraded on the fly and
the clean image is the target (official extra for super-resolution: the w-norm regulariser, ``w_norm_weight``
0.005).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config_base import MAX_STAGES, check_count
from ..data.degradations import degrade_at, get_degradation
from ..errors import InputError
from ..methods import InversionResult
from ..methods.e2style import E2Style
from ..models.encoders import E2StyleConfig, E2StyleEncoderConfig, E2StyleEncoders, TrunkConfig
from .distributed import DistributedContext
from .encoders import EncoderTask, EncoderTrainingConfig, trained_bundle
from .loop import Batch, TrainingResult, fit

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class E2StyleTrainingConfig(EncoderTrainingConfig):
    """``stage``: the stage this run trains (1, 2, 3, ...); stage > 1 needs ``init_from`` (the bundle of the run that
    trained stage − 1). ``pool_sizes``: the heads' pooling, deepest first (official 7, 7, 7; the paper's 7, 5, 3).
    ``multilayer_id_weight`` (official 0.5) with ``id_model``; ``parsing_weight`` (official 1.0) needs
    ``parsing_model_path``. ``task``: a restoration task, or None for inversion."""

    stage: int = 1
    init_from: str | None = None
    trunk: TrunkConfig = TrunkConfig("ir_se", 50)
    pool_sizes: tuple[int, int, int] = (7, 7, 7)
    optimizer: str = "ranger"
    lpips_weight: float = 0.0  # official 0.8 with LPIPS-alex; 0 here unless its files are installed
    multilayer_id_weight: float = 0.0  # official 0.5
    parsing_weight: float = 0.0  # official 1.0
    parsing_model_path: str | None = None
    w_norm_weight: float = 0.0  # official 0.005 for super-resolution (and sketch / segmentation), 0 for inversion
    task: str | None = None
    random_noise: bool = True  # the official coach's training forwards draw new noise maps

    @property
    def compares_identities(self) -> bool:
        return super().compares_identities or self.multilayer_id_weight > 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("stage", self.stage, MAX_STAGES)  # (found once the models were built, as "stages", naming no file)
        if self.stage > 1 and self.init_from is None:
            raise ValueError(f"stage {self.stage} refines a trained model: set init_from to stage {self.stage - 1}'s "
                             "run (its final/ or best/ folder)")
        if self.stage == 1 and self.init_from is not None:  # (it was ignored: stage 1 starts from the average code)
            raise ValueError("init_from: stage 1 trains its encoder from the start; init_from is the run of the stage "
                             "before, for stage 2 and up (set stage, or leave init_from out)")
        if self.task is not None:
            get_degradation(self.task)  # an unknown task is an error now
            if self.adv_weight > 0:  # (its encoder loss left the term out, and D took the degraded inputs for real)
                raise ValueError(f"task {self.task}: a restoration run has no adversarial stage (E2Style's has none): "
                                 "set adv_weight to 0")
        if self.content_rows is not None:
            raise ValueError("E2Style reads square images (the official code has no non-square domain such as cars); "
                             "leave content_rows out, or train pSp, e4e, HyperStyle or HyperInverter")
        if self.parsing_weight > 0 and self.parsing_model_path is None:
            raise ValueError("parsing_weight > 0 needs parsing_model_path (E2Style's parsing.pth)")


class E2StyleTask(EncoderTask):
    """Trains the last stage of ``method``; earlier stages are frozen parts of it."""

    def __init__(self, cfg: E2StyleTrainingConfig, device: torch.device, **kwargs) -> None:
        super().__init__(cfg, device, **kwargs)
        self.degrade = None
        if cfg.task:
            size, antialias = self.method.encoder_resolution, self.method.encoder_antialias  # (as the encoder reads)
            self.degrade = lambda x, gen: degrade_at(x, cfg.task, size, gen, antialias=antialias)
        self.multilayer_id = self.parsing = None
        if cfg.multilayer_id_weight > 0:
            from ..losses.multilayer import multilayer_identity_loss

            self.multilayer_id = multilayer_identity_loss(cfg.id_model, crop=cfg.id_crop, device=device,
                                                          path=cfg.id_model_path)
        if cfg.parsing_weight > 0:
            from ..losses.multilayer import MultiLayerLoss
            from ..models.parsing import load_parsing_unet

            unet = load_parsing_unet(cfg.parsing_model_path, device)
            self.parsing = MultiLayerLoss(unet, unet.feature_levels, _parsing_input)
        else:
            logger.info("E2Style's multi-layer face-parsing loss is off: its network (parsing.pth) is not installed "
                        "here (set parsing_weight and parsing_model_path to use it)")

    def batch(self, real: torch.Tensor, gen: torch.Generator, step: int) -> Batch:
        batch = super().batch(real, gen, step)
        if self.degrade is not None:
            batch["target"] = batch["x"]
            batch["x"] = self.degrade(batch["x"], gen)
        return batch

    def loss(self, phase, batch: Batch, *, step: int, gen: torch.Generator):
        if phase.name == "encoder" and "target" in batch:
            loss, stats, _ = self.reconstruction(batch["x"], target=batch["target"], gen=gen)
            stats["loss/total"] = float(loss.detach())
            return loss, stats
        return super().loss(phase, batch, step=step, gen=gen)

    def _degraded(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) of held-out uint8 images: degraded with a fixed seed, so validation compares alike."""
        x = images.float().div(127.5).sub(1).to(self.device)
        if self.degrade is None:
            return x, x
        return self.degrade(x, torch.Generator().manual_seed(0)), x

    @torch.no_grad()
    def validation_loss(self, images: torch.Tensor) -> float:
        self.method.eval()
        total = 0.0
        for i in range(0, len(images), 16):
            x, target = self._degraded(images[i : i + 16])
            total += float(self.compare(self.method(x, **self.options).image, target)[0]) * len(x)
        self.trainable.train()
        return total / len(images)

    @torch.no_grad()
    def samples(self, images: torch.Tensor) -> tuple[str, torch.Tensor, int]:
        """input (degraded, for a restoration task) | stage 1 | the last stage | the target."""
        self.method.eval()
        x, target = self._degraded(images[:8])
        out = self.method(x, **self.options)
        self.trainable.train()
        shown = F.interpolate(x, size=target.shape[-2:], mode="nearest") if x.shape != target.shape else x
        return "input-stage1-final-target", torch.cat([shown, out.initial_image, out.image, target]), len(x)

    def reconstruction(self, x: torch.Tensor, target: torch.Tensor | None = None, *,
                       gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float], InversionResult]:
        cfg, target = self.cfg, x if target is None else target
        out = self.method(x, **self.options, **self.noise(gen))
        loss, stats = self.compare(out.image, target)
        if self.multilayer_id is not None or self.parsing is not None:  # (a resize of the target per step otherwise)
            # The official coach computes every term on its 256-px pooled output, the multi-layer ones too.
            image, reference = self.criterion.at_loss_resolution(out.image, target)
        if self.multilayer_id is not None:
            n = cfg.id_samples or len(x)
            identity = self.multilayer_id(image[:n], reference[:n]).mean()
            loss = loss + cfg.multilayer_id_weight * identity
            stats["loss/multilayer_id"] = float(identity.detach())
        if cfg.w_norm_weight > 0:
            w_norm = (out.ws - self.method.generator.w_avg).flatten(1).norm(dim=1).mean()
            loss = loss + cfg.w_norm_weight * w_norm
            stats["loss/w_norm"] = float(w_norm.detach())
        if self.parsing is not None:
            parsing = self.parsing(image, reference).mean()
            loss = loss + cfg.parsing_weight * parsing
            stats["loss/parsing"] = float(parsing.detach())
        return loss, stats, out


def _parsing_input(x: torch.Tensor) -> torch.Tensor:
    """The parsing network reads 256-px images in [-1, 1] directly."""
    if x.shape[-1] == 256:
        return x
    mode = "area" if x.shape[-1] > 256 else "bilinear"
    return F.interpolate(x, size=(256, 256), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))


def e2style_task(cfg: E2StyleTrainingConfig, device: torch.device, ctx: DistributedContext) -> E2StyleTask:
    gan = cfg.load_generator(device, adversarial=cfg.adversarial)
    G = gan.generator
    config = E2StyleConfig(encoder=E2StyleEncoderConfig(
        trunk=cfg.trunk, in_channels=G.config.img_channels, input_size=cfg.encoder_resolution, n_styles=G.num_ws,
        w_dim=G.w_dim, pool_sizes=cfg.pool_sizes), stages=cfg.stage)
    encoders = E2StyleEncoders(config).to(device)
    if cfg.stage == 1:
        with torch.no_grad():
            encoders.latent_avg.copy_(G.w_avg.expand_as(encoders.latent_avg))
    else:
        bundle = trained_bundle(cfg.init_from, G, device, generator_name=cfg.generator,
                                remedy="every stage refines the codes of the stages before, for one generator")
        if "e2style" not in bundle.methods:
            raise InputError(cfg.init_from, f"holds no trained E2Style (it has {', '.join(bundle.methods)}): give "
                             f"init_from the final/ folder of stage {cfg.stage - 1} of this E2Style run")
        previous_method = bundle.inverter("e2style")
        if previous_method.task != cfg.task:
            raise ValueError(f"{cfg.init_from} was trained for task {previous_method.task!r}, this stage for "
                             f"{cfg.task!r}")
        previous = previous_method.encoders
        if previous.stages != cfg.stage - 1:
            raise ValueError(f"{cfg.init_from} holds {previous.stages} E2Style stages; stage {cfg.stage} refines "
                             f"a model of {cfg.stage - 1}")
        if previous.config.encoder != config.encoder:
            raise ValueError(f"{cfg.init_from}'s encoders are built differently from this config's "
                             f"({previous.config.encoder} vs {config.encoder})")
        missing, unexpected = encoders.load_state_dict(previous.state_dict(), strict=False)
        new_stage = f"encoder_refinestage_list.{cfg.stage - 2}."
        assert not unexpected and all(k.startswith(new_stage) for k in missing), (missing, unexpected)
    encoders.requires_grad_(False).eval()  # earlier stages: frozen, BatchNorm on its running statistics
    trainable = encoders.stage(cfg.stage - 1).requires_grad_(True)
    cfg.init_trunk(trainable, skip_input_layer=cfg.stage > 1)  # a refinement stage's 6-channel stem: as built
    method = E2Style(G, encoders=encoders, encoder_resolution=cfg.encoder_resolution, task=cfg.task)
    return E2StyleTask(cfg, device, method=method, trainable=trainable, gan=gan, bundle={"e2style": method},
                       synthetic=False)


def train_e2style(cfg: E2StyleTrainingConfig, *, images: torch.Tensor | None = None,
                  val_images: torch.Tensor | None = None) -> TrainingResult:
    """Train (or resume) one E2Style stage per ``cfg``."""
    return fit(cfg, lambda device, ctx: e2style_task(cfg, device, ctx), images=images, val_images=val_images)
