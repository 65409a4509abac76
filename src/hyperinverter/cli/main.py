"""``hyperinverter`` command line: one subcommand per library function; no maths here."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

from .. import __version__
from ..errors import InputError, describe_os_error
from . import commands
from .arguments import ArgumentParser

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="hyperinverter",
        description="Invert real photos into StyleGAN2 with HyperInverter and edit them.",
    )
    parser.add_argument("--version", action="version", version=f"hyperinverter {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors: no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in commands.REGISTRY:
        register(sub)
    _verbosity_everywhere(parser)
    return parser


@functools.cache
def _shared_parser() -> argparse.ArgumentParser:
    """The parser ``main`` reads with, built once per process: building it takes 25-45 ms, and parsing leaves it
    as it was (a caller's ``main([...])`` in a loop, a test suite's hundreds of commands)."""
    return build_parser()


def _verbosity_everywhere(parser: argparse.ArgumentParser) -> None:
    """``-v`` and ``-q`` also after the subcommand (``hyperinverter invert ... -v``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                 help="more log output; -v also shows the traceback of an internal error")
                sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                 help="only warnings and errors: no progress bars")
                _verbosity_everywhere(sub)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO if verbose <= 1 else logging.DEBUG
    if verbose == 0 and not quiet:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def expected_error(error: BaseException) -> str | None:
    """The one-line message for an error a user can meet and fix (bad input, a missing file or extra, memory),
    or None for a bug."""
    import torch

    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, OSError):
        return describe_os_error(error)
    if isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError)
                                                     and "can't allocate memory" in str(error)):  # (CPU)
        return (f"out of memory ({str(error).splitlines()[0]}); try a smaller batch size (--batch-size, or batch_size "
                "in a training config), smaller sizes, or another --device")
    if isinstance(error, (ImportError, ValueError, MemoryError)):
        return str(error) or type(error).__name__
    from ..training.distributed import peer_failure

    return peer_failure(error)  # (under torchrun: another rank is gone, and says why itself)


def _tolerant_streams() -> None:
    """Print any file name, also one that is not valid UTF-8 (escaped), instead of failing on it."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _close_progress_bars() -> None:
    """End the progress bars an error interrupted, so that its message starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (``hyperinverter models | head -1``), which is what
    a ``BrokenPipeError`` came from, if so. (The poll of a pipe's end that nobody reads says "error".)"""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # (no poll on Windows; a closed or replaced stdout)
        return False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command was, so that it ends as an interruption does."""

    signal_number = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM (``kill``, a scheduler, ``docker stop``) ends it as Ctrl-C does: its progress
    bars close, its ``finally`` blocks clean up, and it exits with 143. (A training run installs its own handler:
    it stops after its step, with a checkpoint.)"""
    if threading.current_thread() is not threading.main_thread():  # (only the main thread may set handlers)
        yield
        return

    def interrupt(number: int, frame: object) -> None:
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(e: KeyboardInterrupt) -> int:
    _close_progress_bars()
    print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
    return 128 + getattr(e, "signal_number", signal.SIGINT)


def _interruption_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``error`` came of, if any: an extension interrupted while it loads fails with an
    ImportError from it (pybind11's "initialization failed"; dlib's read as "needs dlib: pip install", status 2)."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Exit status: 0 done, 1 done but some inputs failed, 2 an error (one line on stderr,
    naming the file and the cause), 3 an internal error (a bug: ``-v`` shows its traceback), 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM), 141 its output's reader gone (``| head``)."""
    _tolerant_streams()
    args = _shared_parser().parse_args(argv)
    # The command as typed, for reports that record how they were made.
    args.command = "hyperinverter " + shlex.join(map(str, sys.argv[1:] if argv is None else argv))
    _configure_logging(args.verbose, args.quiet)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        from ..progress import progress_bars

        # -q hides the progress bars too; a warning during a bar gets a line of its own, above the bar.
        with _sigterm_interrupts(), progress_bars(not args.quiet), logging_redirect_tqdm():
            status = int(args.func(args) or 0)
        sys.stdout.flush()  # (here: a reader gone before the end is met below, not as a warning at exit)
        return status
    except KeyboardInterrupt as e:  # Ctrl-C; a training run stopped by a signal says where it stopped
        return _interrupted(e)
    except Exception as e:  # noqa: BLE001 - the one place where every error becomes a message
        interruption = _interruption_behind(e)
        if interruption is not None:
            return _interrupted(interruption)
        if isinstance(e, BrokenPipeError) and _stdout_reader_gone():
            # `| head` took what it wanted: end quietly with SIGPIPE's status, as other programs do (Python
            # ignores the signal); what is left unwritten goes nowhere, so that the exit's own flush fails no more.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        _close_progress_bars()
        message = expected_error(e)
        if message is not None:
            from ..device import DeviceError

            if isinstance(e, DeviceError) and getattr(args, "device", None) is not None:
                message = f"--device: {message}"  # (the message names the value, not the option it came from)
            print(f"error: {message}", file=sys.stderr)
            return 2
        if args.verbose:
            raise
        print(f"error: internal error ({type(e).__name__}: {e}); this is a bug in hyperinverter: run the command "
              "again with -v for the traceback, and please report it with the output of `hyperinverter env`",
              file=sys.stderr)
        return 3
    finally:
        if argv is None and threading.current_thread() is threading.main_thread():
            # The process ends with the command (not a caller's main([...])): a Ctrl-C while the interpreter shuts
            # down (PyTorch's exit handlers take a moment) raised KeyboardInterrupt in an exit handler, printed
            # with its traceback. What the command did is done, and its status stands.
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
