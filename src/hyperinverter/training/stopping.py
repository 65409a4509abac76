"""Stopping a training run cleanly on SIGINT or SIGTERM (Ctrl-C, ``kill``, a scheduler's pre-emption).

While :class:`StopRequests` is active, the first such signal does not end the process: the loop finishes its
step, writes a checkpoint and raises :class:`TrainingStopped`, so that running the same command again resumes with
no step lost. A second Ctrl-C stops at once (``KeyboardInterrupt``), for a step that takes too long. Handlers are
installed only in the main thread (Python delivers signals there) and the previous ones are restored on exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import torch

from .distributed import DistributedContext

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(KeyboardInterrupt):
    """A run stopped on ``signal_number`` after saving a checkpoint at step ``step``; the CLI exits with
    ``128 + signal_number``, as a process ended by that signal would."""

    def __init__(self, message: str, *, signal_number: int, step: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.step = step


class StopRequests:
    """A context manager: while active, SIGINT and SIGTERM are recorded in ``signal_number`` instead of ending the
    process (see the module docstring)."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:  # noqa: PYI034 - final class
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _record(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: at once
        self.signal_number = number  # (no logging here: a handler may run inside the logging module's lock)

    def requested(self, ctx: DistributedContext, device: torch.device) -> int | None:
        """The signal that asked the run to stop, on this rank or (under torchrun) any other, or None. Every rank
        must call it at the same step: ranks then stop together, after the same step."""
        number = self.signal_number
        if ctx.enabled:
            number = int(ctx.all_reduce_max(torch.tensor([number or 0], device=device)).item()) or None
        return number
