"""Applications over the library: the out-of-the-box demo and the web page. They use library functions only."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).parents[1] / "bundled" / "samples"


def model_examples(folder: Path) -> list[Path]:
    """The held-out images a model folder ships in ``examples/`` (what the demo shows, and all the web page offers
    and serves of the folder)."""
    folder = Path(folder) / "examples"
    return sorted(p for p in folder.glob("*.png") if p.is_file() and not p.is_symlink()) if folder.is_dir() else []


def sample_photos() -> list[Path]:
    """The bundled real photos (public domain, see ``bundled/samples/LICENSES.md``) the demos align and invert."""
    return sorted(p for p in SAMPLES_DIR.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
