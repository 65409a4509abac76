"""E2Style's trainer and its restoration tasks: stage 1 learns, stage 2 trains only its new encoder (earlier stages
frozen, BatchNorm statistics kept), the multi-layer losses, and each degradation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hyperinverter.data.degradations import (
    GREY_WEIGHTS_OFFICIAL,
    bicubic_downsample,
    colorization,
    denoising,
    get_degradation,
    inpainting,
    triangle_mask,
)
from hyperinverter.models.encoders import TrunkConfig
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.training import TRAINERS
from hyperinverter.training.e2style import E2StyleTrainingConfig, train_e2style


@pytest.fixture
def setup(tiny_gan_data, tmp_path):
    gan, data = tiny_gan_data

    def config(run, steps, **kw):
        defaults = {"run_dir": str(tmp_path / run), "data": "unused", "generator": str(gan), "steps": steps,
                    "batch_size": 4, "lr": 3e-3, "optimizer": "adam",
                    "trunk": TrunkConfig("ir_se", units=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
                    "encoder_resolution": 64, "hflip": False, "log_every": 1, "val_every": 1000, "sample_every": 1000,
                    "checkpoint_every": 1000, "progress": False, "tensorboard": False, "device": "cpu"}
        return E2StyleTrainingConfig(**{**defaults, **kw})

    return config, data, tmp_path


def test_stage_one_refuses_a_model_to_start_from(tmp_path, capsys):
    # init_from was ignored at stage 1 (its encoder starts from the average code), and the run trained from scratch.
    from hyperinverter.cli.main import main

    cfg = tmp_path / "e2.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path}\ngenerator: fashion-32\nsteps: 1\n")
    assert main(["train", "e2style", "--config", str(cfg), "init_from=fashion-32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cfg} with init_from=fashion-32: ") and "init_from: stage 1 trains" in err, err
    assert not (tmp_path / "run").exists()


def test_stage_one_learns_and_stage_two_trains_only_its_own_encoder(setup):
    config, data, tmp_path = setup
    assert "e2style" in TRAINERS
    first = train_e2style(config("stage1", 25), images=data, val_images=data[:4])
    losses = [h["loss/l2"] for h in first.history if "loss/l2" in h]
    assert losses[-1] < 0.7 * losses[0], losses
    stage1 = InversionPipeline.from_pretrained(first.final_model, device="cpu").inverter("e2style").encoders
    assert stage1.stages == 1
    with pytest.raises(ValueError, match="init_from"):
        config("stage2", 4, stage=2)
    second = train_e2style(config("stage2", 6, stage=2, init_from=str(first.final_model)), images=data,
                           val_images=data[:4])
    pipe = InversionPipeline.from_pretrained(second.final_model, device="cpu")
    stage2 = pipe.inverter("e2style").encoders
    assert stage2.stages == 2
    # stage 1 is frozen: its weights and its BatchNorm running statistics did not move
    for key, value in stage1.state_dict().items():
        assert torch.equal(stage2.state_dict()[key], value), key
    # the new stage did train: its weights left their initialisation (the run's seed builds the same start)
    with torch.random.fork_rng():
        torch.manual_seed(config("x", 1).seed)
        from hyperinverter.training.e2style import e2style_task
        start = e2style_task(config("fresh", 1, stage=2, init_from=str(first.final_model)), torch.device("cpu"), None)
    initial = start.trainable.state_dict()
    moved = [k for k, v in stage2.encoder_refinestage_list[0].state_dict().items()
             if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert moved and stage2.encoder_refinestage_list[0].input_layer[0].weight.shape[1] == 6
    result = pipe.invert(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert len(result.steps) == 2
    with pytest.raises(ValueError, match="holds 2 E2Style stages"):
        train_e2style(config("stage2-again", 2, stage=2, init_from=str(second.final_model)), images=data)
    # A stage refines the codes of the stages before it, for their generator: another one is refused.
    from hyperinverter.convert.gan_files import load_gan
    from hyperinverter.errors import CheckpointError
    from hyperinverter.io.gan import save_gan

    other = load_gan(config("x", 1).generator).generator
    with torch.no_grad():
        next(other.synthesis.parameters()).add_(0.1)
    save_gan(tmp_path / "other-gan", other)
    with pytest.raises(CheckpointError, match="was trained with another generator than the run's generator"):
        train_e2style(config("stage2-other", 2, stage=2, init_from=str(first.final_model),
                             generator=str(tmp_path / "other-gan")), images=data)


def test_restoration_training_degrades_the_input_and_targets_the_clean_image(setup):
    config, data, _ = setup
    # (a factor drawn per image, as the official super-resolution training)
    result = train_e2style(config("sr", 3, task="sr1,4", w_norm_weight=0.005), images=data, val_images=data[:4])
    assert all(math.isfinite(h["loss/l2"]) and h["loss/w_norm"] > 0 for h in result.history if "loss/l2" in h)
    pipe = InversionPipeline.from_pretrained(result.final_model, device="cpu")
    assert pipe.inverter("e2style").task == "sr1,4"
    with pytest.raises(ValueError, match="unknown restoration task"):
        config("bad", 1, task="sr3")
    with pytest.raises(ValueError, match="a restoration run has no adversarial stage"):  # (D took degraded as real)
        config("bad", 1, task="sr4", adv_weight=0.1, adv_start=0)


def test_multilayer_losses_compare_at_the_loss_resolution(setup):
    """The official coach computes every term on its pooled 256-px output, the multi-layer identity and parsing terms
    too: with ``loss_resolution`` set they see the images the L2 term compares, not full-size ones."""
    from hyperinverter.metrics import pooled_to_width, resized_to_width
    from hyperinverter.training.e2style import e2style_task

    config, data, _ = setup
    assert config("faces", 1, multilayer_id_weight=0.5).compares_identities  # (its model is one of faces)
    assert not config("other", 1).compares_identities
    task = e2style_task(config("pooled", 1, loss_resolution=16), torch.device("cpu"), None)
    seen = []

    def recorder(output, target):
        seen.append((output, target))
        return (output - target).square().mean(dim=[1, 2, 3])

    task.multilayer_id = task.parsing = recorder
    x = data[:2].float() / 127.5 - 1
    _, stats, out = task.reconstruction(x)
    assert {"loss/multilayer_id", "loss/parsing"} <= stats.keys() and len(seen) == 2
    reduce_target = resized_to_width if task.criterion.antialias_target else pooled_to_width
    for output, target in seen:
        assert output.shape[-1] == target.shape[-1] == 16 < x.shape[-1]
        torch.testing.assert_close(output, pooled_to_width(out.image, 16))
        torch.testing.assert_close(target, reduce_target(x, 16))


def test_multilayer_identity_levels_and_loss():
    from hyperinverter.losses.identity import load_identity_embedder
    from hyperinverter.losses.multilayer import MultiLayerLoss, cosine_distance_sum

    torch.manual_seed(0)
    net = load_identity_embedder("sface")  # the real weights: random ones let the deep activations vanish
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    levels = net.feature_levels(x)
    assert [tuple(f.shape[1:]) for f in levels[:4]] == [(128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7)]
    with torch.no_grad():
        assert torch.allclose(F.normalize(levels[-1], dim=1), net(x), atol=1e-5)  # the embedding, un-normalised
    loss = MultiLayerLoss(net, net.feature_levels, lambda t: t)
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-4)  # float rounding of cosines over 10^5 values
    y = torch.rand(2, 3, 112, 112) * 2 - 1
    expected = cosine_distance_sum(net.feature_levels(y), net.feature_levels(x))
    assert torch.allclose(loss(y, x), expected) and (expected > 0).all()


def test_parsing_unet_layout_levels_and_strict_loading(tmp_path):
    from hyperinverter.errors import CheckpointError
    from hyperinverter.models.parsing import ParsingUNet, load_parsing_unet

    torch.manual_seed(0)
    unet = ParsingUNet().eval()
    keys = set(unet.state_dict())
    assert {"conv1.conv1.0.weight", "conv1.conv1.1.running_var", "center.conv2.1.weight", "up_concat4.up.weight",
            "up_concat1.conv.conv2.0.bias", "final.weight"} <= keys
    # BN in the up path too, as CelebAMask-HQ's U-Net, whose copy the official one is (unetUp(..., is_batchnorm))
    assert {"up_concat1.conv.conv1.1.running_mean", "up_concat4.conv.conv2.1.weight"} <= keys
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        levels = unet.feature_levels(x)
        assert [tuple(f.shape[1:]) for f in levels] == [(16, 128, 128), (32, 64, 64), (64, 32, 32), (128, 16, 16),
                                                        (256, 16, 16)]
        assert unet(x).shape == (1, 19, 256, 256)
    torch.save({"state_dict": {f"module.{k}": v for k, v in unet.state_dict().items()}}, tmp_path / "parsing.pth")
    loaded = load_parsing_unet(tmp_path / "parsing.pth")
    with torch.no_grad():
        assert torch.equal(loaded(x), unet(x))
    state = unet.state_dict()
    del state["final.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="final.bias"):
        load_parsing_unet(tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match="parsing.pth"):
        load_parsing_unet(tmp_path / "missing.pth")


# --- degradations -------------------------------------------------------------------------------------------


def test_inpainting_triangles_are_the_official_ones():
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        mask = triangle_mask(256, gen)
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        # the apex is at y = 35 and the base at y = 220; the base is 150 px wide, starting at x = 35 or 70
        assert abs(int(rows.min()) - 35) <= 1 and abs(int(rows.max()) - 219) <= 1
        base = mask[219].nonzero().flatten()
        assert int(base.min()) in (35, 36, 70, 71) and 148 <= int(base.max()) - int(base.min()) <= 151
        seen.add((int(cols.min()) < 50, int(base.min()) > 60))
    assert len(seen) >= 3  # the random vertex choices all occur
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = inpainting(x, torch.Generator().manual_seed(1))
    hole = out == -1
    assert hole.any() and torch.equal(out[~hole], x[~hole])


def test_super_resolution_is_antialiased_bicubic_then_bilinear_back():
    x = torch.rand(2, 3, 64, 64)
    low = bicubic_downsample(x, 4)
    assert low.shape == (2, 3, 16, 16)
    flat = torch.full((1, 1, 32, 32), 0.3)
    assert torch.allclose(bicubic_downsample(flat, 2), torch.full((1, 1, 16, 16), 0.3), atol=1e-6)
    # a 2x2 checkerboard averages out: anti-aliasing, not point sampling
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float()[None, None]
    assert (bicubic_downsample(checker, 2) - 0.5).abs().max() < 0.05
    degraded = get_degradation("sr4")(x, torch.Generator())
    torch.testing.assert_close(degraded, F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False))
    with pytest.raises(ValueError, match="cannot be down-sampled"):
        get_degradation("sr16")(torch.rand(1, 3, 40, 40), torch.Generator())


def test_super_resolution_draws_a_factor_per_image_among_those_listed():
    # As the official BilinearResize(factors): each image its own factor; `sr` is the official default set.
    x = torch.rand(24, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    singles = {f: get_degradation(f"sr{f}")(x, torch.Generator()) for f in (2, 4, 8, 32)}
    singles[1] = x
    degraded = get_degradation("sr1,2,4,8,32")(x, torch.Generator().manual_seed(5))
    chosen = [next(f for f, d in singles.items() if torch.allclose(degraded[i], d[i], atol=1e-6))
              for i in range(len(x))]
    assert set(chosen) == {1, 2, 4, 8, 32}  # every factor drawn, each image degraded by exactly one
    torch.testing.assert_close(get_degradation("sr1,2,4,8,32")(x, torch.Generator().manual_seed(5)), degraded)
    assert get_degradation("sr")(x[:1], torch.Generator()).shape == (1, 3, 64, 64)
    for bad in ("sr1", "sr2,2", "sr3,4", "sr4,64", "sr4,", "srx"):
        with pytest.raises(ValueError, match="restoration task|powers of two"):
            get_degradation(bad)
    with pytest.raises(ValueError, match="cannot be down-sampled by 32"):  # whichever factor the draw picks
        get_degradation("sr1,32")(torch.rand(4, 3, 48, 48), torch.Generator())
    # The filter's reflect padding (1.5 factors) must stay inside the image: sr32 at 32 px was torch's error, and a
    # model that reads 32 px is refused such a task when it is made, not at its first training step.
    from hyperinverter.data.degradations import check_task_fits

    for task in ("sr32", "sr"):
        with pytest.raises(ValueError, match="a 32-px image cannot be down-sampled by 32"):
            get_degradation(task)(torch.rand(2, 3, 32, 32), torch.Generator())
        with pytest.raises(ValueError, match="a 32-px image cannot be down-sampled by 32"):
            check_task_fits(task, 32)
        check_task_fits(task, 64)


def test_colorization_uses_the_official_channel_weights_and_denoising_mixes_two_noises():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    grey = colorization(x)
    r, g, b = GREY_WEIGHTS_OFFICIAL
    torch.testing.assert_close(grey[:, 0], r * x[:, 0] + g * x[:, 1] + b * x[:, 2])
    assert torch.equal(grey[:, 0], grey[:, 2])
    noisy = denoising(torch.zeros(64, 3, 32, 32), torch.Generator().manual_seed(0))
    assert noisy.min() >= -1 and noisy.max() <= 1
    unit = (noisy + 1) / 2
    salt_and_pepper = ((unit == 0) | (unit == 1) | (unit == 0.5)).flatten(1).all(dim=1)
    assert 10 < int(salt_and_pepper.sum()) < 54  # about half of the samples
    gaussian = unit[~salt_and_pepper]
    assert abs(float(gaussian.sub(0.5).std()) - 0.1) < 0.01  # σ² = 0.01
    # Salt and pepper hits each value on its own (skimage's random_noise on H x W x 3): coloured impulses, 5 %.
    impulses = unit[salt_and_pepper] != 0.5  # [N, 3, 32, 32]
    assert abs(float(impulses.float().mean()) - 0.05) < 0.01
    assert (impulses.any(dim=1) & ~impulses.all(dim=1)).any()  # (one channel hit, not the others)


def test_restoration_inputs_are_degraded_at_the_encoder_s_size():
    # The official code degrades its 256-px inputs: degrading a 1024-px image first left sr4 with 256 px of
    # detail for the encoder, and its 4x reduction averaged the noise away.
    from hyperinverter.data.degradations import degrade_at

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gen = torch.Generator().manual_seed(1)
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    expected = get_degradation("denoising")(small, torch.Generator().manual_seed(1))
    torch.testing.assert_close(degrade_at(x, "denoising", 16, gen), expected)
    assert degrade_at(x, "sr4", 16, gen).shape == (2, 3, 16, 16)
    zeros = torch.zeros(8, 3, 64, 64)
    at_16 = degrade_at(zeros, "denoising", 16, torch.Generator().manual_seed(2))
    reduced = F.interpolate(get_degradation("denoising")(zeros, torch.Generator().manual_seed(2)), size=(16, 16),
                            mode="bilinear", align_corners=False, antialias=True)
    assert float(at_16.std()) > 2 * float(reduced.std())  # the noise reaches the encoder, not averaged away


def test_a_refinement_stage_takes_the_trunk_file_but_not_its_stem(setup):
    # As the official coach: stage > 1 loads the IR-SE file into the new encoder without its input_layer, whose
    # 6-channel conv keeps its own initialisation (stage 1's 3-channel stem loads it whole).
    from hyperinverter.models.encoders.backbones import IRSEBackbone
    from hyperinverter.training.e2style import e2style_task

    config, data, tmp_path = setup
    trunk_file = IRSEBackbone(units=(1, 1, 1, 1), widths=(8, 16, 32, 64)).state_dict()
    torch.save(trunk_file, tmp_path / "trunk.pth")
    first = train_e2style(config("stage1", 1), images=data, val_images=data[:2])

    def stage_two(**kw):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            cfg = config("stage2", 1, stage=2, init_from=str(first.final_model), **kw)
            return e2style_task(cfg, torch.device("cpu"), None).trainable.state_dict()

    built, loaded = stage_two(), stage_two(backbone_init=str(tmp_path / "trunk.pth"))
    for key, value in trunk_file.items():
        expected = built[key] if key.startswith("input_layer.") else value
        assert torch.equal(loaded[key], expected), key
    assert loaded["input_layer.0.weight"].shape[1] == 6
