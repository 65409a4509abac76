"""68-point landmarks with dlib (``pip install 'hyperinverter[align]'``): HOG face detector + shape predictor."""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .ffhq import AlignedFace, NoFaceFoundError, align_from_landmarks, ffhq_quad

logger = logging.getLogger(__name__)

PREDICTOR_NAME = "shape_predictor_68_face_landmarks.dat"


def find_predictor(path: str | Path | None = None) -> Path:
    """The 68-landmark model: an explicit path, the ``face-recognition-models`` package, or Debian's copy."""
    candidates = [Path(path)] if path else []
    spec = importlib.util.find_spec("face_recognition_models")  # locate without importing (it needs pkg_resources)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / "models" / PREDICTOR_NAME)
    candidates.append(Path("/usr/share/dlib") / PREDICTOR_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{PREDICTOR_NAME} not found (looked in {[str(c) for c in candidates]}); "
                            "install it with `pip install 'hyperinverter[align]'` or `apt-get install libdlib-data`")


# Read once per process and shared by every detector (dlib only reads them once built): the HOG detector took 1.9 s
# and the 100-MB landmark model 2 s of every detector built (each `invert --align` in one process, each of a test
# suite's alignments). A landmark file replaced in place (another mtime or size) is read again.
@functools.lru_cache(maxsize=1)
def _frontal_face_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=2)
def _shape_predictor(path: str, mtime_ns: int, size: int):
    import dlib

    return dlib.shape_predictor(path)


class Dlib68Detector:
    """Detects every face and returns its 68 landmarks ``[68, 2]`` (x, y), largest face first.

    ``min_score``: the lowest HOG detection score kept. dlib's own threshold is 0, which in photos also
    accepts face-like patterns (the mission patch on the astronaut's suit scores 0.07-0.16, her face 1.2-1.6);
    0.5 drops those. Use 0 for small or low-quality faces (e.g. upscaled 64-px training images).
    ``detect_side``: a photo longer than this is reduced by an integer factor for finding the faces, whose
    landmarks are then placed on the photo itself (HOG at full size took 24 s and 1.2 GB for a 21-megapixel photo);
    None finds them at full size, for faces under about 40 px in the reduced copy.
    """

    def __init__(self, predictor_path: str | Path | None = None, *, upsample: int = 1,
                 min_score: float = 0.5, detect_side: int | None = 2048) -> None:
        try:
            import dlib
        except ImportError:
            raise ImportError("face alignment needs dlib: `pip install 'hyperinverter[align]'` "
                              "(installs the dlib-bin wheel; do not also install `dlib`)") from None
        if detect_side is not None and detect_side < 1:
            raise ValueError(f"detect_side must be >= 1 or None, got {detect_side}")
        self._detector = _frontal_face_detector()
        predictor = find_predictor(predictor_path)
        stat = predictor.stat()
        self._predictor = _shape_predictor(str(predictor), stat.st_mtime_ns, stat.st_size)
        self._rectangle = dlib.rectangle
        self.upsample = upsample
        self.min_score = min_score
        self.detect_side = detect_side

    def reduction(self, size: tuple[int, int]) -> int:
        """The integer factor a photo of ``size`` (width, height) is reduced by to find its faces (1: none)."""
        return -(-max(size) // self.detect_side) if self.detect_side is not None else 1

    def __call__(self, image: Image.Image) -> list[np.ndarray]:
        image = image.convert("RGB")
        factor = self.reduction(image.size)
        if factor > 1:
            found, _scores, _kinds = self._detector.run(np.asarray(image.reduce(factor)), self.upsample,
                                                        self.min_score)
            boxes = [self._rectangle(b.left() * factor, b.top() * factor, b.right() * factor, b.bottom() * factor)
                     for b in found]
        else:
            boxes, _scores, _kinds = self._detector.run(np.asarray(image), self.upsample, self.min_score)
        faces = sorted(boxes, key=lambda r: r.width() * r.height(), reverse=True)
        rgb = np.asarray(image)
        return [np.array([[p.x, p.y] for p in self._predictor(rgb, face).parts()], dtype=np.float64)
                for face in faces]


def optional_detector(**kwargs) -> tuple[Dlib68Detector | None, str | None]:
    """A :class:`Dlib68Detector`, or ``(None, why not)`` when dlib or its model file is not installed."""
    try:
        return Dlib68Detector(**kwargs), None
    except (ImportError, FileNotFoundError) as e:
        return None, f"face alignment unavailable ({e})"


def align_faces(photo: Image.Image, detector: Dlib68Detector, *, size: int = 1024, scale: float = 1.0,
                source: str = "image", supersample: int = 1) -> list[AlignedFace]:
    """Every face in ``photo``, FFHQ-aligned to ``size`` (crop ``scale`` as in :func:`ffhq_quad`, ``supersample`` as
    in :func:`~hyperinverter.align.ffhq.align_from_landmarks`).

    Raises ``NoFaceFoundError`` if there is none.
    """
    landmarks = detector(photo)
    if not landmarks:
        smallest = 80 >> getattr(detector, "upsample", 0)  # dlib's HOG window, halved by each upsampling
        # (in a photo reduced to be searched, the smallest face is that much larger: "about 40 px" misled there)
        factor = detector.reduction(photo.size) if hasattr(detector, "reduction") else 1
        reduced = (f" in this photo, searched at 1/{factor} of its size (--detect-side 0 or detect_side=None: at full "
                   "size)") if factor > 1 else ""
        raise NoFaceFoundError(source, "no face found (the detector finds upright, roughly frontal faces of "
                               f"about {smallest * factor} px and more{reduced}: turn a sideways photo upright)")
    logger.info("%s: %d face(s)", source, len(landmarks))
    return [align_from_landmarks(photo, lm, size=size, scale=scale, supersample=supersample) for lm in landmarks]


@dataclass(frozen=True)
class CropScale:
    """The ``align_scale`` that frames photos like a model's training images, and how it was measured."""

    scale: float
    faces_found: int
    images: int


def measure_crop_scale(images: Sequence[Image.Image], detector: Dlib68Detector, *, upscale: int = 4) -> CropScale:
    """Median ratio of a training image's side to the FFHQ crop of its own face.

    A model trained on faces framed tighter than FFHQ (a ratio below 1) needs photos cropped tighter by that
    ratio. Small images are upscaled first, since the HOG detector misses faces under ~80 px.
    """
    ratios = []
    for image in images:
        big = image.convert("RGB").resize((image.width * upscale, image.height * upscale), Image.BICUBIC)
        found = detector(big)
        if found:
            quad = ffhq_quad(found[0])
            ratios.append(big.width / float(np.hypot(*(quad[3] - quad[0]))))
    if not ratios:
        raise NoFaceFoundError(f"no face found in any of the {len(images)} images")
    return CropScale(scale=float(np.median(ratios)), faces_found=len(ratios), images=len(images))
