"""The web demo: its session logic on a tiny pipeline (no browser), and the Gradio page it builds."""

import numpy as np
import pytest
import torch
from PIL import Image

from hyperinverter.align import NoFaceFoundError
from hyperinverter.apps.web import WebSession, build_app
from hyperinverter.editing import LinearDirection
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
    assert item.label == "photo" and item.placement is None and item.input.shape == (1, 3, R, R)
    assert torch.equal(item.input, pil_to_tensor(center_square(picture), size=R))
    assert center_square(picture).size == (600, 600)
    reference = pipeline.invert(item.input)
    assert torch.allclose(item.result.image, reference.image, atol=1e-5)
    # input | Phase I | HyperInverter, each enlarged 2x (nearest) to the display size, 2-px padding.
    assert session.comparison(item).size == (3 * (2 * R + 2) + 2, 2 * R + 4)


def test_every_face_is_aligned_and_edits_paste_back(session, pipeline):
    picture = photo()
    items = session.invert(picture, align=True)
    assert [it.label for it in items] == ["photo-face0", "photo-face1"]
    assert all(it.placement is not None and np.array_equal(np.asarray(it.photo), np.asarray(picture)) for it in items)
    edited = session.edit(items[0], "up", 2.0)
    expected = session.to_display(pipeline.edit(items[0].result, session.directions["up"], 2.0))
    assert np.array_equal(np.asarray(edited), np.asarray(expected))
    assert not np.array_equal(np.asarray(edited), np.asarray(session.to_display(items[0].result.image)))
    pasted = session.edit(items[0], "up", 2.0, paste_back=True)
    assert pasted.size == picture.size
    changed = np.abs(np.asarray(pasted, dtype=int) - np.asarray(picture, dtype=int)).sum(axis=2) > 0
    assert changed[250, 200] and not changed[5, 5]  # inside the first face's crop, not in the corner
    with pytest.raises(ValueError, match="unknown direction"):
        session.edit(items[0], "smile", 1.0)


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


def test_the_page_builds_over_a_pipeline_folder(pipeline, tmp_path):
    import gradio as gr

    folder = pipeline.save_pretrained(tmp_path / "model")
    app = build_app([str(folder)], device="cpu")
    assert isinstance(app, gr.Blocks)
    with pytest.raises(ValueError, match="no model"):
        build_app([])


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
