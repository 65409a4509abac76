"""The errors hyperinverter raises for bad input: each names the file (or value) and the cause.

They are ``ValueError``s, so code written against plain ``ValueError`` keeps working. The command line turns
every one of them into a single line ``error: <file>: <cause>`` and exit status 2; a traceback is kept for bugs.
"""

from __future__ import annotations

import errno
import os
import re


def _one_line(name: str) -> str:
    """A file name as messages show it: control characters escaped (``\\n``), so that a name holding a newline
    keeps its ``error:`` or ``failed:`` line whole."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], name)


class InputError(ValueError):
    """A file, folder or value given to hyperinverter cannot be used. ``str(e)`` is ``"<source>: <cause>"``."""

    def __init__(self, source: str | os.PathLike | None, cause: str | None = None) -> None:
        if cause is None:  # a whole message: InputError("x.png: not an image")
            source, cause = None, str(source)
        self.source = None if source is None else os.fsdecode(source)
        self.cause = cause
        super().__init__(cause if self.source is None else f"{_one_line(self.source)}: {cause}")


def naming(error: InputError, source: str | os.PathLike) -> InputError:
    """``error``, or the same error naming ``source`` when it names no file: a batch item's failure (a render that
    came out non-finite, say) is reported as ``<file>: <cause>`` like every other."""
    return error if error.source is not None else type(error)(source, error.cause)


class CheckpointError(InputError):
    """A weights file is corrupt, of an unknown format, holds non-finite values, or does not fit its model."""


class NonFiniteWeightsError(CheckpointError):
    """A weights file holds NaN or infinite values (a diverged training run, or a damaged file)."""


class ImageReadError(InputError):
    """An image file or upload is missing, unreadable, truncated, too large or degenerate."""


class SchemaError(InputError):
    """A JSON index or metadata record (pipeline.json, config.json, direction or inversion file) is malformed."""


class ConfigError(InputError):
    """A training config names an unknown key or holds a value of the wrong type."""


class OutputError(InputError):
    """An output path cannot be written without harming what is there (a user's folder, a file, an input)."""


class NonFiniteError(InputError):
    """A computation produced NaN or infinite values (bad weights, or a bad option such as ``--trunc nan``)."""


def describe_os_error(error: OSError, *, with_file: bool = True) -> str:
    """``[Errno 13] Permission denied: 'x'`` -> ``x: permission denied`` (the file first, as our errors are), or
    ``permission denied`` without ``with_file`` (where the message names the file already)."""
    cause = (error.strerror or str(error)).rstrip(".")
    if not cause[1:2].isupper():  # (an acronym keeps its case: 'LPIPS ...' became 'lPIPS ...')
        cause = cause[:1].lower() + cause[1:]
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        cause += " (free some space and run the command again: a batch command resumes where it stopped)"
    if error.filename is None or not with_file:
        return cause
    target = f" -> {os.fsdecode(error.filename2)}" if error.filename2 is not None else ""
    return f"{os.fsdecode(error.filename)}{target}: {cause}"
