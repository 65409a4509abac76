"""Writing files and folders so that a reader never sees half of one, a power cut loses nothing already
reported as written, and nothing that hyperinverter did not write is ever deleted.

Files are written unnamed (Linux ``O_TMPFILE``) or under a hidden temporary name, flushed to disk, and only then
given their name, so a process killed at any instant leaves either the old file or the new one; the folder is
flushed too, so the new name survives a power cut. Folder outputs (pipelines, generators) are built beside
their target and swapped in; an existing folder is replaced only when it is one of ours of the same kind.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError, describe_os_error

logger = logging.getLogger(__name__)

PIPELINE_INDEX = "pipeline.json"
PIPELINE_FORMAT = "hyperinverter-pipeline"
COMPONENT_INDEX = "config.json"
COMPONENT_FORMAT = "hyperinverter"
# What a bundled pipeline folder holds besides its index and components (scripts/package_bundled.py).
PIPELINE_EXTRAS = frozenset({"MODEL_CARD.md", "configs", "directions", "examples", "ganspace_sheet.png",
                             "samples.png"})
# A generator folder: one component, or a GAN folder with generator/ and discriminator/; `export-generator`
# adds the image's codes.
GENERATOR_ENTRIES = frozenset({"config.json", "model.safetensors", "generator", "discriminator", "ws.safetensors"})

# What marks a file as written by hyperinverter: images carry it in their metadata (PNG's Software text, a JPEG or
# GIF comment, WebP's XMP packet; see ``io.images.image_bytes``), MP4 clips in their comment (``io.video``, in the
# index at the front), safetensors files in their header. An output replaces an existing file of these kinds only
# when it carries the mark, so a user's photo or model that happens to have an output's name is never lost.
WRITER_TAG = "hyperinverter"
MARKED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".safetensors"})
# The header keys that mark a safetensors file as ours: each writer names what its file holds (components,
# inversions, directions, training checkpoints, benchmark records; our caches of converted files say it in their
# ``format``), and a file without metadata of its own gets ``written_by``, so that a component saved again keeps
# its bytes.
_OUR_SAFETENSORS_KEYS = frozenset({"hyperinverter", "inversion", "direction", "training", "record"})
# Reports are marked too, where their writers check (``check_file_replaceable(path, report=True)``): a Markdown
# report ends with an HTML comment (not shown), a JSON report holds ``"written_by"``, and a CSV table is known by
# its header (per-image scores: ``image,method,...``; face labels: ``seed,trunc,z,generator,...``, before the z
# column ``seed,trunc,generator,...``), which users' tools read unchanged.
REPORT_SUFFIXES = frozenset({".md", ".json", ".csv"})
MARKDOWN_MARK = f"<!-- written by {WRITER_TAG} -->"
_OUR_CSV_HEADERS = (("image", "method"), ("seed", "trunc", "z", "generator"), ("seed", "trunc", "generator"))
_MAX_REPORT_BYTES = 64 << 20  # (a JSON report is parsed to be checked; ours are far smaller)


def markdown_bytes(text: str) -> bytes:
    """A Markdown report as written: its text, then hyperinverter's mark (an HTML comment, which viewers hide)."""
    return f"{text.rstrip()}\n\n{MARKDOWN_MARK}\n".encode()


def json_report_bytes(record: dict, *, indent: int | None = 2) -> bytes:
    """A JSON report as written: ``record`` with ``"written_by": "hyperinverter"``, its mark (readers drop it)."""
    return (json.dumps({**record, "written_by": WRITER_TAG}, indent=indent) + "\n").encode()

# A temporary's name: the output's, 16 hex digits, and (since it is named) the writing process's id.
_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{16}(?:-(?P<pid>\d+))?\.partial$")
# A folder output's old version, set aside while the new one is moved in where the two cannot be exchanged: not a
# temporary (a write killed between the two renames left it as the only whole copy).
_ASIDE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{16}-(?P<pid>\d+)\.replaced$")
_PROC_FD = Path("/proc/self/fd")


class InputFiles:
    """The files a command reads, known by identity (device and inode, so that any path or link to one counts):
    its results never replace what they were made from."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        self._by_identity: dict[tuple[int, int], Path] = {}
        for path in paths:
            identity = _identity(path)
            if identity is not None:
                self._by_identity.setdefault(identity, Path(path))

    def check_outputs(self, outputs: Iterable[str | os.PathLike], *, hint: str = "give another --out") -> None:
        """An output that is one of the inputs is an ``OutputError`` naming both; so is one that would replace an
        image, clip or safetensors file that we did not write (:func:`check_file_replaceable`)."""
        for output in outputs:
            source = self._by_identity.get(_identity(output))
            if source is not None:
                raise OutputError(output, f"is the input {source}: writing the result would replace it; {hint}")
            check_file_replaceable(output)


def check_own_folder(folder: Path, why_not_ours: Callable[[Path], str | None], *, what: str) -> None:
    """A folder that a command writes fixed names into (a training run, the demo, a dataset) may be new, empty or
    one it made; ``why_not_ours(folder)`` says why a non-empty folder is not (None: it is ours). Anything else is
    an ``OutputError``, raised before anything is written."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutputError(folder, f"is a file; give a folder for {what}")
    if not any(folder.iterdir()):
        return
    reason = why_not_ours(folder)
    if reason is not None:
        raise OutputError(folder, f"{reason}; give a new or empty folder for {what}")


def check_output_folder(out_dir: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """An ``OutputError`` if ``out_dir`` cannot be made or written into, found without making it: a command checks
    its results folder before it loads a model, and makes it after, so that a model that fails to load leaves no
    empty folder behind. ``inputs``: the command's inputs, none of them a folder that is ``out_dir`` itself."""
    out_dir = Path(out_dir)
    for folder in inputs:  # (each photo failed after its inversion, or a later run took the results for photos)
        if Path(folder).is_dir() and out_dir.is_dir() and Path(folder).samefile(out_dir):
            raise OutputError(out_dir, f"is the input folder {folder}: the results would sit among the photos, and "
                              "a later run would read them as photos; give another folder")
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise OutputError(out_dir, "exists and is not a folder; give a folder for the results")
    made_in = next(p for p in (out_dir, *out_dir.absolute().parents) if os.path.lexists(p))
    if not made_in.is_dir():
        raise OutputError(out_dir, f"cannot be made: {made_in} is not a folder")
    if not os.access(made_in, os.W_OK | os.X_OK):
        raise OutputError(out_dir, "permission denied: cannot write into this folder" if made_in == out_dir else
                          f"cannot be made: permission denied in {made_in}")
    return out_dir


# Held in a results folder while a command writes into it (see output_folder).
OUTPUT_LOCK = ".hyperinverter.lock"
# What exclusive_lock writes: "pid N on HOST", or its job's name; "pid N" and a bare pid (or nothing) are earlier
# versions', which a stopped or failed training run left too, so that it does not say its holder was killed.
_LOCK_CONTENT = re.compile(rb"(\d*|pid \d+(?: on [^\s]{1,64})?|job [^\n]{1,200})\n?")


@contextlib.contextmanager
def output_folder(out_dir: str | os.PathLike, *, job: str | None = None) -> Iterator[Path]:
    """The folder a command writes its results into, for the block: created if needed, an ``OutputError`` if it is a
    file or cannot be written (:func:`check_output_folder`), cleared of the hidden temporaries a killed run of ours
    left there (nothing else), and held: another process writing results there is an ``OutputError`` naming the
    folder (two runs with other options into one folder mixed their files). ``job``: held with the other
    processes of that job (the ranks of a torchrun job: :func:`hyperinverter.inversion.batch.torchrun_job`), and
    against every other run or job.

    The lock is :func:`exclusive_lock` on ``OUTPUT_LOCK`` in the folder, which the kernel releases however the
    process ends: a file left by a killed run does not block (it holds a process id or nothing), and goes at the end
    with the last holder, as the file this run made does. A file of that name that is not one of these is refused
    (the lock would write into it), and stays as it was.
    """
    out_dir = check_output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir / OUTPUT_LOCK, what="writing results", folder=out_dir, job=job, remove=True):
        remove_stale_temporaries(out_dir)
        yield out_dir


_UNSAFE_IN_NAMES = re.compile(r'[\x00-\x1f/\\:*?"<>|]+')


_NOT_PLAIN_ASCII = re.compile(r"[^A-Za-z0-9._-]+")


def file_name_part(text: str, *, fallback: str, ascii_only: bool = False, max_length: int = 120) -> str:
    """``text`` made safe as (part of) one file name on every system: path separators, control characters and what
    Windows forbids become '-', and leading dots go (no hidden file, no '..'); ``fallback`` if nothing is left. A
    name read from a file (a direction's) thus never sends an output into another folder. ``ascii_only``: every
    run of characters but letters, digits, '.', '_' and '-' becomes one '-' (names a web page serves)."""
    part = (_NOT_PLAIN_ASCII if ascii_only else _UNSAFE_IN_NAMES).sub("-", text)
    part = part.strip("-.") if ascii_only else part.lstrip(". ").rstrip()
    return part[:max_length] or fallback


def check_outside(path: str | os.PathLike, folder: str | os.PathLike, *, why: str, option: str = "--out") -> None:
    """A ``ValueError`` if ``path`` lies in ``folder`` (or is it), a folder the command reads every image under:
    ``why`` says what would go wrong, ``option`` which setting to change."""
    if Path(path).resolve().is_relative_to(Path(folder).resolve()):
        raise ValueError(f"{path} is inside {folder}: {why}; give {option} outside it")


@contextlib.contextmanager
def exclusive_lock(path: Path, *, what: str, folder: Path | None = None, job: str | None = None,
                   remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder if needed) for the block; if another process
    holds it, an ``OutputError`` on ``folder`` (default: the lock's) that names ``what`` it is doing and its pid.
    ``job``: a lock shared with the other processes of the job of that name (the ranks of one torchrun job), and
    against any other process or job. ``remove``: the file goes at the end, by its last holder, however the block
    ends; a file found holding a process id (or a job's name) was then left by a process killed before it could end
    (by the kernel for memory, say), which could not report it: a warning says so. Anything else at ``path`` (a
    link, a folder, a user's file) is an ``OutputError`` naming it, and stays as it was.

    An advisory ``flock``: the kernel releases it when the holder's process ends, however it ends, so a killed run
    never leaves a stale lock. Its holder may delete the file while it holds it (a work folder removed once its
    results are written). Where ``fcntl`` does not exist (Windows), or the file system does not lock (NFS without
    its lock daemon), nothing is locked, with a warning.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_lock_file(path)
    while True:
        try:  # (not through a link: a training run's or a work folder's lock wrote its pid into a user's file)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                _check_lock_file(path)  # (a link made since: refused, naming it)
            raise
        try:
            left = _flock(fcntl, fd, job)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.close(fd)
            raise OutputError(folder or path.parent, f"is in use: another process is {what} there"
                              f"{f' ({_holder(holder)})' if holder else ''}; wait for it to end, or give another "
                              "folder") from None
        except OSError as e:  # (it was an error naming no file, "no locks available", and no command could write there)
            os.close(fd)
            logger.warning("%s: cannot be locked (%s): nothing keeps another process from %s there at the same time",
                           folder or path.parent, describe_os_error(e, with_file=False), what)
            try:
                yield
            finally:
                if remove:  # (it was made above)
                    path.unlink(missing_ok=True)
            return
        if _identity(path) == _identity(fd):
            break
        os.close(fd)  # its holder removed the file between our open and our lock: lock the one there now
    try:
        if remove and left.startswith(("pid ", "job ")):  # (its holders take it away however they end, unless killed)
            logger.warning("%s: the last process %s there (%s) was killed before it ended (by the kernel for "
                           "memory, a SIGKILL, a power cut) and could not say why; the system log may "
                           "(`journalctl -k`, `dmesg`)", folder or path.parent, what, _holder(left))
        if job is None:  # who holds it, for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{_this_process()}\n".encode(), 0)
        yield
    finally:
        try:
            if remove:  # (by the last holder: a shared one takes it whole first, which fails while another holds it)
                _take_whole(fcntl, fd, shared=job is not None)
                if _identity(path) == _identity(fd):
                    path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)  # (releases the lock)


def _take_whole(fcntl, fd: int, *, shared: bool, tries: int = 5) -> None:
    """Lock ``fd`` exclusively, to remove its file as its last holder; a ``BlockingIOError`` while another process
    holds it. A shared holder lets its share go and tries again for a moment: where flock is emulated by POSIX locks
    (NFS), a failed upgrade keeps the share, so two ranks ending at once each kept the other from taking it, the
    file stayed, and the next run said that a process had been killed."""
    tries = tries if shared else 1
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            time.sleep(0.01 * (attempt + 1) * (1 + secrets.randbelow(100) / 100))  # (apart, not in step)


def _check_lock_file(path: Path) -> None:
    """An ``OutputError`` where ``path`` is there but is not a lock file of ours: a link, a folder, a named pipe, or
    a file holding anything but what :func:`exclusive_lock` writes (a process id or a job's name, or nothing if its
    run was killed before writing it). Locking would write into it, and its holder remove it: it stays as it was."""
    try:
        found = os.lstat(path)
        ours = (stat.S_ISREG(found.st_mode) and found.st_size <= 256
                and _LOCK_CONTENT.fullmatch(path.read_bytes()) is not None)
    except FileNotFoundError:  # (none, or its holder removed it as it ended: a second run took that for a user's)
        return
    except OSError:
        ours = False
    if not ours:
        raise OutputError(path, "is not a lock file of hyperinverter's, whose name it has: move it away")


def _this_process() -> str:
    """"pid N on HOST": on a shared file system (a cluster's NFS) a pid alone named an unrelated process of the
    host reading it."""
    host = "".join(socket.gethostname().split())[:64]
    return f"pid {os.getpid()}" + (f" on {host}" if host.isascii() and host else "")


def _holder(content: str) -> str:
    """Who a lock file's ``content`` names: "pid N on HOST" ("pid N" or the bare number: an earlier version's) or
    "torchrun job X"."""
    return f"torchrun job {content[4:]}" if content.startswith("job ") else f"pid {content.removeprefix('pid ')}"


def _flock(fcntl, fd: int, job: str | None, *, wait_for_the_job: float = 5.0) -> str:
    """Lock ``fd`` without waiting: exclusively, or shared with the other processes of ``job`` only (a
    ``BlockingIOError`` if another process or job holds it) -> what an earlier holder left in the file, if it was
    not this job's. The first process of a job takes the file exclusively, writes the job's name into it and
    shares it; the job's other processes join it where they read their job's name (waiting for the first to
    write it)."""
    if job is None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.pread(fd, 256, 0).decode(errors="replace").strip()
    # One line of at most 200 bytes (_LOCK_CONTENT), not characters: an accented run id is two bytes a letter.
    # (no space at the cut either: the line is read back stripped)
    name = "job " + " ".join(job.split()).encode()[:200].decode(errors="ignore").rstrip()
    deadline = time.monotonic() + wait_for_the_job
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:  # the first of its job here
            left = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{name}\n".encode(), 0)
            fcntl.flock(fd, fcntl.LOCK_SH)
            return left
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held exclusively: by another process, or by the first of this job, writing its name
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if os.pread(fd, 256, 0).decode(errors="replace").strip() == name:
            return ""
        fcntl.flock(fd, fcntl.LOCK_UN)  # another job's
        raise BlockingIOError


def special_file_kind(path: str | os.PathLike) -> str | None:
    """"a named pipe", "a socket" or "a device" where ``path`` (its links followed) is one, else None (a file, a
    folder, or nothing). Readers refuse them by name: reading a named pipe waits for a writer without end (a pipe
    given as a model's ``.pt`` hung), and a device reads without end."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None


def refuse_special_file(path: str | os.PathLike, error: Callable[[str | os.PathLike, str], Exception],
                        what: str) -> None:
    """Raise ``error(path, "is a named pipe, not <what>")`` where ``path`` is one (see :func:`special_file_kind`)."""
    kind = special_file_kind(path)
    if kind is not None:
        raise error(path, f"is {kind}, not {what}")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_if_readable(path: str | os.PathLike) -> str | None:
    """:func:`sha256_of`, or None when the file cannot be read: a batch job records it with each result (to redo
    a file replaced under its name), and reading the file for the work then reports why it failed."""
    if special_file_kind(path) is not None:
        return None
    try:
        return sha256_of(path)
    except OSError:
        return None


def _identity(path: str | os.PathLike | int) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # (a file descriptor too)
    except (OSError, ValueError):  # not there (yet), or a name the OS refuses
        return None
    return st.st_dev, st.st_ino


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}-{os.getpid()}.partial")


def _writer_alive(pid: str | None) -> bool:
    """Whether the process that named a temporary still runs (on this machine), so that it is not stale."""
    if pid is None or int(pid) == os.getpid():
        return False  # a name from before pids were recorded, or our own earlier write (killed halfway)
    if os.name == "nt":  # os.kill would end the process there: keep its temporary rather
        return True
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # another user's
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


def fsync_directory(directory: Path) -> None:
    """Flush a folder's entries (new names, renames) to disk; a no-op where the platform cannot."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems do not fsync folders
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@dataclass
class _StagedFile:
    """Bytes written and flushed, not yet visible under their name (``temp`` None: an unnamed O_TMPFILE)."""

    fd: int
    temp: Path | None

    def discard(self) -> None:
        os.close(self.fd)
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


_AT_FDCWD, _AT_EMPTY_PATH, _AT_SYMLINK_FOLLOW = -100, 0x1000, 0x400
_UNNAMED_SUPPORT: dict[int, bool] = {}  # file system (st_dev) -> can an O_TMPFILE file be given a name there?


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _link_unnamed(fd: int, path: Path) -> None:
    """Give the unnamed file ``fd`` the name ``path`` (``FileExistsError`` if taken).

    ``linkat(fd, "", AT_EMPTY_PATH)`` works for the file's opener on Linux >= 6.10 (and for root before); older
    kernels take the ``/proc/self/fd`` route."""
    target = os.fsencode(path)
    if _libc().linkat(fd, b"", _AT_FDCWD, target, _AT_EMPTY_PATH) == 0:
        return
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), os.fsdecode(target))
    os.link(_PROC_FD / str(fd), path, follow_symlinks=True)


def _unnamed_supported(directory: Path) -> bool:
    """Whether files in ``directory`` can be written unnamed (``O_TMPFILE``) and named later; probed once per
    file system."""
    if not hasattr(os, "O_TMPFILE"):
        return False
    device = os.stat(directory).st_dev
    if device not in _UNNAMED_SUPPORT:
        probe = temporary_sibling(Path(directory) / "probe")
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o666)
            try:
                _link_unnamed(fd, probe)
                probe.unlink()
                _UNNAMED_SUPPORT[device] = True
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            _UNNAMED_SUPPORT[device] = False
    return _UNNAMED_SUPPORT[device]


def _stage(path: Path, data: bytes, durable: bool) -> _StagedFile:
    if _unnamed_supported(path.parent):
        # mode 0666 & ~umask, like open(); a process killed before the file is named leaves nothing behind
        staged = _StagedFile(os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o666), None)
    else:
        temp = temporary_sibling(path)
        try:
            staged = _StagedFile(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), temp)
        except OSError as e:  # named after the file asked for, not our hidden temporary
            raise OSError(e.errno, e.strerror, os.fspath(path)) from e
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(staged.fd, view):]
        if durable:
            os.fsync(staged.fd)
    except OSError as e:
        staged.discard()
        if e.filename is None:  # write and fsync name no file: a full disk would be reported without its path
            raise OSError(e.errno, e.strerror, os.fspath(path)) from e
        raise
    except BaseException:
        staged.discard()
        raise
    return staged


def _publish(staged: _StagedFile, path: Path) -> None:
    try:
        if staged.temp is not None:
            os.replace(staged.temp, path)
            return
        try:
            _link_unnamed(staged.fd, path)
        except FileExistsError:  # replacing a file: name it beside, then rename over (atomic)
            temp = temporary_sibling(path)
            _link_unnamed(staged.fd, temp)
            os.replace(temp, path)
    finally:
        os.close(staged.fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True, replace_any: bool = False,
                       report: bool = False) -> Path:
    """Write ``data`` to ``path``: readers see the old file or the whole new one, never a part.

    ``durable=False`` skips the flushes: still never a partial file, but a power cut may lose the newest write
    (right for thousands of regenerable dataset files, wrong for checkpoints and results). ``replace_any`` and
    ``report``: see :func:`atomic_write_group`.
    """
    return atomic_write_group([(Path(path), data)], durable=durable, replace_any=replace_any, report=report)[0]


def atomic_write_figure(path: str | os.PathLike, fig, *, dpi: int = 120) -> Path:
    """A matplotlib figure written to ``path`` as a PNG, atomically (:func:`atomic_write_bytes`), and closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": WRITER_TAG})
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def written_by_us(path: str | os.PathLike, *, safetensors: bool = False) -> bool:
    """Whether the image, clip or safetensors file at ``path`` carries hyperinverter's mark (``WRITER_TAG``); a
    missing, unreadable or foreign file does not. Only the file's header is read. ``safetensors``: read it as one
    whatever its name."""
    from PIL import Image

    from .checkpoints import read_safetensors_metadata
    from .images import MADE_WITH_CHUNK

    path = Path(path)
    if special_file_kind(path) is not None:
        return False
    if not safetensors and path.suffix.lower() in REPORT_SUFFIXES:
        return _report_written_by_us(path)
    try:
        if safetensors or path.suffix.lower() == ".safetensors":
            return safetensors_kind(read_safetensors_metadata(path)) is not None
        if path.suffix.lower() == ".mp4":
            with open(path, "rb") as f:
                head = f.read(1 << 20)
            return head[4:8] == b"ftyp" and WRITER_TAG.encode() in head  # (an MP4 with its comment at the front)
        with Image.open(path) as image:  # reads the header and metadata, not the pixels
            info = image.info
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    if MADE_WITH_CHUNK in info or info.get("Software") == WRITER_TAG:
        return True
    mark = info.get("comment") or info.get("xmp") or b""
    return isinstance(mark, bytes) and WRITER_TAG.encode() in mark


def safetensors_kind(metadata: dict) -> str | None:
    """What one of our safetensors files holds, by its header: ``inversion``, ``direction``, ``training``,
    ``record``, a component (``hyperinverter``), a cache's ``format``, or ``written_by`` (a file without metadata of
    its own); None for a file we did not write."""
    ours = sorted(_OUR_SAFETENSORS_KEYS.intersection(metadata))
    if ours:
        return ours[0]
    if str(metadata.get("format", "")).startswith(f"{WRITER_TAG}-"):
        return str(metadata["format"])
    return "written_by" if metadata.get("written_by") == WRITER_TAG else None


_KIND_NAMES = {"inversion": "an inversion", "direction": "a direction", "training": "a training checkpoint",
               "record": "benchmark work", "hyperinverter": "a model's weights", "written_by": "plain tensors"}


def _report_written_by_us(path: Path) -> bool:
    """Whether the Markdown, JSON or CSV report at ``path`` carries our mark (see ``REPORT_SUFFIXES``)."""
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as f:
            if suffix == ".md":
                f.seek(max(os.fstat(f.fileno()).st_size - 256, 0))
                return MARKDOWN_MARK.encode() in f.read()
            if suffix == ".csv":
                header = next(csv.reader([f.readline(4096).decode("utf-8", "replace")]), [])
                return any(tuple(header[: len(ours)]) == ours for ours in _OUR_CSV_HEADERS)
            data = json.loads(f.read(_MAX_REPORT_BYTES + 1)) if os.fstat(f.fileno()).st_size <= _MAX_REPORT_BYTES \
                else None
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("written_by") == WRITER_TAG


def check_file_replaceable(path: str | os.PathLike, *, safetensors: bool = False, report: bool = False,
                           replacing_with: bytes | None = None, kind: str | None = None) -> None:
    """Raise ``OutputError`` if writing ``path`` would replace a symbolic link, a device, pipe or socket, or an
    image, clip or safetensors file that hyperinverter did not write (``written_by_us``); or if it holds a NUL.
    Other files at an output's name are the writer's to check; ``safetensors``: the output is one whatever its
    name, and so must the file it replaces be; ``report``: a Markdown, JSON or CSV report, which replaces only a
    report of ours; ``replacing_with``: the new safetensors file's bytes, which replace only a file of ours of the
    same kind (``import-pti --out B/w_encoder/model.safetensors`` wrote an inversion over a model's weights);
    ``kind``: the same check before the bytes exist (``safetensors_kind`` of the file to come, e.g. ``direction``),
    so that a command refuses before its work (``directions sefa`` wrote some files, then refused one)."""
    path = Path(path)
    if "\0" in os.fspath(path):  # (the unnamed file was linked at the name cut at the NUL: another path)
        raise OutputError(path, "holds a NUL character, which no file name can")
    if path.is_symlink():  # (we write no links: a user's, dangling or not, would be replaced by a plain file)
        raise OutputError(path, "is a symbolic link, which is not replaced; give the path it points to, or write the "
                                "output elsewhere")
    refuse_special_file(path, OutputError, "a file; write the output elsewhere")  # (as root, /dev/null became a file)
    if not path.is_file():
        return
    if safetensors or path.suffix.lower() == ".safetensors":
        from .checkpoints import _metadata_of, read_safetensors_metadata

        try:
            old = safetensors_kind(read_safetensors_metadata(path))  # (the header only, read once)
        except (OSError, ValueError):
            old = None
        new = old if old is None else kind or (old if replacing_with is None
                                               else safetensors_kind(_metadata_of(replacing_with, path)))
        if new != old:
            raise OutputError(path, f"is a file of ours that holds {_KIND_NAMES.get(old, old)}, not "
                              f"{_KIND_NAMES.get(new, new)}; it is not replaced: write the output elsewhere")
        ours = old is not None
    else:
        marked = path.suffix.lower() in MARKED_SUFFIXES or (report and path.suffix.lower() in REPORT_SUFFIXES)
        ours = not marked or written_by_us(path)
    if not ours:
        raise OutputError(path, "exists and was not written by hyperinverter, so it is not replaced; move it away, "
                                "or write the output elsewhere")


def make_parent_folder(path: Path) -> None:
    """Make ``path``'s folder (and its parents) where missing; a file in the way is an ``OutputError`` that says
    which (mkdir's own "file exists" named the output as though it were the file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((q for q in reversed(path.parents) if q.exists() and not q.is_dir()), path.parent)
        raise OutputError(path, f"cannot be written: {blocker} is a file, not a folder") from None


def atomic_write_group(files: Sequence[tuple[Path, bytes]], *, durable: bool = True, replace_any: bool = False,
                       report: bool = False) -> list[Path]:
    """Write several files so that they appear together: all are written and flushed under no name first,
    then named one after the other (microseconds apart), the last one last.

    Readers that treat the last file as the group's commit record (as resumable batch inversion does) never
    see a group without all of its files. An image, clip or safetensors file that we did not write is never replaced
    (:func:`check_file_replaceable`): the whole group is refused before anything is written. ``replace_any``
    lifts that for a folder that is ours as a whole (a training run's checkpoints, a cache), where a file of an
    output's name that does not read back is one of ours, damaged. ``report``: the group's Markdown, JSON and CSV
    files are reports, which replace only reports of ours (``markdown_bytes``, ``json_report_bytes``). The
    temporaries that a killed write of one of the files left beside it (where files cannot be written unnamed) go.
    """
    paths = [Path(p) for p, _ in files]
    for p, (_, data) in zip(paths, files):
        if p.is_dir():
            raise OutputError(p, "is a folder; give a file name")
        if not replace_any:
            check_file_replaceable(p, report=report, replacing_with=data)
        make_parent_folder(p)
    for p in paths:  # (before staging: on a full disk, their room is the new files')
        _remove_stale_temporaries_of(p)
    staged: list[_StagedFile] = []
    try:
        for path, (_, data) in zip(paths, files):
            staged.append(_stage(path, data, durable))
    except BaseException:
        for s in staged:
            s.discard()
        raise
    for i, (s, path) in enumerate(zip(staged, paths)):
        try:
            _publish(s, path)
        except BaseException:
            for rest in staged[i + 1:]:
                rest.discard()
            raise
    if durable:
        for folder in {p.parent for p in paths}:
            fsync_directory(folder)
    return paths


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of our writers' temporaries (``.NAME.<16 hex digits>-<pid>.partial``)."""
    return _TEMP.match(name) is not None


def remove_stale_temporaries(directory: Path, *, of: str | None = None, idle_seconds: float = 0.0) -> int:
    """Delete the hidden temporary files and folders that a killed hyperinverter left in ``directory`` (only
    those of the output named ``of``, if given). Only names of exactly the form we create
    (``.NAME.<16 hex digits>-<pid>.partial``) are touched, and not those of a process that still runs: another
    command writing into the same folder (two GPUs inverting into one --out) keeps its writes in progress.
    ``idle_seconds``: also keep those written to within that time (a writer on another machine of a shared
    folder, whose process this machine cannot see)."""
    entries = Path(directory).iterdir() if Path(directory).is_dir() else ()
    return sum(_remove_if_stale(entry, of=of, idle_seconds=idle_seconds) for entry in entries)


def _remove_if_stale(entry: Path, *, of: str | None = None, idle_seconds: float = 0.0) -> bool:
    """Delete ``entry`` if it is a stale temporary (of the output named ``of``): see remove_stale_temporaries."""
    match = _TEMP.match(entry.name)
    if match is None or (of is not None and match.group("name") != of) or _writer_alive(match.group("pid")):
        return False
    try:
        if idle_seconds and time.time() - entry.lstat().st_mtime < idle_seconds:
            return False
    except FileNotFoundError:
        return False
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
    return True


# The temporaries found in each folder written into, by the name of their output: a folder is listed once per
# process, not once per file (listing a folder of 20,000 files took 30 times as long as writing one).
_TEMPORARIES_FOUND: dict[tuple[str, int, int], dict[str, list[str]]] = {}


def _remove_stale_temporaries_of(path: Path) -> None:
    """Delete the temporaries that a killed write of ``path`` left beside it (only those of its name, of processes
    that no longer run), as it is written again. Those of a killed process that appear after this process first
    wrote into the folder go with the next process's write."""
    folder = os.path.abspath(path.parent)
    identity = _identity(folder)
    if identity is None:
        return
    found = _TEMPORARIES_FOUND.get((folder, *identity))
    if found is None:
        found = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    match = _TEMP.match(entry.name)
                    if match is not None:
                        found.setdefault(match.group("name"), []).append(entry.name)
        except OSError:  # (a folder that can be written into but not listed)
            pass
        if len(_TEMPORARIES_FOUND) >= 10_000:  # (a long-running app writing into a new folder per request)
            _TEMPORARIES_FOUND.clear()
        _TEMPORARIES_FOUND[(folder, *identity)] = found
    for name in found.pop(path.name, ()):
        try:
            _remove_if_stale(Path(folder, name), of=path.name)
        except OSError as e:  # (another user's, in a shared folder): it does not keep the output from being written
            logger.warning("%s: cannot remove %s, left by a killed write of it (%s)", path, name,
                           describe_os_error(e, with_file=False))


# --- folder outputs ------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    if special_file_kind(path) is not None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def output_kind(folder: Path) -> str | None:
    """``"pipeline"`` or ``"generator"`` when ``folder`` is one of our outputs of that kind, else None."""
    folder = Path(folder)
    index = _read_json(folder / PIPELINE_INDEX)
    if index is not None and index.get("format") == PIPELINE_FORMAT:
        return "pipeline"
    for config in (folder / COMPONENT_INDEX, folder / "generator" / COMPONENT_INDEX):
        header = _read_json(config)
        if header is not None and header.get("format") == COMPONENT_FORMAT and \
                header.get("model_type") == "stylegan2-generator":
            return "generator"
    return None


def pipeline_extras(folder: Path) -> list[Path]:
    """What a bundle holds beside its index, generator and methods' components: its card, configs, directions,
    examples and pictures (``PIPELINE_EXTRAS``), and generators stored with it (a fine-tuned copy); a symbolic
    link among them counts (a ``directions`` linked to a shared folder was dropped when the bundle was saved over)."""
    folder = Path(folder)
    main = (_read_json(folder / PIPELINE_INDEX) or {}).get("generator")
    return sorted(e for e in folder.iterdir() if not e.name.startswith(".")
                  and (e.name in PIPELINE_EXTRAS
                       or (e.is_dir() and e.name != main and output_kind(e) == "generator")))


def copy_durably(source: Path, target: Path) -> None:
    """Copy a file, or a folder's files, each written atomically and flushed. Symbolic links are copied as links,
    never followed: a link to a shared folder stays a link, not a copy of its files. A relative link to a file of the
    folder keeps its text (it moves with the folder); one to anything else is made absolute, so that the copy names
    the same file from wherever it lies."""
    source, target = Path(source), Path(target)
    if source.is_symlink() or source.is_file():
        entries = [source]
    else:
        entries = sorted(p for p in source.rglob("*") if p.is_symlink() or p.is_file())  # (rglob follows no links)
    for path in entries:
        copy = target / path.relative_to(source) if path != source else target
        if path.is_symlink():
            text = os.readlink(path)
            named = os.path.abspath(os.path.join(path.parent, text))
            if not os.path.isabs(text) and (path == source or not named.startswith(os.path.abspath(source) + os.sep)):
                text = named
            copy.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(text, copy)
            fsync_directory(copy.parent)
        else:
            atomic_write_bytes(copy, path.read_bytes())


def _owned_entries(folder: Path, kind: str) -> frozenset[str]:
    if kind == "pipeline":
        index = _read_json(folder / PIPELINE_INDEX) or {}
        listed = {index[key] for key in ("generator", "discriminator") if isinstance(index.get(key), str)}
        components = index.get("components")  # format 1: a list of folders
        if isinstance(components, list):
            listed |= {c for c in components if isinstance(c, str)}
        methods = index.get("methods")  # format 2: each method's role -> folder
        for entry in methods.values() if isinstance(methods, dict) else ():
            if isinstance(entry, dict) and isinstance(entry.get("components"), dict):
                listed |= {f for f in entry["components"].values() if isinstance(f, str)}
        # Generators stored beside the methods (a fine-tuned copy for domain adaptation) are ours when their
        # own header says so.
        listed |= {e.name for e in folder.iterdir()
                   if e.is_dir() and not e.is_symlink() and output_kind(e) == "generator"}
        return frozenset({PIPELINE_INDEX} | listed | PIPELINE_EXTRAS)
    return GENERATOR_ENTRIES


def check_replaceable(target: Path, kind: str) -> None:
    """Raise ``OutputError`` unless ``target`` is absent, an empty folder, or our own ``kind`` output holding
    nothing of anyone else's. Nothing is touched."""
    target = Path(target)
    if not os.path.lexists(target):
        return
    if target.is_symlink():
        raise OutputError(target, "is a symbolic link; give the folder it points to, or another path")
    if output_kind(target.parent) == "pipeline" and not _TEMP.match(target.parent.name):  # (not one being built)
        raise OutputError(target, f"is a part of the model {target.parent}: writing there would change that model "
                          "(export-generator or convert into its generator/ replaced the generator its encoders "
                          "were trained for); nothing was changed: choose a path outside it")
    if not target.is_dir():
        raise OutputError(target, f"exists and is not a folder; a {kind} is written as a folder")
    entries = sorted(e.name for e in target.iterdir())
    if not entries:
        return
    found = output_kind(target)
    if found is None:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OutputError(target, f"is a folder that hyperinverter did not write (it holds {shown}); nothing was "
                          "changed: choose a new output path")
    if found != kind:
        raise OutputError(target, f"holds a {found}, not a {kind}; nothing was changed: choose a new output path")
    foreign = [e for e in entries if e not in _owned_entries(target, kind)]
    if kind == "generator":  # (a user's file over its weights was replaced while config.json was ours)
        weights = [target / part / name for part in ("", "generator", "discriminator")
                   for name in ("model.safetensors", "ws.safetensors")]
        foreign += [os.fspath(p.relative_to(target)) for p in weights
                    if p.is_file() and not written_by_us(p, safetensors=True)]
    # (`directions sefa --out G/directions`; a user's model card alone is a file we did not write, said as such)
    if kind == "generator" and "directions" in foreign and set(foreign) <= PIPELINE_EXTRAS:
        raise OutputError(target, f"is a generator folder that also holds {', '.join(foreign)}, which a generator's "
                          "files do not include and replacing it would lose (directions found on it would not fit "
                          "another); nothing was changed: move them, or choose a new path")
    if foreign:
        raise OutputError(target, f"is a {kind} folder that also holds files hyperinverter did not write "
                          f"({', '.join(foreign[:5])}); nothing was changed: move them, or choose a new path")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), os.fsdecode(b))


def replace_directory(built: Path, target: Path, kind: str) -> None:
    """Move the fully written folder ``built`` to ``target``, replacing only our own ``kind`` output there.

    At every instant ``target`` is the complete old folder or the complete new one: the two are exchanged in
    one step where the OS allows (else the old one is renamed aside first), and the old one is deleted last.
    """
    built, target = Path(built), Path(target)
    check_replaceable(target, kind)
    if not os.path.lexists(target):
        os.rename(built, target)
    elif _exchange(built, target):
        shutil.rmtree(built)  # now the old folder
    else:
        aside = target.with_name(f".{target.name}.{secrets.token_hex(8)}-{os.getpid()}.replaced")
        os.rename(target, aside)
        os.rename(built, target)
        shutil.rmtree(aside)
    fsync_directory(target.parent)


def _settle_set_aside(target: Path) -> None:
    """What a killed :func:`replace_directory` left where the OS cannot exchange two folders (macOS): ``target``'s
    old version set aside. Where ``target`` is missing (killed between the two renames) it is put back, the only
    whole copy, which the next write's cleanup of temporaries deleted; where the new one made it, it goes."""
    for entry in sorted(target.parent.iterdir()) if target.parent.is_dir() else ():
        match = _ASIDE.match(entry.name)
        if match is None or match.group("name") != target.name or _writer_alive(match.group("pid")):
            continue
        if os.path.lexists(target):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            os.rename(entry, target)
            logger.warning("%s: put back as it was: a write killed while replacing it had set it aside", target)


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Build a folder output beside ``target`` and swap it in when the block succeeds::

        with staged_directory(out, "generator") as folder:
            write files into folder

    The target is checked first (before any work) and again at the swap; on failure the half-built folder is
    removed and ``target`` is untouched.
    """
    target = Path(target)
    check_replaceable(target, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    _settle_set_aside(target)
    with scratch_folder_beside(target) as built:
        try:
            yield built
            replace_directory(built, target, kind)
        except OSError as e:  # (a full disk) named after the output's file, not the hidden folder, removed next
            name = Path(os.fsdecode(e.filename)) if isinstance(e.filename, (str, bytes, os.PathLike)) else None
            if name is not None and name.is_relative_to(built):
                raise OSError(e.errno, e.strerror, os.fspath(target / name.relative_to(built))) from e
            raise


@contextlib.contextmanager
def scratch_folder_beside(target: str | os.PathLike) -> Iterator[Path]:
    """A new hidden folder beside ``target``, named as our temporaries are, for the block; removed after it (if
    still there). One that a killed process left (SIGKILL runs no cleanup) is removed by the next one made for the
    same ``target``, as are the output's other stale temporaries (:func:`remove_stale_temporaries`); a scratch
    folder in the system's temporary folder stayed there for good."""
    target = Path(target)
    _remove_stale_temporaries_of(target)
    folder = temporary_sibling(target)
    make_parent_folder(target)  # (a file in the way: "file exists", naming the clip)
    try:
        folder.mkdir(0o777)
    except OSError as e:  # named after the target: the hidden folder beside it is ours, not the user's to know
        raise OSError(e.errno, e.strerror, os.fspath(target)) from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)

