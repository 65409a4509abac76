"""A domain that fills only some rows of the generator's square (LSUN cars: rows 64 to 448 of 512).

Training: the data is squashed into those rows, every trainer's encoders read them only and their losses compare
them only: what lies outside them is no part of the inversion, so training on images that differ only there gives
the same weights to the bit. The bundles record the rows, so inversion reads photos the same way, and what is
written and shown is those rows, as the official cars codes save their results.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hyperinverter.errors import InputError
from hyperinverter.io.gan import save_gan
from hyperinverter.losses.reconstruction import ReconstructionLoss
from hyperinverter.models.encoders import TrunkConfig
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.training.e2style import E2StyleTrainingConfig
from hyperinverter.training.hyperstyle import HyperStyleTrainingConfig, train_hyperstyle
from hyperinverter.training.inversion import InversionTrainingConfig, train_hypernetwork, train_w_encoder
from hyperinverter.training.loop import load_split
from hyperinverter.training.psp import PspTrainingConfig, train_psp

CARS = (0.125, 0.875)  # rows 4 to 28 of the tiny generator's 32
TRUNK = TrunkConfig("ir_se", units=(1, 1, 1, 1), widths=(8, 16, 32, 64))
RUN = {"data": "unused", "steps": 3, "batch_size": 4, "lr": 3e-3, "hflip": False, "log_every": 1, "val_every": 1000,
       "sample_every": 1000, "checkpoint_every": 1000, "progress": False, "tensorboard": False, "device": "cpu",
       "content_rows": CARS}


@pytest.fixture
def cars(tmp_path, tiny_generator):
    """The tiny generator's folder and two sets of images that differ only outside the content rows."""
    save_gan(tmp_path / "gan", tiny_generator)
    with torch.no_grad():
        x = tiny_generator(torch.randn(4, 16, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    images = ((x + 1) * 127.5).round().to(torch.uint8)
    images[..., :4, :] = images[..., 28:, :] = 0  # black above and below, as the data is padded
    noisy = images.clone()
    outside = torch.randint(0, 256, (4, 3, 8, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    noisy[..., :4, :], noisy[..., 28:, :] = outside[..., :4, :], outside[..., 4:, :]
    return tmp_path, images, noisy


def _weights(folder) -> dict[str, torch.Tensor]:
    pipe = InversionPipeline.from_pretrained(folder, device="cpu")
    return {f"{name}.{key}": value for name, method in pipe.methods.items()
            for key, value in method.state_dict().items() if not key.startswith("generator.")}


def _same_training_either_way(train, config, images, noisy):
    """Train on both image sets; return the first run's model folder after checking both give the same weights."""
    a = train(config("a"), images=images, val_images=images[:2])
    b = train(config("b"), images=noisy, val_images=noisy[:2])
    first, second = _weights(a.final_model), _weights(b.final_model)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert [h["loss/l2"] for h in a.history if "loss/l2" in h] == [h["loss/l2"] for h in b.history if "loss/l2" in h]
    return a.final_model


def test_hyperinverter_and_hyperstyle_train_on_the_content_rows_only(cars):
    root, images, noisy = cars

    def phase1(run):
        return InversionTrainingConfig(run_dir=str(root / f"p1-{run}"), generator=str(root / "gan"),
                                       encoder_resolution=64, trunk=TRUNK, **RUN)

    p1 = _same_training_either_way(train_w_encoder, phase1, images, noisy)

    def phase2(run):
        return InversionTrainingConfig(run_dir=str(root / f"p2-{run}"), generator=str(root / "gan"), w_encoder=str(p1),
                                       encoder_resolution=64, trunk=TRUNK, feature_channels=16, feature_size=2,
                                       hidden_dim=8, regressor_width=8, **RUN)

    p2 = _same_training_either_way(train_hypernetwork, phase2, images, noisy)

    def hyperstyle(run):
        return HyperStyleTrainingConfig(run_dir=str(root / f"hs-{run}"), generator=str(root / "gan"),
                                        w_encoder=str(p1), trunk=TrunkConfig("resnet", units=(1, 1, 1, 1),
                                                                             widths=(8, 16, 32, 64)),
                                        input_size=64, n_iters_per_batch=2, hyper_inner=8, refine_inner=8, **RUN)

    hs = _same_training_either_way(train_hyperstyle, hyperstyle, images, noisy)

    for folder, method, shape in ((p2, "hyperinverter", (48, 64)), (hs, "hyperstyle", (48, 64))):
        pipe = InversionPipeline.from_pretrained(folder, device="cpu")
        assert pipe.content_rows == CARS and pipe.methods["phase1"].content_rows == CARS
        inverter = pipe.inverter(method)
        encoder = inverter.feature_encoder if method == "hyperinverter" else inverter.hypernetwork
        assert encoder.config.input_shape == shape  # the 3:4 rows at the encoders' width
        result = pipe.invert(images.float() / 127.5 - 1, method=method)
        assert result.image.shape == (4, 3, 32, 32)


def test_psp_and_e4e_train_on_the_content_rows_only(cars):
    root, images, noisy = cars

    def e4e(run):
        return PspTrainingConfig(run_dir=str(root / f"e4e-{run}"), generator=str(root / "gan"), mode="e4e",
                                 progressive_start=1, progressive_step_every=1, optimizer="adam",
                                 encoder_resolution=64, trunk=TRUNK, **RUN)

    folder = _same_training_either_way(train_psp, e4e, images, noisy)
    pipe = InversionPipeline.from_pretrained(folder, device="cpu")
    assert pipe.content_rows == CARS
    assert pipe.inverter("e4e").style_encoder.config.input_shape == (48, 64)


def test_the_loss_falls_on_the_content_rows(cars):
    root, images, _ = cars
    cfg = PspTrainingConfig(run_dir=str(root / "psp"), generator=str(root / "gan"), optimizer="adam",
                            encoder_resolution=64, trunk=TRUNK, **{**RUN, "steps": 30})
    result = train_psp(cfg, images=images, val_images=images[:2])
    losses = [h["loss/l2"] for h in result.history if "loss/l2" in h]
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_folder_of_photos_is_squashed_into_the_content_rows(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (80, 60), (200, 40 * i, 90)).save(data / f"car{i}.png")  # 4:3, as LSUN cars
    cfg = InversionTrainingConfig(run_dir=str(tmp_path / "run"), generator="unused", encoder_resolution=64,
                                  **{**RUN, "data": str(data), "val_fraction": 0.0})
    images = load_split(cfg, resolution=32, channels=3, split="train")
    assert images.shape == (3, 3, 32, 32)
    assert images[..., :4, :].eq(0).all() and images[..., 28:, :].eq(0).all()  # black above and below
    assert images[:, 0, 4:28].float().sub(200).abs().max() <= 1  # the whole photo in rows 4 to 28


def test_the_loss_pools_non_square_images_by_the_width():
    output, target = torch.rand(2, 2, 3, 24, 32) * 2 - 1
    _, parts = ReconstructionLoss(loss_resolution=16)(output, target)
    assert abs(parts["loss/l2"] - float(F.mse_loss(F.avg_pool2d(output, 2), F.avg_pool2d(target, 2)))) < 1e-6


def test_settings_that_cannot_train_on_content_rows_are_refused(cars, tiny_generator):
    root, images, _ = cars
    base = dict(run_dir=str(root / "x"), generator=str(root / "gan"), trunk=TRUNK, **RUN)
    with pytest.raises(ValueError, match=r"content_rows \[0.125, 0.875\] at 24x32.*multiple of 16"):
        InversionTrainingConfig(**{**base, "encoder_resolution": 32})
    with pytest.raises(ValueError, match="dfeat_weight .* whole square"):
        InversionTrainingConfig(**{**base, "encoder_resolution": 64, "dfeat_weight": 0.1})
    with pytest.raises(ValueError, match=r"input_size 32 reads content_rows \[0.125, 0.875\] at 24x32: input_height"):
        HyperStyleTrainingConfig(**{**base, "w_encoder": "unused", "input_size": 32})
    with pytest.raises(ValueError, match="E2Style reads square images"):
        E2StyleTrainingConfig(**{**base, "encoder_resolution": 64})
    with pytest.raises(ValueError, match="content rows must be"):
        InversionTrainingConfig(**{**base, "encoder_resolution": 64, "content_rows": (0.9, 0.1)})
    # A square Phase I under a run on content rows (and the other way round) is named with its folder.
    square = train_w_encoder(InversionTrainingConfig(**{**base, "run_dir": str(root / "square"),
                                                        "encoder_resolution": 64, "content_rows": None}),
                             images=images, val_images=images[:2])
    with pytest.raises(InputError, match=r"final: its W encoder reads the whole square, the run's images fill the "
                                         r"content rows \[0.125, 0.875\]"):
        train_hypernetwork(InversionTrainingConfig(**{**base, "encoder_resolution": 64,
                                                      "w_encoder": str(square.final_model)}),
                           images=images, val_images=images[:2])


def test_methods_that_read_other_rows_are_never_joined(tmp_path, tiny_generator, capsys):
    # Joined, a bundle trained on cars' rows and one trained on whole squares gave one model that fed every
    # method photos fitted for the first: the square encoder read squashed cars with black rows.
    from hyperinverter.cli.main import main
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.methods.projector import WProjection
    from hyperinverter.methods.psp import PSP
    from hyperinverter.models.encoders import WEncoder, WEncoderConfig
    from hyperinverter.pipeline import save_pipeline

    e1 = WEncoder(WEncoderConfig(trunk=TRUNK, w_dim=tiny_generator.w_dim))
    cars = Phase1(tiny_generator, w_encoder=e1, encoder_resolution=64, content_rows=CARS)
    square = PSP.create(tiny_generator)
    with pytest.raises(ValueError, match=r"phase1 reads the content rows \[0.125, 0.875\]; psp reads the whole square"):
        InversionPipeline({"phase1": cars, "psp": square})
    assert InversionPipeline({"phase1": cars, "w-opt": WProjection(tiny_generator)}).content_rows == CARS

    save_pipeline({"phase1": cars}, tmp_path / "cars")
    save_pipeline({"psp": square}, tmp_path / "square")
    assert main(["join", str(tmp_path / "cars"), str(tmp_path / "square"), "--out", str(tmp_path / "joined")]) == 2
    assert "square: does not fit with the bundle: the methods read different rows" in capsys.readouterr().err
    assert not (tmp_path / "joined").exists()


def test_what_is_written_and_shown_is_the_domain_s_rows(tmp_path, tiny_generator):
    # The official cars codes save the car's rows (e4e: rows 64:448; HyperStyle likewise); every output here was
    # the whole square, black rows included.
    from hyperinverter.apps.web import WebSession
    from hyperinverter.cli.main import main
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.models.encoders import WEncoder, WEncoderConfig
    from hyperinverter.pipeline import save_pipeline

    e1 = WEncoder(WEncoderConfig(trunk=TRUNK, w_dim=tiny_generator.w_dim))
    save_pipeline({"phase1": Phase1(tiny_generator, w_encoder=e1, encoder_resolution=64, content_rows=CARS)},
                  tmp_path / "cars")
    for name in ("a", "b"):
        Image.new("RGB", (40, 30), (20, 90, 200)).save(tmp_path / f"{name}.png")
    model = ["--model", str(tmp_path / "cars")]
    photos = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert main(["invert", *photos, *model, "--out", str(tmp_path / "inv")]) == 0
    assert Image.open(tmp_path / "inv" / "a.png").size == (32, 24)  # rows 4 to 28 of the 32-px square
    # (--content-rows saying the bundle's own rows is accepted; other rows are refused, naming the option)
    assert main(["invert", *photos, *model, "--content-rows", *map(str, CARS), "--out", str(tmp_path / "same")]) == 0
    assert Image.open(tmp_path / "inv" / "a_compare.png").size[1] < 32
    assert main(["mix", *photos, *model, "--layers", "0:2", "--out", str(tmp_path / "mix.png")]) == 0
    assert Image.open(tmp_path / "mix.png").size == (32, 24)
    assert main(["interpolate", str(tmp_path / "inv" / "a.safetensors"), str(tmp_path / "b.png"), *model, "--steps",
                 "3", "--out", str(tmp_path / "lerp")]) == 0
    assert Image.open(tmp_path / "lerp.png").size[1] < 32
    pipe = InversionPipeline.from_pretrained(tmp_path / "cars", device="cpu")
    shown = WebSession(pipe, display_size=32).to_display(torch.zeros(2, 3, 32, 32))
    assert shown.size[1] < 32 and pipe.content(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 24, 32)
    for images in (torch.zeros(1, 3, 32, 24), torch.zeros(32)):  # (the rows of a non-square image: a wrong crop)
        with pytest.raises(ValueError, match=r"images must be square generator images \[\.\.\., R, R\], got"):
            pipe.content(images)
