"""The web demo: its session logic on a tiny pipeline (no browser), and the Gradio page it builds."""

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hyperinverter.align import NoFaceFoundError
from hyperinverter.apps.web import WebSession, build_app
from hyperinverter.editing import LinearDirection
from hyperinverter.errors import NonFiniteError, SchemaError
from hyperinverter.io.images import ImageReadError, center_square, pil_to_tensor
from test_align import synthetic_landmarks


def photo(width=800, height=600, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def session(pipeline):
    w_dim = pipeline.generator.w_dim
    direction = LinearDirection(torch.ones(1, w_dim) / w_dim**0.5, name="up")
    faces = [synthetic_landmarks(200, 250, 50.0), synthetic_landmarks(600, 300, 40.0)]  # crops ~250 px wide
    return WebSession(pipeline, {"up": direction}, detector=lambda image: faces, display_size=64)


def test_unaligned_photo_is_its_centred_square(session, pipeline):
    picture = photo()
    (item,) = session.invert(picture, align=False)
    R = pipeline.generator.resolution
    assert item.label == "the photo" and item.placement is None and item.input.shape == (1, 3, R, R)
    assert item.stem == "photo_hyperinverter" and item.seconds > 0
    assert torch.equal(item.input, pil_to_tensor(center_square(picture), size=R))
    assert center_square(picture).size == (600, 600)
    reference = pipeline.invert(item.input)
    assert torch.allclose(item.result.image, reference.image, atol=1e-5)
    # input | Phase I | HyperInverter, each enlarged 2x (nearest) to the display size, 2-px padding.
    assert session.comparison(item).size == (3 * (2 * R + 2) + 2, 2 * R + 4)


def test_each_kind_of_direction_brings_its_strength_and_scale(tiny_generator):
    # The slider was fixed at 3 in steps of 0.5 whatever the direction: StyleCLIP's official 0.1 could not be set.
    from hyperinverter.apps.web import strength_slider
    from hyperinverter.editing.directions import principal_directions
    from hyperinverter.editing.styleclip import StyleCLIPDirection

    linear = strength_slider(LinearDirection(torch.ones(1, 8), default_strength=3.2))
    assert linear["value"] == 3.2 and linear["step"] == 0.1 and "w + strength" in linear["label"]
    assert strength_slider(LinearDirection(torch.ones(1, 8), default_strength=-7.0))["minimum"] == -14.0
    pcs = principal_directions(tiny_generator, count=3, num_samples=2000)
    assert list(pcs) == ["principal direction 1", "principal direction 2", "principal direction 3"]
    slider = strength_slider(pcs["principal direction 2"])
    assert slider["value"] == 3.0 and "GANSpace" in slider["label"]
    styleclip = strength_slider(StyleCLIPDirection(torch.nn.Identity(), name="hair"))
    assert styleclip["value"] == 0.1 and styleclip["step"] < 0.1 and styleclip["maximum"] == 1.0


def test_every_face_is_aligned_and_edits_paste_back(session, pipeline):
    picture = photo()
    items = session.invert(picture, align=True, name="group photo.jpg")
    assert [it.label for it in items] == ["face 1 of 2 (from the left)", "face 2 of 2 (from the left)"]
    assert [it.stem for it in items] == ["group-photo_face1_hyperinverter", "group-photo_face2_hyperinverter"]
    assert items[0].placement["quad"][0][0] < items[1].placement["quad"][0][0]  # left to right
    assert all(it.placement is not None and np.array_equal(np.asarray(it.photo), np.asarray(picture)) for it in items)
    edited = session.edit(items[0], "up", 2.0)
    expected = session.to_display(pipeline.edit(items[0].result, session.directions["up"], 2.0))
    assert np.array_equal(np.asarray(edited), np.asarray(expected))
    assert not np.array_equal(np.asarray(edited), np.asarray(session.to_display(items[0].result.image)))
    pasted = session.edit(items[0], "up", 2.0, paste_back=True)
    assert pasted.size == picture.size
    changed = np.abs(np.asarray(pasted, dtype=int) - np.asarray(picture, dtype=int)).sum(axis=2) > 0
    assert changed[250, 200] and not changed[5, 5]  # inside the first face's crop, not in the corner
    grey = session.invert(picture.convert("L"), align=True)  # (pasted back, it came in colour)
    assert session.edit(grey[0], "up", 2.0, paste_back=True).mode == "L"
    assert session.swap(grey[0], items[1], paste_back=True).mode == "L"
    with pytest.raises(ValueError, match="unknown direction"):
        session.edit(items[0], "smile", 1.0)


def test_every_face_of_a_group_photo_is_edited_alike(session, pipeline):
    # The page pasted back only the face picked in its menu; `edit --paste-back` pastes every face of a photo.
    from hyperinverter.align import paste_back_placements
    from hyperinverter.io.images import tensor_to_pil

    picture = photo()
    items = session.invert(picture, align=True, name="group photo.jpg")
    assert [it.photo_stem for it in items] == ["group-photo_hyperinverter"] * 2
    edits = [pipeline.edit(it.result, session.directions["up"], 2.0) for it in items]
    row = session.edit_faces(items, "up", 2.0)
    assert np.array_equal(np.asarray(row), np.asarray(session.to_display(torch.cat(edits))))
    pasted = session.edit_faces(items, "up", 2.0, paste_back=True)
    faces = [tensor_to_pil(e)[0].convert("RGB") for e in edits]
    expected = paste_back_placements(picture, faces, [it.placement for it in items])
    assert np.array_equal(np.asarray(pasted), np.asarray(expected))
    changed = np.abs(np.asarray(pasted, dtype=int) - np.asarray(picture, dtype=int)).sum(axis=2) > 0
    assert changed[250, 200] and changed[300, 600] and not changed[5, 5]  # both faces, not the corner
    one = np.abs(np.asarray(session.edit(items[0], "up", 2.0, paste_back=True), dtype=int)
                 - np.asarray(picture, dtype=int)).sum(axis=2) > 0
    assert not one[300, 600]
    other = session.invert(photo(seed=5), align=True)
    with pytest.raises(ValueError, match="come from different photos"):
        session.edit_faces([items[0], other[1]], "up", 2.0, paste_back=True)



def test_every_face_is_edited_in_synthesis_calls_of_the_limits_batch(pipeline, monkeypatch):
    # Each face was its own synthesis call: batched, at most the limits' batch_size at once (30 faces at 1024 px
    # in one call would not fit), each face with its own Δθ, pasted back as the faces edited one by one.
    from hyperinverter.align import paste_back_placements
    from hyperinverter.apps.limits import WebLimits
    from hyperinverter.io.images import tensor_to_pil

    direction = LinearDirection(torch.ones(1, pipeline.generator.w_dim) / 4.0, name="up")
    faces = [synthetic_landmarks(150 + 300 * i, 250, 40.0) for i in range(3)]
    session = WebSession(pipeline, {"up": direction}, detector=lambda image: faces, display_size=64,
                         limits=WebLimits(batch_size=2))
    picture = photo(900, 500)
    items = session.invert(picture, align=True)
    assert len(items) == 3 and all(it.result.weight_delta is not None for it in items)
    expected = paste_back_placements(
        picture, [tensor_to_pil(pipeline.edit(it.result, direction, 2.0))[0].convert("RGB") for it in items],
        [it.placement for it in items])
    calls = []
    synthesis = pipeline.generator.synthesis.forward

    def spy(ws, weight_delta=None, **kw):
        calls.append((len(ws), weight_delta.batch_size))
        return synthesis(ws, weight_delta=weight_delta, **kw)

    monkeypatch.setattr(pipeline.generator.synthesis, "forward", spy)
    pasted = session.edit_faces(items, "up", 2.0, paste_back=True)
    assert calls == [(2, 2), (1, 1)]
    difference = np.abs(np.asarray(pasted, dtype=int) - np.asarray(expected, dtype=int))
    assert difference.max() <= 1 and difference.mean() < 0.01

def test_a_sweep_shows_the_edits_at_evenly_spaced_strengths(session, pipeline):
    item = session.invert(photo(), align=True)[0]
    row = session.sweep(item, "up", -2.0, steps=5)
    edits = [pipeline.edit(item.result, session.directions["up"], s) for s in (-2.0, -1.0, 0.0, 1.0, 2.0)]
    expected = np.asarray(session.to_display(torch.cat(edits)), dtype=int)
    assert row.size == session.to_display(torch.cat(edits)).size
    assert np.abs(np.asarray(row, dtype=int) - expected).max() <= 1  # (one synthesis call: float rounding)
    with pytest.raises(ValueError, match="unknown direction"):
        session.sweep(item, "smile", 1.0)
    # A strength past float32's range (an API client's): said as the edit says it, not a RuntimeError (an internal
    # error on the page) from float32 strengths.
    with pytest.raises(NonFiniteError, match="the edited image holds NaN or infinite values: .* smaller strength"):
        session.sweep(item, "up", 1e39)
    with pytest.raises(ValueError, match="strength must be a finite number within ±1e300, got inf"):
        session.sweep(item, "up", math.inf)


def test_the_second_photo_is_its_largest_face(pipeline):
    # Every face of the second photo was inverted (a W optimisation each, on a group photo) and the leftmost used;
    # `swap` takes the largest, as the page does now.
    faces = [synthetic_landmarks(600, 300, 60.0), synthetic_landmarks(200, 250, 40.0)]  # the detector's order: size
    session = WebSession(pipeline, {}, detector=lambda image: faces, display_size=64)
    (second,) = session.invert(photo(), align=True, largest_only=True)
    assert second.label == "the largest of 2 faces" and min(x for x, _ in second.placement["quad"]) > 400
    assert [it.label for it in session.invert(photo(), align=True)] == [
        "face 1 of 2 (from the left)", "face 2 of 2 (from the left)"]


def test_the_second_photo_s_face_swaps_onto_the_first(session, pipeline):
    from hyperinverter.restoration import face_swap

    a = session.invert(photo(seed=1), align=True)[0]
    b = session.invert(photo(seed=2), align=True)[1]
    swapped = session.swap(a, b)
    expected = face_swap(pipeline, b.input, a.input, method=a.method).result.image
    assert np.array_equal(np.asarray(swapped), np.asarray(session.to_display(expected)))
    pasted = session.swap(a, b, paste_back=True)  # into the first photo: the face's ellipse only
    picture = photo(seed=1)
    changed = np.abs(np.asarray(pasted, dtype=int) - np.asarray(picture, dtype=int)).sum(axis=2) > 0
    assert pasted.size == picture.size and changed[250, 200] and not changed[5, 5] and changed.mean() < 0.2
    grey = WebSession(pipeline, {}, detector=None, display_size=64)  # no detector: photos are not faces here
    with pytest.raises(ValueError, match="face swapping is for models of aligned faces"):
        grey.swap(grey.invert(photo(), align=False)[0], grey.invert(photo(seed=3), align=False)[0])


def test_a_model_that_says_it_is_not_of_faces_is_not_offered_alignment(pipeline, tmp_path):
    # Every RGB model counted as one of faces: a user's church bundle ticked "align faces" (each photo then ended in
    # "no face found") and offered the sample portraits. A bundle now says whether it is one of faces.
    from hyperinverter.pipeline import InversionPipeline

    assert WebSession(pipeline, detector=lambda image: []).takes_faces  # (not said: any RGB model, as before)
    saved = pipeline.save_pretrained(tmp_path / "churches")
    index = json.loads((saved / "pipeline.json").read_text())
    assert "faces" not in index
    (saved / "pipeline.json").write_text(json.dumps({**index, "faces": False}))
    churches = InversionPipeline.from_pretrained(saved, device="cpu")
    assert churches.faces is False and churches.save_pretrained(tmp_path / "copy") and json.loads(
        (tmp_path / "copy" / "pipeline.json").read_text())["faces"] is False
    session = WebSession(churches, detector=lambda image: [])
    assert not session.takes_faces
    with pytest.raises(ValueError, match="face swapping is for models of aligned faces"):
        session.swap(*(session.invert(photo(seed=s), align=False)[0] for s in (1, 2)))
    (saved / "pipeline.json").write_text(json.dumps({**index, "faces": "no"}))
    with pytest.raises(SchemaError, match="'faces' must be true or false"):
        InversionPipeline.from_pretrained(saved, device="cpu")


def test_interpolation_ends_are_the_two_reconstructions(session):
    a = session.invert(photo(seed=1), align=False)[0]
    b = session.invert(photo(seed=2), align=False)[0]
    for t, item in ((0.0, a), (1.0, b)):
        got = np.asarray(session.interpolate(a, b, t), dtype=int)
        assert np.abs(got - np.asarray(session.to_display(item.result.image), dtype=int)).max() <= 1
    with pytest.raises(ValueError, match="t must be"):
        session.interpolate(a, b, 1.5)


def test_bad_inputs_say_what_is_wrong(session, pipeline):
    with pytest.raises(ImageReadError, match="no image"):
        session.invert(None, align=False)
    faceless = WebSession(pipeline, detector=lambda image: [])
    with pytest.raises(NoFaceFoundError, match="no face"):
        faceless.invert(photo(), align=True)
    with pytest.raises(ImportError, match="needs dlib"):
        WebSession(pipeline).invert(photo(), align=True)
    # An API client's direction that is not a name (a list: "Internal error (TypeError)", a traceback in the server
    # log), or a name of a megabyte (said back whole).
    item = session.invert(photo(), align=False)[0]
    for name, said in ((["up"], "unknown direction ['up']"), ("x" * 10**6, "unknown direction 'xxx")):
        with pytest.raises(ValueError, match=re.escape(said)) as caught:
            session.edit(item, name, 1.0)
        assert len(str(caught.value)) < 200


def test_each_server_keeps_its_uploads_in_a_folder_of_its_own(monkeypatch, tmp_path):
    # Gradio keeps every server's uploads in one folder per machine, each under a name made of its content, and a
    # server that stops deletes what it received: a second `hyperinverter web` stopped (or a page of it closed)
    # deleted the photo this one had been given too, and its page said "no longer on the server".
    import os

    from hyperinverter.apps.web import private_upload_folder
    from hyperinverter.cli import commands
    from hyperinverter.cli.main import build_parser

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    with private_upload_folder() as first:
        assert os.environ["GRADIO_TEMP_DIR"] == str(first) and first.is_dir()
        (first / "upload.png").write_bytes(b"photo")
    with private_upload_folder() as second:
        assert second != first
    assert not first.exists() and not second.exists() and "GRADIO_TEMP_DIR" not in os.environ  # (ours, removed)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # a folder the user chose is used and kept
    with private_upload_folder() as chosen:
        assert chosen == tmp_path
    assert tmp_path.is_dir()

    monkeypatch.delenv("GRADIO_TEMP_DIR")
    seen = []

    def build_app(*args, **kwargs):  # (the command stops here: its folder is what is checked)
        seen.append(os.environ.get("GRADIO_TEMP_DIR"))
        raise KeyboardInterrupt

    monkeypatch.setattr("hyperinverter.apps.web.build_app", build_app)
    monkeypatch.setattr(commands, "_check_can_listen", lambda host, port: None)
    monkeypatch.setattr("hyperinverter.memory.keep_memory_bounded", lambda: None)  # (the server's process only)
    monkeypatch.setattr("hyperinverter.apps.web.settle_memory", lambda **kwargs: None)
    with pytest.raises(KeyboardInterrupt):
        commands.run_web(build_parser().parse_args(["web", "--model", "m", "--device", "cpu"]))
    assert seen[0] and Path(seen[0]).name.startswith("hyperinverter-web-") and not Path(seen[0]).exists()


def test_the_page_builds_over_a_pipeline_folder(pipeline, tmp_path):
    import gradio as gr

    folder = pipeline.save_pretrained(tmp_path / "model")
    app = build_app([str(folder)], device="cpu")
    assert isinstance(app, gr.Blocks)
    on_model = next(f for f in app.fns.values() if f.name == "on_model")
    name = f"{tmp_path.name}/model"  # the menu's name for it: the page never shows a server path
    assert len(on_model.fn(name, None)) == len(on_model.outputs)  # one value per output, none shifted
    assert str(tmp_path) not in json.dumps(app.get_config_file(), default=str)
    with pytest.raises(gr.Error, match="unknown model"):
        on_model.fn(str(folder), None)
    with pytest.raises(ValueError, match="no model"):
        build_app([])


def test_the_page_runs_its_models_in_the_chosen_precision(pipeline, tmp_path):
    folder = pipeline.save_pretrained(tmp_path / "model")
    s = WebSession.from_model(folder, device="cpu", dtype="bf16")
    assert s.pipe.dtype == torch.bfloat16
    (item,) = s.invert(photo(), align=False)
    assert item.result.image.dtype == torch.float32
    # Models load on first use, so a precision the device cannot run is refused before serving.
    with pytest.raises(ValueError, match="fp16 runs on GPUs only"):
        build_app([str(folder)], device="cpu", dtype="fp16")


def test_a_transparent_upload_is_composited_on_white(session, pipeline):
    rgba = Image.new("RGBA", (50, 50), (0, 0, 0, 0))  # fully transparent black
    (item,) = session.invert(rgba, align=False)
    assert torch.allclose(item.input, torch.ones_like(item.input))  # white, as read_image does for files


def test_any_method_of_the_model_inverts_and_blends_only_with_itself(session, pipeline, tiny_generator):
    from hyperinverter.methods.hyperstyle import HyperStyle
    from hyperinverter.pipeline import InversionPipeline

    assert session.methods()[0] == pipeline.default_method and "phase1" in session.methods()
    (first,) = session.invert(photo(seed=3), align=False, method="phase1")
    assert first.method == "phase1" and first.result.weight_delta is None
    assert torch.allclose(first.result.image, pipeline.invert(first.input, method="phase1").image, atol=1e-5)
    phase1 = pipeline.inverter("phase1")
    assert session.comparison_labels("phase1") == ["input", phase1.label]  # no first pass before it
    (other,) = session.invert(photo(seed=4), align=False)
    with pytest.raises(ValueError, match="invert both with one method"):
        session.interpolate(first, other, 0.5)

    torch.manual_seed(0)
    styled = WebSession(InversionPipeline({"hyperstyle": HyperStyle.create(tiny_generator).eval()}, device="cpu"),
                        display_size=64)
    assert styled.comparison_labels() == ["input", "W encoder", "HyperStyle"]
    (item,) = styled.invert(photo(seed=5), align=False)
    assert item.result.weight_delta.mode == "scale" and len(item.result.steps) == 5
    assert styled.comparison(item).size[0] == 3 * (2 * 32 + 2) + 2


def test_uploads_over_the_limits_are_refused_and_large_photos_downscaled(pipeline, tmp_path):
    from hyperinverter.apps.limits import WebLimits

    limits = WebLimits(max_upload_mb=0.05, max_pixels=1_000_000, detect_side=300)
    s = WebSession(pipeline, limits=limits, display_size=64)
    big_file = tmp_path / "noise.png"
    photo(400, 300).save(big_file)  # ~360 kB of noise
    with pytest.raises(ImageReadError, match="is 0.3 MB; this server takes photos up to 0.05 MB") as err:
        s.invert(str(big_file), align=False)
    assert str(tmp_path) not in str(err.value)  # never a server path
    huge = Image.new("RGB", (1200, 1000), "gray")  # 1.2 MP of flat grey: small as a file, over the pixel limit
    huge.save(tmp_path / "huge.png")
    with pytest.raises(ImageReadError, match="1200x1000 pixels, more than the limit"):
        s.invert(str(tmp_path / "huge.png"), align=False)
    seen = []
    detecting = WebSession(pipeline, detector=lambda image: seen.append(image.size) or [], limits=limits)
    with pytest.raises(NoFaceFoundError):
        detecting.invert(Image.new("RGB", (900, 600), "gray"), align=True)
    assert seen == [(300, 200)]  # downscaled before detection, aspect kept
    # `web --detect-side 6000`: the page's detector looks at that size too (its own 2048 reduced the photo again)
    pipeline.save_pretrained(tmp_path / "model")
    assert WebSession.from_model(tmp_path / "model", device="cpu",
                                 limits=WebLimits(detect_side=6000)).detector.detect_side == 6000


def test_a_not_image_upload_names_the_upload_not_the_server_path(session, tmp_path):
    from hyperinverter.apps.web import user_message

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageReadError) as err:
        session.invert(str(text), align=False)
    message = user_message(err.value)
    assert message.startswith("the uploaded file: not a readable image") and str(tmp_path) not in message
    internal = user_message(RuntimeError(f"{tmp_path}/secret failed"))
    assert str(tmp_path) not in internal and "RuntimeError" in internal


def test_a_slow_method_reports_progress_and_can_be_cancelled(session):
    from hyperinverter.apps.web import Cancelled

    steps = []
    (item,) = session.invert(photo(seed=6), align=False, method="w-opt", options={"steps": 20},
                             progress=lambda step, total: steps.append((step, total)))
    assert item.method == "w-opt" and steps and steps[-1] == (20, 20)  # (the official 1000: 20 s of the suite)

    def stop_at_three(step, total):
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        session.invert(photo(seed=6), align=False, method="w-opt", progress=stop_at_three)


def test_result_files_are_unique_per_request_and_swept_when_old(tmp_path):
    import os
    import time

    from hyperinverter.apps.web import ResultFiles

    files = ResultFiles(keep_seconds=1000)
    a = files.write("same.png", b"1")
    b = files.write("same.png", b"1")  # one name, one content: two files, so neither is rewritten while sent
    assert a != b and os.path.basename(a) == os.path.basename(b) == "same.png"
    old = time.time() - 2000
    os.utime(os.path.dirname(a), (old, old))
    assert files.sweep(now=time.time() + 61) == 1 and not os.path.exists(a) and os.path.exists(b)
    # A result's name holds a direction's name, read from the model's files: it stays inside its request folder.
    inside = files.write("photo_../../../escaped+3.png", b"1")
    assert os.path.dirname(os.path.dirname(inside)) == str(files.folder) and "/" not in os.path.basename(inside)


def test_the_model_card_says_what_the_model_is_and_where_it_is_weak():
    from hyperinverter.apps.web import model_card_summary
    from hyperinverter.catalogue import local_model_path

    card = model_card_summary(local_model_path("faces-64"))
    assert card.startswith("**faces-64") and "synthetic faces" in card and "Where it is weak" in card
    assert "identity" in card


def test_a_users_state_keeps_the_uploads_path_not_the_photo(session, tmp_path):
    path = tmp_path / "group.png"
    photo().save(path)
    items = session.invert(str(path), align=True, name=path.name)
    assert items[0].photo == str(path)  # read again to paste back: a state holds no full-size photo
    assert session.edit(items[0], "up", 1.0, paste_back=True).size == (800, 600)


def test_the_server_keeps_a_bounded_number_of_pages_results():
    from hyperinverter.apps.web import UserResults, token

    results = UserResults(capacity=2, keep_seconds=3600)
    a = results.entry(None, "m")
    a["items"] = ["a's inversion"]
    b = results.entry(None, "m")
    assert results.entry(token(a), "m")["items"] == ["a's inversion"]  # found again by its key; now most recent
    results.entry(None, "m")  # a third page: the least recently used (b) is dropped
    assert len(results) == 2 and results.entry(token(b), "m")["items"] == []
    assert results.entry(token(a), "other model")["items"] == []  # results of another model do not apply


def test_settle_memory_trims_the_heap_where_glibc_allows():
    import platform

    from hyperinverter.apps.web import settle_memory

    trimmed = settle_memory()
    assert isinstance(trimmed, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert settle_memory(arenas=8)  # mallopt accepts the cap


def test_a_bundle_without_card_or_directions_is_described_and_edits_by_principal_directions(pipeline, tmp_path):
    # A user's own (joined) bundle: the page said "no model card" and offered no edits.
    pipeline.save_pretrained(tmp_path / "mine")
    session = WebSession.from_model(tmp_path / "mine", device="cpu")
    assert "**mine** (no model card)" in session.card and "trained Phase I (W), HyperInverter" in session.card
    assert "W optimisation" in session.card and "principal directions" in session.card
    assert list(session.directions)[:2] == ["principal direction 1", "principal direction 2"]
    (item,) = session.invert(photo(), align=False)
    assert session.edit(item, "principal direction 1", 2.0).size == session.to_display(item.result.image).size


def test_a_host_or_port_the_page_cannot_listen_on_is_named_before_loading(capsys):
    # Gradio said only "cannot find empty port in range: 7999-7999", after the models had loaded.
    import socket

    from hyperinverter.cli.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["web", "--port", str(port), "--model", "no-such-model"]) == 2
        assert f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)" in \
            capsys.readouterr().err
    assert main(["web", "--host", "no.such.host.invalid", "--model", "no-such-model"]) == 2
    assert "--host no.such.host.invalid: not a name or address this machine can listen on" in capsys.readouterr().err
    with socket.socket() as probe:  # (a port free now)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["web", "--port", str(port), "--content-rows", "0.9", "0.1", "--model", "no-such-model"]) == 2
    assert "--content-rows: content rows must be [top, bottom] fractions" in capsys.readouterr().err


def serve_until_ctrl_c(monkeypatch, *args: str, while_served=lambda page: None):
    """``hyperinverter web *args`` over a page of one file field, stopped by Ctrl-C once it serves, after
    ``while_served(page)``: (its status, the page)."""
    import socket
    import types

    import gradio as gr

    import hyperinverter.memory
    from hyperinverter.apps import web
    from hyperinverter.cli import commands
    from hyperinverter.cli.main import main

    served = []

    def page(*_, **__):
        with gr.Blocks(analytics_enabled=False) as app:
            gr.File()
        served.append(app)
        return app

    def ctrl_c(seconds):
        while_served(served[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(web, "build_app", page)
    monkeypatch.setattr(web, "settle_memory", lambda **_: False)  # (this process's heap is not a server's)
    monkeypatch.setattr(hyperinverter.memory, "keep_memory_bounded", lambda: False)
    monkeypatch.setattr(commands, "time", types.SimpleNamespace(sleep=ctrl_c))
    with socket.socket() as probe:  # (a port free now)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return main(["web", "--port", str(port), "--model", "a-model", *args]), served[0]


def test_the_upload_limit_may_be_a_fraction_of_a_megabyte(monkeypatch):
    # `web --max-upload-mb 0.5` stopped as it started the page: Gradio read the "0.5mb" it was given as 0 of a unit
    # ".5MB" ("Invalid file size unit: .5MB"). It is given bytes.
    status, page = serve_until_ctrl_c(monkeypatch, "--max-upload-mb", "0.5")
    assert status == 130 and page.max_file_size == 2**20  # (Gradio's: twice the page's, as below)


def test_a_photo_over_the_upload_limit_gets_the_page_s_message_and_a_huge_one_is_not_stored(monkeypatch):
    # Gradio's limit was the page's, so a larger photo got only Gradio's toast ('File(s) exceed the maximum allowed
    # size of 20.0 Mb: "big.jpg"'), never the page's message with its size. Gradio's limit is twice the page's now:
    # a photo between them is uploaded and refused by the page's own check; a larger one is refused as it comes.
    import urllib.error
    import urllib.request
    import uuid

    from hyperinverter.apps.limits import WebLimits
    from hyperinverter.apps.web import read_upload

    limits = WebLimits(max_upload_mb=0.05)
    said = {}

    def upload(page, size: int):
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n").encode() + bytes(size) + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{page.local_url}gradio_api/upload", body,
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def uploads(page):
        said["over"] = upload(page, limits.upload_bytes + 30_000)
        if said["over"][0] == 200:  # what the page's handler gets (Gradio moves it into place just after answering)
            deadline = time.monotonic() + 10
            while not Path(said["over"][1][0]).is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                read_upload(said["over"][1][0], limits)
            except ImageReadError as e:
                said["page"] = str(e)
        said["huge"] = upload(page, limits.transport_bytes + 1)

    assert serve_until_ctrl_c(monkeypatch, "--max-upload-mb", "0.05", while_served=uploads)[0] == 130
    assert said["over"][0] == 200, said["over"]
    assert "is 0.1 MB; this server takes photos up to 0.05 MB" in said["page"]
    assert said["huge"] == (413, f"File size exceeded maximum allowed size of {limits.transport_bytes} bytes.")


def test_a_generator_alone_of_a_band_domain_is_served_on_its_rows(pipeline, tmp_path):
    # NVIDIA's cars generator records no rows: --content-rows gives them, and the page fits photos into them.
    from hyperinverter.io.gan import save_gan

    save_gan(tmp_path / "cars", pipeline.generator)
    served = WebSession.from_model(tmp_path / "cars", device="cpu", content_rows=(0.125, 0.875))
    assert served.pipe.content_rows == (0.125, 0.875)
    folder = pipeline.save_pretrained(tmp_path / "square")  # a bundle keeps its own rows
    assert WebSession.from_model(folder, device="cpu", content_rows=(0.125, 0.875)).pipe.content_rows is None


def test_an_unreadable_direction_file_leaves_the_model_on_the_page(tmp_path):
    # One broken file in a bundle's directions/ took the whole model off the web page (WebSession failed to load).
    import shutil

    from hyperinverter.apps.web import WebSession
    from hyperinverter.catalogue import local_model_path
    from hyperinverter.editing import LinearDirection, save_direction
    from hyperinverter.editing.directions import load_model_directions
    from hyperinverter.errors import CheckpointError, SchemaError

    bundle = tmp_path / "bundle"
    shutil.copytree(local_model_path("faces-64"), bundle)
    (bundle / "directions" / "broken.safetensors").write_bytes(b"junk")
    # One of another W space (an FFHQ direction copied in) was offered, and failed at each edit.
    save_direction(LinearDirection(torch.ones(1, 512), name="ffhq-age"), bundle / "directions" / "ffhq.safetensors")
    session = WebSession.from_model(str(bundle), device="cpu")
    assert "yaw" in session.directions and not {"broken", "ffhq-age"} & set(session.directions)
    assert ("**Left out:** 2 direction file(s) that cannot be read or do not fit this model's generator "
            "(broken.safetensors, ffhq.safetensors)") in session.card
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_model_directions(bundle)  # (strict where nothing asks to skip)
    (bundle / "directions" / "broken.safetensors").unlink()
    assert "ffhq-age" in load_model_directions(bundle)  # (a folder alone: nothing to check against)
    with pytest.raises(SchemaError, match=r"ffhq.safetensors: does not fit this model's generator: direction "
                                          r"'ffhq-age' of shape \(1, 512\) does not fit codes"):
        load_model_directions(bundle, G=session.pipe.generator)


def test_what_the_web_fuzzing_pass_found(pipeline, tmp_path, monkeypatch):
    """(1) every file of a served model folder could be downloaded, its server path in the page's config; (2) a page
    in use lost its inversion an hour after Invert (Gradio's state lives from when it was set, not used), and
    edit, blend and mix then returned nothing without a word; (5) outside Invert an unexpected error reached the
    visitor as a bare error; (4) an upload deleted under an open page said "no such file"."""
    import warnings

    import gradio as gr
    from gradio.utils import is_static_file

    from hyperinverter.apps.limits import WebLimits
    from hyperinverter.apps.web import read_upload

    folder = pipeline.save_pretrained(tmp_path / "model")
    (folder / "examples").mkdir()
    photo().save(folder / "examples" / "000001.png")
    (folder / "secret-notes.txt").write_text("not for visitors")
    app = build_app([str(folder)], device="cpu")
    assert is_static_file(folder / "examples" / "000001.png")
    for private in (folder / "secret-notes.txt", folder / "pipeline.json", folder / "generator" / "model.safetensors"):
        assert not is_static_file(private), private
    handlers = {f.name: f.fn for f in app.fns.values()}
    name = f"{tmp_path.name}/model"
    state = handlers["on_model"](name, None)[0]

    def warned(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = call()
        return result, [str(w.message) for w in caught]

    # Before any inversion: a message, and the page's key back (each use keeps the page's state alive).
    (image, kept), said = warned(lambda: handlers["on_edit"](name, state, None, "principal direction 1", 1.0, False))
    assert image is None and kept == state and any(m.startswith("invert a photo first") for m in said), said
    for handler, args in (("on_blend", (0.5,)), ("on_mix", (1, 4)), ("on_swap", (False,))):
        (image, kept), said = warned(lambda h=handler, a=args: handlers[h](name, state, None, *a))
        assert image is None and kept == state and any(m.startswith("invert a photo and upload a second one first")
                                                       and "(a page's results are kept 60 minutes" in m for m in said)
    # After one: an edit works and keeps the state; a strength that is not a number and an unexpected failure say so.
    invert = handlers["on_invert"]
    state = invert(name, "hyperinverter", str(folder / "examples" / "000001.png"), False, state, None)[0]
    (image, kept), said = warned(lambda: handlers["on_edit"](name, state, None, "principal direction 1", 1.0, False))
    assert image is not None and kept == state and not said
    with pytest.raises(gr.Error, match="strength must be a number, got True"):  # (an API client's)
        handlers["on_edit"](name, state, None, "principal direction 1", True, False)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(WebSession, "edit_faces", broken)
    (image, _), said = warned(lambda: handlers["on_edit"](name, state, None, "principal direction 1", 1.0, False))
    assert image is None and said == ["Internal error (RuntimeError); the server log has the details."]
    # An upload the server has deleted by now.
    with pytest.raises(ImageReadError, match="is no longer on the server .* upload it again"):
        read_upload(str(tmp_path / "gone.png"), WebLimits())


def served_page(pipeline, tmp_path):
    """The page serving ``pipeline`` (saved in ``tmp_path``), opened once, with photo.png and second.png beside it:
    (app, its handlers by name, the menu's name of the model, the page's state)."""
    folder = pipeline.save_pretrained(tmp_path / "model")
    photo().save(tmp_path / "photo.png")
    photo(seed=1).save(tmp_path / "second.png")
    app = build_app([str(folder)], device="cpu")
    handlers = {f.name: f.fn for f in app.fns.values()}
    name = f"{tmp_path.name}/model"
    return app, handlers, name, handlers["on_model"](name, None)[0]


def test_a_closed_page_stops_its_work(pipeline, tmp_path):
    # A visitor who closed the tab during a W optimisation held the model until it ended (minutes on a CPU), and
    # what the page had queued ran after it. Gradio's unload now cancels the one and skips the other.
    import threading
    from types import SimpleNamespace

    app, handlers, name, state = served_page(pipeline, tmp_path)
    page = SimpleNamespace(session_hash="page-1")
    done = {}

    def invert():
        started = time.perf_counter()
        done["status"] = handlers["on_invert"](name, "w-opt", str(tmp_path / "photo.png"), False, state, None,
                                               request=page)[3]
        done["seconds"] = time.perf_counter() - started

    worker = threading.Thread(target=invert)
    worker.start()
    time.sleep(2.0)  # (the optimisation is under way)
    handlers["on_leave"](page)
    worker.join(timeout=60)
    assert done["status"] == "**Cancelled.**" and done["seconds"] < 30, done
    again = handlers["on_invert"](name, "hyperinverter", str(tmp_path / "photo.png"), False, state, None,
                                  request=page)
    assert again[1] is None and again[3] == ""  # queued by the closed page: no work
    other = handlers["on_invert"](name, "hyperinverter", str(tmp_path / "photo.png"), False, state, None,
                                  request=SimpleNamespace(session_hash="page-2"))
    assert other[1] is not None  # another page is served as before

    # An API client sends no heartbeat, so no unload comes when it goes away: Gradio marks its running event as no
    # longer alive when its stream closes, and the inversion stops at its next step as well.
    client = SimpleNamespace(session_hash="api-client")
    done.clear()
    worker = threading.Thread(target=lambda: done.update(
        status=handlers["on_invert"](name, "w-opt", str(tmp_path / "photo.png"), False, state, None,
                                       request=client)[3]))
    worker.start()
    time.sleep(2.0)
    app._queue.active_jobs.append([SimpleNamespace(session_hash="page-2", alive=True),
                                   SimpleNamespace(session_hash="api-client", alive=False)])
    worker.join(timeout=60)
    assert done["status"] == "**Cancelled.**", done


@pytest.mark.parametrize("number, status, message, after", [(15, 143, "interrupted: SIGTERM", 0),
                                                             (2, 130, "interrupted", 3)])
def test_the_server_stops_on_a_signal_as_every_command_does(pipeline, tmp_path, number, status, message, after):
    # Gradio's own wait took SIGTERM (a scheduler, `docker stop`) and Ctrl-C for a clean exit: status 0. A signal
    # as soon as the page answers comes while Gradio finishes starting, which left the server running.
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    pipeline.save_pretrained(tmp_path / "model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # (a process started in the background, as a suite run with `&`, inherits SIGINT ignored: Ctrl-C as a terminal
    # gives it is the default)
    start = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from hyperinverter.cli.main import main; sys.exit(main())")
    command = [sys.executable, "-c", start, "web", "--host", "127.0.0.1", "--port", str(port), "--model",
               str(tmp_path / "model"), "--device", "cpu"]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # until the page is served
            assert server.poll() is None and time.monotonic() < deadline, server.communicate(timeout=10)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(after)  # (3 s: Gradio's launch has finished, past its startup events; the server only waits)
        server.send_signal(signal.Signals(number))
        out, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == status, (out, err)
    assert err.strip().splitlines()[-1] == message and "Keyboard interruption" not in out + err


def test_the_comparison_is_labelled_by_the_method_that_made_it(pipeline, tmp_path):
    # The label followed the method menu: after a HyperInverter inversion (input | Phase I | HyperInverter), choosing
    # another method relabelled the three panels on show by that method's ("input | pSp (W+)").
    _, handlers, name, state = served_page(pipeline, tmp_path)
    shown = handlers["on_invert"](name, "hyperinverter", str(tmp_path / "photo.png"), False, state, None)[1]
    assert shown["label"] == "input | Phase I (W) | HyperInverter" and shown["value"].endswith("_compare.png")
    assert "label" not in handlers["on_method"](name, "w-opt", shown["value"])[0]  # the result on show keeps its labels
    assert handlers["on_method"](name, "w-opt", None)[0]["label"] == "input | W optimisation"  # nothing on show


def test_the_downloaded_inversion_file_names_the_model_as_the_page_does(pipeline, tmp_path):
    # The inversion file handed out recorded the server's folder of the model ("model": "/srv/.../faces-64"): a server
    # path in every download, and one that no `--model` on the visitor's machine takes. It records the page's name.
    from hyperinverter.inversion.files import load_inversion

    _, handlers, name, state = served_page(pipeline, tmp_path)
    outputs = handlers["on_invert"](name, "hyperinverter", str(tmp_path / "photo.png"), False, state, None)
    picked = handlers["on_pick"](name, outputs[0], "the photo")[1]
    for files in (outputs[4], picked):
        assert [Path(f).name for f in files] == ["photo_hyperinverter.png", "photo_hyperinverter_compare.png",
                                                 "photo_hyperinverter.safetensors"]
        ws, _, record = load_inversion(files[2])
        assert record["model"] == name and record["method"] == "hyperinverter", record
        assert str(tmp_path) not in Path(files[2]).read_bytes().decode("latin-1")
        assert ws.shape[1:] == (pipeline.generator.num_ws, pipeline.generator.w_dim)


def test_the_optimisation_methods_step_counts_can_be_lowered_on_the_page(pipeline, tmp_path, monkeypatch):
    # W, W+ and PTI ran their official counts on the page (1000, 2000, 450 + 350 steps: minutes on a CPU), for both
    # photos, with no way to ask for a quick look.
    from hyperinverter.pipeline import InversionPipeline

    _, handlers, name, state = served_page(pipeline, tmp_path)
    fields = {method: [(f["visible"], f["value"], f["label"]) for f in handlers["on_method"](name, method, None)[1:]]
              for method in ("hyperinverter", "w-opt", "pti")}
    quicker = " (fewer: quicker, rougher)"
    assert fields["hyperinverter"] == [(False, None, "pivot steps" + quicker), (False, None, "steps" + quicker)]
    assert fields["w-opt"] == [(False, None, "pivot steps" + quicker), (True, 1000, "steps, 1 to 1000" + quicker)]
    assert fields["pti"] == [(True, 450, "pivot steps, 1 to 450" + quicker), (True, 350, "steps, 1 to 350" + quicker)]
    asked = []
    invert = InversionPipeline.invert
    monkeypatch.setattr(InversionPipeline, "invert", lambda self, x, **kw: asked.append(kw) or invert(self, x, **kw))
    out = handlers["on_invert"](name, "w-opt", str(tmp_path / "photo.png"), False, state, str(tmp_path / "second.png"),
                                None, 2)
    assert "W optimisation:" in out[3] and [kw["steps"] for kw in asked] == [2, 2]  # both photos
    handlers["on_second"](name, "w-opt", str(tmp_path / "second.png"), False, state, None, 3)
    assert asked[-1]["steps"] == 3
    for wrong in (5000, float("inf"), float("nan"), 2.5):
        status = handlers["on_invert"](name, "w-opt", str(tmp_path / "photo.png"), False, state, None, None, wrong)[3]
        assert f"steps must be a whole number from 1 to 1000 (W optimisation's own count), got {wrong!r}" in status
    assert len(asked) == 3  # refused before any work


def test_a_step_count_out_of_range_reaches_the_page_s_own_check(pipeline, tmp_path):
    # In Chromium, a steps field holding -5 or 0 was refused by Gradio's own bounds before on_invert: a bare "Value
    # -5 is less than minimum value 1." naming no field, the last result left on show, a traceback in the server log;
    # 2.5 was rounded to 2 without a word. The fields pass what was typed, and the page says what is wrong.
    app, handlers, name, state = served_page(pipeline, tmp_path)
    fields = [block for block in app.blocks.values() if getattr(block, "elem_id", None) in ("pivot-steps", "steps")]
    assert len(fields) == 2
    for typed in (-5, 0, 2.5):
        passed = [field.preprocess(value) for field, value in zip(fields, (None, typed))]
        out = handlers["on_invert"](name, "w-opt", str(tmp_path / "photo.png"), False, state, None, *passed)
        assert f"steps must be a whole number from 1 to 1000 (W optimisation's own count), got {typed!r}" in out[3]
        assert out[1] is None  # no stale comparison


def test_a_slider_box_emptied_or_beyond_its_slider_reaches_its_handler(pipeline, tmp_path):
    # In Chromium, emptying the number box beside the strength, t or layer sliders, or typing a value beyond the
    # slider, failed in Gradio's own check before the handler (a traceback in the server log, nothing said or a
    # toast naming no field), and the old edit stayed on show.
    import warnings

    app, handlers, name, state = served_page(pipeline, tmp_path)
    sliders = {b.elem_id: b for b in app.blocks.values()
               if getattr(b, "elem_id", None) in ("strength", "t", "mix-start")}
    assert len(sliders) == 3 and all(s.get_block_name() == "slider" for s in sliders.values())  # Gradio's own
    reading = [f for f in app.fns.values() if any(b in sliders.values() for b in f.inputs)]
    assert reading and not any(f.preprocess for f in reading)  # (values as typed: the handlers check them)
    state = handlers["on_invert"](name, "hyperinverter", str(tmp_path / "photo.png"), False, state,
                                  str(tmp_path / "second.png"))[0]
    calls = [("on_edit", ("principal direction 1", None, False), "strength must be a number"),
             ("on_blend", (None,), "t must be a number"),
             ("on_mix", (None, 4), "the first layer to mix must be a number"),
             ("on_mix", (1, None), "the layer to mix to must be a number")]
    for handler, args, said in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image, _ = handlers[handler](name, state, None, *args)
        assert image is None and [str(w.message) for w in caught] == [f"{said}, got nothing (its box is empty)"]
    for handler, args, said in [("on_blend", (5.0,), "t must be in [0, 1], got 5.0"),
                                ("on_mix", (1, 99), "layer range"),
                                ("on_mix", (2.5, 4), "the layers to mix must be whole numbers, got 2.5 and 4")]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image, _ = handlers[handler](name, state, None, *args)
        assert image is None and said in " ".join(str(w.message) for w in caught), handler
    # An API client's infinity (it failed in int() outside the handler's check) is refused: a page never sends one,
    # and an API client never sees a warning.
    import gradio as gr

    with pytest.raises(gr.Error, match="the layer to mix to must be a finite number, got inf"):
        handlers["on_mix"](name, state, None, 1, float("inf"))
    image, _ = handlers["on_edit"](name, state, None, "principal direction 1", 8.0, False)  # beyond the slider
    assert image is not None


def test_cancel_stops_the_second_photo_s_inversion_too(pipeline, tmp_path, monkeypatch):
    # The running flag was dropped when the first photo's inversion ended: Cancel during the second photo's (W
    # optimisation: as long again) found nothing to stop.
    from hyperinverter.apps.web import Cancelled

    _, handlers, name, state = served_page(pipeline, tmp_path)
    invert, stopped = WebSession.invert, []

    def cancelled_in_the_second(self, photo_path, **kwargs):
        if str(photo_path).endswith("second.png"):
            handlers["on_cancel"](state)  # (the visitor presses Cancel while the second photo inverts)
            try:
                kwargs["progress"](1, 10)
            except Cancelled:
                stopped.append(True)
                raise
        return invert(self, photo_path, **kwargs)

    monkeypatch.setattr(WebSession, "invert", cancelled_in_the_second)
    out = handlers["on_invert"](name, "w-opt", str(tmp_path / "photo.png"), False, state,
                                str(tmp_path / "second.png"), None, 2)
    assert stopped == [True] and "W optimisation:" in out[3]  # the first photo's result stays


def test_a_model_switched_during_an_inversion_drops_its_result(pipeline, tmp_path, monkeypatch):
    # Choosing another model while an inversion ran (minutes for W optimisation) cleared the page, and then the
    # inversion's result came: the first model's comparison, faces and downloads under the second model's menu, whose
    # edits said "invert a photo first".
    first, second = (pipeline.save_pretrained(tmp_path / name) for name in ("model-a", "model-b"))
    photo().save(tmp_path / "photo.png")
    app = build_app([str(first), str(second)], device="cpu")
    handlers = {f.name: f.fn for f in app.fns.values()}
    name_a, name_b = f"{tmp_path.name}/model-a", f"{tmp_path.name}/model-b"
    state = handlers["on_model"](name_a, None)[0]
    invert = WebSession.invert

    def switched_meanwhile(self, *args, **kwargs):
        handlers["on_model"](name_b, state)  # (the visitor picks the other model while this one inverts)
        return invert(self, *args, **kwargs)

    monkeypatch.setattr(WebSession, "invert", switched_meanwhile)
    kept, compare, faces, status, downloads, *_ = handlers["on_invert"](name_a, "hyperinverter",
                                                                       str(tmp_path / "photo.png"), False, state, None)
    assert all(out == {"__type__": "update"} for out in (kept, compare, faces, downloads)), (compare, downloads)
    assert "model was switched" in status


def test_cancel_pressed_while_the_inversion_waits_in_the_queue_stops_it(pipeline, tmp_path):
    # Cancel set a flag only for an inversion that had started: one waiting behind another visitor's W optimisation
    # ignored it and then ran all its steps, holding the model for everyone.
    from types import SimpleNamespace

    app, handlers, name, state = served_page(pipeline, tmp_path)
    page = SimpleNamespace(session_hash="page-1")
    queued = SimpleNamespace(session_hash="page-1", fn=SimpleNamespace(name="on_invert"), alive=True,
                             enqueue_time=time.monotonic())
    handlers["on_cancel"](state, page)  # (pressed while it waited)
    app._queue.active_jobs.append([queued])  # (now it runs)
    out = handlers["on_invert"](name, "w-opt", str(tmp_path / "photo.png"), False, state, None, request=page)
    assert out[3] == "**Cancelled.**" and out[1] == {"__type__": "update"}
    queued.enqueue_time = time.monotonic()  # a Cancel before this Invert was clicked does not stop it
    out = handlers["on_invert"](name, "hyperinverter", str(tmp_path / "photo.png"), False, state, None,
                                request=page)
    assert "HyperInverter" in out[3], out[3]


def test_a_preview_does_not_wait_behind_the_models_work(pipeline, tmp_path):
    # The upload's preview (and what is wrong with a file) ran in the models' queue: while another visitor's W
    # optimisation ran, an upload showed nothing for minutes.
    folder = pipeline.save_pretrained(tmp_path / "model")
    app = build_app([str(folder)], device="cpu")
    groups = {f.name: f.concurrency_id for f in app.fns.values()}
    assert groups["on_invert"] == "models" and groups["on_preview"] != "models"


def test_what_is_wrong_with_the_second_photo_names_it(pipeline, tmp_path):
    # A second photo that was not an image, or had no face, was "the uploaded file: ..." or "the photo: no face
    # found": the visitor could not tell it from the first photo (Invert said "the second photo: ..." already).
    import warnings

    _, handlers, name, state = served_page(pipeline, tmp_path)
    (tmp_path / "notes.png").write_text("not a picture")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handlers["on_second"](name, "hyperinverter", str(tmp_path / "notes.png"), False, state)
    said = [str(w.message) for w in caught]
    assert said == ["the second photo: the uploaded file: not a readable image (unknown or corrupt format)"], said


def test_the_model_sets_what_its_controls_can_take():
    # fashion-32's "align faces" box could be ticked (it could only end in "no face found"), and "mix from layer"
    # went up to num_ws, a start whose range is always empty. Its Swap faces button was offered, to say it was not
    # a model of faces.
    app = build_app(["fashion-32", "faces-64"], device="cpu")
    handlers = {f.name: f.fn for f in app.fns.values()}
    for model, faces, num_ws in (("fashion-32", False, 8), ("faces-64", True, 10)):
        out = handlers["on_model"](model, None)
        align, start, end = out[2], out[-5], out[-4]
        assert (align["value"], align["interactive"]) == (faces, faces)
        assert out[-2]["visible"] == out[-1]["visible"] == faces  # Swap faces (fashion-32's could only refuse)
        assert (start["maximum"], end["maximum"], end["value"]) == (num_ws - 1, num_ws, num_ws)


def test_a_slider_the_page_has_set_still_reaches_its_handler_as_typed(pipeline, tmp_path):
    # The sliders' own check was lifted on the page's components, but Gradio keeps a page's own copy of a component
    # that a handler updated (the model sets the layer sliders' range as the page opens, a direction the strength's),
    # with its class's check: in Chromium a strength typed as 50 or "mix from layer" as 99 got Gradio's toast
    # ("Value 50 is greater than maximum value 5.0."), a traceback in the server log and the old edit left on show.
    import asyncio

    from gradio.state_holder import SessionState

    app, handlers, name, _ = served_page(pipeline, tmp_path)
    fns = {f.name: f for f in app.fns.values()}
    page = SessionState(app)

    def run(fn, *inputs):  # through Gradio, as the page's events run (the page's state is Gradio's: None here)
        return asyncio.run(app.process_api(fns[fn], list(inputs), state=page))["data"]

    direction = "principal direction 1"
    run("on_model", name, None)
    run("on_direction", name, direction)
    state_id = next(b._id for b in app.blocks.values() if getattr(b, "stateful", False))
    handlers["on_invert"](name, "hyperinverter", str(tmp_path / "photo.png"), False, page[state_id],
                          str(tmp_path / "second.png"))
    assert run("on_edit", name, None, None, direction, 50, False, False)[0] is not None  # edits, as the command line
    with pytest.warns(UserWarning, match="layer range"):
        assert run("on_mix", name, None, None, 99, 100)[0] is None  # the handler names it


def test_a_model_the_server_does_not_serve_is_named_by_the_page(pipeline, tmp_path):
    # An API client's model name that is not in the menu failed in Gradio's own check of the menu before the page's
    # (a traceback in the server log, the name said back whole: 'Value: nopenope... is not in the list of choices').
    import asyncio

    from gradio.exceptions import Error
    from gradio.state_holder import SessionState

    app, _, served, _ = served_page(pipeline, tmp_path)
    fns = {f.name: f for f in app.fns.values()}
    for fn, inputs in (("on_model", [None]), ("on_invert", ["hyperinverter", None, False, None, None, None, None])):
        for name, said in (("nope" * 10**5, "'nopenope"), ([served], "\"['")):  # (a list: a TypeError)
            with pytest.raises(Error) as caught:
                asyncio.run(app.process_api(fns[fn], [name, *inputs], state=SessionState(app)))
            message = caught.value.message
            assert message.startswith(f"unknown model {said}") and "; this server has" in message, (fn, message[:200])
            assert len(message) < 200 and not caught.value.print_exception


def test_a_direction_that_is_not_a_name_leaves_the_strength_as_it_is(pipeline, tmp_path):
    # The direction's own event (undocumented, callable by an API client) looked a list up in the model's directions:
    # "unhashable type: 'list'", a traceback in the server log, where the edit and the sweep name it.
    import asyncio

    from gradio.state_holder import SessionState

    app, _, name, _ = served_page(pipeline, tmp_path)
    fns = {f.name: f for f in app.fns.values()}
    for direction in (["principal direction 1"], {"a": 1}):
        out = asyncio.run(app.process_api(fns["on_direction"], [name, direction], state=SessionState(app)))["data"]
        assert out == [{"__type__": "update"}]


def test_a_method_that_is_not_a_name_is_named_by_the_page(pipeline, tmp_path):
    # An API client's method that is not a name (a list) was "Internal error (TypeError)", a traceback in the server
    # log; a name of a megabyte was said back whole, on the page and in its warning.
    import asyncio

    from gradio.state_holder import SessionState

    app, _, name, _ = served_page(pipeline, tmp_path)
    fns = {f.name: f for f in app.fns.values()}
    for method, said in ((["w-opt"], "unknown method ['w-opt']"), ("x" * 10**6, "unknown method 'xxx")):
        with pytest.warns(UserWarning, match=re.escape(said)):
            out = asyncio.run(app.process_api(fns["on_invert"], [name, method, None, False, None, None, None, None],
                                              state=SessionState(app)))
        status = out["data"][3]
        assert status.startswith(f"**{said}") and len(status) < 500, status[:200]


def test_a_method_typed_into_its_menu_leaves_the_comparison_as_it_is(pipeline, tmp_path):
    # The method menu takes a typed name (allow_custom_value): one that is no method's, before any comparison was on
    # show, failed in the menu's own event (the comparison's label of that method), with Gradio's toast "Error" and a
    # traceback in the server log; the Invert button is where it is said.
    import asyncio

    from gradio.state_holder import SessionState

    app, _, name, _ = served_page(pipeline, tmp_path)
    fns = {f.name: f for f in app.fns.values()}
    for method in ("nope", ["w-opt"], 3):
        out = asyncio.run(app.process_api(fns["on_method"], [name, method, None], state=SessionState(app)))["data"]
        assert out[0] == {"__type__": "update"} and all(not f["visible"] for f in out[1:]), out


def api_page(pipeline, tmp_path):
    """The page serving ``pipeline`` (saved in ``tmp_path``, with photo.png beside it), launched on a free loopback
    port: (app, the model's folder, ``call(api, *data)`` -> (the event's kind, its data or error message), with
    ``call.upload(path)`` -> the file payload of ``path`` uploaded as a browser does)."""
    import socket
    import urllib.request
    import uuid

    folder = pipeline.save_pretrained(tmp_path / "model")
    photo().save(tmp_path / "photo.png")
    app = build_app([str(folder)], device="cpu")
    with socket.socket() as probe:  # (a port free now)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    url, page = app.local_url, uuid.uuid4().hex

    def call(api: str, *data) -> tuple[str, object]:
        body = json.dumps({"data": list(data), "session_hash": page}).encode()
        request = urllib.request.Request(f"{url}gradio_api/call/{api}", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            event = json.loads(answer.read())["event_id"]
        with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event}", timeout=120) as answer:
            lines = answer.read().decode().splitlines()
        kind = next(line.removeprefix("event: ") for line in lines if line.startswith("event: "))
        data = json.loads(next(line.removeprefix("data: ") for line in lines if line.startswith("data: ")))
        return kind, data["error"] if kind == "error" else data

    def upload(path: Path) -> dict:
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
                "Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        with urllib.request.urlopen(urllib.request.Request(
                f"{url}gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})) as a:
            return {"path": json.loads(a.read())[0], "meta": {"_type": "gradio.FileData"}}

    call.upload = upload
    return app, folder, call


def test_an_api_client_s_values_of_the_wrong_kind_are_named_in_one_line(pipeline, tmp_path):
    # Over Gradio's HTTP API a file field's number, list or dict without a path failed in Gradio's own check
    # ({"error": null}, a pydantic traceback in the server log); a checkbox's 123 was ticked, a face's list was the
    # first face, a direction's list or a strength's string gave nothing back unexplained (a warning no API client
    # sees), and an unknown model's name emptied the page's results before it was refused.
    app, _, call = api_page(pipeline, tmp_path)
    try:
        upload = call.upload(tmp_path / "photo.png")
        name, direction = f"{tmp_path.name}/model", "principal direction 1"
        assert call("invert", name, "hyperinverter", upload, False, upload, None, None)[0] == "complete"
        edit = [name, "the photo", direction, 1.0, False, False]
        cases = [("preview", [123], "photo: expected an uploaded file"),
                 ("invert", [name, "hyperinverter", {"a": 1}, False, None, None, None],
                  "photo: expected an uploaded file"),
                 ("invert", [name, "hyperinverter", upload, False, [1, 2], None, None],
                  "second photo: expected an uploaded file"),
                 ("invert", [name, "hyperinverter", upload, 123, None, None, None],
                  "align must be true or false (a checkbox), got 123"),
                 ("edit", [123, *edit[1:]], "unknown model '123'"),
                 ("edit", [name, 5, *edit[2:]], "label must be the name of a face (the face menu's), got 5"),
                 ("edit", [*edit[:2], ["x"], *edit[3:]], "direction must be the name of a direction, got ['x']"),
                 ("edit", [*edit[:3], "big", *edit[4:]], "strength must be a number, got 'big'"),
                 ("edit", [*edit[:4], 1, False], "paste must be true or false (a checkbox), got 1"),
                 ("sweep", [*edit[:3], [3]], "strength must be a number, got [3]"),
                 ("edit", [*edit[:3], float("nan"), *edit[4:]], "strength must be a finite number, got nan"),
                 ("blend", [name, None, float("inf")], "t must be a finite number, got inf"),
                 ("blend", [name, None, {"t": 1}], "t must be a number, got {'t': 1}"),
                 ("mix", [name, None, "2", 4], "the first layer to mix must be a number, got '2'"),
                 ("swap", [name, None, None], "paste must be true or false (a checkbox), got None"),
                 ("second", [name, 3, upload, False, None, None], "method must be the name of a method, got 3"),
                 # (a label that names no face was the first face: the wrong face edited, said nowhere)
                 ("edit", [name, "face 2 of 2 (from the left)", *edit[2:]],
                  "label 'face 2 of 2 (from the left)' names no face of the inverted photo (its faces: 'the photo')"),
                 ("sweep", [name, "face", *edit[2:4]], "label 'face' names no face of the inverted photo"),
                 ("swap", [name, "face", False], "label 'face' names no face of the inverted photo")]
        for api, data, said in cases:
            kind, message = call(api, *data)
            assert kind == "error" and message.startswith(said), (api, data, message)
        kind, data = call("edit", *edit)  # (the page's results were kept through it all)
        assert kind == "complete" and data[0]["orig_name"] == f"photo_hyperinverter_{direction}+1.png", data
    finally:
        app.close()


def test_a_bright_photo_is_inverted_without_the_warning_of_floats_in_0_1(session, caplog):
    # An upload with no pixel below mid-grey (a white-background product shot) is in [-1, 1] as read, without negative
    # values: the page warned "image(s) [0] given hold no negative values" of every such photo. A tensor a user gives
    # the pipeline, which may be floats in [0, 1] by mistake, is still warned of.
    bright = Image.fromarray(np.random.default_rng(0).integers(128, 256, (64, 64, 3), dtype=np.uint8))
    with caplog.at_level("WARNING"):
        (item,) = session.invert(bright, align=False)
    assert float(item.input.min()) >= 0 and "no negative values" not in caplog.text
    with caplog.at_level("WARNING"):
        session.pipe.invert(item.input)
    assert "image(s) [0] given hold no negative values" in caplog.text


def test_an_api_file_payload_naming_a_url_or_a_server_file_is_refused_unread(pipeline, tmp_path, monkeypatch):
    # Gradio takes a file payload's path as an API client gives it: a URL was downloaded by the server (what
    # gradio_client's handle_file("https://...") sends), and a server file outside its upload folder (/etc/passwd,
    # the model's own weights) was refused unexplained ({"error": null}, a traceback in the server log). Both are
    # refused, naming the field; nothing is fetched. An upload and the model's examples are taken as before.
    from gradio import processing_utils

    fetched = []

    async def download(url, cache_dir):  # (stands in for the network: what Gradio would fetch)
        fetched.append(url)
        return str(tmp_path / "photo.png")

    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", download)
    app, folder, call = api_page(pipeline, tmp_path)
    try:
        upload = call.upload(tmp_path / "photo.png")
        name = f"{tmp_path.name}/model"

        def file(path: str) -> dict:
            return {"path": path, "meta": {"_type": "gradio.FileData"}}

        url = "its path is a URL, which this server does not fetch: upload the file"
        foreign = "its path is not a file uploaded to this server"
        cases = [("preview", [file("https://example.com/face.png")], "photo", url),
                 ("invert", [name, "hyperinverter", upload, False, file("http://example.com/b.png"), None, None],
                  "second photo", url),
                 ("preview", [file("/etc/passwd")], "photo", foreign),
                 ("preview", [file(str(folder / "pipeline.json"))], "photo", foreign),
                 ("preview", [file("../../../etc/passwd")], "photo", foreign),
                 ("preview", [file("/tmp/a\0b.png")], "photo", foreign),
                 ("second", [name, "hyperinverter", file("/etc/passwd"), False, None, None], "second photo", foreign)]
        for api, data, field, said in cases:
            kind, message = call(api, *data)
            assert kind == "error" and message.startswith(f"{field}: expected an uploaded file") and said in message, \
                (api, data, message)
        assert not fetched
        assert call("preview", upload)[0] == "complete"
        assert call("invert", name, "hyperinverter", upload, False, None, None, None)[0] == "complete"
    finally:
        app.close()
