"""The one training loop, shared by every trainer through small per-method step functions.

As in stylegan3's ``training_loop`` with ``loss.accumulate_gradients(phase, ...)``: a trainer is a
:class:`TrainingTask` that names its modules and optimisers, lists its :class:`Phase` s (one optimiser update each:
the generator, its path-length regulariser, the discriminator, R1, an encoder ...) and computes the loss of a
phase on a micro-batch. The loop does the rest, once for all: the run folder, deterministic and resumable batches,
torchrun data parallelism (strided rank shards and micro-batches, gradient all-reduce), precision and gradient
scaling, lazy regularisation, logging, image grids, validation and best-model selection, checkpoints and resume.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..bounds import MAX_IMAGES
from ..device import parse_device, resolve_device
from ..errors import CheckpointError
from ..io.files import check_outside, check_replaceable
from ..io.images import check_content_rows
from ..io.work import fingerprint_of
from ..precision import resolve_dtype
from ..progress import progress_bar
from .checkpointing import FROZEN_KEY, CheckpointMismatchError, resume_latest, save_checkpoint
from .distributed import DistributedContext, init_distributed, local_device
from .run import (
    PRECISIONS,
    BatchSampler,
    RunLogger,
    StreamedImages,
    autocast,
    check_nothing_to_lose,
    mean_dict,
    prepared_run_dir,
    random_hflip,
    record_run_config,
    shard_generator,
    step_generator,
    training_images,
    uint8_to_float,
)
from .stopping import StopRequests, TrainingStopped

logger = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


@dataclass(kw_only=True)
class RunConfig:
    """What every training run shares (the trainers' configs extend it): where, on what, how long, in which
    precision, and how often to log, validate, draw samples and write checkpoints."""

    run_dir: str
    data: str
    steps: int
    batch_size: int = 8
    grad_accum: int = 1  # micro-batches per step: less memory, the same gradients but for docs/training.md's terms
    hflip: bool = False
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16
    val_fraction: float = 0.05  # a deterministic share of the training folder held out for model selection
    val_every: int = 500
    val_max_images: int = 256
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # the newest ones; 0 keeps every checkpoint
    resume: bool = True
    progress: bool = True
    tensorboard: bool = True
    preload: bool = True  # False: read each batch from disk (data sets larger than memory)
    # For a domain that fills only these rows of the generator's square (LSUN cars: [0.125, 0.875], 64 to 448 of
    # 512): the images are squashed into them with black above and below, as the generator's own training images
    # were padded; encoders read those rows only and their losses compare them only. None: square images.
    content_rows: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for key in ("run_dir", "data"):  # (data: '' read the current folder, and was named as '' in errors)
            if getattr(self, key) == "":
                raise ValueError(f"{key} is an empty path; give a folder (. for the current folder)")
        for item in dataclasses.fields(self):
            problem = range_problem(item.name, getattr(self, item.name))
            if problem is not None:
                raise ValueError(problem)
        if self.device != "auto":  # (whether this machine has it is checked as the run starts)
            try:
                parse_device(self.device)
            except ValueError as e:  # ('' failed as the run started, naming neither the key nor the file)
                raise ValueError(f"device: {e}") from None
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size % self.grad_accum:  # (found after the images were read, naming no file)
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0 (0 keeps every checkpoint), got {self.keep_checkpoints}")
        if self.content_rows is not None:
            self.content_rows = check_content_rows(self.content_rows)


# The ranges of every trainer's numbers, by the convention of their names: one check for every config.
COUNTS = {"steps", "batch_size", "grad_accum", "stage", "n_iters_per_batch", "val_max_images", "id_samples",
          "hidden_dim", "hyper_inner", "refine_inner", "regressor_width", "feature_size", "feature_channels",
          "code_dim", "loss_resolution"}
SHARES = {"style_mixing", "pl_decay", "ema_rampup", "synthetic_fraction"}


def range_problem(name: str, value: Any) -> str | None:
    """Why a training config's ``value`` of ``name`` is out of range, or None: a loss weight or penalty
    (``*_weight``, ``*_gamma``) and a learning rate (``lr``, ``lr_*``, ``*_lr``) are >= 0, an interval
    (``*_interval``, ``*_every``) or a count >= 1, a probability or share in [0, 1], Adam's betas in [0, 1)."""
    if name in ("betas", "betas_d") and isinstance(value, tuple):
        return None if all(0 <= b < 1 for b in value) else f"{name} must each be in [0, 1), got {list(value)}"
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if name == "seed":  # (torch's generators take 64-bit seeds; a larger one was an overflow naming no option)
        return None if 0 <= value < 2**63 else f"seed must be a whole number from 0 to 2**63 - 1, got {value}"
    learning_rate = name == "lr" or name.startswith("lr_") or name.endswith("_lr")  # (0 freezes what it trains)
    if learning_rate or name.endswith(("_weight", "_gamma")) or name in ("ema_kimg", "w_pool_size"):
        return None if value >= 0 else f"{name} must be >= 0, got {value}"
    if name == "batch_size" and value > MAX_IMAGES:  # (its sampler gathered 2**70 indices, for ever)
        return f"batch_size must be at most {MAX_IMAGES:,}, got {value}"
    if name.endswith(("_interval", "_every")) or name in COUNTS:
        return None if value >= 1 else f"{name} must be >= 1, got {value}"
    if name in SHARES:
        return None if 0 <= value <= 1 else f"{name} must be in [0, 1], got {value}"
    return None


@dataclass
class Phase:
    """One optimiser update of a step.

    ``module`` holds the parameters it updates (they alone require gradients while it runs). It runs when
    ``start <= step < end`` and ``step % interval == 0``. A ``regulariser`` phase (R1, path length) runs in fp32,
    and its loss is multiplied by ``interval`` (lazy regularisation); other phases run under the run's precision.
    Both run over the step's micro-batches (``grad_accum``).
    """

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    interval: int = 1
    start: int = 0
    end: int | None = None
    regulariser: bool = False

    def active(self, step: int) -> bool:
        return self.start <= step and (self.end is None or step < self.end) and step % self.interval == 0


def lazy_adam(params: Iterable[nn.Parameter], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
              reg_interval: int = 0, eps: float = 1e-8) -> torch.optim.Adam:
    """Adam for a module regularised every ``reg_interval`` steps: lr and betas are rescaled by
    ``interval / (interval + 1)`` so that the regularised updates keep their strength (StyleGAN2)."""
    ratio = reg_interval / (reg_interval + 1) if reg_interval > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=eps)


class TrainingTask:
    """A trainer's own part: what it trains and the losses of its phases. The loop calls, per step:
    ``before_step`` -> ``batch`` -> for each active phase, ``loss`` on each micro-batch -> ``after_step``.

    Attributes set by subclasses: ``modules`` (saved in checkpoints), ``optimizers`` (saved in checkpoints),
    ``resolution`` and ``channels`` (of the training images), ``name`` (for the progress bar), and ``frozen``: the
    modules the run trains against unchanged (an encoder's generator), whose fingerprints checkpoints record, so
    that resuming against others is refused. ``cleans_gradients``: NaN and infinite gradients become 0 and ±1e5
    before each step, as NVIDIA's StyleGAN2 loop does (the generator trainer). ``added_modules``: ``modules``
    that a later version added, which a checkpoint of an earlier one may lack (they then resume as built).
    """

    name: str = "train"
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    frozen: Mapping[str, nn.Module] = MappingProxyType({})  # (subclasses assign their own)
    resolution: int
    channels: int
    validates: bool = False  # whether it has a validation loss (then the best model is kept)
    saves: str = "pipeline"  # what ``save`` writes (``final`` and ``best``): "pipeline" or "generator"
    cleans_gradients: bool = False
    added_modules: frozenset[str] = frozenset()  # modules a checkpoint of an earlier version may lack

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def batch(self, real: torch.Tensor, gen: torch.Generator, step: int) -> Batch:
        """The global batch of a step (every entry ``[batch_size, ...]``, on the CPU) from the real images."""
        return {"real": real}

    def loss(self, phase: Phase, batch: Batch, *, step: int, gen: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``phase`` on a micro-batch (entries on the device), and the numbers to log."""
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        """Called before a step's phases (e.g. a learning-rate change at a stage boundary)."""

    def after_step(self, step: int, batch: Batch) -> None:
        """Called after a step's phases (e.g. the EMA of the generator)."""

    def state(self) -> dict[str, Any]:
        """Numbers to keep in checkpoints besides the modules (e.g. images seen so far)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` on resume."""

    def validation_loss(self, images: torch.Tensor) -> float:
        raise NotImplementedError

    def samples(self, images: torch.Tensor) -> tuple[str, torch.Tensor, int] | None:
        """(name, images in [-1, 1], images per row) to log as a picture, or None; ``images``: a few uint8 images
        (held-out ones when there is a validation split)."""
        return None

    def save(self, path: Path) -> Path:
        """Write the trained model (the run's ``final`` or ``best``) and return where."""
        raise NotImplementedError


@dataclass
class TrainingResult:
    run_dir: Path
    final_model: Path | None
    best_model: Path | None
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


def load_split(cfg: RunConfig, resolution: int, channels: int, split: str):
    """The ``train``, ``val`` or ``all`` split of ``cfg.data`` as uint8 ``[N,C,R,R]`` (or streamed, see ``preload``)."""
    from ..data.folder import ImageFolderDataset
    from ..data.sources import unfinished_dataset

    dataset = ImageFolderDataset(cfg.data, resolution=resolution, channels=channels, split=split,
                                 val_fraction=cfg.val_fraction, seed=cfg.seed, content_rows=cfg.content_rows)
    logger.info("%s images: %s", split, dataset)
    if split != "val" and unfinished_dataset(cfg.data):  # ("all": a generator's, which trains on every image)
        logger.warning("%s: its writing by `hyperinverter data` stopped before the end; this run trains on what "
                       "was written (%d training images): run the same `data` command again to complete it", cfg.data,
                       len(dataset))
    # The validation split is small and read every val_every steps: always in memory.
    return training_images(dataset, preload=cfg.preload or split == "val", progress=cfg.progress)


def _slices(batch: Batch, parts: int) -> list[Batch]:
    """Strided micro-batches, like the rank shards: micro-batch m of one process holds what rank m of ``parts``
    ranks would, so BatchNorm statistics (and thus the gradients) of 1 process x N micro-batches equal N ranks."""
    return [{k: v[m::parts] for k, v in batch.items()} for m in range(parts)]


def _trainable(phases: list[Phase]) -> list[nn.Module]:
    seen: dict[int, nn.Module] = {}
    for phase in phases:
        seen.setdefault(id(phase.module), phase.module)
    return list(seen.values())


def _clean_gradients(module: nn.Module, task: TrainingTask) -> None:
    if task.cleans_gradients:
        for parameter in module.parameters():
            if parameter.grad is not None:
                torch.nan_to_num(parameter.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=parameter.grad)


def _run_phase(phase: Phase, batch: Batch, task: TrainingTask, *, cfg: RunConfig, ctx: DistributedContext,
               device: torch.device, scaler: torch.amp.GradScaler, trainable: list[nn.Module], step: int
               ) -> dict[str, float]:
    for module in trainable:
        module.requires_grad_(module is phase.module)
    phase.optimizer.zero_grad(set_to_none=True)
    records: list[dict[str, float]] = []  # (each micro-batch's; the step's numbers are their mean, not the last's)
    micro = _slices(batch, cfg.grad_accum)
    # Each micro-batch draws from its own shard's RNG (its mixing coin, noise maps): another on every rank, and the
    # same whether a shard is a rank's or a micro-batch's. Micro-batch m of rank r holds what rank m * world + r of
    # world * grad_accum ranks would (ctx.shard, then _slices, both strided): its number.
    gens = [shard_generator(cfg.seed, step, phase.name, m * ctx.world_size + ctx.rank) for m in range(len(micro))]
    if phase.regulariser:  # fp32, lazily weighted; per micro-batch, as NVIDIA's loop runs R1 and path length
        for part, gen in zip(micro, gens):
            loss, parts = task.loss(phase, part, step=step, gen=gen)
            (loss * (phase.interval / len(micro))).backward()
            records.append(parts)
        ctx.all_reduce_gradients(phase.module.parameters())
        _clean_gradients(phase.module, task)
        phase.optimizer.step()
        return mean_dict(records)
    for part, gen in zip(micro, gens):
        with autocast(device, cfg.precision):
            loss, parts = task.loss(phase, part, step=step, gen=gen)
        scaler.scale(loss.float() / len(micro)).backward()
        records.append(parts)
    scaler.unscale_(phase.optimizer)
    ctx.all_reduce_gradients(phase.module.parameters())
    _clean_gradients(phase.module, task)  # (after the scaler has seen them: an fp16 overflow still skips the step)
    scaler.step(phase.optimizer)
    scaler.update()
    return mean_dict(records)


def fit(cfg: RunConfig, build: Callable[[torch.device, DistributedContext], TrainingTask], *,
        images: torch.Tensor | None = None, val_images: torch.Tensor | None = None) -> TrainingResult:
    """Train the task that ``build(device, ctx)`` makes, per ``cfg``; resume its run folder if it has checkpoints.

    ``images``/``val_images`` (uint8 ``[N,C,R,R]``) bypass ``cfg.data``. Networks are initialised from ``cfg.seed``
    without touching the caller's random state; every later random draw comes from per-step generators (a
    phase's own draws from per-shard ones), so a resumed run continues exactly. While it trains, the run folder is
    held: a second process training into it is refused (both would write the same checkpoints).
    """
    if images is None:
        check_outside(cfg.run_dir, cfg.data, option="a run_dir",
                      why="the run's sample grids would be read as training images when it resumes")
    device = resolve_device(local_device(cfg.device))
    # fp16 trains on GPUs only, as it runs: on a CPU it trained with no loss scaling (19 % off an fp32 weight
    # gradient on one 512-px conv), where inference refuses it. (And bf16 there says once if it is emulated.)
    try:
        resolve_dtype(cfg.precision, device)
    except ValueError as e:  # (named as the config's other errors name their key)
        raise ValueError(f"precision: {e}") from None
    ctx = init_distributed(device)
    with prepared_run_dir(Path(cfg.run_dir), cfg, ctx) as run_dir:
        return _train(cfg, build, run_dir, device, ctx, images=images, val_images=val_images)


def _data_record(images: torch.Tensor | StreamedImages, val_images: torch.Tensor | None) -> dict[str, Any]:
    """What a run trains and validates on, as its checkpoints record it: the number of training images and
    fingerprints of the images (of their files' names in the data folder, sizes and times, where they are streamed
    from disk)."""

    def fingerprint(x: torch.Tensor | StreamedImages | None) -> str | None:
        if isinstance(x, StreamedImages):
            stats = []
            for path in x.dataset.files:
                # (relative to the folder: a run resumed with data=/abs/faces after data=faces is on the same files)
                name = path.relative_to(x.dataset.root).as_posix()
                try:
                    st = path.stat()
                    stats.append([name, st.st_size, st.st_mtime_ns])
                except OSError:  # (a broken link: it is read as unreadable)
                    stats.append([name])
            return fingerprint_of(stats)
        return None if x is None else fingerprint_of(x)

    return {"images": len(images), "train": fingerprint(images), "val": fingerprint(val_images)}


def _check_same_frozen(run_dir: Path, recorded: object, frozen: dict[str, str]) -> None:
    """``CheckpointMismatchError`` where the run's checkpoints were trained against other frozen modules (another
    generator behind the same path, or another path) than this run's; checkpoints from before the fingerprints
    were recorded are not checked."""
    if recorded is None or recorded == frozen:  # (a dict: checked as the checkpoint was read)
        return
    differing = sorted(k for k in frozen.keys() | recorded.keys() if recorded.get(k) != frozen.get(k))
    raise CheckpointMismatchError(run_dir / "checkpoints", f"were trained against another {' and '.join(differing)} "
                                  "than this run's (its weights differ): resume the run with the one it started with, "
                                  "or start this one in a new run_dir")


def _train(cfg: RunConfig, build: Callable[[torch.device, DistributedContext], TrainingTask], run_dir: Path,
           device: torch.device, ctx: DistributedContext, *, images: torch.Tensor | None,
           val_images: torch.Tensor | None) -> TrainingResult:
    """:func:`fit` in its prepared run folder."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        task = build(device, ctx)
    phases = task.phases()
    trainable = _trainable(phases)
    for module in trainable:
        module.train()
        ctx.broadcast_parameters(module)
    # Loss scaling for fp16, whose gradients can underflow (it trains on GPUs only); bf16 has fp32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")

    start_step, position, best_val, window, recorded_data = 0, 0, math.inf, [], None
    frozen = {name: fingerprint_of(module) for name, module in task.frozen.items()}
    resumed = None
    if cfg.resume:
        resumed = resume_latest(run_dir / "checkpoints", modules=task.modules, optimizers=task.optimizers,
                                scaler=scaler, added_modules=task.added_modules)
        if resumed is None:
            check_nothing_to_lose(run_dir, cfg, first_checkpoint=min(cfg.checkpoint_every, cfg.steps))
        else:
            start_step, progress = resumed
            _check_same_frozen(run_dir, progress.get(FROZEN_KEY), frozen)
            position, best_val = progress.get("position", 0), progress.get("best_val", math.inf)
            window = list(progress.get("window", []))  # the steps since the last log line (it averages them)
            recorded_data = progress.get("data")
            try:
                task.load_state(progress.get("task", {}))
            except (TypeError, ValueError) as e:
                raise CheckpointError(run_dir / "checkpoints", f"the newest readable checkpoint holds a damaged "
                                      f"state of the run ({e}): move it away to resume from the one before") from None
    # A run trained to its end, then found that it could not replace final/: resumed, or started afresh
    # (resume=false) over an earlier run's final/. (Every rank checks: one rank's error alone would leave the others
    # waiting for it.)
    for name in ("final", "best"):
        check_replaceable(run_dir / name, task.saves)

    if images is None:  # (a task without a validation loss holds no image out: one of a small folder never trained)
        images = load_split(cfg, task.resolution, task.channels, "train" if task.validates else "all")
        if not task.validates and cfg.val_fraction > 0 and ctx.is_main:
            logger.warning("val_fraction=%g is not used: this run has no validation, and trains on every image",
                           cfg.val_fraction)
    if val_images is None and task.validates and cfg.val_fraction > 0:
        val_images = load_split(cfg, task.resolution, task.channels, "val")
    shape = (task.channels, task.resolution, task.resolution)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"training images must be uint8 [N,{','.join(map(str, shape))}], got {images.dtype} "
                         f"{tuple(images.shape)}")
    data = _data_record(images, val_images)
    if ctx.is_main and isinstance(recorded_data, dict) and recorded_data != data:
        logger.warning("resuming %s on other training images than it ran on (%s -> %d images%s): files of %s were "
                       "added, removed or changed, so its batches from here differ from an uninterrupted run's",
                       run_dir, recorded_data.get("images"), data["images"],
                       "; validation images changed too" if recorded_data.get("val") != data["val"] else "", cfg.data)
    local_bs = ctx.local_batch_size(cfg.batch_size)
    if local_bs % cfg.grad_accum:
        raise ValueError(f"per-rank batch {local_bs} is not divisible by grad_accum={cfg.grad_accum}")
    sampler = BatchSampler(len(images), cfg.batch_size, seed=cfg.seed, position=position)
    record_run_config(run_dir, cfg, ctx, resumed=resumed is not None)  # (the run has started: nothing refused it)
    run_log = RunLogger(run_dir, enabled=ctx.is_main, tensorboard=cfg.tensorboard, start_step=start_step)

    history: list[dict[str, float]] = []
    timed = 0  # steps since t0 in this process (the speed's; the window may hold steps from before a resume)
    best_path = run_dir / "best"
    bar = progress_bar(total=cfg.steps, initial=start_step, disable=not (cfg.progress and ctx.is_main),
                       desc=task.name, mininterval=5.0)
    t0 = time.perf_counter()
    stop = None
    with StopRequests() as stops:  # Ctrl-C or SIGTERM: finish the step, checkpoint, stop
        for step in range(start_step, cfg.steps):
            gen = step_generator(cfg.seed, step)
            real = uint8_to_float(images[sampler.next()])
            if cfg.hflip:
                real = random_hflip(real, gen)
            batch = {k: ctx.shard(v).to(device) for k, v in task.batch(real, gen, step).items()}
            task.before_step(step)
            stats: dict[str, float] = {}
            for phase in phases:
                if phase.active(step):
                    stats.update(_run_phase(phase, batch, task, cfg=cfg, ctx=ctx, device=device, scaler=scaler,
                                            trainable=trainable, step=step))
            task.after_step(step, batch)

            window.append(stats)
            timed += 1
            done = step + 1
            bar.update(1)
            last = done == cfg.steps
            if done % cfg.log_every == 0 or last:
                summary = ctx.mean_over_ranks(mean_dict(window), device)  # (every rank logs at this step)
                summary["speed/img_per_s"] = cfg.batch_size * timed / max(time.perf_counter() - t0, 1e-9)
                t0, window, timed = time.perf_counter(), [], 0
                history.append({"step": done, **summary})
                run_log.scalars(done, summary)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in summary.items()}, refresh=False)
            if val_images is not None and (done % cfg.val_every == 0 or last):
                val = task.validation_loss(val_images[: cfg.val_max_images])
                history.append({"step": done, "val/loss": val})
                run_log.scalars(done, {"val/loss": val})
                if val < best_val:
                    best_val = val
                    if ctx.is_main:
                        task.save(best_path)
            if done % cfg.sample_every == 0 or last:
                picture = task.samples(val_images if val_images is not None else images[: cfg.batch_size])
                if picture is not None:
                    run_log.images(done, picture[0], picture[1], nrow=picture[2])
            stop = None if last else stops.requested(ctx, device)
            if done % cfg.checkpoint_every == 0 or last or stop is not None:
                for i, module in enumerate(trainable):
                    ctx.check_in_sync(module, f"trained module {i}")
                # The steps since the last log line as the global batch's (every rank: collectives): rank 0's own
                # shard's, resumed on every rank, were logged as the global batch's in the first line after a resume.
                kept = ctx.means_over_ranks(window, device)
                if ctx.is_main:
                    state = {"position": sampler.position, "best_val": best_val, "task": task.state(),
                             FROZEN_KEY: frozen, "window": kept, "data": data}
                    save_checkpoint(run_dir / "checkpoints", done, modules=task.modules, optimizers=task.optimizers,
                                    scaler=scaler, keep=cfg.keep_checkpoints, progress=state)
            if stop is not None:
                break
    bar.close()
    run_log.close()
    if stop is not None:
        ctx.barrier()
        raise TrainingStopped(f"{signal.Signals(stop).name}: stopped after step {done} of {cfg.steps}, with a "
                              f"checkpoint in {run_dir / 'checkpoints'}; run the same command to resume",
                              signal_number=stop, step=done)
    final = task.save(run_dir / "final") if ctx.is_main else None
    ctx.barrier()
    return TrainingResult(run_dir, final, best_path if best_path.exists() else None, cfg.steps, history)
