"""The model catalogue: bundled models, and files that can be downloaded (see :mod:`.download`) or placed by hand
into a cache; which of them are here, and what a model name means.

Every record names its file, licence and, where known, size and sha256; a cached file is checked against them
before it is used.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .io.files import PIPELINE_INDEX, sha256_of

if TYPE_CHECKING:
    import torch

    from .convert.gan_files import LoadedGAN

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: str  # "pipeline" | "generator" | "w-encoder" | "hyperinverter-checkpoint" | "hyperstyle-checkpoint" |
    # "backbone" | "directions"
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
    Artifact("faces-64-sketch", "generator", "faces-64's generator fine-tuned to pencil sketches: HyperStyle's "
             "domain adaptation (`invert --render-with faces-64-sketch`), made here (bundled)",
             "faces-64/sketch_generator", "research only (as faces-64)", bundled=True),
    Artifact("faces-64-sr4", "pipeline", "E2Style super-resolution x4 on faces-64's generator (16 -> 64 px), trained "
             "here on CPU (bundled; `hyperinverter restore`)", "faces-64-sr4", "research only (as faces-64)",
             bundled=True),
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
    Artifact("curricularface", "backbone", "CurricularFace IR-101: the identity metric of HyperStyle and HyperInverter",
             "CurricularFace_Backbone.pth", "MIT (HuangYG123/CurricularFace)",
             source="HyperStyle / HyperInverter pretrained_models (Google Drive)"),
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
    Artifact("hyperstyle-ffhq", "hyperstyle-checkpoint", "official HyperStyle FFHQ (hypernetwork + generator)",
             "hyperstyle_ffhq.pt", "MIT (yuval-alaluf/hyperstyle)", source="yuval-alaluf/hyperstyle README"),
    Artifact("hyperstyle-faces-w-encoder", "w-encoder", "official HyperStyle W encoder for faces (its start)",
             "faces_w_encoder.pt", "MIT (yuval-alaluf/hyperstyle)", source="yuval-alaluf/hyperstyle README"),
)


def cache_dir() -> Path:
    """``$HYPERINVERTER_CACHE`` if set (and not empty), else ``~/.cache/hyperinverter``."""
    env = os.environ.get("HYPERINVERTER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hyperinverter"


def get_artifact(name: str) -> Artifact:
    for artifact in CATALOGUE:
        if artifact.name == name:
            return artifact
    raise InputError(name, f"unknown model; known: {[a.name for a in CATALOGUE]} (or give a path)")


def _mismatch(path: Path, artifact: Artifact) -> str | None:
    """Why ``path`` is not ``artifact`` (size or sha256 differ), or None if it matches what is known."""
    size = path.stat().st_size
    wrong_size = artifact.size_bytes is not None and size != artifact.size_bytes
    if artifact.sha256 is None:
        return f"has {size} bytes, but {artifact.name} has {artifact.size_bytes}" if wrong_size else None
    actual = sha256_of(path)
    if not wrong_size and actual == artifact.sha256.lower():
        return None
    expected_size = f", {artifact.size_bytes} bytes" if artifact.size_bytes is not None else ""
    return f"has sha256 {actual} ({size} bytes), but {artifact.name} must have sha256 {artifact.sha256}{expected_size}"


def _where(artifact: Artifact) -> str:
    parts = [p for p in (artifact.url, artifact.source) if p]
    return " or ".join(parts) if parts else "its publisher"


def _manual(artifact: Artifact, target: Path) -> str:
    return (f"download {artifact.filename} by hand from {_where(artifact)} and put it at {target} "
            "(or set HYPERINVERTER_CACHE to use another folder)")


def _verify_cached(path: Path, artifact: Artifact) -> None:
    """Accept a cached (downloaded or hand-placed) file, or move it aside and raise ValueError naming both hashes.

    A rejected file is renamed to ``<file>.rejected`` so that it is never picked up (or listed) as valid.
    """
    problem = _mismatch(path, artifact)
    if problem is None:
        return
    rejected = path.with_name(path.name + ".rejected")
    os.replace(path, rejected)
    raise ValueError(f"{path} {problem}; moved it to {rejected} so it is not used. {_manual(artifact, path)}")


def _is_model(path: Path) -> bool:
    """Whether ``path`` is something a model could be loaded from (not, e.g., a folder of outputs)."""
    if path.is_dir():
        return (path / PIPELINE_INDEX).is_file() or (path / "config.json").is_file() or \
            (path / "generator" / "config.json").is_file()
    return path.is_file() and path.suffix.lower() in (".pkl", ".pt", ".pth", ".ckpt", ".safetensors")


def local_model_path(name_or_path: str | os.PathLike) -> Path:
    """A catalogue name -> its bundled or cached file (:func:`resolve_model`); anything else is a path.

    A ``Path``, or text with a folder separator (``./faces-64``, ``runs/best``), is always a path. A bare name that
    the catalogue knows is the catalogue's, so a folder of results named like a model never hides it; if a model
    of the same name also lies in the current folder, the name is ambiguous and the error says so.
    """
    if isinstance(name_or_path, os.PathLike):
        return _existing(Path(name_or_path))
    text = os.fspath(name_or_path)
    if not text:  # (Path("") is the current folder: `--model "$UNSET"` loaded whatever model lay there)
        raise InputError("an empty model name; give a catalogue name or a model folder (. for the current folder)")
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    if any(sep in text for sep in separators) or text in (".", ".."):
        return _existing(Path(text))
    if text not in {a.name for a in CATALOGUE}:
        return _existing(Path(text))
    local = Path(text)
    if _is_model(local):
        raise InputError(text, f"is ambiguous: it names the catalogue model {text} and the model "
                         f"{local.resolve()} in this folder; write ./{text} for the folder, or move it")
    return resolve_model(text)


def generator_path(spec: str | os.PathLike) -> Path:
    """A generator file or folder, a bundle (its generator), or a catalogue name -> the generator's path."""
    path = local_model_path(spec)
    return path / "generator" if (path / PIPELINE_INDEX).is_file() else path


def load_model_gan(spec: str | os.PathLike, *, with_discriminator: bool = False,
                   device: str | torch.device = "cpu") -> LoadedGAN:
    """The generator (and, asked for, the discriminator) of what a command's ``--model`` takes: a generator file or
    folder, a bundle or a catalogue name. A bundle keeps its discriminator beside its generator (``discriminator/``,
    where ``generator_path`` does not reach): training from a bundle started a fresh one, or found none."""
    from .convert.gan_files import load_gan
    from .io.components import load_component
    from .pipeline import read_pipeline_index

    bundle = local_model_path(spec)
    if not (bundle / PIPELINE_INDEX).is_file():
        return load_gan(bundle, with_discriminator=with_discriminator, device=device)
    index = read_pipeline_index(bundle)
    gan = load_gan(bundle / index["generator"], device=device)
    if with_discriminator and "discriminator" in index:
        discriminator = load_component(bundle / index["discriminator"], expect="stylegan2-discriminator")
        gan.discriminator = discriminator.eval().requires_grad_(False).to(device)
    return gan


def model_index(spec: str | os.PathLike) -> dict:
    """The checked ``pipeline.json`` of what a command's ``--model`` takes, where it is a bundle (its face framing
    ``align_scale``, whether it is a model of ``faces``, ...); empty for a generator file or folder."""
    from .pipeline import read_pipeline_index

    bundle = local_model_path(spec)
    return read_pipeline_index(bundle) if (bundle / PIPELINE_INDEX).is_file() else {}


def _existing(path: Path) -> Path:
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, f"no such model file or folder{_catalogue_hint(path)}", str(path))
    return path


def _catalogue_hint(path: Path) -> str:
    """What to do about a missing model path: where a catalogue entry's file goes (the README's
    ``--model stylegan2-ffhq-config-f.pkl`` only listed the bundled names), else the catalogue's names."""
    known = next((a for a in CATALOGUE if not a.bundled and a.filename == path.name), None)
    if known is None:
        return (f" (catalogue names: {', '.join(a.name for a in CATALOGUE if a.bundled)}, ...; see `hyperinverter "
                "models`)")
    cached = cache_dir() / known.filename
    if cached.exists():
        return f"; it is the catalogue's {known.name}, in the cache at {cached}: give its name or that path"
    return f"; it is the catalogue's {known.name}: {_manual(known, cached)}, then give the name {known.name}"


def resolve_model(name: str) -> Path:
    """A catalogue name -> a local path: bundled folder, or a cached (verified) file."""
    artifact = get_artifact(name)
    if artifact.bundled:
        path = BUNDLED_DIR / artifact.filename
        if not path.exists():
            raise FileNotFoundError(f"the bundled model {name!r} is not in this installation (no {path})")
        return path
    path = cache_dir() / artifact.filename
    if not path.exists():
        # (only where it has a link: `download` of one without answered with the same by-hand route)
        fetch = f"run `hyperinverter download {name}`, or " if artifact.url else "it has no direct download link: "
        raise FileNotFoundError(f"{name} is not downloaded: {fetch}{_manual(artifact, path)}")
    _verify_cached(path, artifact)
    return path


def installed_bundles() -> list[str]:
    """The names of the bundled models that this installation holds."""
    return [a.name for a in CATALOGUE if a.bundled and (BUNDLED_DIR / a.filename).exists()]


def catalogue_rows() -> list[dict[str, str]]:
    rows = []
    for a in CATALOGUE:
        local = BUNDLED_DIR / a.filename if a.bundled else cache_dir() / a.filename
        size = _bytes_on_disk(local) if local.exists() else a.size_bytes
        rows.append({
            "name": a.name, "kind": a.kind, "file": a.filename,
            "size": f"{size / 1e6:.1f} MB" if size else "?",
            "sha256": a.sha256[:12] + "…" if a.sha256 else "in package" if a.bundled else "unknown",
            "status": "bundled" if a.bundled and local.exists() else "cached" if local.exists() else "not present",
            "license": a.license, "description": a.description,
        })
    return rows


def _bytes_on_disk(path: Path) -> int:
    """A file's size, or the total of a folder's files (a bundle)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
