"""An image-folder dataset: recursive, any size or mode, deterministic train/val split, skips bad files."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from ..errors import ImageReadError
from ..io.files import sha256_if_readable
from ..io.images import IMAGE_SUFFIXES, find_images, fit_to_canvas, pil_to_tensor, read_image

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "all"]


def _split_score(relative: str, seed: int) -> float:
    # Hash of the relative path: the split of a file never changes when other files are added. Its bytes as the file
    # system holds them (a name that is not UTF-8 comes as surrogate escapes; UTF-8 names hash as they always did).
    digest = hashlib.sha1(f"{seed}:{relative}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_val_split(relatives: list[str], val_fraction: float, seed: int,
                 readable: Callable[[int], bool] | None = None) -> list[bool]:
    """Whether each file (by its path relative to the folder) is in the ``val`` split: its hash falls under
    ``val_fraction``. In a folder so small that the fraction leaves a split empty, that split takes the one file
    whose hash lies nearest to it, so that a few images still train and validate: the nearest one that is
    ``readable`` (by index), if any is."""
    scores = [_split_score(r, seed) for r in relatives]
    in_val = [score < val_fraction for score in scores]
    if len(scores) >= 2 and 0 < val_fraction < 1:
        # (An unreadable file given to a split was all it held: a folder of readable images was refused.)
        order = sorted(range(len(scores)), key=scores.__getitem__)
        if not any(in_val):
            in_val[next((i for i in order if readable is None or readable(i)), order[0])] = True
        if all(in_val):
            in_val[next((i for i in reversed(order) if readable is None or readable(i)), order[-1])] = False
    return in_val


def _distinct_contents(files: list[Path], root: Path, *, log: bool = True) -> list[Path]:
    """``files`` less the byte-identical copies of an earlier one (under another name: a link is caught by the
    listing), logged with their count (``log``): the split hashes names, so two copies fell in both splits, and an image
    trained on was validated on. Sizes first; only files of a size shared are hashed (an unreadable one is kept, for
    reading to report)."""
    stats: dict[Path, tuple[int, int] | None] = {}
    for path in files:
        try:
            stat = path.stat()
            stats[path] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stats[path] = None
    shared = Counter(stat[0] for stat in stats.values() if stat is not None)
    kept, seen = [], set()
    for path in files:  # (sorted: the first copy by name is the one kept, whatever the order files were copied in)
        stat = stats[path]
        digest = _content_digest(path, *stat) if stat is not None and shared[stat[0]] > 1 else None
        if digest is None or digest not in seen:
            seen.add(digest)
            kept.append(path)
    if log and len(kept) < len(files):
        logger.warning("%s: %d image(s) are byte-identical copies of another under another name; each is used once, "
                       "so that no image is both trained and validated on", root, len(files) - len(kept))
    return kept


def _readable(path: Path) -> bool:
    try:
        read_image(path)
    except ImageReadError:
        return False
    return True


@functools.lru_cache(maxsize=1 << 17)
def _content_digest(path: Path, size: int, mtime_ns: int) -> str | None:
    """A file's sha256 as of its size and time (a run lists its folder for its training and its validation split:
    each file is read once)."""
    return sha256_if_readable(path)


class ImageFolderDataset(Dataset):
    """Images under ``root`` (recursively; every suffix of ``IMAGE_SUFFIXES``) as ``[C,R,R]`` tensors in [-1,1].

    Any size or mode is accepted: transparency is composited on white, then the image is centre-cropped to a
    square (or, for a domain that fills only ``content_rows`` of it, squashed into them: ``fit_to_canvas``) and
    resized (Lanczos) to ``resolution``. ``split`` picks a deterministic subset: a file is in
    ``val`` when a hash of its relative path falls under ``val_fraction`` (:func:`in_val_split`). Unreadable files
    are logged and skipped: ``__getitem__`` substitutes the next readable file, ``iter_valid`` leaves them out.
    """

    def __init__(self, root: str | Path, *, resolution: int, channels: int = 3, split: Split = "train",
                 val_fraction: float = 0.05, seed: int = 0, hflip: bool = False,
                 content_rows: tuple[float, float] | None = None) -> None:
        self.root = Path(root)
        if self.root.is_file():
            raise NotADirectoryError(f"{self.root} is a file: give the folder that holds the images")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such image folder")
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        # Listed as every command lists a folder: a file under two names (a link beside its target) is one image (it
        # trained twice, and where the names fell in both splits, a training image was validated on), and what
        # cannot be an image (a broken link, a folder that may not be listed: rglob passed over it without a word,
        # or ended the run) is a problem, logged and left out.
        found = find_images([self.root])
        self.problems: list[ImageReadError] = found.problems
        told = split != "val"  # (a run lists the folder for its training split too, which says it: once is enough)
        for problem in self.problems if told else ():
            logger.warning("skipping %s", problem)
        files = found.paths
        unlisted = [e for e in self.problems if e.source is not None and Path(e.source) == self.root]
        if not files and unlisted:
            raise unlisted[0]
        if not files:
            raise FileNotFoundError(f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) under it")
        if split != "all" and val_fraction > 0:
            files = _distinct_contents(files, self.root, log=told)
        if split != "all":
            in_val = in_val_split([p.relative_to(self.root).as_posix() for p in files], val_fraction, seed,
                                  readable=lambda i: _readable(files[i]))
            chosen = [p for p, is_val in zip(files, in_val) if is_val == (split == "val")]
            if not chosen:
                raise FileNotFoundError(
                    f"the {split!r} split of {self.root} is empty (val_fraction={val_fraction}"
                    f"{', and the folder holds one image' if len(files) == 1 else ''})"
                    f"{'; val_fraction=0 trains without validation' if split == 'val' else ''}")
            files = chosen
        self.files = files
        self.resolution, self.channels, self.split, self.hflip = resolution, channels, split, hflip
        self.content_rows = content_rows
        self.errors: dict[int, ImageReadError] = {}  # unreadable files met so far, by index

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({str(self.root)!r}, split={self.split}, {len(self)} images, "
                f"{self.channels}x{self.resolution}x{self.resolution})")

    def load(self, index: int) -> torch.Tensor:
        """The image at ``index``; raises ``ImageReadError`` for an unreadable file."""
        image = fit_to_canvas(read_image(self.files[index]), self.content_rows, side=self.resolution)
        return pil_to_tensor(image, size=self.resolution, channels=self.channels)[0]

    def _note_bad(self, index: int, error: ImageReadError) -> None:
        if index not in self.errors:
            self.errors[index] = error
            logger.warning("skipping unreadable image %s", error)

    def __getitem__(self, index: int) -> torch.Tensor:
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if i in self.errors:
                continue
            try:
                x = self.load(i)
            except ImageReadError as e:
                self._note_bad(i, e)
                continue
            if self.hflip and torch.rand(()) < 0.5:
                x = x.flip(-1)
            return x
        raise self.no_readable_image()

    def no_readable_image(self) -> ImageReadError:
        """The error for a dataset whose every file is unreadable (naming the split, if it is one)."""
        split = "" if self.split == "all" else f" in its {self.split!r} split ({len(self)} files)"
        return ImageReadError(self.root, f"holds no readable image{split}")

    def iter_valid(self) -> Iterator[torch.Tensor]:
        """Every readable image once, in order; unreadable ones are logged and left out."""
        for i in range(len(self)):
            try:
                yield self.load(i)
            except ImageReadError as e:
                self._note_bad(i, e)
