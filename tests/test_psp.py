"""pSp and e4e W+ encoders: rows from the right FPN levels, e4e's deltas and progressive stage, official key layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hyperinverter.models.encoders import StyleCodeEncoder, encoder_preset


def _encoder(mode: str, **overrides) -> StyleCodeEncoder:
    torch.manual_seed(0)
    encoder = encoder_preset("tiny", **overrides).build_style_code_encoder(mode).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong tap would show
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return encoder


def _reference_rows(encoder: StyleCodeEncoder, x: torch.Tensor) -> list[torch.Tensor]:
    """Every head on its level, written out plainly: c3 (rows < 3), p2 = up(c3) + lat1(c2) (rows < 7), else
    p1 = up(p2) + lat2(c1); bilinear with align_corners=True."""
    c1, c2, c3 = encoder.backbone.forward_taps(x)
    if encoder.c3_proj is not None:
        c3 = encoder.c3_proj(c3)

    def up(a, b):
        return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True) + b

    p2 = up(c3, encoder.latlayer1(c2))
    p1 = up(p2, encoder.latlayer2(c1))
    rows = []
    for i, head in enumerate(encoder.styles):
        level = c3 if i < 3 else p2 if i < 7 else p1
        rows.append(head.linear(head.convs(level).flatten(1)))
    return rows


@pytest.mark.parametrize("feature_channels", [16, 64])  # 64: no c3_proj, as the official widths
def test_psp_rows_come_from_their_levels(feature_channels):
    encoder = _encoder("psp", feature_channels=feature_channels, w_dim=feature_channels)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = encoder(x)
        reference = torch.stack(_reference_rows(encoder, x), dim=1)
    assert codes.shape == (2, 8, feature_channels)
    torch.testing.assert_close(codes, reference, rtol=1e-5, atol=1e-6)
    assert [encoder.level_of(i) for i in range(8)] == ["coarse"] * 3 + ["middle"] * 4 + ["fine"]


def test_e4e_is_one_w_plus_deltas_and_the_stage_masks_rows():
    encoder = _encoder("e4e")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        heads = _reference_rows(encoder, x)
        full = encoder(x)
        w0 = heads[0]
        torch.testing.assert_close(full[:, 0], w0)
        for i in range(1, 8):
            torch.testing.assert_close(full[:, i], w0 + heads[i], rtol=1e-5, atol=1e-6)
        for stage in (0, 1, 3):
            encoder.progressive_stage = stage
            codes = encoder(x)
            for i in range(8):
                expected = w0 + heads[i] if 1 <= i <= stage else w0
                torch.testing.assert_close(codes[:, i], expected, rtol=1e-5, atol=1e-6)
    assert encoder.active_deltas() == 3


def test_pixel_gradients_reach_only_active_heads():
    encoder = _encoder("e4e").train()
    encoder.progressive_stage = 2
    encoder(torch.rand(2, 3, 64, 64)).sum().backward()
    used = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()) for head in encoder.styles]
    assert used == [True, True, True, False, False, False, False, False]


def test_official_key_layout():
    """pSp's GradualStyleEncoder / e4e's Encoder4Editing at 1024 (18 rows): IR-SE50 trunk keys, latlayer1/2, and
    per row 4 (c3), 5 (p2) or 6 (p1) stride-2 convs then ``linear``; the same keys for both forwards."""
    preset = encoder_preset("ffhq")
    with torch.device("meta"):
        psp = StyleCodeEncoder(preset.style_code_encoder_config("psp"))
        e4e = StyleCodeEncoder(preset.style_code_encoder_config("e4e"))
    keys = set(psp.state_dict())
    assert keys == set(e4e.state_dict())
    assert {"input_layer.0.weight", "latlayer1.weight", "latlayer2.weight", "body.23.res_layer.0.weight"} <= keys
    assert not any(k.startswith("c3_proj") for k in keys)
    for i in range(18):
        convs = sorted(int(k.split(".")[3]) for k in keys if k.startswith(f"styles.{i}.convs.") and k.endswith("weight"))
        assert convs == list(range(0, 2 * (4 if i < 3 else 5 if i < 7 else 6), 2)), (i, convs)
        assert psp.state_dict()[f"styles.{i}.linear.weight"].shape == (512, 512)
    assert psp.state_dict()["latlayer1.weight"].shape == (512, 256, 1, 1)
    assert psp.state_dict()["latlayer2.weight"].shape == (512, 128, 1, 1)


def test_config_refuses_maps_that_do_not_end_at_one_pixel():
    config = encoder_preset("tiny").style_code_encoder_config("psp")
    with pytest.raises(ValueError, match="1x1"):
        dataclasses.replace(config, feature_size=2)
    with pytest.raises(ValueError, match="mode"):
        dataclasses.replace(config, mode="restyle")


def test_method_refuses_an_encoder_of_the_other_kind():
    from conftest import build_tiny_generator

    from hyperinverter.methods.psp import E4E, PSP

    G = build_tiny_generator()
    e4e = E4E.create(G)
    with pytest.raises(ValueError, match="e4e forward, the method is psp"):
        PSP(G, style_encoder=e4e.style_encoder)


def _released_file(path, method, *, encoder_type: str, latent_avg: torch.Tensor | None, **opts):
    """A pSp/e4e checkpoint in the released layout (encoder.*, the rosinality decoder.*, latent_avg [18, w], opts),
    from our weights."""
    from hyperinverter.convert.rosinality import from_nvidia

    G = method.generator
    decoder = from_nvidia(G.state_dict(), G.config)
    decoder.pop("latent_avg")
    encoder = {f"encoder.{k}": v.clone() for k, v in method.style_encoder.state_dict().items()}
    ckpt = {"state_dict": {**encoder, **{f"decoder.{k}": v for k, v in decoder.items()}},
            "opts": {"encoder_type": encoder_type, "output_size": G.resolution, **opts}}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg[None].repeat(G.num_ws, 1)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(("mode", "encoder_type"), [("psp", "GradualStyleEncoder"), ("e4e", "Encoder4Editing")])
def test_released_files_load_strictly_through_import_official(tiny_generator, tmp_path, mode, encoder_type):
    from hyperinverter.cli.main import main
    from hyperinverter.methods import get_method
    from hyperinverter.pipeline import InversionPipeline

    torch.manual_seed(1)
    method = get_method(mode).create(tiny_generator).eval()
    latent_avg = torch.randn(tiny_generator.w_dim)
    path = _released_file(tmp_path / f"{mode}_ffhq_encode.pt", method, encoder_type=encoder_type,
                          latent_avg=latent_avg, start_from_latent_avg=True)
    assert main(["import-official", str(path), "--out", str(tmp_path / "bundle")]) == 0  # no --generator: inside
    pipe = InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")
    assert set(pipe.methods) == {mode}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        offsets = method.style_encoder(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
        got = pipe.invert(x)
    torch.testing.assert_close(got.ws, offsets + latent_avg, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = tiny_generator.synthesis(offsets + latent_avg, noise_mode="const")
    torch.testing.assert_close(got.image, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("mode", "encoder_type"), [("psp", "GradualStyleEncoder"), ("e4e", "Encoder4Editing")])
def test_a_file_trained_without_latent_avg_gives_absolute_codes(tiny_generator, tmp_path, mode, encoder_type):
    # As the official forward: the average code is added only with start_from_latent_avg (an e4e file added it
    # whatever its opts said; one that does not say is taken to, as the released ones are trained).
    from hyperinverter.convert.official import load_psp_encoder
    from hyperinverter.methods import get_method

    method = get_method(mode).create(tiny_generator).eval()
    latent_avg = torch.randn(tiny_generator.w_dim)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        offsets = method.style_encoder(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
        for flag, expected in [(False, offsets), (True, offsets + latent_avg)]:
            path = _released_file(tmp_path / f"{flag}.pt", method, encoder_type=encoder_type,
                                  latent_avg=latent_avg if flag or mode == "e4e" else None, start_from_latent_avg=flag)
            torch.testing.assert_close(load_psp_encoder(path).encode(x), expected, rtol=1e-5, atol=1e-5)
        if mode == "e4e":
            path = _released_file(tmp_path / "unsaid.pt", method, encoder_type=encoder_type, latent_avg=latent_avg)
            torch.testing.assert_close(load_psp_encoder(path).encode(x), offsets + latent_avg, rtol=1e-5, atol=1e-5)


def test_released_file_problems_are_named(tiny_generator, tmp_path):
    from hyperinverter.convert.official import load_psp_encoder
    from hyperinverter.errors import CheckpointError
    from hyperinverter.methods.psp import E4E

    method = E4E.create(tiny_generator)
    path = _released_file(tmp_path / "bad.pt", method, encoder_type="ResidualEncoder", latent_avg=torch.zeros(16))
    with pytest.raises(CheckpointError, match="encoder_type"):
        load_psp_encoder(path)
    ckpt = torch.load(_released_file(tmp_path / "e4e.pt", method, encoder_type="Encoder4Editing",
                                     latent_avg=torch.zeros(16)), weights_only=True)
    del ckpt["state_dict"]["encoder.styles.3.linear.bias"]
    ckpt["state_dict"]["encoder.styles.3.extra"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "e4e-broken.pt")
    with pytest.raises(CheckpointError, match=r"styles\.3\.linear\.bias") as info:
        load_psp_encoder(tmp_path / "e4e-broken.pt")
    assert "styles.3.extra" in str(info.value)


@pytest.mark.parametrize(("latent_avg", "cause"), [
    (torch.zeros(0), r"must be a \[w_dim\] or \[num_ws, w_dim\] tensor of real numbers, got \(0,\)"),
    (torch.zeros(0, 16), r"must be .* of real numbers, got \(0, 16\)"),
    (torch.zeros(18, 16, dtype=torch.complex64), "must be .* of real numbers, got .* torch.complex64"),
    (torch.full((18, 16), float("nan")), "holds NaN or infinite values"),
], ids=["empty", "no-rows", "complex", "nan"])
def test_a_bad_latent_avg_is_named(tiny_generator, tmp_path, latent_avg, cause):
    # An empty one was a reshape or index error inside, a complex one lost its imaginary part with a warning, and
    # NaN rows were said to differ ("a W+ average").
    from hyperinverter.convert.official import import_official
    from hyperinverter.errors import CheckpointError
    from hyperinverter.methods.psp import E4E

    path = _released_file(tmp_path / "e4e.pt", E4E.create(tiny_generator), encoder_type="Encoder4Editing",
                          latent_avg=None)
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "latent_avg": latent_avg}, path)
    with pytest.raises(CheckpointError, match=f"e4e.pt: its 'latent_avg' {cause}"):
        import_official(path)


def test_released_cars_encoders_read_the_cars_rows(tiny_generator, tmp_path):
    # The released cars encoders (e4e_cars_encode.pt) were refused: the official code reads 192x256 photos, and
    # its cars generator draws them in rows 64 to 448 of its 512-px images (LSUN cars, padded).
    from PIL import Image

    from hyperinverter.cli.main import main
    from hyperinverter.errors import CheckpointError
    from hyperinverter.methods.psp import E4E
    from hyperinverter.pipeline import InversionPipeline

    torch.manual_seed(2)
    method = E4E.create(tiny_generator).eval()  # a 64-px input for the 32-px generator: 48x64 for cars
    latent_avg = torch.randn(tiny_generator.w_dim)
    cars = _released_file(tmp_path / "e4e_cars_encode.pt", method, encoder_type="Encoder4Editing",
                          latent_avg=latent_avg, dataset_type="cars_encode")
    assert main(["import-official", str(cars), "--out", str(tmp_path / "cars")]) == 0
    pipe = InversionPipeline.from_pretrained(tmp_path / "cars", device="cpu")
    assert pipe.content_rows == (0.125, 0.875) and pipe.inverter().style_encoder.config.input_shape == (48, 64)
    from hyperinverter.models.encoders import StyleCodeEncoder

    official = StyleCodeEncoder(dataclasses.replace(method.style_encoder.config, input_height=48)).eval()
    official.load_state_dict(method.style_encoder.state_dict())  # the same weights, on 3:4 inputs
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # the official forward: the car's rows (4 to 28 of 32) as the encoder's 3:4 input
        photo = F.interpolate(x[..., 4:28, :], size=(48, 64), mode="bilinear", align_corners=False)
        codes = official(photo) + latent_avg
        got = pipe.invert(x)
        expected = tiny_generator.synthesis(codes, noise_mode="const")
    torch.testing.assert_close(got.ws, codes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.image, expected, rtol=1e-4, atol=1e-4)
    # A photo goes into those rows whole (squashed, as the official 192x256 resize does), the rest black.
    canvas = pipe.prepare(Image.new("RGB", (400, 200), (255, 255, 255)))
    assert torch.all(canvas[..., 5:27, :] > 0.99)  # (rows 4 and 27 blend with the black at the edge)
    assert torch.all(canvas[..., :3, :] < -0.99) and torch.all(canvas[..., 29:, :] < -0.99)
    from hyperinverter.io.images import fit_to_canvas

    # At the model's side, not the photo's: a 20000-px panorama made a 20000x20000 canvas (1.2 GB) first.
    assert fit_to_canvas(Image.new("RGB", (20000, 10)), pipe.content_rows, side=32).size == (32, 32)
    assert pipe.prepare(Image.new("RGB", (1, 1))).shape == (1, 3, 32, 32)
    # What does not run on cars says so (no E2Style release was trained on cars).
    from hyperinverter.convert.official import PspFile

    with pytest.raises(CheckpointError, match="trained on cars .* not as E2Style"):
        PspFile.read(cars).refuse_cars("E2Style")


def test_sketch_and_segmentation_files_are_refused_naming_the_file(tiny_generator, tmp_path, capsys):
    # pSp's sketch- and segmentation-to-face releases read 1- and 19-channel maps (input_nc): import-official failed
    # in the method with "the model's parts do not fit together", on two lines that named no file.
    from hyperinverter.cli.main import main
    from hyperinverter.convert.rosinality import from_nvidia
    from hyperinverter.models.encoders import encoder_preset

    G = tiny_generator
    decoder = from_nvidia(G.state_dict(), G.config)
    for channels, dataset_type in ((1, "celebs_sketch_to_face"), (19, "celebs_seg_to_face")):
        encoder = encoder_preset("tiny", in_channels=channels, n_styles=G.num_ws, w_dim=G.w_dim)
        state = {**{f"encoder.{k}": v for k, v in encoder.build_style_code_encoder("psp").state_dict().items()},
                 **{f"decoder.{k}": v for k, v in decoder.items() if k != "latent_avg"}}
        path = tmp_path / f"psp_{dataset_type}.pt"
        torch.save({"state_dict": state, "latent_avg": decoder["latent_avg"],
                    "opts": {"encoder_type": "GradualStyleEncoder", "input_nc": channels, "label_nc": channels,
                             "dataset_type": dataset_type, "start_from_latent_avg": True}}, path)
        assert main(["import-official", str(path), "--out", str(tmp_path / dataset_type)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {path}: its encoder reads {channels}-channel inputs (dataset_type {dataset_type!r}), "
                       "not the generator's 3-channel images: a translation from sketches or segmentation maps, "
                       "which this version does not run"), err
