"""What every encoder trainer shares, on the shared loop: an inversion method's trainable parts learn to
reconstruct real images through a frozen generator.

:class:`EncoderTask` runs a phase ``encoder`` (the reconstruction loss of :class:`ReconstructionLoss`, plus a
latent loss on synthetic pairs ``(w, G(w))`` when asked, plus the generator-side adversarial term once the
adversarial stage starts) and, for the adversarial stage, ``D`` and ``D_r1`` on a fine-tuned copy of the
generator's own discriminator. The best model is chosen on a validation split of the training folder, never on
the test set. A method's trainer builds the method and hands it to the task.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..catalogue import generator_path, load_model_gan, model_index
from ..convert.gan_files import LoadedGAN, detect_format
from ..errors import CheckpointError, InputError, naming
from ..io.images import content_of, describe_content_rows
from ..losses.identity import IDENTITY_MODELS
from ..losses.lpips import BACKBONE_FILES
from ..losses.reconstruction import ReconstructionLoss
from ..methods import InversionResult, Inverter
from ..methods.phase1 import Phase1, encoder_input_shape
from ..models.encoders import TrunkConfig
from ..models.stylegan2 import Discriminator, Generator
from ..pipeline import MAX_ENCODER_RESOLUTION, InversionPipeline, check_same_weights, save_pipeline
from .loop import Batch, Phase, RunConfig, TrainingTask, lazy_adam
from .optim import make_optimizer

logger = logging.getLogger(__name__)


def trained_bundle(bundle: str, generator: Generator, device: torch.device, *, generator_name: str, remedy: str
                   ) -> InversionPipeline:
    """The bundle a run starts from (a Phase I, an earlier E2Style stage), which must have been trained with the
    run's ``generator`` (named ``generator_name``; an fp16 copy matches): what was trained for another generator
    gives codes that mean nothing to this one, and the training would go on without a word. ``remedy`` ends the
    error."""
    pipeline = InversionPipeline.from_pretrained(bundle, device=device)
    check_same_weights(generator, pipeline.generator, source=bundle, rtol=1e-3,
                       ours=f"the run's generator ({generator_name})", remedy=remedy)
    return pipeline


def frozen_phase1(bundle: str, generator: Generator, device: torch.device, *, generator_name: str,
                  content_rows: tuple[float, float] | None = None) -> Phase1:
    """The trained Phase I (the W encoder E1) of ``bundle``, frozen, for the methods that start from it (Phase II,
    HyperStyle), which must read the run's ``content_rows``; see :func:`trained_bundle`."""
    remedy = "train Phase I with the run's generator, or give the generator it was trained with"
    pipeline = trained_bundle(bundle, generator, device, generator_name=generator_name, remedy=remedy)
    if "phase1" not in pipeline.methods:
        held = ", ".join(name for name, method in pipeline.methods.items() if type(method).components)
        held = held or "a generator"
        raise InputError(bundle, f"holds no trained Phase I (W encoder), only {held}; give w_encoder the folder "
                         "of a Phase I run (train w-encoder)")
    phase1 = pipeline.inverter("phase1")
    if phase1.content_rows != content_rows:
        raise InputError(bundle, f"its W encoder reads {describe_content_rows(phase1.content_rows)}, the run's "
                         f"images fill {describe_content_rows(content_rows)}: set the run's content_rows to the W "
                         "encoder's, or train Phase I on the run's")
    return phase1.requires_grad_(False)


@dataclass(kw_only=True)
class EncoderTrainingConfig(RunConfig):
    """The run, the frozen generator, the encoders' trunk, the losses (with their weights) and the optional
    synthetic pairs and adversarial stage."""

    # Any generator file or folder, a bundle or a catalogue name (our GAN folder or an NVIDIA pickle has the
    # discriminator that the dfeat and adversarial terms need).
    generator: str
    encoder_resolution: int = 256
    trunk: TrunkConfig = TrunkConfig()
    # A pretrained trunk for the encoder being trained (the official code starts its encoders from the ArcFace
    # IR-SE50, model_ir_se50.pth, or from torchvision's ImageNet ResNet-34); None = random initialisation.
    backbone_init: str | None = None
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
    # Whether the images are aligned faces, which the saved model records (the web page offers face alignment to
    # a model of faces): None takes it from the generator's bundle, else says faces where a loss term compares
    # identities, else leaves it unsaid. Set false for another domain.
    faces: bool | None = None
    latent_weight: float = 1.0  # synthetic pairs only
    synthetic_fraction: float = 0.0  # share of each batch made of synthetic pairs (w, G(w)), where G is known
    adv_weight: float = 0.0  # the adversarial stage
    adv_start: int | None = None
    lr_d: float = 1e-4
    # The discriminator's Adam: the official HyperInverter coach's plain Adam (PyTorch's betas), or StyleGAN2's
    # betas (0, 0.99) with lazy_d, which rescales lr_d and the betas by r1_interval / (r1_interval + 1).
    betas_d: tuple[float, float] = (0.9, 0.999)
    lazy_d: bool = False
    r1_gamma: float = 10.0
    r1_interval: int = 16
    lr: float = 1e-4
    optimizer: str = "adam"  # "adam" (HyperInverter's) or "ranger" (the pSp family's: pSp, e4e, HyperStyle)
    hflip: bool = True
    # The generator draws new noise maps at every training forward (pSp's, e4e's and E2Style's official coaches),
    # or renders with its fixed ones, as at inference (HyperStyle's and HyperInverter's).
    random_noise: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        size = self.encoder_resolution
        if not 16 <= size <= MAX_ENCODER_RESOLUTION or size % 16:  # the trunks halve the input four times
            raise ValueError(f"encoder_resolution must be a multiple of 16 from 16 to {MAX_ENCODER_RESOLUTION}, "
                             f"got {size}")
        height = encoder_input_shape(size, self.content_rows)[0]
        if height % 16:
            raise ValueError(f"the encoders would read content_rows {list(self.content_rows)} at {height}x{size}, "
                             "but the trunks halve heights four times: choose an encoder_resolution that makes the "
                             "height a multiple of 16 (cars' rows: 64, 128, 256)")
        if self.content_rows is not None and self.dfeat_weight > 0:
            raise ValueError("dfeat_weight compares the discriminator's features of whole square images, the other "
                             "losses the content rows only: with content_rows, use l2, lpips or id")
        if self.adv_weight > 0 and self.adv_start is None:
            raise ValueError("adv_weight > 0 needs adv_start (the step where the adversarial stage begins)")
        if self.adv_start is not None and self.adv_start < 0:
            raise ValueError(f"adv_start must be a step (0 or more), got {self.adv_start}")
        if self.optimizer not in ("adam", "ranger"):
            raise ValueError(f"optimizer must be adam or ranger, got {self.optimizer!r}")
        # (checked where the loss was built, after the models: "net must be one of", naming no file nor key)
        if self.lpips_net not in BACKBONE_FILES:
            raise ValueError(f"lpips_net must be one of {sorted(BACKBONE_FILES)}, got {self.lpips_net!r}")
        if self.id_model not in IDENTITY_MODELS:
            raise ValueError(f"id_model must be one of {list(IDENTITY_MODELS)}, got {self.id_model!r}")

    @property
    def adversarial(self) -> bool:
        return self.adv_weight > 0

    def faces_of(self, source: dict) -> bool | None:
        """Whether the run's model is one of faces: as set, else as the generator's bundle ``source`` says, else
        faces where an identity term compares them, else not known (a faces Phase I has no identity term)."""
        if self.faces is not None:
            return self.faces
        return source.get("faces", True if self.compares_identities else None)

    @property
    def compares_identities(self) -> bool:
        """Whether a loss term compares faces' identities (a face recogniser's embeddings), which makes the trained
        model one of faces."""
        return self.id_weight > 0

    def load_generator(self, device: torch.device, *, adversarial: bool) -> LoadedGAN:
        """The frozen generator, with its discriminator when a loss term needs it."""
        need_d = self.dfeat_weight > 0 or adversarial
        # A generator file or folder, a bundle or a catalogue name, as a command's --model takes.
        gan = load_model_gan(self.generator, with_discriminator=need_d, device=device)
        if need_d and gan.discriminator is None:
            raise ValueError(f"{self.generator} holds no discriminator, but dfeat_weight > 0 or the adversarial stage "
                             "needs one: use our GAN folder or an NVIDIA pickle with D")
        return gan

    def reconstruction_loss(self, discriminator: nn.Module | None, device: torch.device, *,
                            antialias_target: bool = False) -> ReconstructionLoss:
        return ReconstructionLoss(l2_weight=self.l2_weight, lpips_weight=self.lpips_weight, lpips_net=self.lpips_net,
                                  id_weight=self.id_weight, id_model=self.id_model, id_model_path=self.id_model_path,
                                  id_crop=self.id_crop, id_samples=self.id_samples, dfeat_weight=self.dfeat_weight,
                                  discriminator=discriminator, loss_resolution=self.loss_resolution,
                                  antialias_target=antialias_target, device=device)

    def init_trunk(self, encoder: nn.Module, *, skip_input_layer: bool = False) -> None:
        """Load ``backbone_init`` into ``encoder``'s trunk, strictly. A 1-channel stem sums the RGB kernel, a
        6-channel one takes it on its first 3 channels; ``skip_input_layer`` (IR-SE only) leaves the stem as built."""
        if self.backbone_init is None:
            return
        from ..convert.backbones import load_ir_se_trunk, load_torchvision_resnet

        if self.trunk.backbone == "ir_se":
            load = functools.partial(load_ir_se_trunk, skip_input_layer=skip_input_layer)
        else:
            assert not skip_input_layer, "only IR-SE trunks are loaded without their stem"
            load = load_torchvision_resnet
        try:
            skipped = load(encoder, self.backbone_init, adapt_input_channels=True)
        except CheckpointError as e:  # (the converter's message names the kind of file, not which file)
            raise naming(e, self.backbone_init) from None
        logger.info("encoder trunk initialised from %s (skipped %d file keys)", self.backbone_init, len(skipped))


class EncoderTask(TrainingTask):
    """Train ``trainable`` (a part of ``method``) through the frozen generator; save ``bundle`` as the model.

    ``synthetic``: whether the config's synthetic pairs apply (HyperInverter's Phase I uses them; its Phase II
    does not). ``options``: the method's options when it is run whole (validation, pictures).
    """

    validates = True

    def __init__(self, cfg: EncoderTrainingConfig, device: torch.device, *, method: Inverter, trainable: nn.Module,
                 gan: LoadedGAN, bundle: dict[str, Inverter], synthetic: bool = True,
                 options: dict | None = None) -> None:
        self.cfg, self.device, self.method, self.trainable, self.bundle = cfg, device, method.to(device), trainable, bundle
        if method.content_rows != cfg.content_rows:
            raise ValueError(f"the run's content_rows are {cfg.content_rows}, but {method.name} reads "
                             f"{method.content_rows}")
        self.options = method.check_options(options or {})  # the method's options in validation and pictures
        if cfg.random_noise and "noise" not in inspect.signature(method.forward).parameters:
            raise ValueError(f"random_noise: {method.name} renders with the generator's fixed noise maps only "
                             "(set random_noise: false)")
        self.name = f"train {method.name}"
        G = method.generator
        self.resolution, self.channels = G.resolution, G.config.img_channels
        self.synthetic_fraction = cfg.synthetic_fraction if synthetic else 0.0
        # (the pSp family's targets are reduced as its official data transforms reduce photos)
        self.criterion = cfg.reconstruction_loss(gan.discriminator, device, antialias_target=method.official_antialias)
        self._loaded_discriminator = gan.discriminator  # (frozen; None where no loss term needed it)
        self._source = model_index(cfg.generator)  # (read as the run starts: its framing and faces, for its saves)
        self.optimizer = make_optimizer(cfg.optimizer, trainable.parameters(), lr=cfg.lr)
        self.modules: dict[str, nn.Module] = {"trainable": trainable}
        self.optimizers: dict[str, torch.optim.Optimizer] = {"main": self.optimizer}
        self.frozen = {"generator": G}
        self.D = None
        # The encoder phase's images of the current step (per micro-batch, in order), for the D phase.
        self._fakes: tuple[int, list[torch.Tensor]] = (-1, [])
        if cfg.adversarial:
            self.D = copy.deepcopy(gan.discriminator).to(device)
            self.opt_d = lazy_adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas_d,
                                   reg_interval=cfg.r1_interval if cfg.lazy_d else 0)
            self.modules["D"], self.optimizers["D"] = self.D, self.opt_d

    def phases(self) -> list[Phase]:
        phases = [Phase("encoder", self.trainable, self.optimizer)]
        if self.D is not None:
            start = self.cfg.adv_start
            phases += [Phase("D", self.D, self.opt_d, start=start),
                       Phase("D_r1", self.D, self.opt_d, interval=self.cfg.r1_interval, start=start, regulariser=True)]
        return phases

    def batch(self, real: torch.Tensor, gen: torch.Generator, step: int) -> Batch:
        """The real images, the last ``synthetic_fraction`` of them replaced by pairs ``(G(w), w)``."""
        n = real.shape[0]
        n_syn = round(self.synthetic_fraction * n)
        if not n_syn:
            return {"x": real}
        G = self.method.generator
        z = torch.randn(n_syn, G.z_dim, generator=gen)
        with torch.no_grad():
            w = G.mapping(z.to(self.device))
            synthetic = G.synthesis(w, noise_mode="const").cpu()
        w_target = torch.zeros(n, *w.shape[1:])
        w_target[n - n_syn :] = w.cpu()
        return {"x": torch.cat([real[: n - n_syn], synthetic]), "is_synthetic": torch.arange(n) >= n - n_syn,
                "w_target": w_target}

    def loss(self, phase: Phase, batch: Batch, *, step: int, gen: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, x = self.cfg, batch["x"]
        if phase.name == "encoder":
            loss, stats, out = self.reconstruction(x, gen=gen)
            synthetic = batch.get("is_synthetic")
            if synthetic is not None and bool(synthetic.any()):
                latent = F.mse_loss(out.ws[synthetic], batch["w_target"][synthetic])
                loss = loss + cfg.latent_weight * latent
                stats["loss/latent"] = float(latent.detach())
            if self.D is not None and step >= cfg.adv_start:
                adv = F.softplus(-self.D(out.image)).float().mean()
                loss = loss + cfg.adv_weight * adv
                stats["loss/adv"] = float(adv.detach())
                if self._fakes[0] != step:
                    self._fakes = (step, [])
                self._fakes[1].append(out.image.detach())
            stats["loss/total"] = float(loss.detach())
            return loss, stats
        if phase.name == "D":
            # As the official coach: D judges the encoder step's own ŷ, detached. Rendering it again ran E2 twice
            # more in training mode (its BatchNorm statistics moved four times a step), after the encoder's update.
            kept_step, fakes = self._fakes
            assert kept_step == step and fakes, "the D phase follows the encoder phase of its step"
            fake = fakes.pop(0)
            # The official discriminator loss of the adversarial stage carries a factor 1/2.
            loss = 0.5 * (F.softplus(self.D(fake)).float().mean() + F.softplus(-self.D(x)).float().mean())
            return loss, {"loss/D": float(loss.detach())}
        if phase.name == "D_r1":
            real = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(real).sum(), real, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            return r1 * (cfg.r1_gamma / 2), {"loss/r1": float(r1.detach())}
        raise ValueError(f"unknown phase {phase.name!r}")

    def compare(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The reconstruction loss and its parts, on the domain's content rows only (cars: the official coaches
        crop the image to the 192x256 photo): the black rows around them are no part of the inversion."""
        rows = self.cfg.content_rows
        return self.criterion(content_of(output, rows), content_of(target, rows))

    def noise(self, gen: torch.Generator | None) -> dict[str, torch.Generator]:
        """The method's ``noise`` argument for a training forward: the shard's generator, where the run draws noise
        maps (``random_noise``)."""
        return {"noise": gen} if self.cfg.random_noise and gen is not None else {}

    def reconstruction(self, x: torch.Tensor, *, gen: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, dict[str, float], InversionResult]:
        """The reconstruction loss of the method's result on ``x`` (a method with a training scheme of its own
        overrides this), its parts, and the result. ``gen``: the step's random generator."""
        out = self.method(x, **self.options, **self.noise(gen))
        loss, stats = self.compare(out.image, x)
        return loss, stats, out

    @torch.no_grad()
    def validation_loss(self, images: torch.Tensor) -> float:
        self.method.eval()
        total = 0.0
        for i in range(0, len(images), 16):
            x = images[i : i + 16].float().div(127.5).sub(1).to(self.device)
            total += float(self.compare(self.method(x, **self.options).image, x)[0]) * len(x)
        self.trainable.train()
        return total / len(images)

    @torch.no_grad()
    def samples(self, images: torch.Tensor) -> tuple[str, torch.Tensor, int]:
        """input | the method's first pass | its result, for a few held-out images."""
        self.method.eval()
        x = images[:8].float().div(127.5).sub(1).to(self.device)
        out = self.method(x, **self.options)
        self.trainable.train()
        first = out.initial_image if out.initial_image is not None else out.image
        return "input-first-final", torch.cat([x, first, out.image]), len(x)

    def save(self, path: Path) -> Path:
        # The model keeps what its generator's came with: the face framing its images were aligned at, which `invert
        # --align` crops at, whether they are faces, and the domain's discriminator, the optimisation methods'
        # perceptual distance (its frozen one, not the copy an adversarial stage trains). A run saved none: a bundle
        # trained from faces-64 aligned photos at FFHQ's framing, and its optimisation methods fell back to L2.
        return save_pipeline(self.bundle, path, default_method=self.method.name,
                             align_scale=self._source.get("align_scale", 1.0), faces=self.cfg.faces_of(self._source),
                             discriminator=self.domain_discriminator)

    @functools.cached_property
    def domain_discriminator(self) -> Discriminator | None:
        """The generator's own discriminator: the frozen one the run loaded, or, where no loss term needed it, read
        once from the generator's file (None where it has none)."""
        if self._loaded_discriminator is not None:
            return self._loaded_discriminator
        if detect_format(generator_path(self.cfg.generator)) == "rosinality":  # (whose discriminator is not read:
            return None  # loading it again warned so in a run that had asked for none)
        return load_model_gan(self.cfg.generator, with_discriminator=True).discriminator
