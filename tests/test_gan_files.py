"""Generator/discriminator files: our format, rosinality .pt, NVIDIA .pkl, conversion, strictness, safety."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from hyperinverter.cli.main import main
from hyperinverter.convert.gan_files import load_gan, save_rosinality
from hyperinverter.errors import CheckpointError
from hyperinverter.io import images
from hyperinverter.io.gan import save_gan
from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig
from nvidia_pickle_writer import write_nvidia_pickle


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def tiny_discriminator():
    torch.manual_seed(1)
    return Discriminator(DiscriminatorConfig(resolution=32, channel_base=256, channel_max=16)).eval()


def nv_generator_kwargs(G):
    c = G.config
    return dict(z_dim=c.z_dim, c_dim=0, w_dim=c.w_dim, img_resolution=c.resolution, img_channels=c.img_channels,
                mapping_kwargs=dict(num_layers=c.mapping_layers, lr_multiplier=0.01, w_avg_beta=0.995),
                channel_base=c.channel_base, channel_max=c.channel_max, num_fp16_res=0, conv_clamp=None,
                architecture="skip")


def nv_discriminator_kwargs(D):
    c = D.config
    return dict(c_dim=0, img_resolution=c.resolution, img_channels=c.img_channels, architecture="resnet",
                channel_base=c.channel_base, channel_max=c.channel_max, num_fp16_res=0, conv_clamp=None,
                cmap_dim=None, block_kwargs={}, mapping_kwargs={},
                epilogue_kwargs=dict(mbstd_group_size=4, mbstd_num_channels=1))


def buffers(module):
    return {name for name, _ in module.named_buffers()}


def write_nv(path, G, D=None, state_dict=None):
    nets = {"G_ema": ("Generator", nv_generator_kwargs(G), state_dict or G.state_dict(), buffers(G)),
            "G": ("Generator", nv_generator_kwargs(G), G.state_dict(), buffers(G))}
    if D is not None:
        nets["D"] = ("Discriminator", nv_discriminator_kwargs(D), D.state_dict(), buffers(D))
    write_nvidia_pickle(path, nets)


def test_our_format_round_trip_is_exact(tmp_path, tiny_generator, tiny_discriminator):
    save_gan(tmp_path / "gan", tiny_generator, tiny_discriminator)
    gan = load_gan(tmp_path / "gan", with_discriminator=True)
    assert same_state(gan.generator, tiny_generator) and same_state(gan.discriminator, tiny_discriminator)
    # the lone safetensors file is self-describing
    assert same_state(load_gan(tmp_path / "gan" / "generator" / "model.safetensors").generator, tiny_generator)


def test_a_device_this_machine_lacks_is_named_before_the_file_is_read(tmp_path, tiny_generator, monkeypatch):
    # load_generator(path, device="cuda") on a machine without CUDA (README's example) failed inside torch with
    # "AssertionError: Torch not compiled with CUDA enabled", after the whole file was read.
    from hyperinverter.convert.gan_files import load_generator

    save_gan(tmp_path / "gan", tiny_generator)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
        load_generator(tmp_path / "nothing-here", device="cuda")
    assert next(load_generator(tmp_path / "gan", device="auto").parameters()).device.type == "cpu"


def test_fp16_storage_loads_as_float32(tmp_path, tiny_generator):
    save_gan(tmp_path / "g16", tiny_generator, dtype=torch.float16)
    G = load_gan(tmp_path / "g16").generator
    assert G.mapping.fc0.weight.dtype == torch.float32
    assert torch.allclose(G.mapping.fc0.weight, tiny_generator.mapping.fc0.weight, rtol=1e-3, atol=1e-3)


def test_rosinality_export_round_trip_is_exact(tmp_path, tiny_generator):
    save_rosinality(tmp_path / "g.pt", tiny_generator)
    ckpt = torch.load(tmp_path / "g.pt", weights_only=True)
    assert set(ckpt) == {"g_ema", "latent_avg", "hyperinverter"}  # the last marks files we may overwrite
    assert ckpt["g_ema"]["conv1.conv.weight"].shape == (1, 16, 16, 3, 3)
    assert torch.equal(ckpt["g_ema"]["convs.0.conv.blur.kernel"].sum(), torch.tensor(4.0))
    assert same_state(load_gan(tmp_path / "g.pt").generator, tiny_generator)


def test_a_rosinality_export_keeps_the_mapping_and_says_what_it_cannot_keep(tmp_path, caplog):
    # rosinality's EqualLinear applies lr_mlp 0.01 at run time: a generator at another mapping multiplier came back
    # from its export at 0.01, its codes changed; its conv_clamp, which rosinality's Generator lacks, went silently.
    import dataclasses

    from conftest import build_tiny_generator
    from hyperinverter.models.stylegan2 import Generator

    config = dataclasses.replace(build_tiny_generator().config, mapping_lr_multiplier=0.1, conv_clamp=256.0)
    torch.manual_seed(0)
    G = Generator(config).eval()
    with caplog.at_level("WARNING"):
        save_rosinality(tmp_path / "g.pt", G)
    assert "this generator's conv_clamp 256 is not kept" in caplog.text
    back = load_gan(tmp_path / "g.pt").generator
    z = torch.randn(4, G.z_dim)
    with torch.no_grad():
        torch.testing.assert_close(back.mapping(z), G.mapping(z))
        torch.testing.assert_close(back.synthesis(G.mapping(z), noise_mode="const"),
                                   G.synthesis(G.mapping(z), noise_mode="const"))  # (no activation reaches 256)


def test_nvidia_pickle_loads_generator_and_discriminator(tmp_path, tiny_generator, tiny_discriminator):
    write_nv(tmp_path / "net.pkl", tiny_generator, tiny_discriminator)
    gan = load_gan(tmp_path / "net.pkl", with_discriminator=True)
    assert gan.source_format == "nvidia"
    assert same_state(gan.generator, tiny_generator)
    assert same_state(gan.discriminator, tiny_discriminator)
    logits = gan.discriminator(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 1)


def test_the_discriminator_clamps_as_nvidia_s_and_says_when_its_groups_shrink(tiny_generator, tmp_path, caplog,
                                                                             monkeypatch):
    # NVIDIA's DiscriminatorBlock gives conv_clamp to fromrgb, conv0 and conv1, not to the skip: an ADA
    # discriminator (conv_clamp 256) had its skip cut at ±181. A batch that does not divide into minibatch groups
    # fails in NVIDIA's code; here it takes smaller groups, and says so. A discriminator of another activation was
    # read as lrelu.
    import logging

    D = Discriminator(DiscriminatorConfig(resolution=32, channel_base=256, channel_max=16, conv_clamp=0.3))
    block = D.b32
    assert block.skip.conv_clamp is None and block.conv0.conv_clamp == block.conv1.conv_clamp == 0.3
    with caplog.at_level(logging.WARNING), torch.no_grad():
        D(torch.randn(5, 3, 32, 32))
    assert "a batch of 5 does not divide into groups of 4; groups of 1 are used, whose deviation is constant" in \
        caplog.text
    kwargs = nv_discriminator_kwargs(D)
    kwargs["block_kwargs"] = {"activation": "relu"}
    monkeypatch.setitem(globals(), "nv_discriminator_kwargs", lambda _: kwargs)
    write_nv(tmp_path / "relu.pkl", tiny_generator, D)
    with pytest.raises(CheckpointError, match="only lrelu discriminators are supported"):
        load_gan(tmp_path / "relu.pkl", with_discriminator=True)


def test_an_unset_minibatch_group_is_the_whole_batch_as_nvidia_s(tmp_path, tiny_generator, tiny_discriminator,
                                                                  monkeypatch):
    # NVIDIA's converter writes mbstd_group_size None for TensorFlow pickles, which its MinibatchStdLayer reads as
    # the whole batch; it was read as 4.
    from hyperinverter.models.stylegan2.discriminator import minibatch_stddev

    kwargs = nv_discriminator_kwargs(tiny_discriminator)
    kwargs["epilogue_kwargs"] = {"mbstd_group_size": None, "mbstd_num_channels": 1}
    monkeypatch.setitem(globals(), "nv_discriminator_kwargs", lambda D: kwargs)
    write_nv(tmp_path / "net.pkl", tiny_generator, tiny_discriminator)
    D = load_gan(tmp_path / "net.pkl", with_discriminator=True).discriminator
    assert D.config.mbstd_group_size is None
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = torch.randn(8, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(minibatch_stddev(features, None), minibatch_stddev(features, 8))
    assert not torch.equal(minibatch_stddev(features, None), minibatch_stddev(features, 4))
    as_four = load_gan(tmp_path / "net.pkl", with_discriminator=True).discriminator
    as_four.b4.mbstd_group_size = 4
    with torch.no_grad():
        assert not torch.allclose(D(x), as_four(x))
    with pytest.raises(ValueError, match="mbstd_group_size must be >= 1 or null"):
        DiscriminatorConfig(resolution=32, mbstd_group_size=0)


def test_an_unrecorded_conv_clamp_is_the_default_of_the_repo_that_wrote_the_pickle(tmp_path, tiny_generator,
                                                                                     tiny_discriminator):
    # The stylegan3 repo's networks_stylegan2.py (its Generator takes synthesis arguments flat) clamps at 256 by
    # default in SynthesisBlock and Discriminator, and its train.py records conv_clamp only with --fp32; its
    # StyleGAN2 pickles were read unclamped. stylegan2-ada-pytorch's (synthesis_kwargs) default to None.
    sd = dict(tiny_generator.state_dict(), **{"synthesis.b4.const": tiny_generator.synthesis.b4.const * 1e4})
    synthesis = ("channel_base", "channel_max", "num_fp16_res", "architecture")
    flat = {k: v for k, v in nv_generator_kwargs(tiny_generator).items() if k != "conv_clamp"}
    flat["mapping_kwargs"] = {"num_layers": tiny_generator.config.mapping_layers}
    nested = {k: v for k, v in flat.items() if k not in synthesis}
    nested["synthesis_kwargs"] = {k: flat[k] for k in synthesis}
    d_kwargs = {k: v for k, v in nv_discriminator_kwargs(tiny_discriminator).items() if k != "conv_clamp"}
    for name, g_kwargs, clamp in (("sg3.pkl", flat, 256.0), ("ada.pkl", nested, None)):
        write_nvidia_pickle(tmp_path / name, {
            "G_ema": ("Generator", g_kwargs, sd, buffers(tiny_generator)),
            "D": ("Discriminator", d_kwargs, tiny_discriminator.state_dict(), buffers(tiny_discriminator))})
        gan = load_gan(tmp_path / name, with_discriminator=True)
        assert gan.generator.config.conv_clamp == gan.discriminator.config.conv_clamp == clamp, name
    G = load_gan(tmp_path / "sg3.pkl").generator
    unclamped = load_gan(tmp_path / "ada.pkl").generator
    assert G.config.w_avg_beta == 0.998 and unclamped.config.w_avg_beta == 0.995  # (the repos' MappingNetwork)
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = unclamped.synthesis.b4.conv1(unclamped.synthesis.b4.const[None].expand(2, -1, -1, -1), ws[:, 0])
        assert x.abs().max() > 256  # (the bound matters)
        assert not torch.allclose(G.synthesis(ws), unclamped.synthesis(ws))


def test_an_unconditional_pickle_s_embed_features_is_ignored_as_nvidia_ignores_it(tmp_path, tiny_generator):
    # NVIDIA's MappingNetwork sizes its class embedding by embed_features, and has none when c_dim is 0; such a
    # pickle was refused as "custom mapping feature widths".
    kwargs = nv_generator_kwargs(tiny_generator)
    kwargs["mapping_kwargs"] = {"num_layers": tiny_generator.config.mapping_layers, "embed_features": 64}
    write_nvidia_pickle(tmp_path / "g.pkl", {"G_ema": ("Generator", kwargs, tiny_generator.state_dict(),
                                                       buffers(tiny_generator))})
    assert same_state(load_gan(tmp_path / "g.pkl").generator, tiny_generator)


def test_a_pickle_of_another_resample_filter_holds_nvidia_s_default_in_its_layers_that_do_not_resample(tmp_path):
    # NVIDIA builds a generator's conv1 and a discriminator's fromrgb, conv0 and epilogue conv with its default
    # filter [1,3,3,1], whatever the network's (they never resample); a pickle of a [1,2,1] network was refused
    # ("mis-shaped keys ... file (4, 4) vs model (3, 3)").
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
    from hyperinverter.ops.filters import setup_filter

    torch.manual_seed(0)
    taps = (1, 2, 1)
    G = Generator(GeneratorConfig(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64, channel_max=8,
                                  resample_filter=taps)).eval()
    D = Discriminator(DiscriminatorConfig(resolution=16, channel_base=64, channel_max=8, resample_filter=taps)).eval()
    default = setup_filter((1, 3, 3, 1))
    g_sd = {k: default if k.endswith("conv1.resample_filter") else v for k, v in G.state_dict().items()}
    d_sd = {k: default if k.endswith(("fromrgb.resample_filter", "conv0.resample_filter", "b4.conv.resample_filter"))
            else v for k, v in D.state_dict().items()}
    g_kwargs = dict(nv_generator_kwargs(G), resample_filter=list(taps))
    d_kwargs = dict(nv_discriminator_kwargs(D), block_kwargs={"resample_filter": list(taps)})
    write_nvidia_pickle(tmp_path / "f.pkl", {"G_ema": ("Generator", g_kwargs, g_sd, buffers(G)),
                                             "D": ("Discriminator", d_kwargs, d_sd, buffers(D))})
    gan = load_gan(tmp_path / "f.pkl", with_discriminator=True)
    assert gan.generator.config.resample_filter == gan.discriminator.config.resample_filter == (1, 2, 1)
    ws, img = torch.randn(2, G.num_ws, 8), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(gan.generator.synthesis(ws), G.synthesis(ws))  # (the loaded weights' layout)
        torch.testing.assert_close(gan.discriminator(img), D(img))


def test_a_filter_of_eight_taps_nvidia_keeps_separable_loads(tmp_path):
    # NVIDIA's setup_filter keeps a filter of 8 taps or more 1-D (sum 1), and filters along each axis in turn: the
    # same as its outer product. Such a pickle was refused ("file (8,) vs model (8, 8)").
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    torch.manual_seed(0)
    taps = (1, 7, 21, 35, 35, 21, 7, 1)
    G = Generator(GeneratorConfig(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64, channel_max=8,
                                  resample_filter=taps)).eval()
    default = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    separable = torch.tensor(taps) / sum(taps)
    sd = {k: (default if k.endswith("conv1.resample_filter") else separable) if k.endswith("resample_filter") else v
          for k, v in G.state_dict().items()}
    kwargs = dict(nv_generator_kwargs(G), resample_filter=list(taps))
    write_nvidia_pickle(tmp_path / "f8.pkl", {"G_ema": ("Generator", kwargs, sd, buffers(G))})
    loaded = load_gan(tmp_path / "f8.pkl").generator
    ws = torch.randn(2, G.num_ws, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.synthesis(ws), G.synthesis(ws))


def test_discriminator_has_nvidia_key_names(tiny_discriminator):
    keys = set(tiny_discriminator.state_dict())
    for k in ["b32.fromrgb.weight", "b32.fromrgb.bias", "b32.conv0.weight", "b32.conv1.weight", "b32.skip.weight",
              "b32.resample_filter", "b8.conv1.resample_filter", "b4.conv.weight", "b4.fc.weight", "b4.out.weight",
              "b4.out.bias"]:
        assert k in keys, k
    assert "b16.fromrgb.weight" not in keys and "b8.skip.bias" not in keys
    assert tiny_discriminator.state_dict()["b4.conv.weight"].shape == (16, 17, 3, 3)  # + mbstd channel


def test_rosinality_missing_unexpected_and_misshaped_keys_are_named(tmp_path, tiny_generator):
    save_rosinality(tmp_path / "g.pt", tiny_generator)
    ckpt = torch.load(tmp_path / "g.pt", weights_only=True)
    broken = dict(ckpt["g_ema"])
    del broken["convs.1.conv.modulation.bias"]
    broken["convs.99.conv.weight"] = torch.zeros(1)
    torch.save({"g_ema": broken, "latent_avg": ckpt["latent_avg"]}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"convs\.1\.conv\.modulation\.bias") as e:
        load_gan(tmp_path / "broken.pt")
    assert "convs.99.conv.weight" in str(e.value)

    # Mis-shaped tensors are named as the file names them; a ToRGB bias [3] (as many values as [1, 3, 1, 1]) was taken.
    misshaped = dict(ckpt["g_ema"])
    misshaped["convs.2.activate.bias"] = torch.zeros(7)
    misshaped["to_rgbs.0.bias"] = torch.zeros(3)
    torch.save({"g_ema": misshaped, "latent_avg": ckpt["latent_avg"]}, tmp_path / "misshaped.pt")
    with pytest.raises(CheckpointError, match=r"convs\.2\.activate\.bias: file \(7,\)") as e:
        load_gan(tmp_path / "misshaped.pt")
    assert "to_rgbs.0.bias: file (3,) vs model (1, 3, 1, 1)" in str(e.value) and "misshaped.pt" in str(e.value)


def test_rosinality_without_optional_buffers(tmp_path, tiny_generator):
    save_rosinality(tmp_path / "g.pt", tiny_generator)
    ckpt = torch.load(tmp_path / "g.pt", weights_only=True)
    g_ema = {k: v for k, v in ckpt["g_ema"].items() if not k.endswith("kernel") and not k.startswith("noises.")}
    torch.save({"g_ema": g_ema}, tmp_path / "old.pt")
    G = load_gan(tmp_path / "old.pt").generator
    assert torch.equal(G.synthesis.b8.conv0.resample_filter, tiny_generator.synthesis.b8.conv0.resample_filter)
    expected_w_avg = tiny_generator.compute_w_avg()
    assert torch.allclose(G.w_avg, expected_w_avg)


def test_our_format_mismatch_names_keys(tmp_path, tiny_generator):
    from safetensors.torch import load_file, save_file

    save_gan(tmp_path / "g", tiny_generator)
    sd = load_file(tmp_path / "g" / "model.safetensors")
    sd.pop("synthesis.b8.torgb.bias")
    sd["synthesis.b8.extra"] = torch.zeros(1)
    save_file(sd, tmp_path / "g" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"synthesis\.b8\.torgb\.bias.*synthesis\.b8\.extra"):
        load_gan(tmp_path / "g")


def test_nvidia_mismatch_names_keys(tmp_path, tiny_generator):
    sd = dict(tiny_generator.state_dict())
    sd.pop("mapping.fc1.bias")
    write_nv(tmp_path / "bad.pkl", tiny_generator, state_dict=sd)
    with pytest.raises(CheckpointError, match=r"mapping\.fc1\.bias"):
        load_gan(tmp_path / "bad.pkl")


@pytest.mark.parametrize("kwargs, cause", [
    ([1, 2], "G_ema's constructor arguments are a list, not a dict"),  # (internal errors: an AttributeError,
    ({"img_resolution": float("inf")}, "cannot convert float infinity"),  # an OverflowError)
])
def test_nvidia_constructor_arguments_of_the_wrong_kind_are_named(tmp_path, tiny_generator, kwargs, cause):
    if isinstance(kwargs, dict):
        kwargs = {**nv_generator_kwargs(tiny_generator), **kwargs}
    write_nvidia_pickle(tmp_path / "odd.pkl", {"G_ema": ("Generator", kwargs, tiny_generator.state_dict(),
                                                         buffers(tiny_generator))})
    with pytest.raises(CheckpointError, match=f"odd.pkl: .*{cause}"):
        load_gan(tmp_path / "odd.pkl")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"G_ema": _Payload(marker)}, f)
    with pytest.raises(ValueError, match="system"):
        load_gan(tmp_path / "evil.pkl")
    assert not marker.exists()
    torch.save({"g_ema": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_gan(tmp_path / "evil.pt")
    assert not marker.exists()


def test_corrupt_and_unknown_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_gan(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'g_ema'"):
        load_gan(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_gan(tmp_path / "missing.pt")
    # a zip archive whose central directory is damaged (an internal error: BadZipFile while telling the format)
    raw = bytearray((tmp_path / "other.pt").read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    directory = int.from_bytes(raw[end + 16 : end + 20], "little")
    raw[directory : directory + 4] = b"XXXX"
    (tmp_path / "damaged.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged.pt: is a damaged zip archive"):
        load_gan(tmp_path / "damaged.pt")
    # a damaged record that torch quotes in its message: the line stays short (it held the record's 1 MB)
    with zipfile.ZipFile(tmp_path / "other.pt") as src, zipfile.ZipFile(tmp_path / "odd.pt", "w") as dst:
        for info in src.infolist():
            data = b"little" + bytes(1 << 20) if info.filename.endswith("/byteorder") else src.read(info)
            dst.writestr(zipfile.ZipInfo(info.filename), data)
    with pytest.raises(CheckpointError, match="odd.pt: is not a readable torch checkpoint") as caught:
        load_gan(tmp_path / "odd.pt")
    assert len(str(caught.value)) < 500
    # a zip bomb's record (torch.save stores records uncompressed) is named once, as it is
    with zipfile.ZipFile(tmp_path / "other.pt") as src, zipfile.ZipFile(tmp_path / "bomb.pt", "w") as dst:
        for info in src.infolist():
            padding = bytes(8 << 20) if info.filename.endswith("/data/0") else b""
            dst.writestr(zipfile.ZipInfo(info.filename), src.read(info) + padding, zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match=r"^\S*bomb.pt: its records declare [0-9,]+ bytes, far more than"):
        load_gan(tmp_path / "bomb.pt")


def test_cli_convert_and_generate(tmp_path, tiny_generator, capsys, caplog):
    write_nv(tmp_path / "net.pkl", tiny_generator)
    assert main(["convert", str(tmp_path / "net.pkl"), str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "rosi.pt")]) == 0
    assert same_state(load_gan(tmp_path / "rosi.pt").generator, tiny_generator)
    with caplog.at_level("WARNING"):  # ("discriminators are read from NVIDIA pickles ...": none was asked for)
        assert main(["convert", str(tmp_path / "rosi.pt"), str(tmp_path / "back")]) == 0
    assert "discriminator" not in caplog.text and same_state(load_gan(tmp_path / "back").generator, tiny_generator)
    assert main(["generate", "--model", str(tmp_path / "rosi.pt"), "--seeds", "0-5", "--out",
                 str(tmp_path / "grid.png"), "--device", "cpu"]) == 0
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 34 + 2, 2 * 34 + 2)
    assert main(["generate", "--model", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "x.png")]) == 2
    assert f"error: {tmp_path / 'nothing.pt'}: no such model file or folder" in capsys.readouterr().err


def test_generate_one_file_per_seed_resumes(tmp_path, tiny_generator, capsys, monkeypatch):
    # A grid of 100,000 seeds could not be drawn; one file per seed, a batch in memory at a time, can.
    from hyperinverter.generate import generate_images
    from hyperinverter.io.images import tensor_to_uint8

    save_gan(tmp_path / "g", tiny_generator)

    def generate(*extra: str) -> str:
        capsys.readouterr()
        assert main(["generate", "--model", str(tmp_path / "g"), "--outdir", str(tmp_path / "samples"),
                     "--batch-size", "2", "--device", "cpu", *extra]) == 0
        return capsys.readouterr().out

    assert "wrote 3 samples (32x32)" in generate("--seeds", "4-6")
    samples = tmp_path / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["seed0004.png", "seed0005.png", "seed0006.png"]
    expected = tensor_to_uint8(generate_images(tiny_generator, [5]))[0]
    assert np.array_equal(np.asarray(Image.open(samples / "seed0005.png")), expected)  # the same sample as a grid's
    again = generate("--seeds", "3-7")
    assert "wrote 2 samples (32x32) into" in again and "; 3 already there" in again
    assert "wrote 5 samples" in generate("--seeds", "3-7", "--trunc", "0.7")  # other settings: other samples
    (samples / "seed0004.png").unlink()  # a missing sample is made again
    assert "wrote 1 samples" in generate("--seeds", "3-7", "--trunc", "0.7")
    assert "wrote 5 samples" in generate("--seeds", "3-7", "--trunc", "0.7", "--overwrite")
    # --overwrite without --outdir was ignored without a word (a grid is always written again).
    assert main(["generate", "--model", str(tmp_path / "g"), "--seeds", "0", "--overwrite", "--out",
                 str(tmp_path / "o.png")]) == 2
    assert "error: --overwrite: applies only with --outdir" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
    monkeypatch.setattr(images, "MAX_PICTURE_SIDE", 100)  # (a real refusal takes 256 samples of 1024 px)
    code = main(["generate", "--model", str(tmp_path / "g"), "--seeds", "0-15", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and "16 samples of 32 px make a grid 138 px wide (at most 100); write one file per seed" in err
    assert not (tmp_path / "g.png").exists()


def test_generate_redoes_the_samples_of_seeds_drawn_before(tmp_path, tiny_generator, capsys):
    # Seeds were drawn with torch before they were drawn as NVIDIA's generate.py draws them: a folder of such samples
    # resumed with them kept as done, other latents than the new ones beside them.
    from hyperinverter.generate import generate_images
    from hyperinverter.inversion.files import generator_fingerprint
    from hyperinverter.io.images import image_bytes, tensor_to_uint8
    from hyperinverter.io.work import fingerprint_of

    save_gan(tmp_path / "g", tiny_generator)
    samples = tmp_path / "samples"
    samples.mkdir()
    with torch.no_grad():  # seed 5's file as the torch draw wrote it, with the record of what made it then
        old = tiny_generator(torch.randn(1, tiny_generator.z_dim, generator=torch.Generator().manual_seed(5)),
                             noise_mode="const")
    made = fingerprint_of([fingerprint_of([generator_fingerprint(tiny_generator), 1.0, "const"]), 5])
    (samples / "seed0005.png").write_bytes(image_bytes(old[0], made_with=made))
    assert main(["generate", "--model", str(tmp_path / "g"), "--outdir", str(samples), "--seeds", "5",
                 "--device", "cpu"]) == 0
    assert "wrote 1 samples" in capsys.readouterr().out
    expected = tensor_to_uint8(generate_images(tiny_generator, [5]))[0]
    assert np.array_equal(np.asarray(Image.open(samples / "seed0005.png")), expected)
