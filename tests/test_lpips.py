"""LPIPS v0.1 (alex, vgg): properties with random backbones, strict loading of the real lpips heads and of
torchvision-layout backbones from the torch hub cache, and parity with an independent re-implementation of
the official forward pass.

No ImageNet backbone is available offline, so every backbone here is randomly (but deterministically)
initialised; the heads are the real ``weights/v0.1/{alex,vgg}.pth`` of the installed ``lpips`` package,
located with ``importlib.util.find_spec`` (the package itself is never imported: it needs torchvision).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hyperinverter.errors import CheckpointError
from hyperinverter.losses.lpips import (
    BACKBONE_FILES,
    LPIPS,
    find_backbone_file,
    find_heads_file,
    torch_hub_checkpoints_dir,
)

NETS = ("alex", "vgg")
# Channels of the five taps in the official lpips (``self.chns``), written out here, not read from our code.
OFFICIAL_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
# The official ``pretrained_networks`` slices of ``torchvision.models.<net>().features``: a tap is the
# output of each slice, i.e. of layers [start, stop).
OFFICIAL_SLICES = {
    "alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
    "vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
}
# ScalingLayer of lpips v0.1.
OFFICIAL_SHIFT = (-0.030, -0.088, -0.188)
OFFICIAL_SCALE = (0.458, 0.448, 0.450)
# torchvision's classifier keys (ignored when loading a backbone); the shapes do not matter.
FAKE_CLASSIFIER = {
    "alex": ("classifier.1.weight", "classifier.1.bias", "classifier.4.weight", "classifier.4.bias",
             "classifier.6.weight", "classifier.6.bias"),
    "vgg": ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
            "classifier.6.weight", "classifier.6.bias"),
}


# ----------------------------------------------------------------------------------------------------------
# helpers


def heads_file(net: str) -> Path:
    """``weights/v0.1/{net}.pth`` of the installed lpips package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    assert spec is not None and spec.submodule_search_locations, "the lpips package is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / f"{net}.pth"
    assert path.is_file(), path
    return path


def heads_state_dict(net: str) -> dict[str, torch.Tensor]:
    # The files were saved from CUDA tensors: map them to the CPU.
    return dict(torch.load(heads_file(net), map_location="cpu", weights_only=True))


def randomise(model: LPIPS, seed: int) -> LPIPS:
    """Seeded He-normal backbone weights and small biases, so that even the deepest taps carry signal
    (torch's default init shrinks activations layer after layer until the biases dominate)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.net.features:
            if isinstance(layer, nn.Conv2d):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                layer.bias.copy_(0.01 * torch.randn(layer.bias.shape, generator=g))
    return model


def make_model(net: str, seed: int = 0, *, real_heads: bool = False) -> LPIPS:
    model = randomise(LPIPS(net), seed)
    if real_heads:
        model.load_heads_state_dict(heads_state_dict(net), source=str(heads_file(net)))
    return model


def images(batch: int, size: int, seed: int, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=g) * 2 - 1


def reference_lpips(features: nn.Sequential, heads: dict[str, torch.Tensor], net: str,
                    in0: torch.Tensor, in1: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The official lpips v0.1 ``LPIPS.forward`` (lpips=True, spatial=False, eval), written out directly.

    Only the backbone layers (``features[j]``) come from the module under test; the heads are the file's
    raw tensors. Returns the ``[B]`` distance and the ``[B]`` contribution of each tap.
    """
    # The official ScalingLayer buffers are ``torch.Tensor([...])``: float32 even in a float64 model.
    shift = torch.tensor(OFFICIAL_SHIFT, dtype=torch.float32).to(in0.dtype).view(1, 3, 1, 1)
    scale = torch.tensor(OFFICIAL_SCALE, dtype=torch.float32).to(in0.dtype).view(1, 3, 1, 1)

    def taps(x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - shift) / scale
        outs = []
        for start, stop in OFFICIAL_SLICES[net]:
            for j in range(start, stop):
                h = features[j](h)
            outs.append(h)
        return outs

    def normalize_tensor(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + eps)

    outs0, outs1 = taps(in0), taps(in1)
    res = []
    for kk in range(len(outs0)):
        diff = (normalize_tensor(outs0[kk]) - normalize_tensor(outs1[kk])) ** 2
        weight = heads[f"lin{kk}.model.1.weight"].to(diff.dtype)
        res.append(F.conv2d(diff, weight).mean([2, 3], keepdim=True))  # lin (no bias), spatial_average
    val = 0
    for r in res:
        val = val + r
    return val.view(-1), [r.view(-1) for r in res]


def torchvision_state_dict(model: LPIPS, net: str) -> dict[str, torch.Tensor]:
    """What ``torchvision.models.<net>().state_dict()`` looks like: ``features.*`` plus ``classifier.*``."""
    sd = {k: v.clone() for k, v in model.net.state_dict().items()}
    assert all(k.startswith("features.") for k in sd)
    g = torch.Generator().manual_seed(99)
    for key in FAKE_CLASSIFIER[net]:
        sd[key] = torch.randn((7, 5) if key.endswith("weight") else (7,), generator=g)
    return sd


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty ``$TORCH_HOME``; returns its ``hub/checkpoints`` folder (not created)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case anything called torch.hub.set_dir
    folder = home / "hub" / "checkpoints"
    assert torch_hub_checkpoints_dir() == folder
    return folder


# ----------------------------------------------------------------------------------------------------------
# properties with random backbones


@pytest.mark.parametrize("net", NETS)
def test_architecture_matches_official_channels_and_taps(net):
    model = LPIPS(net)
    assert model.net.channels == OFFICIAL_CHANNELS[net]
    assert model.net.taps == tuple(stop - 1 for _, stop in OFFICIAL_SLICES[net])
    assert [model.heads[i].model[1].weight.shape[1] for i in range(len(model.heads))] == \
        list(OFFICIAL_CHANNELS[net])
    # Frozen and always in eval mode, even when a parent model trains.
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.train().training and not any(m.training for m in model.modules())


@pytest.mark.parametrize("net", NETS)
def test_properties_random_backbone(net):
    model = make_model(net, seed=1)
    x, y = images(3, 64, seed=2), images(3, 64, seed=3)

    d = model(x, y)
    assert d.shape == (3,)
    assert torch.isfinite(d).all() and (d > 0).all()

    # d(x, x) = 0 and d(x, y) = d(y, x).
    torch.testing.assert_close(model(x, x), torch.zeros(3), atol=1e-8, rtol=0)
    torch.testing.assert_close(model(y, x), d, atol=1e-7, rtol=1e-6)

    # Per-sample: a batch gives the same distances as the samples one by one.
    singles = torch.cat([model(x[i:i + 1], y[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(singles, d, atol=1e-7, rtol=1e-5)

    # Grayscale input is the same as the image repeated over RGB.
    xg, yg = images(2, 64, seed=4, channels=1), images(2, 64, seed=5, channels=1)
    torch.testing.assert_close(model(xg, yg), model(xg.repeat(1, 3, 1, 1), yg.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("real_heads", [False, True], ids=["ones_heads", "lpips_heads"])
def test_distance_grows_with_noise(net, real_heads):
    model = make_model(net, seed=4, real_heads=real_heads)
    x = images(2, 64, seed=6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    levels = (0.01, 0.03, 0.1, 0.3, 1.0)
    d = torch.stack([model(x, x + s * noise) for s in levels])  # [levels, B]
    assert (d[0] > 0).all()
    assert (d[1:] > d[:-1]).all(), d


@pytest.mark.parametrize("net", NETS)
def test_gradients_reach_the_inputs(net):
    model = make_model(net, seed=8, real_heads=True)
    x = images(2, 32, seed=9).requires_grad_(True)
    y = images(2, 32, seed=10).requires_grad_(True)
    model(x, y).sum().backward()
    for t in (x, y):
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert (t.grad.abs().flatten(1).sum(1) > 0).all()  # every sample gets a gradient
    assert all(p.grad is None for p in model.parameters())

    # The gradient is the right one: a directional finite difference in float64.
    model64 = model.double()
    x64, y64 = x.detach().double().requires_grad_(True), y.detach().double()
    model64(x64, y64).sum().backward()
    v = torch.randn(x64.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        fd = (model64(x64 + eps * v, y64).sum() - model64(x64 - eps * v, y64).sum()) / (2 * eps)
    torch.testing.assert_close((x64.grad * v).sum(), fd, rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# heads


@pytest.mark.parametrize("net", NETS)
def test_lpips_package_heads_load_strictly(net):
    assert find_heads_file(net) == heads_file(net)
    sd = heads_state_dict(net)
    assert sorted(sd) == [f"lin{i}.model.1.weight" for i in range(5)]

    model = LPIPS(net)
    model.load_heads_state_dict(sd, source="x")
    for i in range(5):
        w = model.heads[i].model[1].weight
        assert w.shape == (1, OFFICIAL_CHANNELS[net][i], 1, 1)
        assert torch.equal(w, sd[f"lin{i}.model.1.weight"])
        assert not torch.equal(w, torch.ones_like(w))  # really replaced the all-ones default
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("net", NETS)
def test_psp_renamed_heads_load(net):
    sd = heads_state_dict(net)
    # pSp's criteria/lpips/utils.py get_state_dict: key.replace('lin', '').replace('model.', '').
    psp = {k.replace("lin", "").replace("model.", ""): v for k, v in sd.items()}
    assert sorted(psp) == [f"{i}.1.weight" for i in range(5)]
    a, b = LPIPS(net), LPIPS(net)
    a.load_heads_state_dict(sd, source="lpips")
    b.load_heads_state_dict(psp, source="psp")
    for i in range(5):
        assert torch.equal(b.heads[i].model[1].weight, sd[f"lin{i}.model.1.weight"])
    assert all(torch.equal(a.heads.state_dict()[k], v) for k, v in b.heads.state_dict().items())


@pytest.mark.parametrize("net", NETS)
def test_heads_missing_extra_misshaped_keys_error(net):
    sd = heads_state_dict(net)
    model = LPIPS(net)

    missing = {k: v for k, v in sd.items() if k != "lin3.model.1.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys: \['lin3\.model\.1\.weight'\]") as e:
        model.load_heads_state_dict(missing, source="heads.pth")
    assert "heads.pth" in str(e.value)

    extra = {**sd, "lin5.model.1.weight": torch.ones(1, 8, 1, 1)}
    with pytest.raises(CheckpointError, match=r"unexpected keys: \['lin5\.model\.1\.weight'\]"):
        model.load_heads_state_dict(extra, source="heads.pth")

    psp_missing = {k.replace("lin", "").replace("model.", ""): v for k, v in missing.items()}
    with pytest.raises(CheckpointError, match=r"missing keys: \['lin3\.model\.1\.weight'\]"):
        model.load_heads_state_dict(psp_missing, source="psp.pth")

    other = heads_state_dict("vgg" if net == "alex" else "alex")
    with pytest.raises(CheckpointError, match="mis-shaped keys"):
        model.load_heads_state_dict(other, source="other.pth")

    # A failed load leaves the heads untouched.
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.heads.parameters())


# ----------------------------------------------------------------------------------------------------------
# backbone file lookup ($TORCH_HOME/hub/checkpoints)


@pytest.mark.parametrize("net", NETS)
def test_backbone_found_in_torch_home_and_loaded_strictly(net, torch_home):
    source = make_model(net, seed=12)
    torch_home.mkdir(parents=True)
    path = torch_home / BACKBONE_FILES[net][0]
    torch.save(torchvision_state_dict(source, net), path)
    assert find_backbone_file(net) == path

    # from_files: the same lookup as real use, with the installed lpips heads.
    model = LPIPS.from_files(net)
    for k, v in source.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k
    for i, (k, v) in enumerate(sorted(heads_state_dict(net).items())):
        assert torch.equal(model.heads[i].model[1].weight, v), k
    x, y = images(2, 32, seed=13), images(2, 32, seed=14)
    source.load_heads_state_dict(heads_state_dict(net), source="heads")
    torch.testing.assert_close(model(x, y), source(x, y), atol=0, rtol=0)


def test_older_alexnet_file_name_is_found(torch_home):
    assert len(BACKBONE_FILES["alex"]) == 2
    torch_home.mkdir(parents=True)
    old = torch_home / BACKBONE_FILES["alex"][1]
    torch.save(torchvision_state_dict(make_model("alex", seed=15), "alex"), old)
    assert find_backbone_file("alex") == old
    state = torch.random.get_rng_state()
    LPIPS.from_files("alex")
    assert torch.equal(torch.random.get_rng_state(), state)  # (building it drew its random initialisation)
    # The newest name wins when both are there.
    newest = torch_home / BACKBONE_FILES["alex"][0]
    torch.save(torchvision_state_dict(make_model("alex", seed=16), "alex"), newest)
    assert find_backbone_file("alex") == newest


@pytest.mark.parametrize("net", NETS)
def test_missing_backbone_file_names_file_and_folder(net, torch_home):
    name = BACKBONE_FILES[net][0]
    for call in (lambda: find_backbone_file(net), lambda: LPIPS.from_files(net)):
        with pytest.raises(FileNotFoundError) as e:
            call()
        message = str(e.value)
        assert name in message and str(torch_home) in message, message
    # The command line's one line kept the name's case ("error: lPIPS alex backbone file ...").
    from hyperinverter.cli.main import expected_error

    assert expected_error(e.value).startswith(f"LPIPS {net} backbone file {name} is missing")
    assert expected_error(PermissionError(13, "Permission denied", "x")) == "x: permission denied"
    # Looking for the files left the caller's random state alone (a random network was built first).
    state = torch.random.get_rng_state()
    with pytest.raises(FileNotFoundError):
        LPIPS.from_files(net)
    assert torch.equal(torch.random.get_rng_state(), state)
    # A folder that exists but holds something else is no better.
    torch_home.mkdir(parents=True)
    (torch_home / "resnet18-f37072fd.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        find_backbone_file(net)


def test_backbone_file_must_match_strictly(torch_home):
    torch_home.mkdir(parents=True)
    path = torch_home / BACKBONE_FILES["alex"][0]
    sd = torchvision_state_dict(make_model("alex", seed=17), "alex")

    torch.save({k: v for k, v in sd.items() if k != "features.8.bias"}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: \['features\.8\.bias'\]") as e:
        LPIPS.from_files("alex")
    assert str(path) in str(e.value)

    torch.save({**sd, "features.13.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: \['features\.13\.weight'\]"):
        LPIPS.from_files("alex")

    # A VGG16 file under the AlexNet name does not fit.
    torch.save(torchvision_state_dict(make_model("vgg", seed=18), "vgg"), path)
    with pytest.raises(CheckpointError, match="features.0.weight"):
        LPIPS.from_files("alex")


# ----------------------------------------------------------------------------------------------------------
# parity with the official forward


@pytest.mark.parametrize("net", NETS)
def test_parity_with_reference_formula(net):
    model = make_model(net, seed=20, real_heads=True)
    heads = heads_state_dict(net)
    x = images(3, 64, seed=21)
    y = (x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(22))).clamp(-1, 1)

    with torch.no_grad():
        ours = model(x, y)
        ref, per_tap = reference_lpips(model.net.features, heads, net, x, y)
    # Every tap contributes, so the comparison covers all five layers and heads.
    for r in per_tap:
        assert (r > 1e-3 * ref).all(), [t.tolist() for t in per_tap]
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)

    # Unrelated images, and float64 where the two must agree to rounding.
    y2 = images(3, 64, seed=23)
    with torch.no_grad():
        torch.testing.assert_close(model(x, y2), reference_lpips(model.net.features, heads, net, x, y2)[0],
                                   atol=1e-6, rtol=0)
        model64 = model.double()
        x64, y64 = x[:2].double(), y[:2].double()
        torch.testing.assert_close(model64(x64, y64),
                                   reference_lpips(model64.net.features, heads, net, x64, y64)[0],
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("side", [512, 28])
def test_the_lpips_metric_is_the_module_on_256_px_images(monkeypatch, side):
    # evaluate's LPIPS goes through FeatureMetric (features, then compare): the same number as the module, on images
    # resized to 256 px as the papers' scripts resize them (torchvision's Resize: antialiased bilinear), small ones
    # up too: the metric fed images under 31 px to AlexNet as they were, whose third pooling then had nothing left
    # to pool, so a 28-px Fashion-MNIST pair was a RuntimeError (an internal error of `evaluate`), not a score.
    from hyperinverter.evaluation import lpips_metric
    from hyperinverter.metrics import same_targets

    torch.manual_seed(0)
    module = LPIPS("alex")
    monkeypatch.setattr(LPIPS, "from_files", classmethod(lambda cls, net: module))
    metric = lpips_metric("cpu")[0]["lpips"]
    a, b = torch.rand(3, 3, side, side) * 2 - 1, torch.rand(3, 3, side, side) * 2 - 1

    def resized(x):
        return F.interpolate(x, size=256, mode="bilinear", antialias=True)

    with torch.no_grad():
        expected = module(resized(a), resized(b))
        torch.testing.assert_close(metric(a, b), expected)
        with same_targets():
            torch.testing.assert_close(metric(a, b), expected)
            torch.testing.assert_close(metric(a, b), expected)  # from the kept targets
