"""Released-checkpoint layouts (HyperInverter .pt + NVIDIA pickle, pSp W encoder) load strictly and exactly."""

import pytest
import torch

from hyperinverter.cli.main import main
from hyperinverter.convert.official import load_official_hyperinverter, load_psp_w_encoder
from hyperinverter.errors import CheckpointError
from hyperinverter.models.encoders import (
    FeatureEncoder,
    FeatureEncoderConfig,
    TrunkConfig,
    WEncoder,
    WEncoderConfig,
)
from hyperinverter.models.hypernetwork import HyperNetwork
from hyperinverter.pipeline import InversionPipeline
from nvidia_pickle_writer import write_nvidia_pickle

TRUNK = dict(units=(1, 2, 1, 1), widths=(8, 16, 32, 64))


def official_checkpoint(G, backbone="ir_se", targets="conv_without_bias", seed=0):
    """A state dict in the released layout, with tiny shapes: w_encoder., w_bar_encoder., hypernet., discriminator."""
    torch.manual_seed(seed)
    e1 = WEncoder(WEncoderConfig(trunk=TrunkConfig(backbone, **TRUNK), w_dim=G.w_dim))
    e2 = FeatureEncoder(FeatureEncoderConfig(trunk=TrunkConfig(backbone, **TRUNK), input_size=64, n_styles=G.num_ws, feature_channels=64,
                          feature_size=2))
    h = HyperNetwork.from_generator(G, targets=targets, feature_channels=64, feature_size=2, hidden_dim=8,
                                    inner_channels=8)
    sd = {**{f"w_encoder.{k}": v for k, v in e1.state_dict().items()},
          **{f"w_bar_encoder.{k}": v for k, v in e2.state_dict().items()},
          **{f"hypernet.{k}": v for k, v in h.state_dict().items()},
          "discriminator.b4.out.weight": torch.zeros(1, 16)}
    opts = {"dataset_type": "ffhq_encode", "encoder_type": "FeatureEncoder", "output_size": G.resolution,
            "target_shape_name": targets, "hidden_dim": 8, "batch_size": 8}
    return {"state_dict": sd, "opts": opts}, (e1, e2, h)


def nv_pickle(path, G):
    c = G.config
    kwargs = dict(z_dim=c.z_dim, c_dim=0, w_dim=c.w_dim, img_resolution=c.resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=c.mapping_layers),
                  synthesis_kwargs=dict(channel_base=c.channel_base, channel_max=c.channel_max, architecture="skip"))
    buffers = {n for n, _ in G.named_buffers()}
    write_nvidia_pickle(path, {"G_ema": ("Generator", kwargs, G.state_dict(), buffers)})


@pytest.mark.parametrize("backbone,targets", [("ir_se", "conv_without_bias"), ("resnet", "all_without_bias")])
def test_released_layout_round_trip_is_exact(tmp_path, tiny_generator, backbone, targets):
    ckpt, (e1, e2, h) = official_checkpoint(tiny_generator, backbone, targets)
    torch.save(ckpt, tmp_path / "hyper_inverter.pt")
    nv_pickle(tmp_path / "G.pkl", tiny_generator)
    model = load_official_hyperinverter(tmp_path / "hyper_inverter.pt", tmp_path / "G.pkl", encoder_resolution=64)
    for ours, theirs in ((model.w_encoder, e1), (model.feature_encoder, e2), (model.hypernetwork, h)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model.hypernetwork.target_names == h.target_names
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.isfinite(model(x).image).all()
    # and through the CLI into a pipeline folder
    assert main(["import-official", str(tmp_path / "hyper_inverter.pt"), "--generator", str(tmp_path / "G.pkl"),
                 "--out", str(tmp_path / "pipe")]) == 0
    imported = InversionPipeline.from_pretrained(tmp_path / "pipe", device="cpu")
    # The input size is read from the checkpoint: the feature encoder's maps fit the hypernetworks.
    assert imported.inverter("hyperinverter").encoder_resolution == 64
    fresh = load_official_hyperinverter(tmp_path / "hyper_inverter.pt", tmp_path / "G.pkl").eval()
    assert torch.allclose(imported.invert(x).image, fresh.invert(x).image, atol=1e-5)


def import_release_command(tmp_path, tiny_generator) -> list[str]:
    """``import-official`` of a HyperInverter release and its NVIDIA pickle, both written in ``tmp_path``, into
    ``tmp_path / "pipe"``."""
    ckpt, _ = official_checkpoint(tiny_generator)
    torch.save(ckpt, tmp_path / "hyper_inverter.pt")
    nv_pickle(tmp_path / "G.pkl", tiny_generator)
    return ["import-official", str(tmp_path / "hyper_inverter.pt"), "--generator", str(tmp_path / "G.pkl"),
            "--out", str(tmp_path / "pipe")]


def test_a_release_added_again_to_its_bundle_is_the_bundle_s_own(tmp_path, tiny_generator, capsys):
    # The bundle's parts lie in other memory layouts than a file's fresh copy of them: the same release, added to
    # the bundle it was imported into, was said to hold "other weights than the bundle's" and left out.
    argv = import_release_command(tmp_path, tiny_generator)
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--add"]) == 0
    out, err = capsys.readouterr()
    assert "other weights" not in err and "kept the bundle's phase1, hyperinverter" in out, err


def test_options_for_other_kinds_of_release_are_refused(tmp_path, tiny_generator, capsys):
    # --w-encoder (HyperStyle's) with another kind of release was ignored without a word, as --task was not.
    base = import_release_command(tmp_path, tiny_generator)
    for extra, cause in ((["--w-encoder", str(tmp_path / "hyper_inverter.pt")], "is not a HyperStyle checkpoint"),
                         (["--task", "sr4"], "is not an E2Style checkpoint")):
        assert main([*base, *extra]) == 2
        assert f"hyper_inverter.pt: {cause}" in capsys.readouterr().err
    assert not (tmp_path / "pipe").exists()


def test_released_layout_errors_name_keys(tmp_path, tiny_generator):
    ckpt, _ = official_checkpoint(tiny_generator)
    nv_pickle(tmp_path / "G.pkl", tiny_generator)
    broken = dict(ckpt["state_dict"])
    broken.pop("hypernet.weight_regressors.b16_conv1_weight.b2")
    torch.save({"state_dict": broken, "opts": ckpt["opts"]}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="b16_conv1_weight.b2"):
        load_official_hyperinverter(tmp_path / "a.pt", tmp_path / "G.pkl", encoder_resolution=64)
    stray = dict(ckpt["state_dict"], **{"latent_avg_extra": torch.zeros(1)})
    torch.save({"state_dict": stray, "opts": ckpt["opts"]}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="latent_avg_extra"):
        load_official_hyperinverter(tmp_path / "b.pt", tmp_path / "G.pkl", encoder_resolution=64)
    wrong = dict(ckpt["opts"], output_size=1024)
    torch.save({"state_dict": ckpt["state_dict"], "opts": wrong}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="1024px"):
        load_official_hyperinverter(tmp_path / "c.pt", tmp_path / "G.pkl", encoder_resolution=64)
    # A 'state_dict' that holds no tensors: the errors named neither the file nor what was wrong with it.
    for name, sd, cause in (("d.pt", dict(ckpt["state_dict"], extra="text"),
                             "not a state dict: non-tensor entries \\['extra'\\]"),
                            ("e.pt", None, "its 'state_dict' is a NoneType, not a mapping of tensors")):
        torch.save({"state_dict": sd, "opts": ckpt["opts"]}, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"{name}: {cause}"):
            load_official_hyperinverter(tmp_path / name, tmp_path / "G.pkl", encoder_resolution=64)


def test_psp_w_encoder_checkpoint(tmp_path, tiny_generator):
    from conftest import build_tiny_generator
    from hyperinverter.convert.rosinality import from_nvidia

    torch.manual_seed(1)
    e1 = WEncoder(WEncoderConfig(trunk=TrunkConfig(**TRUNK), w_dim=16))
    decoder = from_nvidia(tiny_generator.state_dict(), tiny_generator.config)
    decoder.pop("latent_avg")
    sd = {**{f"encoder.{k}": v for k, v in e1.state_dict().items()}, **{f"decoder.{k}": v for k, v in decoder.items()}}
    torch.save({"state_dict": sd, "opts": {"learn_in_w": True}, "latent_avg": torch.zeros(16)}, tmp_path / "w.pt")
    model = load_psp_w_encoder(tmp_path / "w.pt", tiny_generator, encoder_resolution=64)
    assert model.name == "phase1"
    ours = model.w_encoder.state_dict()  # (and the file's latent_avg, which its codes start from)
    assert all(torch.equal(ours[k], v) for k, v in e1.state_dict().items())
    # A generator given beside the file's own decoder must be that generator: its encoder was trained for it.
    other = build_tiny_generator(seed=7)
    assert other.config == tiny_generator.config
    with pytest.raises(CheckpointError, match=r"w.pt: was trained with another generator than the generator given "
                                              r"\(.* differs by .*\); give the generator it was trained with"):
        load_psp_w_encoder(tmp_path / "w.pt", other, encoder_resolution=64)


@pytest.mark.parametrize("from_average", [True, False])
def test_psp_w_encoder_runs_as_the_official_forward(tmp_path, tiny_generator, from_average):
    # The official forward: the photo reduced as PIL's Resize (antialiased), then the codes plus the file's
    # latent_avg where start_from_latent_avg. It read without antialiasing and added the generator's w_avg.
    import torch.nn.functional as F

    from hyperinverter.convert.rosinality import from_nvidia

    torch.manual_seed(1)
    e1 = WEncoder(WEncoderConfig(trunk=TrunkConfig(**TRUNK), w_dim=16)).eval()
    decoder = from_nvidia(tiny_generator.state_dict(), tiny_generator.config)
    decoder.pop("latent_avg")
    sd = {**{f"encoder.{k}": v for k, v in e1.state_dict().items()}, **{f"decoder.{k}": v for k, v in decoder.items()}}
    average = torch.randn(16)  # not the generator's w_avg
    opts = {"encoder_type": "BackboneEncoderUsingLastLayerIntoW", "learn_in_w": True,
            "start_from_latent_avg": from_average}
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": average[None]}, tmp_path / "w.pt")
    model = load_psp_w_encoder(tmp_path / "w.pt", tiny_generator, encoder_resolution=16).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = e1(F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True))
        expected = codes + average if from_average else codes
        torch.testing.assert_close(model.encode_w(x), expected[:, None].expand(-1, tiny_generator.num_ws, -1),
                                   rtol=1e-5, atol=1e-5)
