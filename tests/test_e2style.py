"""E2Style: heads on the right taps with the official pooling, the refinement input, strict loading of the released
layout, rows for smaller generators."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_generator
from hyperinverter.io.images import save_image
from hyperinverter.models.encoders import (
    E2StyleConfig,
    E2StyleEncoder,
    E2StyleEncoderConfig,
    E2StyleEncoders,
    TrunkConfig,
    encoder_preset,
)
from hyperinverter.models.encoders.e2style import split_rows

# The official trunk layout (IR-SE50 units 3/4/14/3) at small widths: the same keys and taps, cheap to run at 256.
SLIM_IRSE50 = TrunkConfig("ir_se", units=(3, 4, 14, 3), widths=(4, 8, 12, 16))


def slim_encoder(**overrides) -> E2StyleEncoder:
    torch.manual_seed(0)
    config = E2StyleEncoderConfig(trunk=SLIM_IRSE50, input_size=256, n_styles=18, w_dim=8, **overrides)
    encoder = E2StyleEncoder(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return encoder


def official_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling written out: window i covers [floor(i·n/size), ceil((i+1)·n/size))."""
    n = x.shape[-1]
    out = torch.empty(*x.shape[:2], size, size)
    for i in range(size):
        r0, r1 = (i * n) // size, math.ceil((i + 1) * n / size)
        for j in range(size):
            c0, c1 = (j * n) // size, math.ceil((j + 1) * n / size)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
    return out


def test_the_official_pooling_windows_overlap_and_differ():
    windows = [((i * 32) // 7, math.ceil((i + 1) * 32 / 7)) for i in range(7)]
    assert windows[:2] == [(0, 5), (4, 10)]  # as the issue says: 32 -> 7 takes [0,5), [4,10), ...
    assert len({b - a for a, b in windows}) > 1
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(F.adaptive_avg_pool2d(x, 7), official_pool(x, 7))


def test_rows_come_from_the_right_taps_deepest_first():
    encoder = slim_encoder()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        codes = encoder(x)
        # plain reference: run the trunk unit by unit, tap the ends of stages 1-3 (body 2, 6, 20)
        h = encoder.input_layer(x)
        taps = {}
        for i in range(21):
            h = encoder.body[i](h)
            taps[i] = h
        assert taps[2].shape[-1] == 128 and taps[6].shape[-1] == 64 and taps[20].shape[-1] == 32
        expected = []
        for head, tap, rows in ((encoder.output_layer_3, taps[20], 9), (encoder.output_layer_4, taps[6], 5),
                                (encoder.output_layer_5, taps[2], 4)):
            pooled = official_pool(head[0](tap), 7).flatten(1)
            expected.append(F.linear(pooled, head[3].weight, head[3].bias).reshape(2, rows, 8))
    torch.testing.assert_close(codes, torch.cat(expected, dim=1), rtol=1e-4, atol=1e-5)
    # stage 4 (body 21-23) is built, for the released files, but never runs
    assert len(encoder.body) == 24
    before = codes.clone()
    with torch.no_grad():
        for p in encoder.body[21:].parameters():
            p.add_(1.0)
        torch.testing.assert_close(encoder(x), before)


def test_head_keys_and_shapes_are_the_official_ones():
    with torch.device("meta"):
        encoder = E2StyleEncoder(E2StyleEncoderConfig())  # IR-SE50 at 256, 18 rows of 512
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes["output_layer_3.3.weight"] == (9 * 512, 256 * 49)
    assert shapes["output_layer_4.3.weight"] == (5 * 512, 128 * 49)
    assert shapes["output_layer_5.3.weight"] == (4 * 512, 64 * 49)
    assert shapes["output_layer_5.0.running_var"] == (64,)
    assert shapes["input_layer.0.weight"] == (64, 3, 3, 3) and "body.23.res_layer.0.weight" in shapes
    with torch.device("meta"):
        refine = E2StyleEncoders(E2StyleConfig(stages=3))
    assert refine.state_dict()["encoder_refinestage_list.1.input_layer.0.weight"].shape == (64, 6, 3, 3)
    assert refine.state_dict()["latent_avg"].shape == (18, 512)


def test_rows_split_in_the_official_proportion_and_paper_pooling_is_an_option():
    assert split_rows(18) == (9, 5, 4)
    assert split_rows(10) == (5, 3, 2) and split_rows(8) == (4, 2, 2) and sum(split_rows(14)) == 14
    encoder = slim_encoder(pool_sizes=(7, 5, 3))
    assert encoder.output_layer_4[3].in_features == 8 * 25 and encoder.output_layer_5[3].in_features == 4 * 9
    with pytest.raises(ValueError, match="sum to n_styles"):
        E2StyleEncoderConfig(trunk=SLIM_IRSE50, n_styles=18, head_rows=(9, 5, 3))


def test_refinement_input_is_the_image_then_the_pooled_previous_image_unclamped():
    torch.manual_seed(0)
    config = E2StyleConfig(encoder=E2StyleEncoderConfig(trunk=SLIM_IRSE50, input_size=64, n_styles=18, w_dim=8),
                           stages=3)
    encoders = E2StyleEncoders(config).eval()
    seen = []
    encoders.encoder_refinestage_list[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x = torch.randn(2, 3, 64, 64)
    previous = torch.randn(2, 3, 256, 256) * 3  # beyond [-1, 1]: the official code does not clamp
    codes = torch.randn(2, 18, 8)
    with torch.no_grad():
        out = encoders.refine_codes(2, codes, x, previous)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.cat([x, F.adaptive_avg_pool2d(previous, 64)], dim=1))
    assert seen[0][:, 3:].abs().max() > 1
    with torch.no_grad():
        torch.testing.assert_close(out, codes + encoders.encoder_refinestage_list[1](seen[0]))


def test_every_stage_image_is_kept_and_stages_is_an_option(tiny_generator):
    from hyperinverter.methods.e2style import E2Style

    method = E2Style.create(tiny_generator, stages=3).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    result = method.invert(x)
    assert len(result.steps) == 3 and torch.equal(result.steps[-1], result.image)
    assert torch.equal(result.initial_image, result.steps[0])
    assert list(result.timings) == ["stage 1", "stage 2", "stage 3"]
    two = method.invert(x, stages=2)
    torch.testing.assert_close(two.image, result.steps[1])
    with pytest.raises(ValueError, match="between 1 and the 3"):
        method.invert(x, stages=4)
    with pytest.raises(ValueError, match="got True"):  # (it ran one stage)
        method.invert(x, stages=True)


# --- the released layout ------------------------------------------------------------------------------------


def released_file(path, generator, *, stages: int = 3, n_styles: int = 18, seed: int = 0):
    """An E2Style checkpoint in the released layout: every stage (full IR-SE50 key set incl. stage 4, slim widths),
    the rosinality ``decoder.*``, ``latent_avg`` [18, w_dim] and ``opts``."""
    from hyperinverter.convert.rosinality import from_nvidia

    torch.manual_seed(seed)
    config = E2StyleConfig(encoder=E2StyleEncoderConfig(trunk=SLIM_IRSE50, input_size=256, n_styles=n_styles,
                                                        w_dim=generator.w_dim), stages=stages)
    encoders = E2StyleEncoders(config).eval()
    latent_avg = torch.randn(generator.w_dim)
    decoder = from_nvidia(generator.state_dict(), generator.config)
    decoder.pop("latent_avg")
    state = {k: v.clone() for k, v in encoders.state_dict().items() if k != "latent_avg"}
    ckpt = {"state_dict": {**state, **{f"decoder.{k}": v for k, v in decoder.items()}},
            "latent_avg": latent_avg[None].repeat(n_styles, 1),
            "opts": {"training_stage": stages, "start_from_latent_avg": True, "output_size": generator.resolution}}
    torch.save(ckpt, path)
    with torch.no_grad():
        encoders.latent_avg.copy_(latent_avg.expand(n_styles, -1))
    return path, encoders


def test_released_file_loads_strictly_and_feeds_the_first_num_ws_rows(tiny_generator, tmp_path):
    from hyperinverter.cli.main import main
    from hyperinverter.pipeline import InversionPipeline

    path, encoders = released_file(tmp_path / "e2style_inversion.pt", tiny_generator)
    assert main(["import-official", str(path), "--out", str(tmp_path / "bundle")]) == 0  # the decoder is inside
    pipe = InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")
    assert set(pipe.methods) == {"e2style"} and pipe.inverter().encoders.stages == 3
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    result = pipe.invert(x)
    G = pipe.generator
    # the official forward written out: 18 rows accumulate; the 32-px generator reads the first 8
    with torch.no_grad():
        x256 = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
        codes = encoders.encoder_firststage(x256) + encoders.latent_avg
        image = G.synthesis(codes[:, : G.num_ws])
        for stage in encoders.encoder_refinestage_list:
            up = F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)
            codes = codes + stage(torch.cat([x256, up], dim=1))
            image = G.synthesis(codes[:, : G.num_ws])
    assert codes.shape[1] == 18 and G.num_ws == 8
    torch.testing.assert_close(result.ws, codes[:, :8], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.image, image, rtol=1e-4, atol=1e-4)


def test_released_file_problems_are_named(tiny_generator, tmp_path):
    from hyperinverter.convert.official import load_official_e2style
    from hyperinverter.errors import CheckpointError

    path, _ = released_file(tmp_path / "e2style.pt", tiny_generator)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["encoder_refinestage_list.0.body.22.res_layer.1.weight"]  # the unused stage 4 too
    ckpt["state_dict"]["encoder_firststage.output_layer_6.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"encoder_refinestage_list\.0\.body\.22\.res_layer\.1\.weight") as info:
        load_official_e2style(tmp_path / "broken.pt")
    assert "output_layer_6" in str(info.value)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["latent_avg"]
    torch.save(ckpt, tmp_path / "no-average.pt")
    with pytest.raises(CheckpointError, match="latent_avg"):
        load_official_e2style(tmp_path / "no-average.pt")


def test_the_tiny_preset_builds_e2style_for_any_generator(tiny_generator):
    encoders = encoder_preset("tiny", n_styles=tiny_generator.num_ws, w_dim=tiny_generator.w_dim).build_e2style_encoders(2)
    assert encoders.config.encoder.rows == (4, 2, 2) and encoders.stages == 2


def test_bundles_of_one_generator_join_into_one(pipeline, tiny_generator, tmp_path, capsys):
    """``join``: a user's own runs (each a bundle over the same generator) become one model for benchmark and web."""
    from hyperinverter.cli.main import main
    from hyperinverter.io.gan import save_gan
    from hyperinverter.pipeline import InversionPipeline

    pipeline.save_pretrained(tmp_path / "hyper")  # phase1 + hyperinverter
    (tmp_path / "hyper" / "MODEL_CARD.md").write_text("# mine\n")
    path, _ = released_file(tmp_path / "e2style_inversion.pt", tiny_generator)
    assert main(["import-official", str(path), "--out", str(tmp_path / "e2")]) == 0
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    expected = InversionPipeline.from_pretrained(tmp_path / "e2", device="cpu").invert(x).image
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "e2"), "--out", str(tmp_path / "e2")]) == 2
    assert "only the first bundle may be extended" in capsys.readouterr().err
    # An empty --default was taken as none given: the first bundle's default, without a word.
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "e2"), "--out", str(tmp_path / "all"),
                 "--default", ""]) == 2
    assert "error: --default '': is not a method of the joined bundles" in capsys.readouterr().err
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "e2"), "--out", str(tmp_path / "all"),
                 "--default", "e2style"]) == 0
    joined = InversionPipeline.from_pretrained(tmp_path / "all", device="cpu")
    assert list(joined.methods) == ["phase1", "hyperinverter", "e2style"] and joined.default_method == "e2style"
    assert torch.allclose(joined.invert(x).image, expected, atol=1e-6)
    assert (tmp_path / "all" / "MODEL_CARD.md").read_text() == "# mine\n"
    # Stored in fp16, as the bundled models: half the bytes, the same outputs to fp16's rounding of the weights.
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "e2"), "--out", str(tmp_path / "half"),
                 "--default", "e2style", "--weights", "fp16"]) == 0
    size = {name: sum(p.stat().st_size for p in (tmp_path / name).rglob("*.safetensors")) for name in ("all", "half")}
    assert size["half"] < 0.55 * size["all"]
    half = InversionPipeline.from_pretrained(tmp_path / "half", device="cpu")
    assert half.generator.mapping.fc0.weight.dtype == torch.float32  # stored in fp16, run in fp32
    assert (half.invert(x).image - expected).abs().mean() < 1e-3
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "e2"), "--out", str(tmp_path / "hyper")]) == 0
    assert list(InversionPipeline.from_pretrained(tmp_path / "hyper", device="cpu").methods)[-1] == "e2style"
    # Another E2Style under the same name (a restoration model, a retrained one) was dropped without a word.
    retrained, _ = released_file(tmp_path / "e2b.pt", tiny_generator, seed=1)
    assert main(["import-official", str(retrained), "--out", str(tmp_path / "e2b")]) == 0
    capsys.readouterr()
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "e2"), "--out", str(tmp_path / "same")]) == 0
    assert "left out" not in capsys.readouterr().err  # the same weights: nothing is lost
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "e2b"), "--out", str(tmp_path / "kept")]) == 0
    assert "e2b: its e2style holds other weights than the bundle's and is left out" in capsys.readouterr().err

    other, _ = released_file(tmp_path / "other.pt", build_tiny_generator(seed=7))
    assert main(["import-official", str(other), "--out", str(tmp_path / "other")]) == 0
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "other"), "--out", str(tmp_path / "x")]) == 2
    assert "another generator" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["join", str(tmp_path / "hyper"), "--out", str(tmp_path / "x")]) == 2
    save_gan(tmp_path / "gan", tiny_generator)  # a generator alone holds nothing to join
    assert main(["join", str(tmp_path / "gan"), str(tmp_path / "hyper"), "--out", str(tmp_path / "x")]) == 2
    assert "holds no trained method" in capsys.readouterr().err


def test_a_joined_model_is_one_of_faces_whichever_bundle_comes_first(pipeline, tmp_path):
    # One bundle says it is of faces, the other that it is not (as told): the joined model was one of faces or not
    # by the order of the bundles given. One generator is one domain: faces wins.
    from hyperinverter.cli.main import main
    from hyperinverter.pipeline import InversionPipeline

    InversionPipeline({"phase1": pipeline.methods["phase1"]}, faces=False).save_pretrained(tmp_path / "w")
    InversionPipeline(pipeline.methods, faces=True).save_pretrained(tmp_path / "hyper")
    InversionPipeline(pipeline.methods).save_pretrained(tmp_path / "unsaid")
    for first, second, faces in (("w", "hyper", True), ("hyper", "w", True), ("w", "unsaid", False),
                                 ("unsaid", "unsaid", None)):
        out = tmp_path / f"{first}-{second}"
        assert main(["join", str(tmp_path / first), str(tmp_path / second), "--out", str(out)]) == 0
        assert InversionPipeline.from_pretrained(out, device="cpu").faces is faces, (first, second)


def test_a_release_joins_a_bundle_of_the_same_generator_and_is_refused_by_another(pipeline, tiny_generator, tmp_path,
                                                                                 capsys):
    """``import-official --add``: one model holds every released method of a domain (what ``benchmark`` runs)."""
    from hyperinverter.cli.main import main
    from hyperinverter.editing import LinearDirection, save_direction
    from hyperinverter.io.gan import save_gan
    from hyperinverter.io.images import save_image
    from hyperinverter.pipeline import InversionPipeline

    pipeline.save_pretrained(tmp_path / "bundle")  # phase1 + hyperinverter on the tiny generator
    # What a bundle holds beside its methods (its card, directions, examples, a fine-tuned generator) stays.
    (tmp_path / "bundle" / "MODEL_CARD.md").write_text("# my model\n")
    save_direction(LinearDirection(torch.ones(1, tiny_generator.w_dim), name="up"),
                   tmp_path / "bundle" / "directions" / "up.safetensors")
    save_image(torch.zeros(1, 3, 32, 32), tmp_path / "bundle" / "examples" / "0.png")
    save_gan(tmp_path / "bundle" / "sketch_generator", tiny_generator)
    # Links among them stay links (they were dropped): a configs folder shared by bundles, a linked example.
    (tmp_path / "shared_configs").mkdir()
    (tmp_path / "shared_configs" / "w.yaml").write_text("steps: 1\n")
    (tmp_path / "bundle" / "configs").symlink_to(tmp_path / "shared_configs")
    (tmp_path / "bundle" / "examples" / "1.png").symlink_to("0.png")
    extras = {p.relative_to(tmp_path / "bundle"): p.read_bytes() for p in (tmp_path / "bundle").rglob("*")
              if p.is_file() and p.relative_to(tmp_path / "bundle").parts[0] in
              ("MODEL_CARD.md", "directions", "examples", "sketch_generator")}
    path, _ = released_file(tmp_path / "e2style_inversion.pt", tiny_generator)
    assert main(["import-official", str(path), "--out", str(tmp_path / "bundle"), "--add"]) == 0
    assert "added e2style" in capsys.readouterr().out
    assert all((tmp_path / "bundle" / name).read_bytes() == data for name, data in extras.items())
    assert os.readlink(tmp_path / "bundle" / "configs") == str(tmp_path / "shared_configs")
    assert os.readlink(tmp_path / "bundle" / "examples" / "1.png") == "0.png"
    assert (tmp_path / "shared_configs" / "w.yaml").read_text() == "steps: 1\n"
    joined = InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")
    assert list(joined.methods) == ["phase1", "hyperinverter", "e2style"]
    assert joined.inverter("e2style").generator is joined.generator
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    alone = main(["import-official", str(path), "--out", str(tmp_path / "alone")])
    assert alone == 0
    expected = InversionPipeline.from_pretrained(tmp_path / "alone", device="cpu").invert(x).image
    assert torch.allclose(joined.invert(x, method="e2style").image, expected, atol=1e-6)

    other, _ = released_file(tmp_path / "other.pt", build_tiny_generator(seed=7))
    pipeline.save_pretrained(tmp_path / "fresh")
    before = (tmp_path / "fresh" / "pipeline.json").read_bytes()
    assert main(["import-official", str(other), "--out", str(tmp_path / "fresh"), "--add"]) == 2
    assert "another generator" in capsys.readouterr().err
    assert (tmp_path / "fresh" / "pipeline.json").read_bytes() == before  # nothing changed


def test_released_restoration_files_keep_their_task(tiny_generator, tmp_path, capsys):
    # A released E2Style restoration file (colorization, denoising, inpainting, super-resolution) was imported as a
    # plain inversion model, which `restore` then refused as "not trained for a restoration task".
    from hyperinverter.cli.main import main
    from hyperinverter.convert.official import load_official_e2style
    from hyperinverter.errors import CheckpointError
    from hyperinverter.pipeline import InversionPipeline

    path, _ = released_file(tmp_path / "e2style.pt", tiny_generator, stages=1)
    ckpt = torch.load(path, weights_only=True)

    def released(name: str, **opts) -> Path:
        torch.save({**ckpt, "opts": {**ckpt["opts"], **opts}}, tmp_path / name)
        return tmp_path / name

    assert load_official_e2style(path).task is None  # no dataset_type: inversion, as before
    for dataset_type, task in [("ffhq_encode", None), ("ffhq_colorization", "colorization"),
                               ("ffhq_denoise", "denoising"), ("ffhq_inpainting", "inpainting")]:
        assert load_official_e2style(released("t.pt", dataset_type=dataset_type)).task == task
    with pytest.raises(CheckpointError, match="trained for colorization .*, not sr4"):
        load_official_e2style(released("c.pt", dataset_type="ffhq_colorization"), task="sr4")
    # Super-resolution: a file trained on several factors keeps them all, drawn per image as the official
    # transforms do (the official default where none is recorded); --task narrows it to one of them.
    many = released("sr.pt", dataset_type="celebs_super_resolution", resize_factors="1,2,4,8,16,32")
    assert load_official_e2style(many).task == load_official_e2style(many, task="sr").task == "sr1,2,4,8,16,32"
    assert load_official_e2style(released("d.pt", dataset_type="celebs_super_resolution")).task == "sr1,2,4,8,16,32"
    assert load_official_e2style(released("s2.pt", dataset_type="celebs_super_resolution",
                                          resize_factors="8,2")).task == "sr8,2"
    with pytest.raises(CheckpointError, match=r"factors \[1, 2, 4, 8, 16, 32\]: sr3 is not one of them "
                                              r"\(sr2, sr4, sr8, sr16, sr32, or leave --task out"):
        load_official_e2style(many, task="sr3")
    with pytest.raises(CheckpointError, match="resize_factors '4,64'.*cannot degrade by"):
        load_official_e2style(released("s64.pt", dataset_type="celebs_super_resolution", resize_factors="4,64"))
    assert load_official_e2style(many, task="sr8").task == "sr8"
    assert load_official_e2style(released("sr4.pt", dataset_type="celebs_super_resolution",
                                          resize_factors="4")).task == "sr4"
    for dataset_type in ("celebs_sketch_to_face", "celebs_seg_to_face"):
        with pytest.raises(CheckpointError, match="translation from sketches or segmentation maps"):
            load_official_e2style(released("x.pt", dataset_type=dataset_type))

    assert main(["import-official", str(many), "--task", "sr8", "--out", str(tmp_path / "sr8")]) == 0
    pipe = InversionPipeline.from_pretrained(tmp_path / "sr8", device="cpu")
    assert pipe.inverter().task == "sr8"
    save_image(torch.rand(3, 32, 32) * 2 - 1, tmp_path / "in" / "a.png")
    assert main(["restore", str(tmp_path / "in"), "--model", str(tmp_path / "sr8"), "--simulate", "--device", "cpu",
                 "--out", str(tmp_path / "restored")]) == 0
    assert "restored 1 image(s) (sr8)" in capsys.readouterr().out
    assert main(["import-official", str(many), "--out", str(tmp_path / "all")]) == 0
    assert InversionPipeline.from_pretrained(tmp_path / "all", device="cpu").inverter().task == "sr1,2,4,8,16,32"
    assert main(["restore", str(tmp_path / "in"), "--model", str(tmp_path / "all"), "--simulate", "--device", "cpu",
                 "--out", str(tmp_path / "restored-all")]) == 0
    assert "restored 1 image(s) (sr1,2,4,8,16,32)" in capsys.readouterr().out
    assert main(["import-official", str(path), "--task", "sr8", "--out", str(tmp_path / "inv")]) == 2
    assert "was trained for inversion (ffhq_encode), not sr8" in capsys.readouterr().err


@pytest.mark.parametrize("keep_average", [True, False])
def test_a_released_file_trained_without_latent_avg_gives_absolute_codes(tiny_generator, tmp_path, keep_average):
    # As the official forward: latent_avg is added only with start_from_latent_avg, and its coach saves it only
    # then. Such a file was refused ("has no latent_avg"), and one that kept it had it added whatever it said.
    from hyperinverter.convert.official import load_official_e2style

    path, encoders = released_file(tmp_path / "e2style.pt", tiny_generator, stages=2)
    ckpt = torch.load(path, weights_only=True)
    ckpt["opts"]["start_from_latent_avg"] = False
    if not keep_average:
        del ckpt["latent_avg"]
    torch.save(ckpt, path)
    model = load_official_e2style(path, tiny_generator)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        x256 = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
        codes = encoders.encoder_firststage(x256)  # no latent_avg
        image = tiny_generator.synthesis(codes[:, :8])
        up = F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)
        codes = codes + encoders.encoder_refinestage_list[0](torch.cat([x256, up], dim=1))
        result = model.invert(x)
    torch.testing.assert_close(result.ws, codes[:, :8], rtol=1e-4, atol=1e-4)
