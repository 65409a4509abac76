"""InversionPipeline end to end on tiny models: batching, save/load, edit, interpolate, and the CLI."""

import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from hyperinverter.cli.main import main
from hyperinverter.convert.gan_files import load_gan
from hyperinverter.editing import LinearDirection, save_direction
from hyperinverter.errors import InputError
from hyperinverter.inversion.files import load_inversion
from hyperinverter.pipeline import InversionPipeline


def images(n, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_batch_equals_single_inversions(pipeline):
    x = images(4)
    batched = pipeline.invert(x, batch_size=4)
    singles = [pipeline.invert(x[i : i + 1], batch_size=1) for i in range(4)]
    for i, one in enumerate(singles):
        assert (batched.image[i] - one.image[0]).abs().max() <= 1e-5
        assert (batched.ws[i] - one.ws[0]).abs().max() <= 1e-5
        for k in one.weight_delta:
            assert (batched.weight_delta[k][i] - one.weight_delta[k][0]).abs().max() <= 1e-5
    assert list(batched.timings) == ["w_encoder", "w_image", "feature_encoder", "hypernetworks", "synthesis"]
    assert not torch.allclose(batched.image, batched.initial_image)  # Phase II changes the image


def test_the_inputs_a_user_hands_over(pipeline, tmp_path, caplog):
    import hyperinverter

    assert hyperinverter.InversionPipeline is InversionPipeline  # the package's own entry point
    x = images(1)
    as_uint8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # as torchvision.io.read_image gives
    torch.testing.assert_close(pipeline.prepare(as_uint8), as_uint8.float() / 127.5 - 1)
    Image.fromarray(as_uint8[0].permute(1, 2, 0).numpy()).save(tmp_path / "one.png")
    by_path = pipeline.prepare(tmp_path / "one.png")  # one path, not a sequence of characters
    assert by_path.shape == (1, 3, 32, 32)
    assert torch.equal(pipeline.prepare(str(tmp_path / "one.png")), by_path)
    assert torch.equal(pipeline.prepare(Image.open(tmp_path / "one.png")), by_path)
    # A file's bytes were taken as a sequence of numbers; a numpy image (as imageio and OpenCV give) was refused as
    # "not a readable image"; an int64 or bool tensor failed deep inside with a torch error.
    assert torch.equal(pipeline.prepare((tmp_path / "one.png").read_bytes()), by_path)
    assert torch.equal(pipeline.prepare(np.asarray(Image.open(tmp_path / "one.png"))), by_path)
    assert torch.equal(pipeline.prepare([np.asarray(Image.open(tmp_path / "one.png"))] * 2), by_path.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="a numpy image must be uint8 H x W or H x W x 1/3/4, got float32"):
        pipeline.prepare(np.zeros((32, 32, 3), np.float32))
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(ValueError, match=f"floats in \\[-1, 1\\] or uint8 in \\[0, 255\\], got {dtype}"):
            pipeline.prepare(as_uint8.to(dtype))
    # A list of tensors is converted one by one: a uint8 image among floats was joined as floats in [0, 255] (taken
    # for [-1, 1] with a warning), an int64 or bool one without a word.
    torch.testing.assert_close(pipeline.prepare([as_uint8[0], x[0]]), torch.cat([as_uint8.float() / 127.5 - 1, x]))
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(ValueError, match=f"floats in \\[-1, 1\\] or uint8 in \\[0, 255\\], got {dtype}"):
            pipeline.prepare([x[0], as_uint8[0].to(dtype)])
    with pytest.raises(ValueError, match="no images given"):
        pipeline.prepare(x[:0])
    with caplog.at_level("WARNING"):
        pipeline.prepare(x * 255)
    assert "inversion expects [-1, 1]" in caplog.text
    # Floats in [0, 1] (torchvision's ToTensor) were taken as [-1, 1] without a word: a washed-out inversion.
    caplog.clear()
    with caplog.at_level("WARNING"):
        pipeline.prepare(x)
        pipeline.prepare(as_uint8)
        pipeline.prepare(by_path)
    assert "no negative values" not in caplog.text
    with caplog.at_level("WARNING"):
        pipeline.prepare(torch.cat([x, (x + 1) / 2]))
    assert "image(s) [1] given hold no negative values: inversion expects [-1, 1]" in caplog.text
    caplog.clear()
    bright = torch.full_like(as_uint8, 200)  # a uint8 image among floats: a bright photo, not floats in [0, 1]
    with caplog.at_level("WARNING"):
        pipeline.prepare([bright[0], x[0], (x[0] + 1) / 2])
    assert "image(s) [2] given hold no negative values" in caplog.text


def test_selecting_a_sample_by_index():
    from hyperinverter.methods import InversionResult

    result = InversionResult(ws=torch.arange(3.0).reshape(3, 1, 1), image=torch.zeros(3, 1, 2, 2))
    assert result.select(-1).ws.item() == 2 and result.select(0).ws.item() == 0  # select(-1) was empty
    with pytest.raises(IndexError, match="index 3 is out of range for 3 image"):
        result.select(3)  # was an empty result


def test_a_result_built_by_hand_is_checked():
    from hyperinverter.methods import InversionResult

    # Asserts: an AssertionError (nothing at all under python -O), and a numpy array an AttributeError.
    for ws, image, match in ((torch.zeros(2, 3), torch.zeros(2, 1, 2, 2), "ws must be a tensor \\[B, num_ws, w_dim\\]"),
                             (np.zeros((2, 1, 3)), torch.zeros(2, 1, 2, 2), "got ndarray"),
                             (torch.zeros(2, 1, 3), torch.zeros(1, 1, 2, 2), "with the 2 sample\\(s\\) of ws")):
        with pytest.raises(ValueError, match=match):
            InversionResult(ws=ws, image=image)
    with pytest.raises(ValueError, match="initial_image and steps must be tensors"):
        InversionResult(ws=torch.zeros(1, 1, 3), image=torch.zeros(1, 1, 2, 2), steps=[torch.zeros(1, 1, 4, 4)])


def test_save_and_load_pretrained(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "pipe")
    again = InversionPipeline.from_pretrained(tmp_path / "pipe", device="cpu")
    x = images(2)
    assert torch.allclose(pipeline.invert(x).image, again.invert(x).image, atol=1e-6)
    assert (tmp_path / "pipe" / "hypernetwork" / "model.safetensors").is_file()


def test_edit_reuses_delta_and_interpolation_ends(pipeline):
    result = pipeline.invert(images(2))
    d = LinearDirection(torch.randn(1, 16))
    assert torch.allclose(pipeline.edit(result, d, 0.0), result.image, atol=1e-6)
    edited = pipeline.edit(result, d, 2.0)
    expected = pipeline.render(result.ws + 2.0 * d.vector, result.weight_delta)
    assert torch.allclose(edited, expected, atol=1e-6)
    # The same edit named as `edit --direction` takes it, or given as a vector.
    assert torch.equal(pipeline.edit(result, d.vector[0], 2.0), edited)
    with pytest.raises(ValueError, match="finite"):
        pipeline.edit(result, d, float("nan"))
    with pytest.raises(TypeError, match="strength must be a number, got '2'"):  # was "must be real number, not str"
        pipeline.edit(result, d, "2")
    with warnings.catch_warnings():  # (np.float32 raised numpy's "overflow encountered in cast" in the check)
        warnings.simplefilter("error")
        assert torch.equal(pipeline.edit(result, d, np.float32(2.0)), edited)  # numpy's scalars are numbers
    frames = pipeline.interpolate(result.select(0), result.select(1), steps=5)
    assert frames.shape == (5, 3, 32, 32)
    assert torch.allclose(frames[0], result.image[0], atol=1e-5)
    assert torch.allclose(frames[-1], result.image[1], atol=1e-5)


def test_edits_at_several_strengths_run_in_one_synthesis_call(pipeline, monkeypatch):
    result = pipeline.invert(images(2))
    d = LinearDirection(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)))
    strengths = [-2.0, 0.5, None, 3.0]
    one_by_one = torch.stack([pipeline.edit(result.select(1), d, s) for s in strengths])
    calls = []
    synthesis = pipeline.generator.synthesis.forward
    monkeypatch.setattr(pipeline.generator.synthesis, "forward",
                        lambda ws, **kw: calls.append(len(ws)) or synthesis(ws, **kw))
    together = pipeline.edit_strengths(result.select(1), d, strengths)
    assert calls == [4] and together.shape == (4, 1, 3, 32, 32)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)
    # A batch of images: [strength, image]; numpy's strengths as they come.
    both = pipeline.edit_strengths(result, d, np.array([-2.0, 0.5]))
    torch.testing.assert_close(both[:, 1:], one_by_one[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], pipeline.edit(result, d, 0.5), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="strengths is empty"):
        pipeline.edit_strengths(result, d, [])
    with pytest.raises(TypeError, match="strengths must be a sequence of numbers, got str"):
        pipeline.edit_strengths(result, d, "2")
    with pytest.raises(TypeError, match="strength must be a number, got '2'"):
        pipeline.edit_strengths(result, d, [1.0, "2"])



def test_the_edits_of_several_results_share_synthesis_calls_of_at_most_a_batch(pipeline, monkeypatch):
    # The faces of a photo were edited one synthesis call each; all at once is a photo of 30 faces at 1024 px.
    hyper = pipeline.invert(images(3))
    w_only = pipeline.invert(images(1), method="phase1")  # (no Δθ: a call of its own)
    results = [hyper.select(0), hyper.select(slice(1, 3)), w_only, hyper.select(2)]
    d = LinearDirection(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)))
    alone = [pipeline.edit_strengths(r, d, [-2.0, 3.0]) for r in results]
    calls = []
    synthesis = pipeline.generator.synthesis.forward

    def spy(ws, weight_delta=None, **kw):
        calls.append((len(ws), None if weight_delta is None else weight_delta.batch_size))
        return synthesis(ws, weight_delta=weight_delta, **kw)

    monkeypatch.setattr(pipeline.generator.synthesis, "forward", spy)
    together = pipeline.edit_each(results, d, iter([-2.0, 3.0]), batch_size=6)
    # Three samples × two strengths, each with its own Δθ; then the one without Δθ, and the last.
    assert calls == [(6, 6), (2, None), (2, 2)]
    assert [tuple(t.shape) for t in together] == [(2, 1, 3, 32, 32), (2, 2, 3, 32, 32), (2, 1, 3, 32, 32),
                                                  (2, 1, 3, 32, 32)]
    for got, expected in zip(together, alone):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    calls.clear()
    pipeline.edit_each(results[:2], d, [1.0, 2.0, 3.0], batch_size=4)  # (a result over the batch: alone)
    assert calls == [(3, 3), (6, 6)]
    with pytest.raises(TypeError, match=r"results\[1\] must be an InversionResult"):
        pipeline.edit_each([hyper, "face.safetensors"], d, [1.0])
    with pytest.raises(ValueError, match="results is empty"):
        pipeline.edit_each([], d, [1.0])
    with pytest.raises(ValueError, match="batch_size must be a whole number of 1 or more, got 0"):
        pipeline.edit_each([hyper], d, [1.0], batch_size=0)

def test_one_images_offsets_are_tiled_as_a_view():
    from hyperinverter.models.weight_delta import WeightDelta

    one = WeightDelta({"b4.conv1.weight": torch.randn(1, 8, 8, 3, 3)})
    tiled = one.tile(3)
    assert tiled.batch_size == 3 and tiled["b4.conv1.weight"].data_ptr() == one["b4.conv1.weight"].data_ptr()
    assert torch.equal(tiled["b4.conv1.weight"][2], one["b4.conv1.weight"][0])
    two = WeightDelta({"b4.conv1.weight": torch.randn(2, 8, 8, 3, 3)}, mode="scale")
    assert torch.equal(two.tile(2)["b4.conv1.weight"], torch.cat([two["b4.conv1.weight"]] * 2))
    assert two.tile(2).mode == "scale" and two.tile(1) is two
    with pytest.raises(ValueError, match="times must be a whole number of 1 or more, got 0"):
        one.tile(0)


def test_a_saved_result_loads_back_as_the_same_inversion(pipeline, tmp_path):
    result = pipeline.invert(images(2))
    path = pipeline.save_result(result.select(1), tmp_path / "one.safetensors", source="photo.png")
    loaded, record = pipeline.load_result(path)
    assert torch.equal(loaded.ws, result.ws[1:]) and torch.allclose(loaded.image, result.image[1:], atol=1e-6)
    assert record["method"] == pipeline.default_method and record["source"] == "photo.png"
    assert record["generator"] == pipeline.fingerprint
    with pytest.raises(ValueError, match="one image"):
        pipeline.save_result(result, tmp_path / "two.safetensors")
    assert not (tmp_path / "two.safetensors").exists()



def test_render_checks_the_codes_shape_itself(pipeline):
    # The generator asserts it; under `python -O` the assertion is gone and a wrong shape failed deep inside
    # ("start (3) + length (3) exceeds dimension size (5)").
    G = pipeline.generator
    for ws in [torch.zeros(2, G.num_ws - 1, G.w_dim), torch.zeros(2, G.w_dim), torch.zeros(1, G.num_ws, G.w_dim + 1)]:
        with pytest.raises(ValueError, match=rf"codes must be \[B, {G.num_ws}, {G.w_dim}\] for this generator, got"):
            pipeline.render(ws)
    assert pipeline.render(torch.zeros(1, G.num_ws, G.w_dim)).shape == (1, G.config.img_channels, G.resolution,
                                                                                G.resolution)

def test_a_loaded_bundle_edits_by_its_direction_names(pipeline, tmp_path):
    d = LinearDirection(torch.randn(1, 16), name="up", default_strength=2.0)
    pipeline.save_pretrained(tmp_path / "model")
    save_direction(d, tmp_path / "model" / "directions" / "up.safetensors")
    loaded = InversionPipeline.from_pretrained(tmp_path / "model", device="cpu")
    result = loaded.invert(images(1))
    torch.testing.assert_close(loaded.edit(result, "up"), loaded.edit(result, d))
    torch.testing.assert_close(loaded.edit(result, tmp_path / "model" / "directions" / "up.safetensors", 1.0),
                               loaded.edit(result, d, 1.0))
    with pytest.raises(InputError, match=r"it has: up"):
        loaded.edit(result, "down")


def test_interpolate_names_both_files_when_they_cannot_be_joined(tmp_path, capsys):
    # HyperStyle's offsets scale θ, HyperInverter's add to it: "cannot interpolate 'scale' and 'add' offsets" named
    # neither file.
    photo = tmp_path / "p.png"
    pixels = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    Image.fromarray(pixels).save(photo)
    for method in ("hyperstyle", "hyperinverter"):
        assert main(["invert", str(photo), "--model", "faces-64", "--method", method, "--out", str(tmp_path / method),
                     "--device", "cpu"]) == 0
    a, b = tmp_path / "hyperstyle" / "p.safetensors", tmp_path / "hyperinverter" / "p.safetensors"
    capsys.readouterr()
    assert main(["interpolate", str(a), str(b), "--model", "faces-64", "--out", str(tmp_path / "lerp")]) == 2
    err = capsys.readouterr().err
    assert f"{a} and {b}: cannot interpolate 'scale' and 'add' offsets" in err, err
    assert not list(tmp_path.glob("lerp*"))


def test_cli_invert_edit_interpolate_export(pipeline, tmp_path, capsys):
    pipeline.save_pretrained(tmp_path / "model")
    inputs = tmp_path / "photos"
    (inputs / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/a.png"]):
        arr = (torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()
        Image.fromarray(arr).save(inputs / name)
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    # The broken file fails (exit status 1), the others are all written.
    assert main(["invert", str(inputs), "--model", str(tmp_path / "model"), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err
    names = sorted(p.name for p in out.iterdir())
    assert "b.png" in names and "b_compare.png" in names and "photos_a.safetensors" in names and "sub_a.png" in names
    ws, delta, meta = load_inversion(out / "b.safetensors")
    assert ws.shape == (1, 8, 16) and delta.mode == "add" and meta["source"].endswith("b.jpg")

    save_direction(LinearDirection(torch.randn(1, 16), name="dir"), tmp_path / "dir.safetensors")
    assert main(["edit", str(out / "b.safetensors"), "--model", str(tmp_path / "model"), "--direction",
                 str(tmp_path / "dir.safetensors"), "--strength", "-2", "2", "--out", str(tmp_path / "edits")]) == 0
    assert (tmp_path / "edits" / "b_dir_+2.png").is_file() and (tmp_path / "edits" / "b_dir_strip.png").is_file()
    # --strength repeats: every value is made, where the last flag used to replace the earlier ones.
    assert main(["edit", str(out / "b.safetensors"), "--model", str(tmp_path / "model"), "--direction",
                 str(tmp_path / "dir.safetensors"), "--strength", "-1", "--strength", "1", "--out",
                 str(tmp_path / "edits2")]) == 0
    assert {p.name for p in (tmp_path / "edits2").iterdir()} == {"b_dir_-1.png", "b_dir_+1.png", "b_dir_strip.png"}
    # By name, from the model's own catalogue; an unknown name lists what the model has.
    save_direction(LinearDirection(torch.randn(1, 16), name="lift"), tmp_path / "model" / "directions" / "lift.safetensors")
    assert main(["edit", str(out / "b.safetensors"), "--model", str(tmp_path / "model"), "--direction", "lift",
                 "--out", str(tmp_path / "edits")]) == 0
    assert (tmp_path / "edits" / "b_lift_default.png").is_file()
    assert main(["edit", str(out / "b.safetensors"), "--model", str(tmp_path / "model"), "--direction", "smile",
                 "--out", str(tmp_path / "edits")]) == 2
    assert "it has: lift" in capsys.readouterr().err

    assert main(["interpolate", str(out / "b.safetensors"), str(inputs / "a.png"), "--model", str(tmp_path / "model"),
                 "--steps", "4", "--out", str(tmp_path / "lerp")]) == 0
    assert (tmp_path / "lerp.png").is_file() and (tmp_path / "lerp.gif").is_file()
    from hyperinverter.io.video import video_backend

    if video_backend() == "av":  # the video extra: 4 frames there and back, at the model's 32 px
        import av

        with av.open(str(tmp_path / "lerp.mp4")) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == 8 and (frames[0].width, frames[0].height) == (32, 32)

    assert main(["export-generator", str(out / "b.safetensors"), "--model", str(tmp_path / "model"),
                 "--out", str(tmp_path / "b_generator.pt")]) == 0
    baked = load_gan(tmp_path / "b_generator.pt").generator
    ws2 = torch.load(tmp_path / "b_generator.pt", weights_only=True)["ws"]  # the image's code, in the same file
    with torch.no_grad():
        assert torch.allclose(baked.synthesis(ws2), pipeline.render(ws, delta), atol=1e-5)
    # Upper-case suffixes: g.PT was written as a folder of that name, x.PNG as x.PNG.png, x.PNG.gif, x.PNG.mp4.
    assert main(["export-generator", str(out / "b.safetensors"), "--model", str(tmp_path / "model"),
                 "--out", str(tmp_path / "B.PT")]) == 0
    assert (tmp_path / "B.PT").is_file() and torch.equal(load_gan(tmp_path / "B.PT").generator.state_dict()[
        "synthesis.b4.conv1.weight"], baked.state_dict()["synthesis.b4.conv1.weight"])
    assert main(["interpolate", str(out / "b.safetensors"), str(inputs / "a.png"), "--model", str(tmp_path / "model"),
                 "--steps", "2", "--out", str(tmp_path / "upper.PNG")]) == 0
    assert (tmp_path / "upper.png").is_file() and not list(tmp_path.glob("upper.PNG*"))
    # A strip of every frame wider than the widest picture (240 steps of a 1024-px model: 246,000 px) shows evenly
    # spaced frames, the ends among them; the GIF keeps them all.
    from hyperinverter.io import images

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(images, "MAX_PICTURE_SIDE", 4 * 34 + 2)  # (4 frames of 32 px with their 2-px padding)
        assert main(["interpolate", str(out / "b.safetensors"), str(inputs / "a.png"), "--model",
                     str(tmp_path / "model"), "--steps", "7", "--out", str(tmp_path / "long")]) == 0
    assert Image.open(tmp_path / "long.png").size == (4 * 34 + 2, 36)
    assert Image.open(tmp_path / "long.gif").n_frames >= 2 * 7 - 1  # (there and back: Pillow joins the turn)
    assert "the strip shows 4 of the 7 frames" in capsys.readouterr().out
    assert main(["export-generator", str(out / "b.safetensors"), "--model", str(tmp_path / "model"),
                 "--out", str(tmp_path / "b.pkl")]) == 2  # (it wrote a folder named b.pkl)
    assert "writing NVIDIA pickles is not supported" in capsys.readouterr().err and not (tmp_path / "b.pkl").exists()


def test_parts_of_another_generator_are_refused(pipeline, tmp_path):
    from hyperinverter.io.gan import save_gan
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    pipeline.save_pretrained(tmp_path / "model")
    other = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=512, channel_max=32))
    save_gan(tmp_path / "other", other)  # wider convs: every Δθ shape is wrong
    shutil.rmtree(tmp_path / "model" / "generator")  # (swapped in by hand: the package refuses to write it there)
    shutil.copytree(tmp_path / "other", tmp_path / "model" / "generator")
    with pytest.raises(ValueError, match=r"predicts b8.conv0.weight as \[16, 16, 3, 3\], the generator's is \[32, 32"):
        InversionPipeline.from_pretrained(tmp_path / "model", device="cpu")


@pytest.mark.parametrize("first", ["invert", "render"])
def test_the_first_pass_maps_large_blocks_and_heap_reuse_follows_it(tiny_generator, monkeypatch, first):
    """On a CPU, a pipeline's first pass (an inversion or a rendering) runs with its large blocks mapped on their
    own, so that the long-lived blocks it leaves behind do not split the heap; heap reuse comes on after it."""
    import contextlib

    from conftest import build_tiny_pipeline
    from hyperinverter import memory

    entered = []

    @contextlib.contextmanager
    def spy(threshold=2**20):
        entered.append(memory._reusing)
        yield False

    reused = []
    monkeypatch.setattr(memory, "large_blocks_mapped", spy)
    monkeypatch.setattr(memory, "reuse_freed_memory", lambda: reused.append(len(entered)) or True)
    pipe = build_tiny_pipeline(tiny_generator)
    assert entered == [] and reused == []  # building a pipeline turns nothing on
    ws = pipe.invert(images(1)).ws if first == "invert" else tiny_generator.mapping(torch.randn(1, 16))
    if first == "render":
        pipe.render(ws)
    assert entered == [memory._reusing] and reused == [1]  # heap reuse after the first pass, once
    pipe.invert(images(2))
    pipe.render(ws)
    assert len(entered) == 1 and reused == [1]


def test_a_generator_alone_runs_the_methods_that_need_nothing_trained(tiny_generator, tmp_path, capsys):
    # "w-opt, wplus-opt and pti run on any generator": a generator file or folder was "not a pipeline folder".
    from hyperinverter.convert.gan_files import save_rosinality
    from hyperinverter.errors import CheckpointError
    from hyperinverter.io.gan import save_gan
    from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig

    D = Discriminator(DiscriminatorConfig(resolution=32, channel_base=256, channel_max=32))
    save_gan(tmp_path / "gan", tiny_generator, D)
    save_rosinality(tmp_path / "g.pt", tiny_generator)
    tiny = {"steps": 2, "w_avg_samples": 64}
    for source in (tmp_path / "gan", tmp_path / "g.pt"):
        pipe = InversionPipeline.from_pretrained(source, device="cpu")
        assert pipe.default_method == "w-opt" and set(pipe.available_methods()) == {"w-opt", "wplus-opt", "pti"}
        assert (pipe.discriminator is not None) == (source.suffix != ".pt")  # the GAN folder's D: its dfeat distance
        assert pipe.invert(images(1), **tiny).image.shape == (1, 3, 32, 32)
    assert pipe.invert(images(1), method="pti", steps=1, pivot_steps=2, pivot_w_avg_samples=64).weight_delta
    with pytest.raises(CheckpointError, match="is neither a pipeline folder .* nor a generator"):
        InversionPipeline.from_pretrained(tmp_path, device="cpu")
    photo = tmp_path / "photo.png"
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(photo)
    assert main(["invert", str(photo), "--model", str(tmp_path / "gan"), "--option", "steps=2",
                 "--option", "w_avg_samples=64", "--out", str(tmp_path / "inv"), "--device", "cpu"]) == 0
    assert load_inversion(tmp_path / "inv" / "photo.safetensors")[2]["method"] == "w-opt"

    # A generator of a domain in a band of its square (NVIDIA's cars) does not know its rows: --content-rows says
    # them, and a wide photo is fitted into them (it was cropped to its centre square) and saved as the band.
    wide = tmp_path / "car.png"
    Image.fromarray((torch.rand(30, 40, 3) * 255).byte().numpy()).save(wide)
    assert main(["invert", str(wide), "--model", str(tmp_path / "gan"), "--content-rows", "0.125", "0.875", "--option",
                 "steps=2", "--option", "w_avg_samples=64", "--out", str(tmp_path / "cars"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "cars" / "car.png").size == (32, 24)
    pipe = InversionPipeline.from_pretrained(tmp_path / "gan", device="cpu", content_rows=[0.125, 0.875])
    assert pipe.content_rows == (0.125, 0.875) and pipe.inverter("pti").generator is pipe.generator
    with pytest.raises(ValueError, match="content rows must be"):
        InversionPipeline.from_pretrained(tmp_path / "gan", device="cpu", content_rows=(0.9, 0.1))
    # Rows thinner than a pixel of the generator failed every photo ("height and width must be > 0"), exit 1.
    assert main(["invert", str(wide), "--model", str(tmp_path / "gan"), "--content-rows", "0", "0.01", "--option",
                 "steps=2", "--option", "w_avg_samples=64", "--out", str(tmp_path / "thin"), "--device", "cpu"]) == 2
    assert "content_rows: [0.0, 0.01] hold no row of the generator's 32-px images" in capsys.readouterr().err
    # The option is named as typed (it said "content_rows:", the library's argument).
    assert main(["invert", str(wide), "--model", str(tmp_path / "gan"), "--content-rows", "0.9", "0.1",
                 "--out", str(tmp_path / "upside-down"), "--device", "cpu"]) == 2
    assert "error: --content-rows: content rows must be [top, bottom] fractions" in capsys.readouterr().err
    from conftest import build_tiny_pipeline

    pipeline_folder = build_tiny_pipeline(tiny_generator).save_pretrained(tmp_path / "square")
    with pytest.raises(CheckpointError, match="is a bundle whose methods read the whole square, not the content rows"):
        InversionPipeline.from_pretrained(pipeline_folder, device="cpu", content_rows=(0.125, 0.875))
    capsys.readouterr()
    # On the command line the refusal names the option (it named the bundle's folder alone, "is a bundle whose ...").
    assert main(["invert", str(wide), "--model", str(pipeline_folder), "--content-rows", "0.125", "0.875",
                 "--out", str(tmp_path / "square-inv"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"error: --content-rows: [0.125, 0.875]: {pipeline_folder} is a bundle, which "
                                       "records its own rows (its methods read the whole square); leave --content-rows "
                                       "out\n")
    assert not (tmp_path / "square-inv").exists()
    with pytest.raises(SystemExit):
        main(["directions", "train", "--help"])  # (a command that fits no photo does not offer it)
    usage = capsys.readouterr().out
    assert "--model" in usage and "--content-rows" not in usage


def test_saving_over_a_bundle_keeps_its_directions_and_card_or_refuses(pipeline, tmp_path):
    from conftest import build_tiny_generator, build_tiny_pipeline
    from hyperinverter.editing import LinearDirection
    from hyperinverter.editing.directions import load_model_directions, save_direction
    from hyperinverter.errors import OutputError

    folder = tmp_path / "model"
    pipeline.save_pretrained(folder)
    save_direction(LinearDirection(torch.ones(1, pipeline.generator.w_dim), name="smile"),
                   folder / "directions" / "smile.safetensors")  # a user's trained direction
    (folder / "MODEL_CARD.md").write_text("# my model\n")

    # A retrained encoder saved back into its bundle (the user's usual loop) kept nothing but the weights.
    pipe = InversionPipeline.from_pretrained(folder, device="cpu")
    with torch.no_grad():
        next(pipe.inverter("hyperinverter").parts()["w_encoder"].parameters()).add_(0.5)
    pipe.save_pretrained(folder)
    assert set(load_model_directions(folder)) == {"smile"}
    assert (folder / "MODEL_CARD.md").read_text() == "# my model\n"
    again = InversionPipeline.from_pretrained(folder, device="cpu")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(again.invert(x).ws, pipe.invert(x).ws)

    # Another generator's bundle over it: its directions would not fit, and they are not deleted either.
    other = build_tiny_pipeline(build_tiny_generator(seed=1))
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(OutputError, match=r"holds MODEL_CARD.md, directions, made for another generator"):
        other.save_pretrained(folder)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert torch.equal(InversionPipeline.from_pretrained(folder, device="cpu").invert(x).ws, pipe.invert(x).ws)


def test_weights_beyond_fp16_are_not_stored_as_infinity(tmp_path):
    from hyperinverter.io.checkpoints import save_component

    # 1e6 is infinite in fp16: the file would be refused when loaded.
    state = {"weight": torch.tensor([[1e6, 1.0]]), "bias": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"tensors \['weight'\] exceed torch.float16's range"):
        save_component(tmp_path / "layer", state, model_type="x", config={}, dtype=torch.float16)
    assert not (tmp_path / "layer" / "model.safetensors").exists()


def test_save_result_records_the_method_and_precision_that_made_the_result(pipeline, tmp_path):
    # A W optimisation's result was recorded as the default method's (and loading it warned of missing offsets);
    # a bf16 one as fp32.
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    optimised = pipeline.invert(x, method="w-opt", steps=2, w_avg_samples=16, progress=False)
    assert (optimised.method, optimised.dtype) == ("w-opt", "fp32")
    _, record = pipeline.load_result(pipeline.save_result(optimised, tmp_path / "w.safetensors"))
    assert (record["method"], record["dtype"]) == ("w-opt", "fp32")
    reduced = pipeline.invert(x, dtype="bf16")
    assert (reduced.select(0).method, reduced.dtype) == (pipeline.default_method, "bf16")
    _, record = pipeline.load_result(pipeline.save_result(reduced, tmp_path / "b.safetensors"))
    assert (record["method"], record["dtype"]) == (pipeline.default_method, "bf16")
    # A method given still wins.
    _, record = pipeline.load_result(pipeline.save_result(optimised, tmp_path / "p.safetensors", method="phase1"))
    assert record["method"] == "phase1"
    # A loaded result keeps them: saved again (to edit, or copy), it was recorded as the default method's, in fp32.
    for name in ("w.safetensors", "b.safetensors"):
        loaded, record = pipeline.load_result(tmp_path / name)
        assert (loaded.method, loaded.dtype) == (record["method"], record["dtype"])
        _, again = pipeline.load_result(pipeline.save_result(loaded, tmp_path / f"again-{name}"))
        assert (again["method"], again["dtype"]) == (record["method"], record["dtype"])


def test_a_direction_file_written_again_is_read_again(pipeline, tmp_path, monkeypatch):
    # edit kept the first reading of a name for the pipeline's life: a rewritten file, or the same relative name
    # in another folder, edited with the old direction.
    w_dim = pipeline.generator.w_dim
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = pipeline.invert(x)
    up, down = (LinearDirection(torch.full((1, w_dim), s) / w_dim**0.5, name="d") for s in (1.0, -1.0))
    for folder, direction in (("a", up), ("b", down)):
        (tmp_path / folder).mkdir()
        save_direction(direction, tmp_path / folder / "d.safetensors")
    monkeypatch.chdir(tmp_path / "a")
    first = pipeline.edit(result, "d.safetensors", 2.0)
    torch.testing.assert_close(first, pipeline.edit(result, up, 2.0))
    monkeypatch.chdir(tmp_path / "b")
    torch.testing.assert_close(pipeline.edit(result, "d.safetensors", 2.0), pipeline.edit(result, down, 2.0))
    torch.testing.assert_close(pipeline.edit(result, tmp_path / "a" / "d.safetensors", 2.0), first)
    save_direction(down, tmp_path / "a" / "d.safetensors")
    os.utime(tmp_path / "a" / "d.safetensors", ns=(1, 1))  # (a new time, however fast the file was written)
    torch.testing.assert_close(pipeline.edit(result, tmp_path / "a" / "d.safetensors", 2.0),
                               pipeline.edit(result, down, 2.0))


def test_numpy_and_tensor_scalars_are_options_like_python_numbers(pipeline):
    # A sweep over np.arange steps or np.logspace learning rates was refused: "steps must be a positive integer, got
    # np.int64(2)", "learning_rate must be a finite number above 0, got np.float32(0.1)".
    x = images(1)
    plain = pipeline.invert(x, method="w-opt", steps=2, w_avg_samples=16, learning_rate=0.25, progress=False)
    given = ((np.int64(2), np.int32(16), np.float32(0.25)), (torch.tensor(2), 16, torch.tensor(0.25)),
             (np.array(2), 16, np.array(0.25)))  # (0-d arrays, as np.asarray of a number gives: refused as arrays)
    for steps, samples, rate in given:
        got = pipeline.invert(x, method="w-opt", steps=steps, w_avg_samples=samples, learning_rate=rate, progress=False)
        assert torch.equal(got.ws, plain.ws)
    with pytest.raises(ValueError, match="option steps of w-opt: expected an integer, got 2.0"):
        pipeline.invert(x, method="w-opt", steps=np.float64(2.0))  # a float stays a float


def test_a_batch_size_is_any_whole_number(pipeline):
    # np.int64(2) (a size worked out with numpy) was refused as "must be a whole number of 1 or more".
    x = images(3)
    assert torch.equal(pipeline.invert(x, batch_size=np.int64(2)).ws, pipeline.invert(x, batch_size=2).ws)
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ValueError, match="batch_size must be a whole number of 1 or more"):
            pipeline.invert(x, batch_size=bad)


def small_photo_pipeline():
    """A 64-px generator whose encoders read 32 px: pSp (reads as PIL's Resize) and HyperInverter (F.interpolate)."""
    from hyperinverter.methods.hyperinverter import HyperInverter
    from hyperinverter.methods.psp import PSP
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=64, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256,
                                  channel_max=16)).eval()
    methods = {"psp": PSP.create(G, encoder_resolution=32),
               "hyperinverter": HyperInverter.create(G, encoder_resolution=32)}
    return InversionPipeline(methods, device="cpu")


def official_encoder_input(photo, method):
    """The official scripts' encoder input: the photo as read, ``transforms.Resize`` (PIL's bilinear) then
    ``ToTensor`` and ``Normalize(0.5, 0.5)``; resized to the encoder's 32 px (pSp), or to the generator's 64 px
    and reduced by HyperInverter's model (``F.interpolate``)."""
    side = 32 if method == "psp" else 64
    pixels = np.asarray(photo.resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
    x = ((torch.from_numpy(pixels) - 0.5) / 0.5).permute(2, 0, 1)[None]
    return x if side == 32 else torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear")


def noise_photo(side, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_a_photo_smaller_than_the_generator_reaches_the_encoder_as_the_official_scripts_resize_it(tmp_path):
    from hyperinverter.apps.web import WebSession
    from hyperinverter.inversion.batch import invert_files

    pipe = small_photo_pipeline()
    seen = []
    for encoder in (pipe.methods["psp"].style_encoder, pipe.methods["hyperinverter"].w_encoder):
        encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    # The encoder's own size (pSp reads the photo unchanged), then a reduction and an enlargement of it.
    for side in (32, 48, 20):
        photo = noise_photo(side)
        photo.save(tmp_path / f"p{side}.png")
        for method in ("psp", "hyperinverter"):
            expected = official_encoder_input(photo, method)
            exact = side == 32 and method == "psp"
            for given in (photo, tmp_path / f"p{side}.png"):
                seen.clear()
                pipe.invert([given], method=method)
                # (PIL rounds its resize to whole grey levels; enlarged by Lanczos, the error was up to 106 of them)
                torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6 if exact else 1 / 127.5 + 1e-6)
    expected = official_encoder_input(noise_photo(32), "psp")
    seen.clear()
    (tmp_path / "in").mkdir()
    shutil.copy(tmp_path / "p32.png", tmp_path / "in")
    report = invert_files(pipe, [tmp_path / "in" / "p32.png"], tmp_path / "out", method="psp", progress=False)
    assert report.ok and len(seen) == 1
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)
    seen.clear()
    (item,) = WebSession(pipe).invert(noise_photo(32), align=False, method="hyperinverter")
    torch.testing.assert_close(seen[0], official_encoder_input(noise_photo(32), "hyperinverter"), rtol=0,
                               atol=1 / 127.5 + 1e-6)
    assert item.input.shape == (1, 3, 64, 64)  # what is shown and pasted stays at the generator's size


def test_photos_at_or_above_the_generator_s_size_invert_exactly_as_before():
    from hyperinverter.io.images import center_square, pil_to_tensor

    pipe = small_photo_pipeline()
    large, small = [noise_photo(64, seed=1), noise_photo(100, seed=2)], noise_photo(20, seed=3)

    def enlarged(photos):
        return torch.cat([pil_to_tensor(center_square(p), size=64) for p in photos])

    for method in ("psp", "hyperinverter"):
        before = pipe.invert(enlarged(large), method=method)
        after = pipe.invert(large, method=method)
        assert torch.equal(after.ws, before.ws) and torch.equal(after.image, before.image)
        # Beside a smaller photo (read from itself), theirs are read as before.
        before = pipe.invert(enlarged([small, *large]), method=method)
        after = pipe.invert([small, *large], method=method)
        assert torch.equal(after.ws[1:], before.ws[1:]) and torch.equal(after.image[1:], before.image[1:])
        assert not torch.equal(after.ws[:1], before.ws[:1])
    # Optimisation compares with the photo at the generator's size: as before.
    options = {"steps": 2, "w_avg_samples": 64}
    before = pipe.invert(enlarged([small]), method="w-opt", **options)
    assert torch.equal(pipe.invert([small], method="w-opt", **options).ws, before.ws)


@pytest.mark.parametrize("field, value", [("align_scale", 0.0), ("align_scale", 11.0), ("align_scale", True),
                                          ("align_scale", float("nan")), ("faces", "yes")])
def test_a_bundle_that_would_not_load_is_not_written(pipeline, tmp_path, field, value):
    # save_pipeline wrote a pipeline.json that from_pretrained then refused (align_scale in (0, 10], faces a bool).
    from hyperinverter.pipeline import save_pipeline

    with pytest.raises(ValueError, match=f"{field} must be"):
        save_pipeline(pipeline.inverter(), tmp_path / "bundle", **{field: value})
    assert not (tmp_path / "bundle").exists()
    save_pipeline(pipeline.inverter(), tmp_path / "bundle", align_scale=10.0, faces=False)
    assert InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu").align_scale == 10.0


def test_results_are_joined_only_where_they_fit_together(pipeline, tiny_generator):
    from hyperinverter.methods import InversionResult

    x = images(2)
    with_offsets, codes_only = pipeline.invert(x), pipeline.invert(x, method="phase1")
    for bad in (None, with_offsets, [with_offsets, None], [with_offsets.ws]):
        with pytest.raises(TypeError, match="InversionResult"):
            InversionResult.cat(bad)
    # (the offsets of every sample were dropped without a word)
    with pytest.raises(ValueError, match=r"results\[1\] .*generator offsets"):
        InversionResult.cat([with_offsets, codes_only])
    other = InversionResult(ws=torch.zeros(1, 3, 16), image=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"results\[1\] comes from another model"):
        InversionResult.cat([codes_only, other])
    joined = InversionResult.cat(r for r in (with_offsets.select(0), with_offsets.select(1)))
    assert torch.equal(joined.ws, with_offsets.ws) and joined.weight_delta is not None


def test_a_result_is_built_and_moved_only_as_it_can_be_used(pipeline):
    from hyperinverter.methods import InversionResult

    result = pipeline.invert(images(2))
    ws, image = result.ws, result.image
    with pytest.raises(ValueError, match="ws must hold floats"):
        InversionResult(ws=ws.long(), image=image)
    with pytest.raises(TypeError, match="weight_delta must be a WeightDelta"):
        InversionResult(ws=ws, image=image, weight_delta={"b4.conv1.weight": torch.zeros(2)})
    with pytest.raises(TypeError, match="steps must be a list"):
        InversionResult(ws=ws, image=image, steps=None)
    for device in ("nope", 1.5):
        with pytest.raises(ValueError, match="device"):
            result.to(device)
    # Codes in float64 interpolate as the same codes in float32 (lerp refused to mix the two).
    a = InversionResult(ws=ws[:1].double(), image=image[:1], weight_delta=result.weight_delta.select(0))
    assert torch.allclose(pipeline.interpolate(a, result.select(1), steps=3),
                          pipeline.interpolate(result.select(0), result.select(1), steps=3), atol=1e-5)


def test_results_that_hold_no_usable_values_are_refused_by_name(pipeline, tmp_path):
    from hyperinverter.errors import NonFiniteError
    from hyperinverter.methods import InversionResult

    result = pipeline.invert(images(1))
    on_meta = InversionResult(ws=result.ws.to("meta"), image=result.image)
    with pytest.raises(ValueError, match="result.ws is a tensor on the meta device"):
        pipeline.edit(on_meta, torch.ones(16), 1.0)
    with pytest.raises(ValueError, match="result.ws is a tensor on the meta device"):
        pipeline.save_result(on_meta, tmp_path / "meta.safetensors")
    nan = InversionResult(ws=result.ws * float("nan"), image=result.image, weight_delta=result.weight_delta)
    with pytest.raises(NonFiniteError, match="codes hold NaN"):  # (written, it could not be read back)
        pipeline.save_result(nan, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()
    with pytest.raises(TypeError, match="weight_delta must be a WeightDelta"):
        pipeline.render(result.ws, dict(result.weight_delta))


def test_an_edit_takes_a_huge_whole_strength_and_refuses_a_direction_of_no_numbers(pipeline):
    result = pipeline.invert(images(1))
    direction = torch.zeros(16)
    assert torch.equal(pipeline.edit(result, direction, 2**70), pipeline.edit(result, direction, 2.0**70))
    for bad in (direction > 0, torch.complex(direction, direction)):
        with pytest.raises(ValueError, match="direction must be a tensor of real numbers"):
            pipeline.edit(result, bad, 1.0)


def test_save_pipeline_refuses_methods_that_would_write_a_bundle_that_cannot_load(pipeline, tmp_path):
    from hyperinverter.pipeline import save_pipeline

    method = pipeline.inverter("hyperinverter")
    for kwargs, error in (({"methods": [method]}, TypeError), ({"methods": {"a": 3}}, TypeError),
                          ({"methods": {"psp": method}}, ValueError), ({"discriminator": 3}, TypeError)):
        with pytest.raises(error, match=next(iter(kwargs))):
            save_pipeline(**{"methods": method, **kwargs}, path=tmp_path / "bundle")
        assert not (tmp_path / "bundle").exists()
