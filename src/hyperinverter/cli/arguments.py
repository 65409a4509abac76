"""Argument types shared by the subcommands: numbers are checked by argparse, so a bad value is a usage error
that names the option, never a traceback or a silent no-op."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

# What float() reads as a negative number: argparse's own test (-2, -.5) missed -1e-3, -1E3, -inf and -nan and took
# them for options ("expected one argument"), so --strength -1e-3 failed before its type could say anything.
NEGATIVE_NUMBER = re.compile(r"-(\.?\d|(inf|infinity|nan)$)", re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every command and subcommand (subparsers are made of their parent's class): an argument that
    starts as a negative number does is a value, never an option, also where argparse's test would say otherwise
    (checked first: ``-inf`` is not ``-i nf``); and ``type=Path`` is :func:`path`, which refuses an empty one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register("type", Path, path)

    def _parse_optional(self, arg_string: str):
        if NEGATIVE_NUMBER.match(arg_string) and not self._has_negative_number_optionals:
            return None  # (a positional or an option's value: its type says whether it is a number)
        return super()._parse_optional(arg_string)


def _integer_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _integer_at_least(text, 0)


def at_least_two(text: str) -> int:
    return _integer_at_least(text, 2)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def at_most(parse, limit: float):
    """``parse`` (one of the types above) with an upper bound: a value past what the work can hold (memory, float
    range) is a usage error, not an out-of-memory kill or an overflow deep inside."""
    def parse_at_most(text: str):
        value = parse(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit:,}, got {text}")
        return value

    parse_at_most.__name__ = parse.__name__
    return parse_at_most


def layer_range(text: str) -> str:
    """A layer range as typed, ``START:END`` (either may be left open; the model fills it in)."""
    if text.count(":") != 1:  # ("" was taken as no range given: every layer edited)
        raise argparse.ArgumentTypeError(f"{text!r}: expected START:END, e.g. 0:4")
    return text


def path(text: str) -> Path:
    """A file or folder: an empty one (``--out "$UNSET"``) is refused, not read as the current folder (``invert ""``
    inverted every picture there, ``--out ""`` wrote into it)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; give a file or folder (. for the current folder)")
    return Path(text)


def file_path(text: str) -> Path:
    """An output that is one file: a name ending in a separator names a folder (``--out clips/`` wrote
    ``clips.png``, ``clips.gif`` and ``clips.mp4`` beside it)."""
    path(text)
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} names a folder (it ends in {text[-1]!r}); give a file name, "
                                         f"e.g. {text}result.png")
    return Path(text)


def name_list(text: str) -> list[str]:
    """Comma-separated names (``--methods psp,e4e``); none at all is refused (an empty list read as "every one")."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing: give comma-separated names, e.g. phase1,psp")
    return names


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="torch device: auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps or xpu")


def add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="precision the networks run in: fp32 (default), bf16 (CPUs with native bf16, GPUs) or fp16 "
                   "(GPUs); results are fp32 either way")


# --min-face-score's and --detect-side's defaults (the options default to None: given without --align, refused)
MIN_FACE_SCORE, DETECT_SIDE = 0.5, 2048


def add_min_face_score(p: argparse.ArgumentParser) -> None:
    """The face detection options of ``--align``; :func:`face_detector` builds the detector from them."""
    p.add_argument("--min-face-score", type=finite_float, default=None,
                   help=f"with --align, the lowest dlib detection score kept (default {MIN_FACE_SCORE:g} drops "
                   "face-like patterns; 0 is dlib's own threshold, for small or blurry faces)")
    p.add_argument("--detect-side", type=nonnegative_int, default=None, metavar="PX",
                   help="with --align, a photo longer than this is reduced by a whole factor to find its faces, whose "
                   f"landmarks are then placed on the photo itself (default {DETECT_SIDE}); 0 finds them at full "
                   "size, for faces under about 40 px in the reduced copy (slower: 24 s for 21 megapixels)")


def face_options(args: argparse.Namespace) -> tuple[float, int]:
    """(``--min-face-score``, ``--detect-side``), their defaults where not given; given without ``--align``, where
    no face is detected, they are a usage error (they were ignored without a word)."""
    given = [flag for flag, value in (("--min-face-score", args.min_face_score), ("--detect-side", args.detect_side))
             if value is not None]
    if given and not args.align:
        from ..errors import InputError

        raise InputError(f"{', '.join(given)}: {'apply' if len(given) > 1 else 'applies'} only with --align (the "
                         "face detection of photos)")
    return (MIN_FACE_SCORE if args.min_face_score is None else args.min_face_score,
            DETECT_SIDE if args.detect_side is None else args.detect_side)


def face_detector(args: argparse.Namespace):
    """The dlib detector that ``--min-face-score`` and ``--detect-side`` describe."""
    from ..align import Dlib68Detector

    min_score, detect_side = face_options(args)
    return Dlib68Detector(min_score=min_score, detect_side=detect_side or None)
