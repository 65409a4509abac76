"""FFHQ-style face alignment (dlib 68 landmarks) and pasting edited crops back."""

from .ffhq import (
           AlignedFace,
           NoFaceFoundError,
           align_from_landmarks,
           check_placement,
           ffhq_quad,
           paste_back,
           paste_back_placement,
           paste_back_placements,
)
from .landmarks import (
           CropScale,
           Dlib68Detector,
           align_faces,
           find_predictor,
           measure_crop_scale,
           optional_detector,
)

__all__ = ["AlignedFace", "CropScale", "Dlib68Detector", "NoFaceFoundError", "align_faces", "align_from_landmarks",
           "check_placement", "ffhq_quad", "find_predictor", "measure_crop_scale", "optional_detector", "paste_back",
           "paste_back_placement", "paste_back_placements"]
