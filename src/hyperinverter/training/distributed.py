"""Data parallelism under ``torchrun``: gloo on CPU, nccl on GPU; one data shard per rank; rank 0 writes.

Gradients are averaged with one flattened ``all_reduce`` per step, as stylegan2-ada does, rather than
through ``DistributedDataParallel``: GAN steps run several forward/backward passes per optimiser step
(lazy regularisation), which DDP's hooks handle poorly, and the explicit reduction makes the
single-process equivalence easy to see and to test.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's samples of a global batch: a strided slice ``rank::world_size``.

        Strided (not contiguous) so that minibatch-stddev groups, which NVIDIA forms with stride
        ``N // group_size``, are the same as in a single-process run over the global batch.
        """
        return global_batch[self.rank :: self.world_size]

    def local_batch_size(self, global_batch_size: int) -> int:
        if global_batch_size % self.world_size:
            raise ValueError(f"batch size {global_batch_size} is not divisible by {self.world_size} ranks")
        return global_batch_size // self.world_size

    def all_reduce_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over ranks (a no-op in a single process)."""
        if not self.enabled:
            return
        params = [p for p in params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value / self.world_size

    def all_reduce_max(self, value: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of ``value`` over ranks (``value`` itself in a single process)."""
        if not self.enabled:
            return value
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value

    def mean_over_ranks(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Each number's mean over the ranks that have it (``values`` itself in a single process): a logged loss is
        the global batch's, not rank 0's shard's (see :meth:`means_over_ranks`)."""
        return self.means_over_ranks([values], device)[0]

    def means_over_ranks(self, entries: list[dict[str, float]], device: torch.device) -> list[dict[str, float]]:
        """:meth:`mean_over_ranks` of each of ``entries`` (as many on every rank: a step's each), in one gather of
        the names and one reduction however many there are. (A rank may lack a number: Phase I's latent loss,
        where its shard holds no synthetic pair; so the names are gathered first.)"""
        if not self.enabled or not entries:
            return entries
        names = "\n".join(sorted(set().union(*entries))).encode()
        length = int(self.all_reduce_max(torch.tensor([max(len(names), 1)], device=device)).item())
        mine = torch.zeros(length, dtype=torch.uint8, device=device)
        mine[: len(names)] = torch.tensor(list(names), dtype=torch.uint8)
        everyone = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine)
        keys = sorted({k for t in everyone for k in bytes(t.tolist()).rstrip(b"\0").decode().split("\n") if k})
        if not keys:
            return [{} for _ in entries]
        sums = torch.tensor([[[entry.get(k, 0.0), float(k in entry)] for k in keys] for entry in entries],
                            dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        return [{k: total / count for k, (total, count) in zip(keys, rows) if count} for rows in sums.tolist()]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_in_sync(self, module: torch.nn.Module, what: str) -> None:
        """Raise if ranks hold different parameters (a cheap fingerprint compared with min/max reductions)."""
        if not self.enabled:
            return
        fingerprint = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum()
        bounds = torch.stack([fingerprint, -fingerprint])
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        if not torch.allclose(bounds[0], -bounds[1], rtol=1e-9, atol=0):
            raise RuntimeError(f"ranks disagree on the parameters of {what}: data parallelism is broken")

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's weights and buffers."""
        if not self.enabled:
            return
        from ..models.stylegan2.layers import forget_demodulation_sums

        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)
        forget_demodulation_sums()  # (a broadcast does not count as a new version of the weights it writes)


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("rank %d/%d joined the %s process group", rank, world_size, backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def local_device(spec: str, ctx_env: dict[str, str] | None = None) -> str:
    """Under torchrun on GPUs, ``cuda`` means this rank's own GPU."""
    env = ctx_env if ctx_env is not None else os.environ
    if spec in ("cuda", "auto") and torch.cuda.is_available() and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return spec


# What a collective says where another process of the job is gone (killed, failed, refused its run folder) or never
# comes: gloo's and NCCL's words for it.
_PEER_GONE = re.compile(r"Connection (closed|reset) by peer|Broken pipe|remote process exited|Timed out waiting")


def peer_failure(error: BaseException) -> str | None:
    """The one-line message for a rank whose collective failed because another process of its torchrun job ended
    or failed (that process says why, and torchrun's summary names it), or None. It was reported as an internal
    error, "a bug in hyperinverter", on every surviving rank, also where the other rank had stopped on a bad input."""
    gone = isinstance(error, (dist.DistNetworkError, dist.DistStoreError)) or (
        isinstance(error, RuntimeError) and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")
        and _PEER_GONE.search(str(error)) is not None)
    if not gone:
        return None
    # ("[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:61064. This is typically ...")
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    cause = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0].rstrip(".")
    return (f"rank {os.environ.get('RANK', '?')}: another process of this torchrun job ended or failed, so this one "
            f"stops too ({cause}); that process's own message, or torchrun's summary, says why")
