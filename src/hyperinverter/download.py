"""Fetch a catalogue model into the cache, verified, or say where to put it by hand (offline machines)."""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from .catalogue import _manual, _mismatch, _verify_cached, cache_dir, get_artifact, resolve_model
from .errors import OutputError
from .io.files import fsync_directory, remove_stale_temporaries, temporary_sibling

logger = logging.getLogger(__name__)


def download(name: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``name`` into the cache and verify it; offline, explain where to put the file by hand.

    The bytes go to a temporary file in the cache folder, which is checked against the known size/sha256
    and only then renamed onto the final name: the cache never holds a partial or unverified file.
    A file already in the cache (e.g. placed by hand) is verified instead of downloaded again.
    """
    artifact = get_artifact(name)
    if artifact.bundled:
        return resolve_model(name)
    target = cache_dir() / artifact.filename
    if target.exists():
        _verify_cached(target, artifact)
        return target
    if artifact.url is None:
        raise FileNotFoundError(f"{name} has no direct download link; {_manual(artifact, target)}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # (it said "file exists", naming no setting)
        raise OutputError(target.parent, "is not a folder, so it cannot hold the model cache: set "
                          "HYPERINVERTER_CACHE to a folder (by default ~/.cache/hyperinverter)") from None
    # A download killed before (a model is GBs) left its partial file behind for good, one more each time: the
    # temporary has our hidden name with its writer's pid now, which the next download of the file removes. Its
    # mode is a plain open()'s (mkstemp's 0600 kept a shared cache's models from everyone but the downloader).
    # (not one still being written, here or by another machine sharing the cache: it would fail at its rename)
    remove_stale_temporaries(target.parent, of=artifact.filename, idle_seconds=2 * timeout)
    tmp = temporary_sibling(target)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(artifact.url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
                out.flush()
                os.fsync(out.fileno())
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as e:
            raise FileNotFoundError(f"could not download {name} from {artifact.url} ({e}); "
                                    f"{_manual(artifact, target)}") from None
        problem = _mismatch(tmp, artifact)
        if problem is not None:
            raise ValueError(f"the file downloaded from {artifact.url} {problem}; nothing was written to "
                             f"{target}. {_manual(artifact, target)}")
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("downloaded %s to %s", name, target)
    return target
