"""W / W+ optimisation (NVIDIA's projector) and PTI on the tiny generator: the official recipe's pieces, that the
loss falls, that results are per image and re-render exactly, and that PTI's Δθ is the tuned generator."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import build_tiny_generator
from hyperinverter.methods.projector import (
    ProjectorSettings,
    WPlusProjection,
    WProjection,
    default_l2_weight,
    noise_buffer_names,
    noise_regularizer,
    project,
    w_statistics,
)
from hyperinverter.methods.pti import PTI
from hyperinverter.models.weight_delta import WeightDelta


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return build_tiny_generator().eval().requires_grad_(False)


def targets(G, n=2, seed=5):
    """Images the generator can make (so a good inversion exists), from a code away from the mean."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.synthesis(G.mapping(z), noise_mode="const")


class PixelDistance(nn.Module):
    """A stand-in perceptual distance ``[B]`` (mean absolute difference of 2×-pooled images)."""

    def forward(self, x, y):
        return (nn.functional.avg_pool2d(x, 2) - nn.functional.avg_pool2d(y, 2)).abs().mean(dim=(1, 2, 3))


# --- the projector's recipe ----------------------------------------------------------------------------------


def test_the_official_losses_where_lpips_is_installed(G, monkeypatch):
    # The projectors added an L2 term that NVIDIA's has not, and PTI's pivot compared with LPIPS-AlexNet, the
    # tuning's distance, where the official pivot is NVIDIA's projector with LPIPS-VGG.
    from hyperinverter.losses.lpips import LPIPS
    from hyperinverter.methods import projector, pti

    assert default_l2_weight(LPIPS("alex")) == 0.0
    assert default_l2_weight(PixelDistance()) == default_l2_weight(None) == 1.0
    assert WProjection.options["l2_weight"] is None and PTI.options["pivot_l2_weight"] is None
    assert PTI.options["l2_weight"] == 1.0  # (the tuning's: L2 + LPIPS-AlexNet, as the official code)
    # The pivot's distance keeps the official weight 1 whatever the tuning's: at perceptual_weight=0 the pivot had
    # no distance at all and stayed at w_avg.
    pivot = PTI.pivot_settings({**PTI.options, "perceptual_weight": 0.0})
    assert pivot.perceptual_weight == 1.0 and pivot.l2_weight is None and pivot.space == "w"
    asked, stand_ins = [], {}

    def installed(choice, *, lpips_net, discriminator, device):
        asked.append((choice, lpips_net))
        return f"lpips-{lpips_net}", stand_ins.setdefault(lpips_net, LPIPS(lpips_net))

    seen = []
    real_project = pti.project
    monkeypatch.setattr(projector, "perceptual_distance", installed)
    monkeypatch.setattr(pti, "project", lambda *a, **k: seen.append(k["distance"]) or real_project(*a, **k))
    PTI.create(G).invert(targets(G, 1), progress=False)
    assert asked == [("auto", "alex"), ("auto", "vgg")] and seen == [stand_ins["vgg"]]


def test_schedules_follow_the_official_ramps():
    s = ProjectorSettings(steps=1000, learning_rate=0.1)
    assert s.learning_rate_at(0) == 0.0  # linear warm-up from zero over 5 %
    assert s.learning_rate_at(25) == pytest.approx(0.05)
    assert s.learning_rate_at(50) == pytest.approx(0.1) and s.learning_rate_at(700) == pytest.approx(0.1)
    assert s.learning_rate_at(875) == pytest.approx(0.05)  # half-way down the cosine over the last 25 %
    assert s.learning_rate_at(999) < 1e-4
    assert s.w_noise_factor_at(0) == pytest.approx(0.05)
    assert s.w_noise_factor_at(375) == pytest.approx(0.05 * 0.25)
    assert s.w_noise_factor_at(750) == 0.0 and s.w_noise_factor_at(900) == 0.0


def test_w_statistics_are_the_official_sampling(G):
    w_avg, w_std = w_statistics(G, 300)
    z = torch.from_numpy(np.random.RandomState(123).randn(300, G.z_dim)).float()
    with torch.no_grad():
        w = G.mapping(z)[:, 0]
    assert torch.allclose(w_avg, w.mean(0), atol=1e-6)
    assert w_std == pytest.approx(math.sqrt(((w - w.mean(0)) ** 2).sum().item() / 300), rel=1e-5)


def test_noise_regularizer_is_the_multiscale_autocorrelation():
    noise = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    for b in range(3):
        n, expected = noise[b][None, None], 0.0
        while True:
            expected += (n * torch.roll(n, 1, dims=3)).mean() ** 2 + (n * torch.roll(n, 1, dims=2)).mean() ** 2
            if n.shape[2] <= 8:
                break
            n = nn.functional.avg_pool2d(n, 2)
        assert noise_regularizer(noise)[b].item() == pytest.approx(expected.item(), rel=1e-5)
    smooth = torch.ones(1, 32, 32)  # perfectly correlated noise is penalised far more than white noise
    assert noise_regularizer(smooth)[0] > 100 * noise_regularizer(noise).mean()


@pytest.mark.parametrize("space", ["w", "w+"])
def test_the_projector_loss_decreases(G, space):
    x = targets(G)
    history = []
    settings = ProjectorSettings(space=space, steps=60, learning_rate=0.05, w_avg_samples=256)
    ws, noise = project(G, x, settings, distance=PixelDistance(), history=history)
    start, end = torch.stack(history[:5]).mean(0), torch.stack(history[-5:]).mean(0)
    assert (end < 0.7 * start).all(), (start, end)  # for every image
    with torch.no_grad():
        at_mean = G.synthesis(w_statistics(G, 256)[0].expand(2, G.num_ws, -1))
        final = G.synthesis(ws, weight_delta=noise)
    assert (final - x).square().mean() < 0.5 * (at_mean - x).square().mean()
    if space == "w":
        assert torch.equal(ws, ws[:, :1].expand_as(ws))  # one w repeated over the layers
    else:
        assert (ws - ws[:, :1]).abs().amax() > 0  # rows optimised separately
    # the noise maps were optimised per image and kept renormalised
    assert set(noise) == set(noise_buffer_names(G))
    buffers = dict(G.synthesis.named_buffers())
    for name, delta in noise.items():
        maps = buffers[name] + delta
        assert maps.shape[0] == 2 and not torch.allclose(maps[0], maps[1])
        assert maps.mean(dim=(1, 2)).abs().max() < 1e-5
        assert torch.allclose(maps.square().mean(dim=(1, 2)), torch.ones(2), atol=1e-4)


class SharedDraws:
    """A stand-in for ``PerImageRandom`` (one image) whose draws come from one seeded stream, in the order the
    official scripts draw them from the global RNG: each noise map, then the step's w noise (or locality z)."""

    def __init__(self, images, seed):
        self.g = torch.Generator().manual_seed(1234)

    def randn(self, *shape):
        return torch.randn((1, *shape), generator=self.g)


class SmoothDistance(nn.Module):
    """A smooth stand-in distance ``[B]``: an L1 one amplifies float rounding through its kink at 0."""

    def forward(self, x, y):
        return (nn.functional.avg_pool2d(x, 2) - nn.functional.avg_pool2d(y, 2)).square().mean(dim=(1, 2, 3))


def official_projection(G, target, *, space, steps, lr, samples, distance):
    """NVIDIA's ``projector.project`` (and PTI's W+ copy), written from its text, on one image: a deep copy of G
    whose noise buffers are re-drawn and optimised in place; returns the last step's ws and the copy."""
    g = torch.Generator().manual_seed(1234)
    Gc = copy.deepcopy(G).eval().requires_grad_(False)
    z = np.random.RandomState(123).randn(samples, Gc.z_dim)
    w_samples = Gc.mapping(torch.from_numpy(z).float())[:, :1, :].numpy().astype(np.float32)
    w_avg = np.mean(w_samples, axis=0, keepdims=True)
    w_std = (np.sum((w_samples - w_avg) ** 2) / samples) ** 0.5
    bufs = {n: b for n, b in Gc.synthesis.named_buffers() if "noise_const" in n}
    w_opt = torch.tensor(w_avg if space == "w" else np.repeat(w_avg, Gc.num_ws, axis=1), requires_grad=True)
    optimizer = torch.optim.Adam([w_opt, *bufs.values()], betas=(0.9, 0.999), lr=lr)
    for b in bufs.values():
        b[:] = torch.randn((1, *b.shape), generator=g)[0]
        b.requires_grad = True
    for step in range(steps):
        t = step / steps
        ramp = 0.5 - 0.5 * np.cos(min(1.0, (1.0 - t) / 0.25) * np.pi)
        for group in optimizer.param_groups:
            group["lr"] = lr * ramp * min(1.0, t / 0.05)
        w_noise = torch.randn((1, *w_opt.shape[1:]), generator=g) * w_std * 0.05 * max(0.0, 1.0 - t / 0.75) ** 2
        ws = (w_opt + w_noise).repeat([1, Gc.num_ws, 1]) if space == "w" else w_opt + w_noise
        loss = distance(Gc.synthesis(ws, noise_mode="const"), target).sum()
        for v in bufs.values():
            n = v[None, None]
            while True:
                loss = loss + 1e5 * (n * torch.roll(n, 1, dims=3)).mean() ** 2
                loss = loss + 1e5 * (n * torch.roll(n, 1, dims=2)).mean() ** 2
                if n.shape[2] <= 8:
                    break
                n = nn.functional.avg_pool2d(n, 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for b in bufs.values():
                b -= b.mean()
                b *= b.square().mean().rsqrt()
    return (w_opt.detach().repeat([1, Gc.num_ws, 1]) if space == "w" else w_opt.detach()), Gc


@pytest.mark.parametrize("space,lr", [("w", 0.1), ("w+", 0.01)])
def test_the_projector_follows_the_official_loop(G, monkeypatch, space, lr):
    """Our batched projector against an independent rewrite of the official loop, with the same random draws: the
    same codes, and the image of the optimised noise (the official proj.png renders the original noise; we keep the
    optimised maps on purpose, docs/optimization.md)."""
    from hyperinverter.methods import projector

    monkeypatch.setattr(projector, "PerImageRandom", SharedDraws)
    x = targets(G, 1)
    settings = ProjectorSettings(space=space, steps=20, learning_rate=lr, w_avg_samples=64, l2_weight=0.0)
    ws, noise = project(G, x, settings, distance=SmoothDistance())
    ws_ref, G_ref = official_projection(G, x, space=space, steps=20, lr=lr, samples=64, distance=SmoothDistance())
    assert torch.allclose(ws, ws_ref, atol=2e-4)  # (Adam carries float rounding to ~1e-4 in W+)
    with torch.no_grad():
        image = G.synthesis(ws, weight_delta=noise, noise_mode="const")
        assert torch.allclose(image, G_ref.synthesis(ws_ref, noise_mode="const"), atol=2e-4)


@pytest.mark.parametrize("threshold", [0.0, 0.38])
def test_pti_tuning_follows_the_official_coach(G, monkeypatch, threshold):
    """PTI's tuning against the official single-image coach (Adam lr 3e-4 on every parameter of a copy of G; L2 +
    distance; stop before the update once the distance is at most the threshold; the locality regulariser at
    ψ 0.5, α 30 with the noise off), from our pivot, with the same random draws."""
    from hyperinverter.methods import projector, pti

    monkeypatch.setattr(projector, "PerImageRandom", SharedDraws)
    monkeypatch.setattr(pti, "PerImageRandom", SharedDraws)
    x, distance, steps = targets(G, 1), SmoothDistance(), 15
    method = PTI(G)
    method.use_distance("lpips-stand-in", distance)  # (an LPIPS name: the early stop applies)
    result = method.invert(x, pivot_steps=10, pivot_w_avg_samples=64, steps=steps, locality_regularization=True,
                           early_stop_lpips=threshold, progress=False)
    tuned, original, g = copy.deepcopy(G).requires_grad_(True), copy.deepcopy(G), torch.Generator().manual_seed(1234)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=3e-4)
    updates = 0
    for _ in range(steps):
        out = tuned.synthesis(result.ws, noise_mode="const")
        perceptual = distance(out, x).squeeze()
        loss = nn.functional.mse_loss(out, x) + perceptual
        with torch.no_grad():
            w_z = original.mapping(torch.randn((1, G.z_dim), generator=g), truncation_psi=0.5)
            w_r = result.ws + 30 * (w_z - result.ws) / torch.norm(w_z - result.ws, p=2)
            old = original.synthesis(w_r, noise_mode="none")
        new = tuned.synthesis(w_r, noise_mode="none")
        loss = loss + 0.1 * nn.functional.mse_loss(old, new) + 0.1 * distance(old, new).mean()
        optimizer.zero_grad()
        if perceptual <= threshold:
            break
        loss.backward()
        optimizer.step()
        updates += 1
    assert updates == (steps if threshold == 0 else 6)
    assert all(torch.equal(a, b) for a, b in zip(tuned.mapping.parameters(), G.mapping.parameters()))
    params, base = dict(tuned.synthesis.named_parameters()), dict(G.synthesis.named_parameters())
    for name, d in result.weight_delta.items():
        assert torch.allclose(d[0], params[name] - base[name], atol=1e-5), name
    with torch.no_grad():
        assert torch.allclose(result.image, tuned.synthesis(result.ws, noise_mode="const"), atol=1e-5)


def test_each_image_is_its_own_run(G):
    """Per-image Adam state and per-image random draws: an image's result does not depend on its batch."""
    x = targets(G, 3)
    settings = ProjectorSettings(steps=20, learning_rate=0.05, w_avg_samples=128)
    together, noise_together = project(G, x, settings, distance=PixelDistance())
    alone, noise_alone = project(G, x[1:2], settings, distance=PixelDistance())
    assert torch.allclose(together[1:2], alone, atol=1e-4)
    name = noise_buffer_names(G)[0]
    assert torch.allclose(noise_together[name][1:2], noise_alone[name], atol=1e-4)


def test_projection_methods_keep_their_official_defaults(G):
    assert WProjection.options["steps"] == 1000 and WProjection.options["learning_rate"] == 0.1
    assert WPlusProjection.options["steps"] == 2000 and WPlusProjection.options["learning_rate"] == 0.01
    assert WProjection.options["w_avg_samples"] == 10_000 and WProjection.options["noise_regularize_weight"] == 1e5
    assert PTI.options["pivot_steps"] == 450 and PTI.options["pivot_w_avg_samples"] == 600
    assert PTI.options["steps"] == 350 and PTI.options["learning_rate"] == 3e-4
    assert PTI.options["early_stop_lpips"] == 0.06 and PTI.options["locality_alpha"] == 30.0
    method = WProjection(G, defaults={"steps": 7})
    assert method.options["steps"] == 7 and WProjection.options["steps"] == 1000
    with pytest.raises(ValueError, match="has no option"):
        WProjection(G, defaults={"stepz": 7})


def test_projection_result_re_renders_exactly(G):
    x = targets(G)
    result = WProjection(G).invert(x, steps=5, w_avg_samples=64, perceptual="none")
    assert result.weight_delta is not None and result.weight_delta.mode == "add"
    assert set(result.weight_delta) == set(noise_buffer_names(G))
    with torch.no_grad():
        assert torch.equal(G.synthesis(result.ws, weight_delta=result.weight_delta), result.image)
        # without the optimised noise the image is not the same: the noise is part of the result
        assert not torch.allclose(G.synthesis(result.ws), result.image, atol=1e-3)


def test_offline_distance_falls_back_to_the_discriminator_or_l2(G, caplog):
    from hyperinverter.losses.lpips import find_backbone_file
    from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig

    try:
        find_backbone_file("vgg")
        pytest.skip("LPIPS-VGG is installed here: auto picks it")
    except FileNotFoundError:
        pass
    name, module = WProjection(G).distance("auto", torch.device("cpu"))
    assert name == "none" and module is None and "L2 alone" in caplog.text
    D = Discriminator(DiscriminatorConfig(resolution=G.resolution, channel_base=256, channel_max=32))
    name, module = WProjection(G, discriminator=D).distance("auto", torch.device("cpu"))
    assert name == "dfeat" and module is not None
    with pytest.raises(ValueError, match="ships its discriminator"):
        WProjection(G).distance("dfeat", torch.device("cpu"))


# --- PTI ------------------------------------------------------------------------------------------------------

PTI_QUICK = {"pivot_steps": 10, "pivot_w_avg_samples": 64, "steps": 25, "learning_rate": 3e-3, "perceptual": "none"}


def baked(G, delta: WeightDelta, index: int):
    """A plain copy of G whose parameters are θ+Δθ of sample ``index`` (the tuned generator)."""
    tuned = copy.deepcopy(G)
    state = tuned.state_dict()
    for name, d in delta.items():
        state[f"synthesis.{name}"] = state[f"synthesis.{name}"] + d[index]
    tuned.load_state_dict(state)
    return tuned


def test_pti_result_re_rendered_from_its_delta_is_the_tuned_generator(G):
    x = targets(G)
    result = PTI(G).invert(x, **PTI_QUICK)
    delta = result.weight_delta
    assert delta.mode == "add"
    # an offset on every parameter PTI tunes, shapes read from the generator
    params = {n: tuple(p.shape) for n, p in G.synthesis.named_parameters()}
    assert set(delta) == set(params)
    assert {"b4.const", "b8.conv0.bias", "b8.conv0.affine.bias", "b8.conv0.noise_strength"} <= set(delta)
    assert all(tuple(t.shape) == (2, *params[n]) for n, t in delta.items())
    assert torch.equal(result.ws, result.ws[:, :1].expand_as(result.ws))  # a W pivot
    for i in range(2):
        with torch.no_grad():
            image = baked(G, delta, i).synthesis(result.ws[i : i + 1], noise_mode="const")
        assert torch.allclose(image, result.image[i : i + 1], atol=1e-5)
    # tuning improved on the pivot alone
    with torch.no_grad():
        pivot_image = G.synthesis(result.ws)
    assert (result.image - x).square().mean() < 0.8 * (pivot_image - x).square().mean()


def test_pti_locality_regulariser_is_active(G):
    """With the regulariser the tuned generator changes the original's images near the pivot less."""
    x = targets(G, 1, seed=9)
    method = PTI(G)
    # the tiny generator's codes have norm ~12: α = 10 is "near" it, as α = 30 is for FFHQ's
    options = method.check_options(dict(PTI_QUICK, steps=30, learning_rate=3e-3, locality_alpha=10.0))
    pivot = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(2)))
    free = method.tune(x, pivot, dict(options, locality_regularization=False), None, early_stop=False)
    kept = method.tune(x, pivot, dict(options, locality_regularization=True), None, early_stop=False)
    from hyperinverter.methods.projector import PerImageRandom

    # Measured at eight other random codes than tuning drew. The ratio is about a half, but it moves with float
    # rounding (0.42-0.54 between equivalent kernels; at one code 0.34-0.58): without the regulariser it is 1.
    change_free = sum(method.locality_loss(pivot, free, options, None, PerImageRandom(x, 90 + i)) for i in range(8))
    change_kept = sum(method.locality_loss(pivot, kept, options, None, PerImageRandom(x, 90 + i)) for i in range(8))
    assert change_kept < 0.75 * change_free, (change_kept, change_free)
    with torch.enable_grad():
        delta = WeightDelta({n: t.clone().requires_grad_(True) for n, t in free.items()})
        method.locality_loss(pivot, delta, options, None, PerImageRandom(x, 1)).sum().backward()
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in delta.values())


def test_pti_stops_an_image_once_its_distance_is_low_enough(G):
    x = targets(G, 2)
    method = PTI(G)
    options = method.check_options(dict(PTI_QUICK, steps=5, locality_regularization=False))
    pivot = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(2)))

    class StopFirst(nn.Module):  # image 0 is "close enough" from the start, image 1 never
        def forward(self, a, b):
            return torch.tensor([0.0, 1.0]) + 0 * a.mean(dim=(1, 2, 3))

    delta = method.tune(x, pivot, dict(options, early_stop_lpips=0.5), StopFirst(), early_stop=True)
    assert all(t[0].abs().max() == 0 for t in delta.values())  # stopped before its first update
    assert any(t[1].abs().max() > 0 for t in delta.values())


# --- official PTI files ---------------------------------------------------------------------------------------


def write_official_pti(tmp_path, G, delta: WeightDelta, ws: torch.Tensor):
    """PTI's two files for one image: ``torch.save`` of the tuned NVIDIA generator (a persistent module) and the
    pivot tensor."""
    from nvidia_pickle_writer import write_pti_checkpoint
    from test_gan_files import buffers, nv_generator_kwargs

    tuned = baked(G, delta, 0)
    write_pti_checkpoint(tmp_path / "model_run_img.pt",
                         ("Generator", nv_generator_kwargs(tuned), tuned.state_dict(), buffers(tuned)))
    torch.save(ws.clone(), tmp_path / "0.pt")
    return tmp_path / "model_run_img.pt", tmp_path / "0.pt"


def test_an_official_pti_result_loads_as_delta_against_its_original(G, tmp_path):
    from hyperinverter.convert.gan_files import detect_format
    from hyperinverter.convert.pti import load_pti_inversion

    x = targets(G, 1)
    ours = PTI(G).invert(x, **PTI_QUICK)
    tuned_path, pivot_path = write_official_pti(tmp_path, G, ours.weight_delta, ours.ws)
    assert detect_format(tuned_path) == "nvidia"  # a .pt, but a pickled NVIDIA module, not a state dict
    loaded = load_pti_inversion(tuned_path, pivot_path, G)
    assert set(loaded.weight_delta) == set(ours.weight_delta) and loaded.weight_delta.mode == "add"
    for name, d in ours.weight_delta.items():
        assert torch.allclose(loaded.weight_delta[name], d, atol=1e-6), name
    assert torch.equal(loaded.ws, ours.ws)
    assert torch.allclose(loaded.image, ours.image, atol=1e-5)


def test_pti_files_that_do_not_fit_are_named(G, tmp_path):
    from hyperinverter.convert.pti import load_pti_inversion
    from hyperinverter.errors import CheckpointError

    x = targets(G, 1)
    ours = PTI(G).invert(x, **PTI_QUICK)
    tuned_path, pivot_path = write_official_pti(tmp_path, G, ours.weight_delta, ours.ws)
    other = copy.deepcopy(G)
    with torch.no_grad():
        other.mapping.fc0.weight.add_(1.0)  # another original: PTI never changes the mapping network
    with pytest.raises(CheckpointError, match=r"model_run_img.pt.*not tuned from this original.*mapping.fc0"):
        load_pti_inversion(tuned_path, pivot_path, other)
    torch.save(torch.zeros(1, G.num_ws + 1, G.w_dim), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt.*pivot \[1, \d+, \d+\]"):
        load_pti_inversion(tuned_path, tmp_path / "bad.pt", G)
    (tmp_path / "junk.pt").write_bytes(b"not a tensor")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_pti_inversion(tuned_path, tmp_path / "junk.pt", G)


def test_import_pti_writes_an_inversion_file_the_model_renders(G, tmp_path, capsys):
    from hyperinverter.cli.main import main
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.pipeline import InversionPipeline

    # a bundle holds at least one trained method; PTI itself stores nothing and runs on any bundle
    InversionPipeline(Phase1.create(G), device="cpu").save_pretrained(tmp_path / "bundle")
    pipe = InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")
    x = targets(pipe.generator, 1)
    ours = PTI(pipe.generator).invert(x, **PTI_QUICK)
    tuned_path, pivot_path = write_official_pti(tmp_path, pipe.generator, ours.weight_delta, ours.ws)
    out = tmp_path / "image.safetensors"
    assert main(["import-pti", str(tuned_path), "--pivot", str(pivot_path), "--model", str(tmp_path / "bundle"),
                 "--device", "cpu", "--out", str(out)]) == 0
    loaded, record = pipe.load_result(out)
    assert record["method"] == "pti"
    assert torch.allclose(loaded.image, ours.image, atol=1e-5)
    # A missing file was named after the cause ("error: no such model file or folder: model_run_img.pt").
    capsys.readouterr()
    assert main(["import-pti", str(tmp_path / "model_gone.pt"), "--pivot", str(pivot_path), "--model",
                 str(tmp_path / "bundle"), "--device", "cpu", "--out", str(tmp_path / "gone.safetensors")]) == 2
    assert f"error: {tmp_path / 'model_gone.pt'}: no such model file or folder\n" == capsys.readouterr().err
    # An --out named otherwise was written, and edit then read it as an image it could not read.
    assert main(["import-pti", str(tuned_path), "--pivot", str(pivot_path), "--model", str(tmp_path / "bundle"),
                 "--device", "cpu", "--out", str(tmp_path / "image.png")]) == 2
    assert f"error: {tmp_path / 'image.png'}: an inversion file must be named NAME.safetensors" in \
        capsys.readouterr().err
    assert not (tmp_path / "image.png").exists()


def test_a_bundle_with_its_discriminator_saves_over_itself_and_hands_it_to_optimisation(tmp_path):
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig
    from hyperinverter.pipeline import InversionPipeline

    G = build_tiny_generator()
    D = Discriminator(DiscriminatorConfig(resolution=G.resolution, channel_base=256, channel_max=32))
    InversionPipeline(Phase1.create(G), device="cpu", discriminator=D).save_pretrained(tmp_path / "bundle")
    pipe = InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")
    assert pipe.discriminator is not None
    pipe.save_pretrained(tmp_path / "bundle")  # its own discriminator folder is ours: replaced, not refused
    assert pipe.inverter("w-opt").distance("auto", torch.device("cpu"))[0] in ("dfeat", "lpips-vgg")


def test_a_run_is_recorded_with_the_options_that_ran(G):
    # Inversion files record a digest of the method and its options, on which a re-run skips an input; an
    # instance's own defaults (the tiny preset's 3 steps) were left out, so its files passed for official ones.
    from hyperinverter.inversion.files import made_with_digest

    tiny, official = WProjection.create(G, preset="tiny"), WProjection.create(G, preset="official")
    assert made_with_digest(tiny, {}) != made_with_digest(official, {})
    assert made_with_digest(tiny, {}) == made_with_digest(official, dict(WProjection.tiny_options))
    assert made_with_digest(tiny, {}) == made_with_digest(tiny, {"progress": False})  # (it changes no result)
    assert made_with_digest(tiny, {}) != made_with_digest(tiny, {"steps": 4})
