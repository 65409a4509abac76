"""A long run's work folder: what it was started with, and one record per finished unit of work, so that an
interrupted run resumes where it stopped and a run with anything else changed refuses the stored work.

``benchmark`` keeps ``OUT/work``; ``evaluate`` keeps ``OUT.work`` until its report is written, and
``directions label`` until its CSV is. While a process uses a work folder it holds its lock, so that a second
process on the same ``OUT`` is refused instead of writing the same records and removing the first one's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .files import atomic_write_bytes, exclusive_lock, remove_stale_temporaries

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
LOCK_FILE = ".lock"


class WorkFolder:
    """``folder/run.json`` (the run's format and identity) and the records the run stores in ``folder``.

    Used as a context manager (``with WorkFolder(...) as work:``) it holds the folder's lock for the block;
    :meth:`claim` takes it too, if not held, until :meth:`close` or :meth:`remove`.
    """

    def __init__(self, folder: Path, *, format: str, what: str) -> None:
        self.folder = Path(folder)
        self.format = format
        self.what = what  # "benchmark", "evaluation", "labelling": for messages
        self._records: set[str] = set()  # the records this process read or wrote: remove() deletes these
        self._lock: contextlib.ExitStack | None = None
        self._made_folder = self._made_lock = False  # by lock(): close() removes what it made, where no run is
        self.claimed = False  # set by claim(): this object started or resumed the run stored here
        self.resumed = False  # set by claim()

    def __enter__(self) -> Self:
        self.lock()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def lock(self) -> None:
        """Hold the folder's lock (an ``OutputError`` if another process holds it), until :meth:`close`."""
        if self._lock is None:
            self._made_folder = not self.folder.exists()
            self._made_lock = not (self.folder / LOCK_FILE).exists()
            stack = contextlib.ExitStack()
            stack.enter_context(exclusive_lock(self.folder / LOCK_FILE, what=f"writing this {self.what}",
                                               folder=self.folder))
            self._lock = stack
            # A run killed while writing a record, where files cannot be written unnamed (NFS, macOS), left its
            # hidden temporary; a benchmark keeps its work, so these piled up for good (not a running writer's).
            for folder, _, _ in os.walk(self.folder):  # (its folders alone, links not followed: no stat per record)
                remove_stale_temporaries(Path(folder))

    def close(self) -> None:
        """Give the lock back. Where no run is stored (the folder holds nothing but the lock), or this object's
        claim failed on what the folder holds (a user's folder), a lock file it made goes, and the folder too if
        :meth:`lock` made it and it is empty."""
        if self._lock is None:
            return
        try:
            entries = {p.name for p in self.folder.iterdir()} if self.folder.is_dir() else set()
            if entries == {LOCK_FILE} or (self._made_lock and not self.claimed):
                (self.folder / LOCK_FILE).unlink(missing_ok=True)
                if self._made_folder and self.folder.is_dir() and not any(self.folder.iterdir()):
                    self.folder.rmdir()
        finally:
            self._lock.close()
            self._lock = None

    def claim(self, identity: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None) -> None:
        """Start a new run, or resume one with the same ``identity`` (then ``resumed`` is True); else an
        ``InputError`` that names what differs. ``defaults``: identity values that older records do not hold.
        Takes the folder's lock if this object does not hold it (and gives it back if the claim fails)."""
        held = self._lock is not None
        self.lock()
        try:
            self._claim(identity, defaults)
            self.claimed = True
        except BaseException:
            if not held:
                self.close()
            raise

    def _claim(self, identity: Mapping[str, Any], defaults: Mapping[str, Any] | None) -> None:
        path = self.folder / RUN_RECORD
        if not path.is_file():
            self.write_json(RUN_RECORD, {"format": self.format, **identity})
            return
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(path, f"is not a readable {self.what} record ({e})") from e
        if not isinstance(stored, dict) or stored.get("format") != self.format:
            raise InputError(path, f"is not a {self.format} record")
        stored = {**(defaults or {}), **stored}
        changed = sorted(k for k in identity if stored.get(k) != _json_roundtrip(identity[k]))
        if changed:
            raise InputError(self.folder, f"holds a {self.what} run with other {', '.join(changed)}; give another "
                             "--out (or move this folder away) to start a new run")
        logger.info("resuming the %s in %s", self.what, self.folder)
        self.resumed = True

    def read_json(self, name: str) -> Any | None:
        """A stored record, or None if the run has not stored it (a record that does not parse is an error)."""
        path = self.folder / name
        if not path.is_file():
            return None
        self._records.add(name)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(path, f"is not a readable {self.what} record ({e}); move it away to redo its work") from e

    def write_json(self, name: str, record: Any) -> Path:
        if name != RUN_RECORD:
            self._records.add(name)
        return atomic_write_bytes(self.folder / name, (json.dumps(record, indent=2) + "\n").encode())

    def remove(self) -> None:
        """Once the run's results are written: delete ``run.json`` and the records this process read or wrote,
        then the folders they leave empty, and give the lock back. Anything else in the folder (not ours) stays, and
        so does the folder."""
        names = sorted(self._records)
        held = [LOCK_FILE] if self._lock is not None else []
        for name in [*names, RUN_RECORD, *held]:
            (self.folder / name).unlink(missing_ok=True)
        folders = {self.folder}
        for name in names:
            folders.update(p for p in (self.folder / name).parents if self.folder in p.parents)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # the deepest first
            remove_stale_temporaries(folder)  # a killed run's half-written records
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if self.folder.is_dir():
            logger.warning("left %s: it holds files this run did not write", self.folder)
        self.close()


# A tensor of HASHED_APART bytes or more is hashed apart, in blocks of HASH_BLOCK, on every core (hashlib lets go of
# the GIL), and its blocks' digests stand in its place: a full-size HyperInverter's 1.5 GB took 1.5 s to hash in one
# stream, 0.7 s on two cores. The blocks are of a fixed size, so the fingerprint is the same on any machine.
HASHED_APART = 1 << 20
HASH_BLOCK = 1 << 24


def fingerprint_of(value: Any) -> str:
    """A short hash of ``value``'s content: tensors (dtype, shape, bytes), modules (their state), dataclasses and
    other objects (their fields), mappings, sequences and scalars. What a stored run was made from is recorded by
    it, so that a run resumes only on the very inputs, weights and directions it started with. A tensor's layout
    counts too (the same values stored transposed give another fingerprint): each parameter of a model is stored
    in one layout, and reading it where it lies spares a copy."""
    pieces: list[tuple[Any, bool]] = []  # (bytes or a tensor's buffer, hashed apart)
    _feed(pieces, value)
    blocks = [data[i : i + HASH_BLOCK] for data, apart in pieces if apart for i in range(0, len(data), HASH_BLOCK)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(blocks), cores)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            block_digests = iter(pool.map(_sha256, blocks))
    else:
        block_digests = iter(map(_sha256, blocks))
    digest = hashlib.sha256()
    for data, apart in pieces:
        if not apart:
            digest.update(data)
            continue
        for _ in range(0, len(data), HASH_BLOCK):
            digest.update(next(block_digests))
    return digest.hexdigest()[:16]


def _sha256(data) -> bytes:
    return hashlib.sha256(data).digest()


def _feed(pieces: list[tuple[Any, bool]], value: Any) -> None:
    if isinstance(value, torch.nn.Module):
        value = value.state_dict()
    if isinstance(value, torch.Tensor):
        tensor, order = _in_memory_order(value.detach().cpu())
        pieces.append((f"tensor{tensor.dtype}{tuple(value.shape)}{order}".encode(), False))
        data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy
        pieces.append((data, len(data) >= HASHED_APART))
    elif isinstance(value, Mapping):
        pieces.append((f"mapping{len(value)}".encode(), False))
        for key in sorted(value, key=str):
            _feed(pieces, str(key))
            _feed(pieces, value[key])
    elif isinstance(value, (list, tuple)):
        pieces.append((f"sequence{len(value)}".encode(), False))
        for item in value:
            _feed(pieces, item)
    elif value is None or isinstance(value, (str, int, float, bool)):
        pieces.append((f"{type(value).__name__}:{value!r};".encode(), False))
    else:  # a dataclass or another object: its class and its fields (its repr if it has none)
        if dataclasses.is_dataclass(value):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        else:
            fields = vars(value) if hasattr(value, "__dict__") else {"repr": repr(value)}
        pieces.append((type(value).__qualname__.encode(), False))
        _feed(pieces, fields)


def _in_memory_order(tensor: torch.Tensor) -> tuple[torch.Tensor, str]:
    """``tensor`` as a contiguous view of its memory, and how its dimensions were ordered for it ("" when in
    order): a weight stored transposed (``ops.matmul.transposed_storage``, 0.6 GB of a full-size hypernetwork) is
    read where it lies, not copied first. Any other layout is copied."""
    if tensor.is_contiguous():
        return tensor, ""
    order = sorted(range(tensor.ndim), key=lambda d: -tensor.stride(d))
    view = tensor.permute(order)
    return (view, f"order{order}") if view.is_contiguous() else (tensor.contiguous(), "")


def as_recorded(value: Any) -> Any:
    """``value`` as a run record holds it: itself when it is JSON (readable in ``run.json``), else its
    :func:`fingerprint_of` (an option given through the API may be a tensor)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return fingerprint_of(value)
    return value


def _json_roundtrip(value: Any) -> Any:
    """``value`` as a stored record reads back (tuples become lists), so that a resumed identity compares equal."""
    return json.loads(json.dumps(value))
