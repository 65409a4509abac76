"""What every trainer shares: the run folder, logging of scalars and image grids, deterministic batches."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import OutputError
from ..io.files import (
    atomic_write_bytes,
    check_own_folder,
    exclusive_lock,
    is_temporary,
    remove_stale_temporaries,
)
from ..io.images import make_grid, save_image
from .checkpointing import CHECKPOINT_NAME, checkpoint_step, list_checkpoints
from .config import to_yaml
from .distributed import DistributedContext

logger = logging.getLogger(__name__)


class RunLogger:
    """Rank 0 writes ``stats.jsonl``, PNG grids and (if installed) TensorBoard events; others write nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool = True, start_step: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self._forget_after(start_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides the killed run's events past the resume point, as stats.jsonl drops
                # them (each step logged since the checkpoint was shown twice)
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                logger.info("tensorboard is not installed (pip install 'hyperinverter[train]'); logging to stats.jsonl only")

    def _forget_after(self, step: int) -> None:
        """Drop records past ``step``: a run resumed from an older checkpoint logs those steps again."""
        path = self.run_dir / "stats.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [line for line, logged in _stats_records(lines) if logged <= step]
        if len(kept) != len(lines):
            atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in values.items()}}
        with open(self.run_dir / "stats.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), step)

    def images(self, step: int, name: str, images: torch.Tensor, *, nrow: int | None = None) -> None:
        if not self.enabled:
            return
        grid = make_grid(images, nrow=nrow)
        save_image(grid, self.run_dir / "samples" / f"{name}-{step:08d}.png", replace_any=True)  # (the run's folder)
        if self._tb is not None:
            self._tb.add_image(name, ((grid[0] + 1) / 2).clamp(0, 1), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _say_what_changed(stored: Path, text: str) -> None:
    """Warn when a run resumes with another config than it ran with (more ``steps`` is the usual, wanted change;
    another learning rate or loss weight goes on silently otherwise), naming each changed key."""
    changed = _config_changes(stored, text)
    if changed:
        logger.warning("resuming %s with a changed config (%s)", stored.parent, "; ".join(changed))


def _config_changes(stored: Path, text: str, *, alike: frozenset[str] = frozenset()) -> list[str] | None:
    """Each key whose value differs between the config ``stored`` and ``text`` (``run_dir`` and the keys of
    ``alike`` aside), as "key: old -> new"; None where ``stored`` does not read as a config."""
    import yaml

    try:
        before = yaml.safe_load(stored.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(before, dict):
        return None
    old, new = _flat(before), _flat(yaml.safe_load(text))
    ignored = alike | {"run_dir"}  # (a run folder moved or copied is the same run)
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and k not in ignored]


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _not_a_run(folder: Path) -> str | None:
    """Why ``folder`` is not a run folder training made, or None: one is, if its ``config.yaml`` is a training
    config (it names its ``run_dir``), or it holds only ``checkpoints/`` (a run killed before writing its config)."""
    import yaml

    # (and a killed run's temporaries: one killed writing its first config.yaml, where files cannot be written unnamed,
    # left a folder that every later run refused, before the cleanup that would have removed it)
    if {entry.name for entry in folder.iterdir() if not is_temporary(entry.name)} == {"checkpoints"}:
        return None
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = None
    return None if isinstance(config, dict) and "run_dir" in config else "holds files that are not a training run's"


@contextlib.contextmanager
def prepared_run_dir(run_dir: Path, config: Any, ctx: DistributedContext) -> Iterator[Path]:
    """Create the run folder and hold it for the block; the run stores its config once it has started
    (:func:`record_run_config`), so that a start refused on resume (another configuration) leaves it as it was.

    A folder that holds other files is refused: a run writes (and, resuming, rewrites) config.yaml, stats.jsonl,
    samples/, best/ and final/. So is a folder another process is training into (its rank 0 holds
    ``checkpoints/.lock`` while it runs; the lock goes with the process, however it ends, and its file with it
    unless it was killed: the next run then says so).
    """
    run_dir = Path(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():  # (mkdir said "file exists")
        raise OutputError(run_dir, "is a broken symbolic link; give the run's folder, or where the link points")
    check_own_folder(run_dir, _not_a_run, what="the run (run_dir)")
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists() and not checkpoints.is_dir():
        raise OutputError(checkpoints, "is not a folder: a run keeps its checkpoints in this folder")
    blocking = [p for p in (checkpoints.iterdir() if checkpoints.is_dir() else ()) if
                CHECKPOINT_NAME.search(p.name) and not p.is_file()]
    if blocking:  # (the run met it only when it came to write that step, and lost the steps since its last)
        raise OutputError(blocking[0], "is not a checkpoint file, but has a checkpoint's name; move it away")
    if not getattr(config, "resume", True) and checkpoints.is_dir() and any(checkpoints.glob("*.safetensors")):
        # Starting afresh next to an old run's checkpoints would mix the two runs when pruning and resuming.
        raise ValueError(f"{run_dir} already holds checkpoints of a run: continue it with resume: true, or choose "
                         "a new run_dir")
    saved = list_checkpoints(checkpoints) if getattr(config, "resume", True) else []
    reached, steps = (checkpoint_step(saved[-1]) if saved else 0), getattr(config, "steps", None)
    if steps is not None and reached > steps:  # its final/ would hold more steps than asked, as this run's
        raise ValueError(f"{run_dir} holds a run at step {reached}, past steps={steps}: give steps of {reached} or "
                         "more to go on with it, or a new run_dir")
    made = next((p for p in [*reversed(run_dir.parents), run_dir] if not p.exists()), None)  # the first we make
    fresh = made is not None or not any(run_dir.iterdir())
    held = exclusive_lock(checkpoints / ".lock", what="training", folder=run_dir, remove=True)
    with held if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:  # a killed run's half-written checkpoint (GBs at full size), config, grid or best/ and final/
            for folder in (run_dir, checkpoints, run_dir / "samples"):  # (where files cannot be written unnamed)
                remove_stale_temporaries(folder)
        ctx.barrier()
        try:
            yield run_dir
        except BaseException:
            if fresh and ctx.is_main:
                _remove_unstarted(run_dir, made=made)
            raise


def record_run_config(run_dir: Path, config: Any, ctx: DistributedContext, *, resumed: bool) -> None:
    """Store the resolved config as ``run_dir/config.yaml`` (rank 0), saying what changed where a run resumes."""
    if ctx.is_main:
        text = to_yaml(config)
        if resumed:
            _say_what_changed(run_dir / "config.yaml", text)
        atomic_write_bytes(run_dir / "config.yaml", text.encode())
    ctx.barrier()


# Config keys that change neither the weights a run trains nor which step's model is kept as best/: a run stopped
# before its first checkpoint, started again with only these changed, retraces its steps.
RETRACED_ALIKE = frozenset({"steps", "log_every", "checkpoint_every", "keep_checkpoints", "progress", "tensorboard",
                            "resume"})


def check_nothing_to_lose(run_dir: Path, config: Any, *, first_checkpoint: int) -> None:
    """``OutputError`` where a run that found no checkpoint to resume from would start again over an earlier
    run's results: ``final/`` and ``best/`` would be replaced and ``stats.jsonl`` emptied, without a word.

    A run stopped before ``first_checkpoint`` (the step of its first checkpoint) was written loses nothing by starting
    again with its ``config`` (but for :data:`RETRACED_ALIKE`): it makes the same ``best/`` and log lines again, seeded
    as they were (refused, it could not be run again in the same folder, and the full-disk hint "run the command
    again" was wrong for it). That step is logged, and validated, before its checkpoint is written: a run that logged
    it and was killed before the write is one too. Another config would replace its ``best/`` with another run's."""
    unreadable = list_checkpoints(run_dir / "checkpoints")
    stats = run_dir / "stats.jsonl"
    logged = _last_logged_step(stats)
    held = [name + "/" for name in ("final", "best") if (run_dir / name).exists()]
    held += ["stats.jsonl"] if stats.is_file() and stats.stat().st_size else []
    held += [f"{len(unreadable)} checkpoint(s), none of which reads back"] if unreadable else []
    changed = None
    if held and "final/" not in held and not unreadable and logged is not None and logged <= first_checkpoint:
        changed = _config_changes(run_dir / "config.yaml", to_yaml(config), alike=RETRACED_ALIKE)
        if changed == []:
            held = []
    if held:
        stopped = "" if changed is None else (f", stopped at step {logged} with another config "
                                              f"({'; '.join(changed)}),")
        raise OutputError(run_dir, f"holds a run ({', '.join(held)}){stopped} but no checkpoint to resume it from: "
                          "starting again would replace its results; give a new run_dir"
                          + ("" if unreadable else ", or resume=false to start afresh in this one"))
    if logged is not None:
        logger.info("%s: its run stopped at step %d, before its first checkpoint (step %d) was written: starting it "
                    "again", run_dir, logged, first_checkpoint)


def _stats_records(lines: Sequence[str]) -> Iterator[tuple[str, int]]:
    """The records of ``stats.jsonl``'s ``lines`` with the step each logs; a line torn by a kill mid-write is
    skipped."""
    for line in lines:
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if isinstance(step, int) and not isinstance(step, bool):
            yield line, step


def _last_logged_step(stats: Path) -> int | None:
    """The last step ``stats`` records, or None without one."""
    try:
        lines = stats.read_text(errors="replace").splitlines()
    except OSError:  # (none, or a folder of that name: no step known, so a run's results there are kept)
        return None
    return max((step for _, step in _stats_records(lines)), default=None)


def _remove_unstarted(run_dir: Path, *, made: Path | None) -> None:
    """Take back what a run that failed before writing anything but its config left in a folder it started in
    empty (a bad generator path, say): its lock (and ``config.yaml``), and the folders the run made (``made``: the
    first of them, ``run_dir`` or a folder above it). A folder holding anything else (a checkpoint, samples, stats,
    a file of someone else's) is left as it is."""
    checkpoints = run_dir / "checkpoints"
    try:
        if {e.name for e in run_dir.iterdir()} - {"config.yaml"} != {"checkpoints"} or \
                {e.name for e in checkpoints.iterdir()} != {".lock"}:
            return
        (checkpoints / ".lock").unlink()
        checkpoints.rmdir()
        (run_dir / "config.yaml").unlink(missing_ok=True)
        folder = run_dir
        while made is not None and folder.is_relative_to(made):  # (rmdir removes only an empty folder)
            folder.rmdir()
            folder = folder.parent
    except OSError as e:  # (what is left is a stopped run's config, which the next run in the folder takes)
        logger.warning("%s: could not remove the config of the run that failed to start (%s)", run_dir, e)


class BatchSampler:
    """Deterministic, resumable epochs: a seeded permutation per epoch, consumed in global batches.

    ``position`` counts the samples consumed so far and is all a checkpoint needs to resume exactly.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, position: int = 0) -> None:
        if num_items < 1:
            raise ValueError("the dataset is empty")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.position = position
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            # (torch takes seeds below 2**64: a config's seed of 10**15, or a far epoch, overflowed at the first step)
            gen = torch.Generator().manual_seed((self.seed * 100_003 + epoch) % 2**64)
            self._perm, self._epoch = torch.randperm(self.num_items, generator=gen), epoch
        return self._perm

    def next(self) -> torch.Tensor:
        """The next ``batch_size`` global indices (crossing epoch boundaries as needed)."""
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(self.position, self.num_items)
            take = min(self.batch_size - len(out), self.num_items - offset)
            out.extend(self._permutation(epoch)[offset : offset + take].tolist())
            self.position += take
        return torch.tensor(out)


def preload_uint8(dataset, *, progress: bool = True, limit: int | None = None) -> torch.Tensor:
    """Materialise an ``ImageFolderDataset`` as one ``uint8 [N,C,R,R]`` tensor; unreadable files are skipped.
    ``limit``: stop after that many readable images (the first ones, in the dataset's order)."""
    from itertools import islice

    from ..progress import progress_bar

    total = len(dataset) if limit is None else min(limit, len(dataset))
    items = [((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
             for x in progress_bar(islice(dataset.iter_valid(), limit), total=total, desc="loading images",
                                   disable=not progress, mininterval=2.0)]
    if not items:
        raise dataset.no_readable_image()
    return torch.stack(items)


class StreamedImages:
    """A data set read from disk batch by batch (``preload: false``), indexed like a preloaded tensor.

    ``images[indices]`` and ``images[:n]`` give ``uint8 [B,C,R,R]``. An unreadable file is replaced by the next
    readable one (see ``ImageFolderDataset.__getitem__``), so a batch always has its full size.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    dtype = torch.uint8

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.dataset.channels, self.dataset.resolution, self.dataset.resolution)

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        indices = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        return torch.stack([((self.dataset[i].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) for i in indices])


def training_images(dataset, *, preload: bool, progress: bool = True) -> torch.Tensor | StreamedImages:
    """All of ``dataset`` in memory as uint8 (fast, the default), or streamed from disk for large sets."""
    if preload:
        return preload_uint8(dataset, progress=progress)
    logger.info("streaming %s from disk", dataset)
    return StreamedImages(dataset)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision for the forward passes: ``fp32`` (off), ``bf16`` or ``fp16``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A fresh RNG for (seed, step, stream): randomness that does not depend on resume or rank."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 97 + stream) % (2**63))


def shard_generator(seed: int, step: int, phase: str, shard: int) -> torch.Generator:
    """A fresh RNG for what one phase draws for one shard of a step's batch (``shard``: ``micro-batch · world +
    rank``, the samples it holds): its own on every rank, as NVIDIA's per-rank seeds make them (each rank's
    style-mixing coin and noise maps), and the same for one process with K micro-batches as for K ranks (or K / R
    micro-batches on each of R ranks), and after a resume."""
    digest = hashlib.blake2b(f"{seed}/{step}/{phase}/{shard}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") % (2**63))


def random_hflip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=gen) < 0.5
    out = images.clone()
    out[flip] = out[flip].flip(-1)
    return out


def mean_dict(records: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in records for k in r}
    return {k: float(np.mean([r[k] for r in records if k in r])) for k in keys}
