"""The model catalogue: bundled models, and files that can be downloaded (or placed by hand) into a cache.

Every record names its file, licence and, where known, size and sha256. Downloads go through a
temporary file, are checked against the hash, and only then moved into the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: str  # "pipeline" | "generator" | "w-encoder" | "hyperinverter-checkpoint" | "backbone" | "directions"
    description: str
    filename: str
    license: str
    url: str | None = None  # None: no stable direct link; place the file by hand
    source: str = ""  # where a person finds the file
    sha256: str | None = None
    size_bytes: int | None = None
    bundled: bool = False


CATALOGUE: tuple[Artifact, ...] = (
    Artifact("faces-64", "pipeline", "HyperInverter for 64x64 synthetic faces, trained here on CPU (bundled)",
             "faces-64", "research only (DigiFace-1M chain; see its MODEL_CARD.md)", bundled=True),
    Artifact("fashion-32", "pipeline", "HyperInverter for 32x32 Fashion-MNIST, trained here on CPU (bundled)",
             "fashion-32", "MIT (Fashion-MNIST)", bundled=True),
    Artifact("stylegan2-ffhq-config-f", "generator", "official StyleGAN2 FFHQ 1024 config-f, NVIDIA pickle",
             "stylegan2-ffhq-config-f.pkl", "NVIDIA Source Code License-NC",
             source="HyperInverter's pretrained_models (Google Drive, see its README)"),
    Artifact("stylegan2-church-config-f", "generator", "official StyleGAN2 LSUN Church 256 config-f, NVIDIA pickle",
             "stylegan2-church-config-f.pkl", "NVIDIA Source Code License-NC",
             source="HyperInverter's pretrained_models (Google Drive, see its README)"),
    Artifact("ir-se50", "backbone", "ArcFace IR-SE50 (TreB1eN): encoder init and identity loss",
             "model_ir_se50.pth", "MIT (TreB1eN/InsightFace_Pytorch)",
             source="pSp / HyperInverter pretrained_models (Google Drive)"),
    Artifact("hyperinverter-ffhq-w-encoder", "w-encoder", "official pSp-style W encoder for FFHQ",
             "w_encoder_psp_ffhq.pt", "VinAI HyperInverter licence", source="VinAIResearch/HyperInverter MODEL_ZOO.md"),
    Artifact("hyperinverter-ffhq-d128", "hyperinverter-checkpoint", "official HyperInverter FFHQ, lightweight (D=128)",
             "hyper_inverter_psp_ffhq_lightweight.pt", "VinAI HyperInverter licence",
             source="VinAIResearch/HyperInverter MODEL_ZOO.md"),
    Artifact("hyperinverter-ffhq-d256", "hyperinverter-checkpoint", "official HyperInverter FFHQ, large (D=256)",
             "hyper_inverter_psp_ffhq_large.pt", "VinAI HyperInverter licence",
             source="VinAIResearch/HyperInverter MODEL_ZOO.md"),
    Artifact("hyperinverter-church-w-encoder", "w-encoder", "official pSp-style W encoder for LSUN Church",
             "w_encoder_psp_church.pt", "VinAI HyperInverter licence", source="VinAIResearch/HyperInverter MODEL_ZOO.md"),
    Artifact("hyperinverter-church-d128", "hyperinverter-checkpoint", "official HyperInverter Church, lightweight",
             "hyper_inverter_psp_church_lightweight.pt", "VinAI HyperInverter licence",
             source="VinAIResearch/HyperInverter MODEL_ZOO.md"),
)


def cache_dir() -> Path:
    return Path(os.environ.get("HYPERINVERTER_CACHE", Path.home() / ".cache" / "hyperinverter"))


def get_artifact(name: str) -> Artifact:
    for artifact in CATALOGUE:
        if artifact.name == name:
            return artifact
    raise KeyError(f"unknown model {name!r}; known: {[a.name for a in CATALOGUE]} (or give a path)")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, artifact: Artifact) -> None:
    if artifact.sha256 is None:
        return
    actual = sha256_of(path)
    if actual != artifact.sha256:
        raise ValueError(f"{path} has sha256 {actual}, but {artifact.name} must have {artifact.sha256}; "
                         "delete it and download again")


def resolve_model(name: str) -> Path:
    """A catalogue name -> a local path: bundled folder, or a cached (verified) file."""
    artifact = get_artifact(name)
    if artifact.bundled:
        path = BUNDLED_DIR / artifact.filename
        if not path.exists():
            raise FileNotFoundError(f"the bundled model {name!r} is missing from {path}; reinstall hyperinverter")
        return path
    path = cache_dir() / artifact.filename
    if not path.exists():
        raise FileNotFoundError(f"{name} is not downloaded: run `hyperinverter download {name}`, or put "
                                f"{artifact.filename} ({artifact.source or artifact.url}) at {path}")
    _verify(path, artifact)
    return path


def download(name: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``name`` into the cache and verify its hash; offline, explain where to put the file by hand."""
    artifact = get_artifact(name)
    if artifact.bundled:
        return resolve_model(name)
    target = cache_dir() / artifact.filename
    if target.exists():
        _verify(target, artifact)
        return target
    manual = (f"download {artifact.filename} by hand from {artifact.source or artifact.url} and put it at "
              f"{target} (or set HYPERINVERTER_CACHE)")
    if artifact.url is None:
        raise FileNotFoundError(f"{name} has no direct download link; {manual}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{artifact.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(artifact.url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        _verify(Path(tmp), artifact)
        os.replace(tmp, target)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        Path(tmp).unlink(missing_ok=True)
        raise FileNotFoundError(f"could not download {name} ({e}); {manual}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def catalogue_rows() -> list[dict[str, str]]:
    rows = []
    for a in CATALOGUE:
        local = BUNDLED_DIR / a.filename if a.bundled else cache_dir() / a.filename
        rows.append({
            "name": a.name, "kind": a.kind, "file": a.filename,
            "size": f"{a.size_bytes / 1e6:.1f} MB" if a.size_bytes else "?",
            "sha256": a.sha256[:12] + "…" if a.sha256 else "unknown",
            "status": "bundled" if a.bundled and local.exists() else "cached" if local.exists() else "not present",
            "license": a.license, "description": a.description,
        })
    return rows
