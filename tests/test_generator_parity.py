"""Parity with the official rosinality StyleGAN2 (reference outputs in fixtures/), through both layouts."""

import json

import pytest
import torch

from hyperinverter.convert import rosinality
from hyperinverter.convert.gan_files import load_gan
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig, truncate
from nvidia_pickle_writer import write_nvidia_pickle
from rosinality_recipe import FIXTURES, build_rosinality_checkpoint

IMG_TOL, W_TOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURES / "stylegan2_rosi32_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def rosi_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rosi") / "stylegan2-32.pt"
    torch.save(build_rosinality_checkpoint(), path)
    return path


def nv_buffers(state_dict):
    return {k for k in state_dict if k.endswith(("w_avg", "resample_filter", "noise_const"))}


@pytest.fixture(scope="module")
def nvidia_file(tmp_path_factory, rosi_file):
    """The same weights in the NVIDIA pickle layout (keys mapped with the verified reference table)."""
    ckpt = build_rosinality_checkpoint()
    table = json.loads((FIXTURES / "rosi_to_nvidia_mapping_32.json").read_text())["table"]
    src = dict(ckpt["g_ema"], latent_avg=ckpt["latent_avg"])
    rules = {
        "identity": lambda t: t, "squeeze_dim0": lambda t: t[0], "reshape_to_0d": lambda t: t.reshape([]),
        "squeeze_dims01": lambda t: t[0, 0], "flatten_1_3_1_1_to_3": lambda t: t.reshape(-1),
        "divide_by_4": lambda t: t / 4,
    }
    f1331 = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    sd = {r["nvidia"]: f1331.clone() if r["rosi"] is None else rules[r["rule"]](src[r["rosi"]]) for r in table}
    kwargs = {"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 32, "img_channels": 3,
                  "mapping_kwargs": {"num_layers": 8, "lr_multiplier": 0.01, "w_avg_beta": 0.995},
                  "synthesis_kwargs": {"channel_base": 16384, "channel_max": 512, "num_fp16_res": 0, "conv_clamp": None,
                                        "architecture": "skip", "resample_filter": [1, 3, 3, 1]}}
    path = tmp_path_factory.mktemp("nv") / "network.pkl"
    write_nvidia_pickle(path, {"G_ema": ("Generator", kwargs, sd, nv_buffers(sd))})
    return path


@pytest.fixture(scope="module", params=["rosinality", "nvidia"])
def generator(request, rosi_file, nvidia_file):
    path = rosi_file if request.param == "rosinality" else nvidia_file
    gan = load_gan(path)
    assert gan.source_format == request.param
    return gan.generator


def test_synthesis_matches_official(generator, reference):
    with torch.no_grad():
        img = generator.synthesis(reference["ws"], noise_mode="const")
    assert (img - reference["img"]).abs().max() <= IMG_TOL


def test_truncation_matches_official(generator, reference):
    psi = float(reference["truncation_psi"])
    assert torch.equal(generator.w_avg, reference["latent_avg"])
    with torch.no_grad():
        img = generator.synthesis(truncate(reference["ws"], generator.w_avg, psi))
    assert (img - reference["img_trunc"]).abs().max() <= IMG_TOL


def test_z_path_matches_official(generator, reference):
    with torch.no_grad():
        ws = generator.mapping(reference["z"])
        img = generator(reference["z"])
    assert ws.shape == (4, 8, 512)
    assert (ws - reference["w_from_z"][:, None]).abs().max() <= W_TOL
    assert (img - reference["img_from_z"]).abs().max() <= IMG_TOL


def test_both_layouts_give_the_same_image(rosi_file, nvidia_file, reference):
    a, b = load_gan(rosi_file).generator, load_gan(nvidia_file).generator
    with torch.no_grad():
        diff = (a.synthesis(reference["ws"]) - b.synthesis(reference["ws"])).abs().max()
    assert diff <= 1e-5


@pytest.mark.parametrize("size", [32, 256])
def test_key_map_equals_verified_reference_table(size):
    """Our generated rosinality<->NVIDIA map reproduces the reference table row by row, with shapes."""
    table = json.loads((FIXTURES / f"rosi_to_nvidia_mapping_{size}.json").read_text())["table"]
    config = Generator(GeneratorConfig(resolution=size, channel_base=32768 if size == 256 else 16384)).config
    ours = {(r.rosinality, r.nvidia): r.rule for r in rosinality.key_map(config)}
    ref = {(row["rosi"], row["nvidia"]): row["rule"] for row in table}
    ref = {k: ("const_setup_filter" if v == "const_setup_filter_1331" else v) for k, v in ref.items()}
    assert ours == ref
    shapes = {k: tuple(v.shape) for k, v in Generator(config).state_dict().items()}
    for row in table:
        assert shapes[row["nvidia"]] == tuple(row["nvidia_shape"]), row["nvidia"]


def test_conv_clamp_is_nvidias_bound():
    # NVIDIA clamps a synthesis layer at conv_clamp * gain, where gain is the layer's call argument (1 in the skip
    # architecture), after the activation's sqrt(2): the layers clamped at conv_clamp * sqrt(2) (ADA pickles:
    # 362 for 256), on the whole-map and the banded path alike.
    from hyperinverter.models.stylegan2.layers import SynthesisLayer, ToRGBLayer

    torch.manual_seed(0)
    clamp = 0.5
    x, w = torch.randn(2, 8, 8, 8) * 3, torch.randn(2, 8)
    for make in (lambda c: SynthesisLayer(8, 8, w_dim=8, resolution=8, conv_clamp=c),
                 lambda c: ToRGBLayer(8, 3, w_dim=8, conv_clamp=c)):
        clamped, free = make(clamp).eval(), make(None).eval()
        free.load_state_dict(clamped.state_dict())
        with torch.no_grad():
            y, unclamped = clamped(x, w), free(x, w)
        assert unclamped.abs().max() > 2 * clamp  # (the bound matters)
        torch.testing.assert_close(y, unclamped.clamp(-clamp, clamp), rtol=0, atol=1e-6)


def _random_state(module, seed):
    """``module``'s tensors drawn at random (noise strengths and biases non-zero), filters kept."""
    gen = torch.Generator().manual_seed(seed)
    sd = module.state_dict()
    for k, v in sd.items():
        if not k.endswith("resample_filter"):
            scale = 0.5 if k.endswith(("noise_strength", "bias")) else 1.0
            sd[k] = torch.randn(v.shape, generator=gen) * scale + (1.0 if k.endswith("affine.bias") else 0.0)
    return sd


# (resolution, img_channels, resample_filter, conv_clamp, use_noise, mapping layers): 1- and 2-channel images, a clamp
# that cuts, no noise, asymmetric and odd filters, a cifar-style 2-layer mapping.
NV_CONFIGS = [(16, 1, [1, 3, 3, 1], 0.5, True, 2), (32, 3, [1, 2, 1], None, False, 8),
              (16, 3, [1, 2, 3, 1], 1.0, True, 1), (16, 2, [1, 4, 6, 4, 1], None, True, 2)]


@pytest.mark.parametrize("config", NV_CONFIGS, ids=["1ch-clamp", "no-noise-3taps", "asymmetric", "2ch-5taps"])
def test_nvidia_pickles_compute_as_nvidia_s_code(tmp_path, config):
    """Generator (z path, truncation with and without a cutoff, noise const/none, one image and a batch, with and
    without autograd) and discriminator (resnet, minibatch groups and channels, clamp) loaded from NVIDIA pickles of
    configs the fixtures do not cover, against tests/nvidia_reference.py, written from NVIDIA's text."""
    import nvidia_reference as nv
    from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig

    res, channels, taps, clamp, use_noise, mapping_layers = config
    G0 = Generator(GeneratorConfig(resolution=res, img_channels=channels, z_dim=12, w_dim=10, channel_base=128,
                                   channel_max=16, mapping_layers=mapping_layers, conv_clamp=clamp,
                                   use_noise=use_noise, resample_filter=tuple(taps)))
    D0 = Discriminator(DiscriminatorConfig(resolution=res, img_channels=channels, channel_base=128, channel_max=16,
                                           conv_clamp=clamp, mbstd_group_size=2, mbstd_num_channels=2,
                                           resample_filter=tuple(taps)))
    default = nv.setup_filter([1, 3, 3, 1])  # what NVIDIA's layers that never resample hold
    g_sd = {k: default if k.endswith("conv1.resample_filter") else v for k, v in _random_state(G0, 0).items()}
    d_sd = {k: default if k.endswith(("fromrgb.resample_filter", "conv0.resample_filter", "b4.conv.resample_filter"))
            else v for k, v in _random_state(D0, 1).items()}
    g_kwargs = {"z_dim": 12, "c_dim": 0, "w_dim": 10, "img_resolution": res, "img_channels": channels,
                    "mapping_kwargs": {"num_layers": mapping_layers, "lr_multiplier": 0.01, "w_avg_beta": 0.995},
                    "synthesis_kwargs": {"channel_base": 128, "channel_max": 16, "num_fp16_res": 2, "conv_clamp": clamp,
                                          "architecture": "skip", "resample_filter": taps, "use_noise": use_noise}}
    d_kwargs = {"c_dim": 0, "img_resolution": res, "img_channels": channels, "architecture": "resnet",
                "channel_base": 128, "channel_max": 16, "num_fp16_res": 2, "conv_clamp": clamp,
                "block_kwargs": {"resample_filter": taps},
                "epilogue_kwargs": {"mbstd_group_size": 2, "mbstd_num_channels": 2}}
    write_nvidia_pickle(tmp_path / "net.pkl", {"G_ema": ("Generator", g_kwargs, g_sd, nv_buffers(g_sd)),
                                               "D": ("Discriminator", d_kwargs, d_sd, nv_buffers(d_sd))})
    gan = load_gan(tmp_path / "net.pkl", with_discriminator=True)
    G, D = gan.generator, gan.discriminator
    for batch in (1, 3):
        z = torch.randn(batch, 12, generator=torch.Generator().manual_seed(batch))
        for psi, cutoff in ((1, None), (0.6, None), (-0.4, 3)):
            ws = nv.mapping(g_sd, g_kwargs, z, num_ws=G.num_ws, truncation_psi=psi, truncation_cutoff=cutoff)
            with torch.no_grad():
                torch.testing.assert_close(G.mapping(z, truncation_psi=psi, truncation_cutoff=cutoff), ws)
            for noise_mode in ("const", "none"):
                ref = nv.synthesis(g_sd, g_kwargs, ws, noise_mode=noise_mode)
                torch.testing.assert_close(nv.synthesis(g_sd, g_kwargs, ws, noise_mode=noise_mode, fused=False), ref,
                                           rtol=0, atol=1e-5)
                for grad in (False, True):
                    with torch.set_grad_enabled(grad):
                        img = G.synthesis(ws, noise_mode=noise_mode)
                    torch.testing.assert_close(img, ref, rtol=0, atol=1e-5 * max(1.0, ref.abs().max().item()))
    if clamp is not None:  # (the clamp cuts)
        free = dict(g_kwargs, synthesis_kwargs=dict(g_kwargs["synthesis_kwargs"], conv_clamp=None))
        assert not torch.allclose(nv.synthesis(g_sd, free, ws), ref)
    img = torch.randn(4, channels, res, res, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(D(img), nv.discriminator(d_sd, d_kwargs, img), rtol=0, atol=1e-5)


def test_random_noise_is_drawn_as_nvidia_s_in_layer_order(tmp_path):
    import nvidia_reference as nv

    G0 = Generator(GeneratorConfig(resolution=32, z_dim=12, w_dim=10, mapping_layers=2, channel_base=128,
                                   channel_max=16))
    sd = _random_state(G0, 3)
    kwargs = {"z_dim": 12, "c_dim": 0, "w_dim": 10, "img_resolution": 32, "img_channels": 3,
                  "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 128, "channel_max": 16}}
    write_nvidia_pickle(tmp_path / "net.pkl", {"G_ema": ("Generator", kwargs, sd, nv_buffers(sd))})
    G = load_gan(tmp_path / "net.pkl").generator
    for batch in (1, 2):
        ws = torch.randn(batch, G.num_ws, 10)
        torch.manual_seed(5)
        noises = [torch.randn(batch, 1, r, r) for r in (4, 8, 8, 16, 16, 32, 32)]  # NVIDIA: one draw per layer
        torch.manual_seed(5)
        with torch.no_grad():
            img = G.synthesis(ws, noise_mode="random")
        torch.testing.assert_close(img, nv.synthesis(sd, kwargs, ws, noise_mode="random", noises=noises), rtol=0,
                                   atol=1e-5)


def test_generate_s_seeds_are_nvidia_generate_py_s_images(tmp_path):
    # `generate --seeds` drew z with torch.randn, so a pickle gave other samples than NVIDIA's generate.py. Now its
    # files are generate.py's images: z = RandomState(seed).randn(1, z_dim), G(z, noise_mode="const"), then
    # (img * 127.5 + 128).clamp(0, 255) to uint8; ours round where it truncates, the same but at exact ties.
    import numpy as np
    from PIL import Image

    import nvidia_reference as nv
    from hyperinverter.cli.main import main
    from hyperinverter.generate import sample_path

    sd = _random_state(Generator(GeneratorConfig(resolution=16, z_dim=12, w_dim=10, mapping_layers=2,
                                                 channel_base=128, channel_max=16)), 4)
    kwargs = {"z_dim": 12, "c_dim": 0, "w_dim": 10, "img_resolution": 16, "img_channels": 3,
              "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 128, "channel_max": 16}}
    write_nvidia_pickle(tmp_path / "net.pkl", {"G_ema": ("Generator", kwargs, sd, nv_buffers(sd))})
    assert main(["generate", "--model", str(tmp_path / "net.pkl"), "--seeds", "0-2", "--outdir",
                 str(tmp_path / "out")]) == 0
    num_ws = load_gan(tmp_path / "net.pkl").generator.num_ws
    for seed in range(3):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, 12)).float()  # (NVIDIA's mapping casts z so)
        img = nv.synthesis(sd, kwargs, nv.mapping(sd, kwargs, z, num_ws=num_ws), noise_mode="const")
        expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy().astype(int)
        ours = np.asarray(Image.open(sample_path(tmp_path / "out", seed)), dtype=int)
        assert np.abs(ours - expected).max() <= 1 and (ours != expected).mean() < 0.01, seed
