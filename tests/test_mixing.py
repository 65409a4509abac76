"""Style mixing: rows of one inversion's codes in another's, which keeps its own offsets; and the `mix` command."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hyperinverter.cli.main import main
from hyperinverter.methods import InversionResult
from hyperinverter.models.weight_delta import WeightDelta


def images(n, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def pair(pipeline):
    result = pipeline.invert(images(2))
    return result.select(0), result.select(1)


def test_all_rows_from_b_render_b_codes_with_a_offsets(pipeline, pair):
    a, b = pair
    # The tiny model's offsets are small: make a's large, so that whose offsets are used shows in the image.
    strong = WeightDelta({k: 30 * v for k, v in a.weight_delta.items()}, mode=a.weight_delta.mode)
    a = InversionResult(ws=a.ws, image=pipeline.render(a.ws, strong), weight_delta=strong)
    num_ws = pipeline.generator.num_ws
    mixed = pipeline.mix(a, b, 0, num_ws)
    assert torch.allclose(mixed, pipeline.render(b.ws, strong), atol=1e-6)
    assert not torch.allclose(mixed, b.image, atol=1e-2)  # b's own offsets are not used


def test_a_range_takes_those_rows_only(pipeline, pair):
    a, b = pair
    ws = a.ws.clone()
    ws[:, 2:5] = b.ws[:, 2:5]
    assert torch.allclose(pipeline.mix(a, b, 2, 5), pipeline.render(ws, a.weight_delta), atol=1e-6)
    assert torch.allclose(pipeline.mix(a, a, 0, 4), a.image, atol=1e-5)  # own rows: the reconstruction
    both = pipeline.invert(images(2, seed=5))
    mixed = pipeline.mix(both, b, 0, 3)  # one b for every sample of a
    assert mixed.shape == (2, 3, 32, 32)
    assert torch.allclose(mixed[1:], pipeline.mix(both.select(1), b, 0, 3), atol=1e-5)


def test_a_without_offsets(pipeline, pair):
    _, b = pair
    w_only = pipeline.invert(images(1), method="phase1")
    assert w_only.weight_delta is None
    assert torch.allclose(pipeline.mix(w_only, b, 0, 8), pipeline.render(b.ws), atol=1e-6)


@pytest.mark.parametrize(("start", "end"), [(0, 0), (3, 3), (5, 2), (-1, 3), (0, 9), (8, 9)])
def test_bad_ranges(pipeline, pair, start, end):
    with pytest.raises(ValueError, match=rf"layer range {start}:{end} is empty or outside the codes' rows 0:8"):
        pipeline.mix(*pair, start, end)


def test_bad_range_types_and_pairs(pipeline, pair):
    a, b = pair
    with pytest.raises(TypeError, match="must be an integer"):
        pipeline.mix(a, b, 0, 2.5)
    with pytest.raises(TypeError, match="must be an integer"):
        pipeline.mix(a, b, False, 3)
    with pytest.raises(ValueError, match="different models"):
        pipeline.mix(a, type(b)(ws=torch.zeros(1, 10, 16), image=b.image), 0, 2)
    with pytest.raises(ValueError, match="one image for b, or as many as a"):
        pipeline.mix(a, pipeline.invert(images(2)), 0, 2)


def test_numpy_and_tensor_integers_are_whole_numbers(pipeline, pair):
    # A range, steps or resolution from numpy (np.arange, an array's shape) was refused: "steps must be a whole
    # number from 2 to 240, got np.int64(3)".
    import numpy as np

    a, b = pair
    assert torch.equal(pipeline.mix(a, b, np.int64(2), torch.tensor(5)), pipeline.mix(a, b, 2, 5))
    assert torch.equal(pipeline.interpolate(a, b, np.int64(3)), pipeline.interpolate(a, b, 3))
    assert torch.equal(pipeline.adapt(a, pipeline.generator, min_resolution=np.int32(8)),
                       pipeline.adapt(a, pipeline.generator, min_resolution=8))
    with pytest.raises(ValueError, match="steps must be a whole number"):
        pipeline.interpolate(a, b, np.float64(3.0))


@pytest.fixture
def model_and_photos(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "model")
    photos = []
    for i, name in enumerate(["a.png", "b.jpg"]):
        arr = (torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()
        Image.fromarray(arr).save(tmp_path / name)
        photos.append(tmp_path / name)
    return tmp_path / "model", photos


def test_cli_writes_the_mix_and_the_strip(model_and_photos, tmp_path, capsys):
    model, (a, b) = model_and_photos
    out = tmp_path / "out" / "m.png"
    assert main(["mix", str(a), str(b), "--model", str(model), "--layers", "0:4", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "mixed layers 0:4" in capsys.readouterr().out
    assert Image.open(out).size == (32, 32)
    assert Image.open(tmp_path / "out" / "m_strip.png").size == (3 * 34 + 2, 36)  # A | B | mix

    assert main(["mix", str(a), str(b), "--model", str(model), "--layers", "0:4", "--layers", "6:",
                 "--method", "phase1", "--out", str(tmp_path / "two"), "--device", "cpu"]) == 0
    assert (tmp_path / "two_0-4.png").is_file() and (tmp_path / "two_6-8.png").is_file()
    assert Image.open(tmp_path / "two_strip.png").size == (4 * 34 + 2, 36)  # A | B | two mixes


def test_cli_errors(model_and_photos, tmp_path, capsys):
    model, (a, b) = model_and_photos
    base = ["mix", str(a), str(b), "--model", str(model), "--device", "cpu"]
    assert main([*base, "--layers", "2:99", "--out", str(tmp_path / "x.png")]) == 2
    assert "layer range '2:99' does not fit a generator with 8 ws" in capsys.readouterr().err
    assert main([*base, "--layers", "0:2", "--out", str(a)]) == 2
    assert "is the input" in capsys.readouterr().err
    (tmp_path / "folder.png").mkdir()
    assert main([*base, "--layers", "0:2", "--out", str(tmp_path / "folder.png")]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--layers", "3"])
    assert "expected START:END" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_adapt_leaves_the_callers_generator_as_it_was(pipeline, pair):
    # A half-precision generator failed inside its first layer, and one on another device (or in training mode) was
    # moved there (and switched to eval) in place.
    import copy

    a, _ = pair
    styled = copy.deepcopy(pipeline.generator).train()
    expected = pipeline.adapt(a, styled)
    half = styled.half()
    adapted = pipeline.adapt(a, half)
    assert adapted.dtype == torch.float32 and (adapted - expected).abs().max() < 0.05
    assert half.training and {p.dtype for p in half.parameters()} == {torch.float16}
