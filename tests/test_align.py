"""FFHQ alignment geometry, paste-back, and dlib detection on a real photo when dlib is installed."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from hyperinverter.align import NoFaceFoundError, align_from_landmarks, ffhq_quad, paste_back


def synthetic_landmarks(cx=200.0, cy=180.0, eye_dist=60.0, angle_deg=0.0):
    """68 points whose eyes and mouth corners sit where the FFHQ recipe reads them."""
    lm = np.zeros((68, 2))
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = {"eye_l": (-eye_dist / 2, 0), "eye_r": (eye_dist / 2, 0), "mouth_l": (-25, 70), "mouth_r": (25, 70)}
    place = {k: rot @ np.array(v) + [cx, cy] for k, v in pts.items()}
    lm[36:42] = place["eye_l"]
    lm[42:48] = place["eye_r"]
    lm[48] = place["mouth_l"]
    lm[54] = place["mouth_r"]
    return lm


def test_quad_is_a_square_around_the_face():
    quad = ffhq_quad(synthetic_landmarks())
    sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
    assert np.allclose(sides, sides[0])
    assert quad[:, 0].min() < 200 - 30 and quad[:, 0].max() > 200 + 30  # contains both eyes
    with pytest.raises(ValueError, match="68"):
        ffhq_quad(np.zeros((5, 2)))


@pytest.mark.parametrize("angle", [0.0, 25.0])
def test_alignment_puts_the_eyes_level_at_fixed_positions(angle):
    photo = Image.new("RGB", (400, 400), "white")
    lm = synthetic_landmarks(angle_deg=angle)
    draw = ImageDraw.Draw(photo)
    for eye in (lm[36], lm[42]):
        draw.ellipse([eye[0] - 4, eye[1] - 4, eye[0] + 4, eye[1] + 4], fill="black")
    face = align_from_landmarks(photo, lm, size=256)
    dark = np.argwhere(np.asarray(face.image.convert("L")) < 100)
    left, right = dark[dark[:, 1] < 128], dark[dark[:, 1] >= 128]
    (ly, lx), (ry, rx) = left.mean(axis=0), right.mean(axis=0)
    assert abs(ly - ry) < 2  # eyes level after de-rotation
    assert abs((lx + rx) / 2 - 128) < 2  # centred horizontally
    # the same eye positions whatever the rotation of the photo
    assert abs(rx - lx - 256 * 60 / (np.hypot(*(face.quad[3] - face.quad[0])))) < 2


def test_crop_outside_the_photo_is_filled_and_paste_back_round_trips():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
    face = align_from_landmarks(photo, synthetic_landmarks(cx=60, cy=60), size=128)  # quad leaves the photo
    assert face.image.size == (128, 128)
    back = paste_back(photo, face.image, face)
    diff = np.abs(np.asarray(back, dtype=float) - np.asarray(photo, dtype=float))
    assert back.size == photo.size and diff.mean() < 3
    # A mask limits what goes back: a black one leaves the photo as it was; one of another size is refused.
    black = Image.new("RGB", (128, 128))
    assert back.tobytes() != paste_back(photo, black, face).tobytes()
    assert paste_back(photo, black, face, mask=Image.new("L", (128, 128), 0)).tobytes() == photo.tobytes()
    with pytest.raises(ValueError, match="an 'L' image of the crop's 128x128"):
        paste_back(photo, black, face, mask=Image.new("L", (64, 64), 255))


@pytest.mark.parametrize("size, side, corner", [(64, 128.0, 100.0), (256, 180.0, 100.0), (64, 128.0, 100.3)])
def test_the_paste_back_fades_to_nothing_at_the_crop_s_edge(size, side, corner):
    # The feather's blur reached the crop's edge (12/255 at 64 px), where the photo took over at once: a seam along
    # the crop's square, and pixels of the photo just outside the crop changed.
    from hyperinverter.align.ffhq import paste_back_placement

    quad = [[corner, corner], [corner, corner + side], [corner + side, corner + side], [corner + side, corner]]
    photo = Image.new("RGB", (400, 400))
    white = Image.new("RGB", (size, size), (255, 255, 255))
    out = np.asarray(paste_back_placement(photo, white, {"quad": quad, "source_size": [400, 400]}))[..., 0]
    first, last = int(np.ceil(corner)), int(np.floor(corner + side))  # (the pixels whose centre is in the crop)
    inside, within = np.zeros(out.shape, dtype=bool), np.zeros(out.shape, dtype=bool)
    inside[first : last + 1, first : last + 1] = True
    within[first + 1 : last, first + 1 : last] = True
    assert not out[~inside].any()  # the photo outside the crop, bit for bit
    assert out[inside & ~within].max() <= 3 and out[200, 200] == 255  # the crop's outermost pixels: (nearly) none


def test_several_faces_paste_back_into_one_photo_later_over_earlier():
    # A photo of several faces had no call that put them all back: each paste gave a photo of its own face only.
    from hyperinverter.align import paste_back_placements

    def square(corner, side=100.0):
        return {"quad": [[corner, corner], [corner, corner + side], [corner + side, corner + side],
                         [corner + side, corner]], "source_size": [400, 400]}

    photo = Image.new("RGB", (400, 400))
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    out = np.asarray(paste_back_placements(photo, [red, blue], [square(50), square(120)]))
    assert tuple(out[80, 80]) == (255, 0, 0) and tuple(out[200, 200]) == (0, 0, 255)  # both faces
    assert tuple(out[145, 145]) == (0, 0, 255)  # where they overlap: the later one
    assert not out[350:, :50].any()  # the photo elsewhere, untouched
    assert paste_back_placements(photo, [], []).tobytes() == photo.tobytes()
    wrong = {**square(120), "source_size": [300, 200]}
    with pytest.raises(ValueError, match="aligned in a 300x200 photo"):  # checked before any face is pasted
        paste_back_placements(photo, [red, blue], [square(50), wrong])
    with pytest.raises(ValueError, match="2 edited crops for 1 placements"):
        paste_back_placements(photo, [red, blue], [square(50)])


def test_paste_back_keeps_the_photo_s_kind():
    # A black-and-white photo came back in colour (the model's face a tinted patch in it), and a cut-out photo lost
    # its alpha: the result is of the photo's own kind, the photo outside the crop unchanged.
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 255, (300, 300), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
    face = align_from_landmarks(grey, synthetic_landmarks(cx=150, cy=130), size=128)
    red = Image.new("RGB", (128, 128), (200, 30, 30))
    back = paste_back(grey, red, face)
    assert back.mode == "L" and back.size == grey.size
    assert back.getpixel((5, 5)) == grey.getpixel((5, 5))
    assert back.getpixel((150, 150)) == red.convert("L").getpixel((0, 0))
    cut_out = grey.convert("RGBA")
    cut_out.putalpha(Image.fromarray(np.tile((np.arange(300) * 255 // 299).astype(np.uint8), (300, 1))))
    back = paste_back(cut_out, red, face)
    assert back.mode == "RGBA" and back.getchannel("A").tobytes() == cut_out.getchannel("A").tobytes()
    assert back.getpixel((150, 150))[:3] == (200, 30, 30)
    assert paste_back(grey.convert("LA"), red, face).mode == "LA"


def test_dlib_finds_and_aligns_a_real_face_or_says_none():
    from hyperinverter.align import Dlib68Detector, align_faces
    from hyperinverter.apps import SAMPLES_DIR

    detector = Dlib68Detector()  # the test install has the align extra: a missing dlib is a failure here
    photo = Image.open(SAMPLES_DIR / "astronaut.jpg")
    faces = align_faces(photo, detector, size=256)
    assert len(faces) == 1 and faces[0].image.size == (256, 256)
    # dlib's own threshold also takes the mission patch on her suit for a face.
    patch = Dlib68Detector(min_score=0.0)(photo)[1]
    assert len(Dlib68Detector(min_score=0.0)(photo)) == 2 and patch[:, 1].mean() > 300
    assert 150 < faces[0].landmarks[:, 0].mean() < 280  # the astronaut's face, largest first
    with pytest.raises(NoFaceFoundError, match="no face"):
        align_faces(Image.new("RGB", (200, 200), "gray"), detector, source="blank.png")


def test_a_large_photo_s_faces_are_found_on_a_reduced_copy_and_placed_on_the_photo():
    # HOG over a 21-megapixel photo took 24 s and 1.2 GB: faces are found at most detect_side px long, and their
    # landmarks placed on the photo itself, where they land as at full size (within dlib's own box jitter).
    from hyperinverter.align import Dlib68Detector
    from hyperinverter.apps import SAMPLES_DIR

    photo = Image.open(SAMPLES_DIR / "obama.jpg")  # 512 x 640: reduced by 3 below
    seen = []
    reduced = Dlib68Detector(detect_side=256)
    run = reduced._detector.run
    reduced._detector = type("Spy", (), {"run": lambda self, rgb, *a: seen.append(rgb.shape) or run(rgb, *a)})()
    [landmarks] = reduced(photo)
    [full] = Dlib68Detector(detect_side=None)(photo)
    assert seen == [(214, 171, 3)]
    eyes = np.linalg.norm(full[36:42].mean(0) - full[42:48].mean(0))
    assert np.abs(landmarks - full).mean() < 0.02 * eyes and landmarks.max() > 300  # on the photo, not the copy
    with pytest.raises(ValueError, match="detect_side"):
        Dlib68Detector(detect_side=0)
    # No face there: the size it would have needed is the reduced copy's ("about 40 px" misled: a 60-px face in a
    # 6000-px photo is not found), and how to search at full size.
    from hyperinverter.align import align_faces

    with pytest.raises(NoFaceFoundError, match=r"about 80 px and more in this photo, searched at 1/2 of its size "
                                               r"\(--detect-side 0"):
        align_faces(Image.new("RGB", (3000, 100), "gray"), Dlib68Detector(), source="wide.png")
    with pytest.raises(NoFaceFoundError, match=r"about 40 px and more: turn"):
        align_faces(Image.new("RGB", (2048, 100), "gray"), Dlib68Detector(), source="wide.png")
    # The command line sets it (`--detect-side`, 0: full size) for every command that aligns photos.
    from hyperinverter.cli.arguments import face_detector
    from hyperinverter.cli.main import build_parser

    for command in (["invert", "p.jpg", "--model", "m", "--out", "o"],
                    ["restore", "p.jpg", "--model", "m", "--out", "o"],
                    ["swap", "a.jpg", "b.jpg", "--model", "m", "--out", "o.png"]):
        parser = build_parser()
        assert face_detector(parser.parse_args([*command, "--align"])).detect_side == 2048
        assert face_detector(parser.parse_args([*command, "--align", "--detect-side", "0"])).detect_side is None
        assert face_detector(parser.parse_args([*command, "--align", "--detect-side", "900"])).detect_side == 900


def test_the_face_detection_options_without_align_are_a_usage_error(capsys):
    # Without --align no face is detected: --min-face-score and --detect-side were accepted and ignored.
    from hyperinverter.cli.main import main

    for command in (["invert", "p.jpg", "--model", "m", "--out", "o"],
                    ["restore", "p.jpg", "--model", "m", "--out", "o"],
                    ["swap", "a.jpg", "b.jpg", "--model", "m", "--out", "o.png"]):
        assert main([*command, "--detect-side", "0"]) == 2
        assert "error: --detect-side: applies only with --align" in capsys.readouterr().err
        assert main([*command, "--min-face-score", "0.5", "--detect-side", "2048"]) == 2
        assert "error: --min-face-score, --detect-side: apply only with --align" in capsys.readouterr().err


def test_a_process_reads_the_detector_s_models_once(tmp_path):
    # Every detector read dlib's HOG detector and the 100-MB landmark model again: 3.8 s of each alignment that a
    # process runs (the web page's detector per app, a test suite's per command).
    import os

    from hyperinverter.align import Dlib68Detector
    from hyperinverter.align.landmarks import find_predictor

    first, second = Dlib68Detector(), Dlib68Detector(min_score=0, detect_side=None)
    assert first._detector is second._detector and first._predictor is second._predictor
    elsewhere = tmp_path / "predictor.dat"  # another file (here, the same one by another path) is read
    os.symlink(find_predictor(), elsewhere)
    assert Dlib68Detector(elsewhere)._predictor is not first._predictor


def test_crop_scale_is_the_median_image_to_crop_ratio():
    from hyperinverter.align import measure_crop_scale

    # Three faces of growing size on 256-px images (64 px upscaled 4x) and one image without a face: the
    # median image/crop ratio is the middle face's.
    faces = iter([synthetic_landmarks(128, 110, d) for d in (60.0, 80.0)] + [[], synthetic_landmarks(128, 110, 70.0)])

    def detector(image):
        assert image.size == (256, 256)
        lm = next(faces)
        return [lm] if len(lm) else []

    result = measure_crop_scale([Image.new("RGB", (64, 64))] * 4, detector)
    quad = ffhq_quad(synthetic_landmarks(128, 110, 70.0))
    assert result.faces_found == 3 and result.images == 4
    assert np.isclose(result.scale, 256 / np.hypot(*(quad[3] - quad[0])))
    with pytest.raises(NoFaceFoundError):
        measure_crop_scale([Image.new("RGB", (64, 64))], lambda image: [])


def test_paste_back_into_a_smaller_face_does_not_alias():
    # The edited crop went into the photo in one bicubic warp: where the face is smaller than the crop, fine detail
    # (hair) folded into moiré (stripes finer than the photo's pixels came back at full contrast, std 57).
    from hyperinverter.align.ffhq import paste_back_placement

    size, side, corner = 512, 150.0, 100.0
    stripes = (127.5 + 100 * np.sin(2 * np.pi * np.arange(size) / 2.5))[None, :].repeat(size, 0)
    edited = Image.fromarray(np.stack([stripes] * 3, -1).astype(np.uint8))
    photo = Image.new("RGB", (400, 300), (128, 128, 128))
    quad = [[corner, corner], [corner, corner + side], [corner + side, corner + side], [corner + side, corner]]
    out = np.asarray(paste_back_placement(photo, edited, {"quad": quad, "source_size": [400, 300]})).astype(float)
    inner = out[120:230, 120:230, 0]  # (inside the feathered border)
    assert inner.std() < 3 and abs(inner.mean() - 127.5) < 3


def test_the_padding_beyond_the_photo_is_blurred_and_fades_as_ffhqs():
    # Where the crop leaves the photo, FFHQ's recipe blurs the reflected padding and fades it to the median colour;
    # plain reflection showed sharp mirrored copies there (8.7/255 from the official crops along their border).
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))  # fine detail everywhere
    face = align_from_landmarks(photo, synthetic_landmarks(cx=70, cy=120), size=128)  # reaches past the left edge
    crop = np.asarray(face.image, dtype=float)
    u = np.arange(128)
    source_x = face.affine[0, 0] * u[None, :] + face.affine[0, 1] * u[:, None] + face.affine[0, 2]
    outside, inside = crop[source_x < -20], crop[source_x > 20]
    assert outside.std() < 0.5 * inside.std()  # (blurred, and towards the edge one colour)
    median = np.median(np.asarray(photo, dtype=float).reshape(-1, 3), axis=0)
    far = crop[source_x < source_x.min() + 5].mean(axis=0)
    assert np.abs(far - median).max() < 20


@pytest.mark.parametrize("angle", [0.0, 17.0])
def test_the_crop_samples_where_ffhqs_quad_transform_does(angle):
    # FFHQ's (and pSp's) script warps with Pillow's QUAD transform on ``quad + 0.5``: the landmarks count pixel i's
    # centre as i, Pillow's transforms as i + 0.5. Without that half pixel the crop sat half a source pixel off.
    from hyperinverter.align.ffhq import quad_affine

    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    landmarks = synthetic_landmarks(cx=200, cy=170, eye_dist=40, angle_deg=angle)  # inside the photo: no padding
    quad, size = ffhq_quad(landmarks), 128  # no shrink either
    ours = np.asarray(align_from_landmarks(photo, landmarks, size=size).image, dtype=float)
    ffhq = np.asarray(photo.transform((size, size), Image.QUAD, tuple((quad + 0.5).flatten()), Image.BICUBIC),
                      dtype=float)
    assert np.abs(ours - ffhq).max() <= 1, np.abs(ours - ffhq).max()  # (float rounding)
    np.testing.assert_allclose(quad_affine(quad, size)[:, 2], quad[0] + 0.5)



def _ffhq_script_crop(photo, landmarks, output_size, transform_size):
    """FFHQ's ``recreate_aligned_images`` for a quad inside the photo (no padding): shrink measured against the
    OUTPUT size, crop with a border, bilinear QUAD warp at ``transform_size``, Lanczos (ANTIALIAS) to the output."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    eye_avg, eye_to_eye = (eye_left + eye_right) * 0.5, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = np.hypot(*x) * 2
    img = photo
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        img = img.resize((int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink))), Image.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))) - border, int(np.floor(min(quad[:, 1]))) - border,
            int(np.ceil(max(quad[:, 0]))) + border, int(np.ceil(max(quad[:, 1]))) + border)
    assert crop[0] >= 0 and crop[1] >= 0 and crop[2] <= img.size[0] and crop[3] <= img.size[1]  # (no padding)
    img, quad = img.crop(crop), quad - crop[0:2]
    img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    return img.resize((output_size, output_size), Image.LANCZOS)


@pytest.mark.parametrize("eye_dist", [100.0, 175.0])
def test_invert_align_shrinks_a_large_crop_as_ffhq_s_script_and_does_not_alias(eye_dist):
    # The shrink was measured against the 4x warp, not the output as FFHQ's script measures it: a face of 4x to
    # 16x the model's size was warped from the full photo, and fine stripes (fabric, hair) came out as moiré.
    from hyperinverter.inversion.batch import photo_pictures

    resolution = 64
    lm = synthetic_landmarks(cx=450, cy=420, eye_dist=eye_dist)
    side = float(np.hypot(*(ffhq_quad(lm)[3] - ffhq_quad(lm)[0])))
    assert 4 * resolution < side < 16 * resolution
    yy, xx = np.mgrid[:900, :900]
    period = side / (4 * resolution) * 1.05  # about the 4x warp's own sampling step
    stripes = (127.5 + 120 * np.sin(2 * np.pi * (xx + 0.05 * yy) / period)).astype(np.uint8)
    photo = Image.fromarray(np.stack([stripes] * 3, axis=-1))
    [picture] = photo_pictures(photo, "photo", "photo.png", resolution=resolution, channels=3,
                               detector=lambda image: [lm])
    ours = (picture.image[0].permute(1, 2, 0).numpy() + 1) * 127.5
    script = np.asarray(_ffhq_script_crop(photo, lm, resolution, 4 * resolution), dtype=np.float64)
    assert script.std() < 1  # FFHQ's recipe: the stripes average out to grey
    assert ours.std() < 2 and np.abs(ours - script).max() <= 4
