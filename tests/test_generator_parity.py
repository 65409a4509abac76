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
    kwargs = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=32, img_channels=3,
                  mapping_kwargs=dict(num_layers=8, lr_multiplier=0.01, w_avg_beta=0.995),
                  synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=0, conv_clamp=None,
                                        architecture="skip", resample_filter=[1, 3, 3, 1]))
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
