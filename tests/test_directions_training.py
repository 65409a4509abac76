"""Directions users make themselves: InterFaceGAN boundaries from labels, landmark attributes, the catalogue."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tiny_generator
from hyperinverter.cli.main import main
from hyperinverter.editing import (
    GANSpaceBasis,
    GANSpaceDirection,
    LinearDirection,
    load_direction,
    save_direction,
)
from hyperinverter.editing.attributes import (
    ATTRIBUTES,
    LabelReport,
    head_yaw,
    label_samples,
    labelling_work,
    labels_csv_bytes,
    landmark_attributes,
    measure_edit_response,
    measure_images,
    mouth_opening,
)
from hyperinverter.editing.boundaries import (
    _split,
    binary_classes,
    label_codes,
    project_off,
    read_labels,
    save_boundary,
    train_boundary,
    train_from_labels,
)
from hyperinverter.editing.catalogue import direction_catalogue, resolve_direction
from hyperinverter.errors import InputError, SchemaError
from hyperinverter.inversion.files import generator_fingerprint

BUNDLED_FACE = Path(__file__).parents[1] / "src/hyperinverter/bundled/faces-64/examples/000000.png"


def _synthetic(n=1500, num_ws=6, w_dim=16, noise=0.3, seed=0):
    """W codes (identical rows) and a score that is a known linear function of w plus noise."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, w_dim, generator=gen) * 2 + 1
    normal = torch.randn(w_dim, generator=gen)
    normal /= normal.norm()
    score = (w @ normal) + noise * torch.randn(n, generator=gen)
    return w[:, None].repeat(1, num_ws, 1), score.numpy(), normal


def _cos(a, b):
    return float(a.flatten().double() @ b.flatten().double() / (a.norm() * b.norm()))


# --- boundaries ---------------------------------------------------------------------------------------------------


def test_the_trained_normal_is_the_true_one():
    codes, score, normal = _synthetic()
    result = train_boundary(codes, score, attribute="a")
    vector = result.direction.vector
    assert vector.shape == (1, 16) and abs(float(vector.norm()) - 1) < 1e-5
    assert _cos(vector[0], normal) > 0.95  # the direction points to more of the attribute
    assert result.accuracy > 0.95 and result.num_test == 180 and result.num_train == 720  # 2 x 30 % of 1500
    # default strength: two standard deviations of the codes along the direction (w has std 2 per axis)
    assert 0.5 * 2 * 2 < result.direction.default_strength < 1.5 * 2 * 2
    # a noisy attribute is harder to predict
    noisy = train_boundary(*_synthetic(noise=4.0)[:2], attribute="a")
    assert noisy.accuracy < result.accuracy


def test_labels_that_follow_no_direction_are_flagged(caplog):
    # Random labels gave a direction and a held-out accuracy near 0.5, printed like any other.
    codes, score, _ = _synthetic(n=300)
    assert train_boundary(codes, score, attribute="a").clearly_above_chance and not caplog.records
    random = np.random.default_rng(0).random(300)
    result = train_boundary(codes, random, attribute="a")
    assert result.chance_accuracy == 0.5 and not result.clearly_above_chance
    assert "a: the held-out accuracy" in caplog.text and "not clearly above chance (0.500)" in caplog.text
    binary = (np.arange(300) % 4 == 0).astype(float)  # imbalanced classes: chance is the larger class's share
    assert train_boundary(codes, binary, attribute="b").chance_accuracy == pytest.approx(0.75, abs=0.02)


def test_binary_columns_and_fractions():
    index, labels = binary_classes(np.array([0, 1, np.nan, 1, 0, 0]))
    assert index.tolist() == [0, 1, 3, 4, 5] and labels.tolist() == [0, 1, 1, 0, 0]
    index, labels = binary_classes(np.arange(10.0)[::-1], fraction=0.2)
    assert sorted(index[labels == 1].tolist()) == [0, 1] and sorted(index[labels == 0].tolist()) == [8, 9]
    with pytest.raises(ValueError, match="fraction"):
        binary_classes(np.arange(10.0), fraction=0.7)
    # A constant attribute trained a "direction" from classes made of arbitrary samples (held-out accuracy 0.25).
    with pytest.raises(ValueError, match=r"bottom and top 0.3 of the labelled values overlap \(up to 2 and from 2\)"):
        binary_classes(np.array([1.0, 2, 2, 2, 2, 2, 2, 2, 2, 3]))
    index, labels = binary_classes(np.array([1.0, 2, 2, 2, 2, 2, 2, 2, 2, 3]), fraction=0.1)
    assert index.tolist() == [0, 9] and labels.tolist() == [0, 1]
    codes, score, normal = _synthetic()
    result = train_boundary(codes, (score > np.median(score)).astype(float), attribute="a")
    assert _cos(result.direction.vector[0], normal) > 0.9 and result.accuracy > 0.9


def test_conditioning_makes_the_direction_orthogonal_to_the_condition():
    codes, score, normal = _synthetic()
    gen = torch.Generator().manual_seed(5)
    other = torch.randn(16, generator=gen)
    condition = (other / other.norm() + normal) / 2  # correlated with the attribute
    condition /= condition.norm()
    result = train_boundary(codes, score, attribute="a", conditions={"c": condition[None]})
    vector = result.direction.vector[0]
    assert abs(_cos(vector, condition)) < 1e-5 and abs(float(vector.norm()) - 1) < 1e-5
    assert result.condition_cosines["c"] > 0.5 and result.conditions == ("c",)
    assert result.accuracy_unconditioned > 0.95 and result.accuracy > 0.6
    assert result.metadata()["conditions"] == ["c"]
    # two conditions: orthogonal to both (InterFaceGAN's general case)
    second = torch.randn(16, generator=gen)
    both = project_off(normal, [condition, second])
    assert abs(float(both @ condition.double())) < 1e-9 and abs(float(both @ second.double())) < 1e-9
    with pytest.raises(ValueError, match="span of the conditions"):
        project_off(normal, [normal, second])


def test_wplus_and_layer_ranges():
    codes, score, normal = _synthetic()
    w = train_boundary(codes, score, attribute="a", space="w", layers=(2, 5))
    assert w.direction.vector.shape == (6, 16)
    assert torch.all(w.direction.vector[[0, 1, 5]] == 0) and _cos(w.direction.vector[3], normal) > 0.95
    wplus = train_boundary(codes, score, attribute="a", space="wplus", layers=(1, 5))
    vector = wplus.direction.vector
    assert vector.shape == (6, 16) and torch.all(vector[[0, 5]] == 0)
    assert _cos(vector[1:5].sum(0), normal) > 0.9
    # scaled so that a direction with identical rows edits like the W direction: each row has ~unit norm
    assert abs(float(vector[1:5].norm()) - 2) < 1e-4
    with pytest.raises(ValueError, match="layer range"):
        train_boundary(codes, score, attribute="a", layers=(3, 9))


# --- the labels CSV -----------------------------------------------------------------------------------------------


def _w(G, seeds, psi=1.0):
    from hyperinverter.generate import z_from_seeds

    with torch.no_grad():
        return G.mapping(z_from_seeds(seeds, G.z_dim), truncation_psi=psi)[:, 0].double()


def test_train_from_labels_of_seeds(tiny_generator, tmp_path):
    G = tiny_generator
    seeds = list(range(600))
    w = _w(G, seeds, 0.8)
    normal = torch.randn(G.w_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    score = ((w - w.mean(0)) / w.std(0)) @ normal  # a linear function of w, in the units of the codes
    other = (w - w.mean(0)) @ torch.randn(G.w_dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lines = ["seed,trunc,smile,other"] + [f"{s},0.8,{a:.6f},{b:.6f}" for s, a, b in zip(seeds, score, other)]
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    result = train_from_labels(G, csv, "smile")
    assert result.accuracy > 0.9
    true = normal / w.std(0)
    assert _cos(result.direction.vector[0], true) > 0.9
    conditioned = train_from_labels(G, csv, "smile", conditions=["other"])
    other_alone = train_from_labels(G, csv, "other").direction.vector[0]
    assert abs(_cos(conditioned.direction.vector[0], other_alone)) < 1e-5
    # the file: an ordinary linear direction with the training record in its metadata
    path = save_boundary(conditioned, tmp_path / "smile.safetensors")
    loaded = load_direction(path)
    assert isinstance(loaded, LinearDirection) and torch.equal(loaded.vector, conditioned.direction.vector)
    from hyperinverter.editing.directions import w_probe  # the generator it was found on (see test_editing)

    assert torch.equal(loaded.w_probe, w_probe(G))
    # a direction file as a condition
    save_direction(LinearDirection(other_alone[None].float(), name="o"), tmp_path / "o.safetensors")
    from_file = train_from_labels(G, csv, "smile", conditions=[str(tmp_path / "o.safetensors")])
    assert abs(_cos(from_file.direction.vector[0], other_alone)) < 1e-5
    with pytest.raises(InputError, match="no column 'age'.*'other', 'smile'"):
        train_from_labels(G, csv, "age")
    with pytest.raises(InputError, match=r"^age: is not a column of .*labels\.csv \(its attributes: smile, other\)"):
        train_from_labels(G, csv, "smile", conditions=["age"])
    with pytest.raises(InputError, match="cannot be conditioned on itself"):
        train_from_labels(G, csv, "smile", conditions=["smile"])


def test_train_from_inversion_files(tiny_generator, tmp_path):
    from hyperinverter.inversion.files import generator_fingerprint, save_inversion
    from hyperinverter.methods import InversionResult

    G = tiny_generator
    w = _w(G, range(200)).float()
    image = torch.zeros(1, 3, 32, 32)
    rows = ["codes,label"]
    for i, code in enumerate(w):
        save_inversion(tmp_path / f"{i}.safetensors", InversionResult(code[None, None].repeat(1, G.num_ws, 1), image),
                       model="tiny", generator=generator_fingerprint(G))
        rows.append(f"{i}.safetensors,{int(code[0] > w[:, 0].median())}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    result = train_from_labels(G, tmp_path / "labels.csv", "label")
    assert result.accuracy > 0.85 and abs(result.direction.vector[0, 0]) > 0.8  # the first axis
    save_inversion(tmp_path / "wide.safetensors", InversionResult(torch.zeros(1, G.num_ws, 8), image))
    (tmp_path / "bad.csv").write_text("codes,label\n0.safetensors,1\nwide.safetensors,0\n")
    with pytest.raises(InputError, match=r"bad\.csv: row 3: .*wide\.safetensors: .*codes are \[\d+, 8\]"):
        train_from_labels(G, tmp_path / "bad.csv", "label")
    (tmp_path / "gone.csv").write_text("codes,label\n0.safetensors,1\nmissing.safetensors,0\n")
    with pytest.raises(InputError, match=r"gone\.csv: row 3: the codes file .*missing\.safetensors does not exist"):
        train_from_labels(G, tmp_path / "gone.csv", "label")


@pytest.mark.parametrize("text, cause", [
    ("seed,a\n1,0.5\nx,0.2\n", r"row 3: seed 'x' is not an integer"),
    ("seed,a\n1,0.5\n2,high\n", r"row 3: 'a' is 'high', not a number"),
    ("seed,a\n1,0.5\n2,nan\n", r"row 3: 'a' is 'nan'; it must be empty for a sample without a label"),
    ("seed,trunc,a\n1,nan,0.5\n", r"row 2: 'trunc' is 'nan'; it must be a finite number"),
    ("seed,a\n1,0.5\n\n2,0.1,7\n", r"row 4: has 3 cells, the header 2"),
    ("seed,a\n1,0.5\n1,0.2\n", r"row 3: seed '1' repeats row 2"),
    ("seed,a\n-4,0.5\n", r"row 2: seed -4 is out of range"),
    ("seed,a\n1,0.5\n4294967296,0.2\n", r"row 3: seed 4294967296 is out of range \(0 \.\. 4294967295"),
    ("name,a\nx,1\n", r"row 1: the header needs exactly one of the columns 'seed'"),
    ("seed,codes,a\n1,x,1\n", r"row 1: the header needs exactly one"),
    ("seed\n1\n", r"row 1: no attribute column"),
    ("seed,a,a\n1,2,3\n", r"row 1: the header has repeated column names \['a'\]"),
    ("seed,a\n", r"has a header but no rows"),
    ("", r"is empty"),
])
def test_bad_labels_name_the_file_and_the_row(tmp_path, text, cause):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(SchemaError, match=re.escape(str(path)) + ": " + cause):
        read_labels(path)


def test_a_seed_at_two_truncations_is_two_samples(tiny_generator, tmp_path):
    G = tiny_generator
    seeds = list(range(300))
    rows = ["seed,trunc,a"]
    for psi in (0.5, 1.0):  # every seed twice: two different images, both valid samples
        w = _w(G, seeds, psi)
        rows += [f"{s},{psi},{float(v):.5f}" for s, v in zip(seeds, w[:, 3] - w[:, 5])]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    table = read_labels(path)
    assert table.seeds == seeds * 2 and table.truncations == [0.5] * 300 + [1.0] * 300
    codes = label_codes(table, G)
    assert not torch.allclose(codes[0], codes[300])
    assert train_from_labels(G, path, "a").accuracy > 0.9
    # A seed's two rows (images much alike) are held out together: on both sides, the held-out accuracy was
    # optimistic. Split as train_boundary does, on the top and bottom 30 % of the labels.
    samples = table.samples()
    assert samples.tolist() == list(range(300)) * 2
    index, labels = binary_classes(table.attributes["a"], 0.3)
    train, test = _split(len(index), 0.2, 0, labels, samples[index])
    assert not set(samples[index][train]) & set(samples[index][test])
    assert sorted([*train, *test]) == list(range(len(index)))
    assert abs(len(test) - 0.2 * len(index)) <= 0.05 * len(index)  # (about the share asked for)
    for cls in (0, 1):
        assert abs((labels[test] == cls).sum() - 0.2 * (labels == cls).sum()) <= 3  # (stratified)
    # the same seed drawn another way is another sample too; the same seed, truncation and draw is not
    path.write_text("seed,trunc,z,a\n1,0.5,nvidia,0\n1,0.5,torch,1\n1,0.7,nvidia,1\n1,.50,nvidia,1\n")
    with pytest.raises(SchemaError, match=re.escape(f"{path}: row 5: seed '1' at the same trunc 0.5 repeats row 2")):
        read_labels(path)


def test_empty_cells_are_unlabelled(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("seed,a,b\n1,0.5,\n2,,1\n3,0.1,0\n")
    table = read_labels(path)
    assert table.seeds == [1, 2, 3] and table.truncations == [1.0, 1.0, 1.0] and table.lines == [2, 3, 4]
    assert np.isnan(table.attributes["a"][1]) and np.isnan(table.attributes["b"][0])


# --- landmark attributes ------------------------------------------------------------------------------------------


def _frontal_face() -> np.ndarray:
    """A symmetric frontal face in dlib's 68-point order, closed mouth, eyes with aspect ratio 0.3."""
    p = np.zeros((68, 2))
    for i in range(17):  # jaw: a U, symmetric about x = 0
        angle = math.pi * i / 16
        p[i] = [-50 * math.cos(angle), 60 * math.sin(angle)]
    p[17:22] = [[-40 + 7 * i, -30] for i in range(5)]
    p[22:27] = [[12 + 7 * i, -30] for i in range(5)]
    p[27:31] = [[0, -20 + 7 * i] for i in range(4)]  # nose bridge, tip = 30 at (0, 1)
    p[31:36] = [[-10 + 5 * i, 8] for i in range(5)]

    def eye(cx):  # corners 20 apart, lids 6 apart: EAR = (6 + 6) / (2 * 20) = 0.3
        return [[cx - 10, -15], [cx - 3, -18], [cx + 3, -18], [cx + 10, -15], [cx + 3, -12], [cx - 3, -12]]

    p[36:42], p[42:48] = eye(-25), eye(25)
    p[48:60] = [[20 * math.cos(math.pi + 2 * math.pi * i / 12), 30 + 6 * math.sin(math.pi + 2 * math.pi * i / 12)]
                for i in range(12)]  # outer lips: corners 48 (x=-20) and 54 (x=+20)
    p[60:68] = [[-12, 30], [-5, 30], [0, 30], [5, 30], [12, 30], [5, 30], [0, 30], [-5, 30]]  # closed
    return p


def test_landmark_attributes_on_a_known_face():
    face = _frontal_face()
    values = landmark_attributes(face)
    assert abs(values["yaw"]) < 1e-12 and values["mouth_open"] == 0 and abs(values["eyes_open"] - 0.3) < 1e-12
    turned = face.copy()
    turned[30, 0] += 10  # nose tip towards the image's right, by 1/7 of the 70-px outer eye-corner span
    assert abs(head_yaw(turned) - 10 / 70) < 1e-12
    turned[30, 0] -= 20
    assert head_yaw(turned) < 0
    rolled = face @ np.array([[math.cos(0.4), math.sin(0.4)], [-math.sin(0.4), math.cos(0.4)]]) * 3
    assert abs(head_yaw(rolled)) < 1e-12  # measured along the eye line: roll and scale do not matter
    opened = face.copy()
    opened[[61, 62, 63], 1] -= 4
    opened[[65, 66, 67], 1] += 4  # gap 8 over width 40
    assert abs(mouth_opening(opened) - 0.2) < 1e-12
    with pytest.raises(ValueError, match="68"):
        landmark_attributes(face[:5])


def test_labels_skip_samples_without_a_face(tiny_generator, tmp_path):
    face = _frontal_face() + 64
    calls = []

    def detector(image):  # a face in every other sample
        calls.append(image.size)
        return [face] if len(calls) % 2 else []

    report = label_samples(tiny_generator, range(10, 16), detector, truncation_psi=0.7, upscale=3, batch_size=4)
    assert calls[0] == (96, 96)  # 32 px upscaled x3
    assert [r["seed"] for r in report.rows] == [10, 12, 14] and report.skipped == [11, 13, 15]
    assert report.samples == 6
    csv = tmp_path / "labels.csv"
    csv.write_bytes(labels_csv_bytes(report))
    table = read_labels(csv)
    assert table.seeds == [10, 12, 14] and table.truncations == [0.7] * 3
    assert np.allclose(table.attributes["eyes_open"], 0.3) and np.allclose(table.attributes["yaw"], 0)
    assert labels_csv_bytes(LabelReport([])).decode() == "seed,trunc,z,yaw,mouth_open,eyes_open\n"
    # The file names the generator that drew its samples: with another model its seeds draw other faces, and
    # a direction trained on them would be noise (a held-out accuracy near chance, and nothing else said).
    fingerprint = generator_fingerprint(tiny_generator)
    assert table.generators == [fingerprint] * 3
    assert csv.read_text().splitlines()[:2] == ["seed,trunc,z,generator,yaw,mouth_open,eyes_open",
                                                f"10,0.7,nvidia,{fingerprint},0,0,0.3"]
    assert label_codes(table, tiny_generator).shape == (3, tiny_generator.num_ws, tiny_generator.w_dim)
    other = build_tiny_generator(seed=7)
    with pytest.raises(SchemaError, match=rf"labels\.csv: row 2: its sample was drawn by another generator "
                                          rf"\({fingerprint}\), not by the model's \({generator_fingerprint(other)}\)"):
        label_codes(table, other)


def test_an_interrupted_labelling_resumes_without_measuring_again(tiny_generator, tmp_path):
    # Labelling thousands of samples takes hours; an interruption lost all of it.
    face = _frontal_face() + 64
    measured = []

    def detector(image, stop_after=None):
        measured.append(image.tobytes())
        if stop_after is not None and len(measured) > stop_after:
            raise KeyboardInterrupt
        return [face] if len(measured) % 3 else []

    seeds = range(10, 20)
    whole = label_samples(tiny_generator, seeds, detector, batch_size=4)
    measured.clear()
    with pytest.raises(KeyboardInterrupt), labelling_work(tmp_path / "labels.csv") as work:
        label_samples(tiny_generator, seeds, lambda im: detector(im, stop_after=6), batch_size=4, work=work)
    assert sorted(p.name for p in work.folder.iterdir()) == [".lock", "batch-000000.json", "run.json"]
    first_batch = measured[:4]
    measured[:] = first_batch  # the detector's count goes on from the stored batch, as an uninterrupted run's did
    with labelling_work(tmp_path / "labels.csv") as again:
        resumed = label_samples(tiny_generator, seeds, detector, batch_size=4, work=again)
        assert again.resumed and len(measured) == 10  # only the 6 samples after the stored batch were measured
        assert resumed == whole
        again.remove()
    assert not work.folder.exists()
    # Other settings refuse the stored work, naming what differs.
    with labelling_work(tmp_path / "labels.csv") as stored:
        label_samples(tiny_generator, seeds, detector, batch_size=4, work=stored)
    with pytest.raises(InputError, match="other batch_size, truncation_psi"):
        label_samples(tiny_generator, seeds, detector, batch_size=5, truncation_psi=0.7,
                      work=labelling_work(tmp_path / "labels.csv"))


def test_edit_response_of_a_null_edit(tiny_generator):
    face = _frontal_face()

    def detector(image):  # the nose follows the image's brightness
        moved = face.copy()
        moved[30, 0] += float(np.asarray(image, dtype=np.float64).mean()) / 10
        return [moved]

    null = LinearDirection(torch.zeros(1, tiny_generator.w_dim), name="null")
    response = measure_edit_response(tiny_generator, null, [1, 2, 3], [-1, 0, 1], detector, upscale=1)
    assert response["yaw"].samples == 3 and abs(response["yaw"].slope) < 1e-12
    brighter = LinearDirection(torch.randn(1, tiny_generator.w_dim, generator=torch.Generator().manual_seed(0)))
    moved = measure_edit_response(tiny_generator, brighter, [1, 2, 3], [-1, 0, 1], detector, upscale=1)
    assert moved["yaw"].slope != 0 and moved["eyes_open"].slope == 0 and 0 <= moved["yaw"].r2 <= 1


def test_dlib_measures_a_bundled_face():
    from hyperinverter.align import optional_detector

    detector, why = optional_detector(min_score=0.0, upsample=0)
    if detector is None:
        pytest.skip(why)
    from hyperinverter.io.images import pil_to_tensor, read_image

    (found,) = measure_images(pil_to_tensor(read_image(BUNDLED_FACE)), detector, upscale=4)
    assert found is not None
    assert -0.5 < found["yaw"] < 0.5 and 0 <= found["mouth_open"] < 0.5 and 0.1 < found["eyes_open"] < 0.5


def test_the_label_command_resumes_an_interrupted_labelling(tmp_path, monkeypatch, capsys):
    from hyperinverter.align import optional_detector
    from hyperinverter.catalogue import generator_path
    from hyperinverter.convert.gan_files import load_generator

    detector, why = optional_detector(min_score=0.0, upsample=0)  # the command's detector
    if detector is None:
        pytest.skip(why)
    monkeypatch.chdir(tmp_path)
    command = ["directions", "label", "--model", "faces-64", "--samples", "6", "--batch-size", "4", "--device", "cpu"]
    assert main([*command, "--out", "whole.csv"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole.csv"]  # its work folder is gone
    # A run interrupted after its first batch: that batch's labels are stored.
    G = load_generator(generator_path("faces-64"), device="cpu").eval()
    with labelling_work(tmp_path / "labels.csv") as work:
        label_samples(G, range(6), detector, batch_size=4, upscale=4, work=work)
    (work.folder / "batch-000001.json").unlink()
    stored = json.loads((work.folder / "batch-000000.json").read_text())
    stored["found"][0]["yaw"] = 0.5  # marked, to see that the stored batch is read, not measured again
    (work.folder / "batch-000000.json").write_text(json.dumps(stored))
    capsys.readouterr()
    assert main([*command, "--out", "labels.csv"]) == 0
    assert "resumed the labelling stored in labels.csv.work" in capsys.readouterr().out
    labels = (tmp_path / "labels.csv").read_text().splitlines()
    whole = (tmp_path / "whole.csv").read_text().splitlines()
    assert labels[1].startswith(f"0,1,nvidia,{generator_fingerprint(G)},0.5,")
    assert labels[2:] == whole[2:] and len(labels) > 3
    assert not work.folder.exists()


# --- the catalogue and the command line ---------------------------------------------------------------------------


@pytest.fixture
def model_with_directions(tiny_generator, tmp_path):
    from hyperinverter.io.gan import save_gan

    folder = save_gan(tmp_path / "model", tiny_generator)
    codes, score, _ = _synthetic(num_ws=tiny_generator.num_ws)
    save_boundary(train_boundary(codes, score, attribute="smile"), folder / "directions" / "smile.safetensors")
    basis = GANSpaceBasis(torch.eye(16)[:4], torch.zeros(16), torch.ones(4))
    save_direction(GANSpaceDirection(basis, 1, 0, 3, -2.0, name="turn"), folder / "directions" / "pc1.safetensors")
    return folder


def test_catalogue_and_resolve(model_with_directions, tmp_path):
    entries = direction_catalogue(model_with_directions)
    assert [(e.name, e.kind, e.layers, e.attribute) for e in entries] == [("turn", "ganspace", (0, 3), None),
                                                                          ("smile", "linear", None, "smile")]
    assert entries[1].accuracy > 0.9 and entries[0].strength == -2.0
    assert resolve_direction(model_with_directions, "smile", strength=5.0).default_strength == 5.0
    assert resolve_direction(model_with_directions, "pc1").name == "turn"  # by the file's name too
    by_path = resolve_direction(model_with_directions, model_with_directions / "directions" / "pc1.safetensors",
                                index=2, start=1, end=2, strength=1.0)
    assert (by_path.index, by_path.start, by_path.end) == (2, 1, 2)
    with pytest.raises(InputError, match=r"^age: is neither a direction of model .*\(it has: turn, smile\)"):
        resolve_direction(model_with_directions, "age")
    with pytest.raises(FileNotFoundError):
        resolve_direction(model_with_directions, tmp_path / "nowhere.safetensors")


def test_directions_commands(model_with_directions, tiny_generator, tmp_path, capsys):
    assert main(["directions", "list", "--model", str(model_with_directions)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "kind", "layers", "strength", "attribute", "held-out", "accuracy"]
    assert out[1].split() == ["turn", "ganspace", "0:3", "-2", "-", "-"]
    assert out[2].split()[:3] == ["smile", "linear", "all"] and out[2].split()[4] == "smile"
    assert float(out[2].split()[5]) > 0.9

    w = _w(tiny_generator, range(300))
    csv = tmp_path / "labels.csv"
    csv.write_text("seed,a\n" + "".join(f"{s},{float(v):.5f}\n" for s, v in enumerate(w[:, 3] - w[:, 5])))
    target = model_with_directions / "directions" / "a.safetensors"
    code = main(["directions", "train", "--model", str(model_with_directions), "--labels", str(csv), "--attribute",
                 "a", "--condition", "smile", "--layers", "0:4", "--out", str(target), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0 and re.search(r"a: held-out accuracy (0\.9\d\d|1\.000) on 36 samples", printed), printed
    assert "conditioned on smile" in printed and "layers 0:4" in printed
    vector = load_direction(target).vector
    assert vector.shape == (tiny_generator.num_ws, 16) and torch.all(vector[4:] == 0)
    assert main(["directions", "list", "--model", str(model_with_directions)]) == 0
    assert any(line.split()[:3] == ["a", "linear", "0:4"] for line in capsys.readouterr().out.splitlines())

    csv.write_text("seed,a\n1,0.5\n2,oops\n")
    assert main(["directions", "train", "--model", str(model_with_directions), "--labels", str(csv), "--attribute",
                 "a", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {csv}: row 3: 'a' is 'oops', not a number"


def test_labelling_never_replaces_a_users_labels(tmp_path, capsys):
    # `directions label --out labels.csv` wrote over a user's hand-made labels of that name once it had labelled.
    mine = tmp_path / "labels.csv"
    mine.write_text("seed,trunc,smile\n1,1,0.5\n")
    assert main(["directions", "label", "--model", str(tmp_path / "no-model"), "--samples", "4",
                 "--out", str(mine)]) == 2
    assert f"{mine}: exists and was not written by hyperinverter" in capsys.readouterr().err  # (before any work)
    assert mine.read_text() == "seed,trunc,smile\n1,1,0.5\n"


@pytest.mark.parametrize("options, cause", [
    (["--samples", "100000000000"], "argument --samples: must be at most 1,000,000"),  # (a MemoryError, or killed)
    (["--seed", "4294967295", "--samples", "2"], "the seeds would end at 4294967296, past the last, 4294967295"),
    (["--seed", "99999999999999999999", "--samples", "2"], "argument --seed: must be at most 4,294,967,295"),
])
def test_labelling_refuses_seeds_past_the_last_before_any_work(tmp_path, capsys, options, cause):
    # `--seed 4294967295 --samples 2` made OUT.work, then numpy said "Seed must be between 0 and 2**32 - 1";
    # `--samples 100000000000` listed its seeds until memory ran out.
    try:
        code = main(["directions", "label", "--model", str(tmp_path / "no-model"), *options, "--out",
                     str(tmp_path / "labels.csv")])
    except SystemExit as e:  # (argparse's usage error)
        code = e.code
    assert code == 2 and cause in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_labelling_refuses_an_upscale_past_the_largest_picture_before_any_work(tmp_path, capsys):
    # `--upscale 100000` made OUT.work, then ran out of memory enlarging the first sample.
    assert main(["directions", "label", "--model", "faces-64", "--samples", "2", "--upscale", "100000", "--device",
                 "cpu", "--out", str(tmp_path / "labels.csv")]) == 2
    assert "--upscale 100000: the 64-px samples would be 6,400,000 px wide" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_labelling_replaces_its_own_labels(tmp_path):
    # Labels written with a z column were not known as ours: `directions label` run again onto its own --out said
    # "exists and was not written by hyperinverter" (exit 2). Those written before the column still are.
    from hyperinverter.io.files import check_file_replaceable

    labels = tmp_path / "labels.csv"
    for written in (labels_csv_bytes(LabelReport([{"seed": 1, "trunc": 1.0, **dict.fromkeys(ATTRIBUTES, 0.5)}],
                                                 generator="1ba28f2ec16b687f")),
                    b"seed,trunc,generator,yaw,mouth_open,eyes_open\n1,1,1ba28f2ec16b687f,0.5,0.5,0.5\n"):
        labels.write_bytes(written)
        check_file_replaceable(labels, report=True)


def test_training_a_direction_never_replaces_a_users_file(tmp_path, capsys):
    # `directions train --out mine.safetensors` refused a user's file there only after the training.
    from safetensors.torch import save_file

    mine = tmp_path / "mine.safetensors"
    save_file({"x": torch.zeros(2)}, mine)  # (a safetensors file of the user's, without our mark)
    before = mine.read_bytes()
    (tmp_path / "labels.csv").write_text("seed,a\n1,0.5\n")
    assert main(["directions", "train", "--model", str(tmp_path / "no-model"), "--labels",
                 str(tmp_path / "labels.csv"), "--attribute", "a", "--out", str(mine)]) == 2
    assert f"{mine}: exists and was not written by hyperinverter" in capsys.readouterr().err  # (before any work)
    assert mine.read_bytes() == before


def test_a_condition_found_on_another_generator_is_named_as_such(tiny_generator, tmp_path, caplog):
    # `edit` warns of a direction found on another generator; `directions train --condition FILE` projected such a
    # direction off without a word.
    from hyperinverter.editing.directions import w_probe

    w = _w(tiny_generator, range(300))
    (tmp_path / "labels.csv").write_text("seed,a\n" + "".join(f"{s},{float(v):.5f}\n" for s, v in enumerate(w[:, 3])))
    labels = tmp_path / "labels.csv"
    for name, G in (("own", tiny_generator), ("other", build_tiny_generator(seed=7))):
        save_direction(LinearDirection(torch.eye(16)[5:6], name=name, w_probe=w_probe(G)),
                       tmp_path / f"{name}.safetensors")
    with caplog.at_level("WARNING"):
        train_from_labels(tiny_generator, labels, "a", conditions=[str(tmp_path / "own.safetensors")])
        assert not [r for r in caplog.records if "another generator" in r.getMessage()]
        train_from_labels(tiny_generator, labels, "a", conditions=[str(tmp_path / "other.safetensors")])
    assert any("other.safetensors': it was found on another generator" in r.getMessage() for r in caplog.records)


def test_a_direction_never_replaces_another_file_of_ours_nor_after_its_work(tmp_path, capsys):
    # An inversion of ours at a direction's name was refused only when the direction was written: after the
    # training (`directions train`), after the PCA and the sheet (`ganspace --save`), or after the directions before
    # it in the folder (`directions sefa`, `directions import`: some written, then an error).
    from hyperinverter.inversion.files import save_inversion
    from hyperinverter.methods import InversionResult

    inversion = tmp_path / "out" / "s_2.safetensors"
    inversion.parent.mkdir()
    save_inversion(inversion, InversionResult(torch.zeros(1, 10, 128), torch.zeros(1, 3, 64, 64)),
                   model="faces-64")
    before = inversion.read_bytes()
    (tmp_path / "labels.csv").write_text("seed,a\n1,0.5\n")
    assert main(["directions", "train", "--model", str(tmp_path / "no-model"), "--labels",
                 str(tmp_path / "labels.csv"), "--attribute", "a", "--out", str(inversion)]) == 2
    assert f"{inversion}: is a file of ours that holds an inversion, not a direction" in capsys.readouterr().err
    assert main(["directions", "sefa", "--model", "faces-64", "--prefix", "s", "--out", str(inversion.parent),
                 "--overwrite"]) == 2
    assert f"{inversion}: is a file of ours that holds an inversion" in capsys.readouterr().err
    assert main(["ganspace", "--model", "faces-64", "--samples", "1000000", "--out",
                 str(inversion.parent / "sheet.png"), "--save", "s_2=0:0:4"]) == 2  # (before a PCA of a million)
    assert f"{inversion}: is a file of ours that holds an inversion" in capsys.readouterr().err
    assert [p.name for p in inversion.parent.iterdir()] == ["s_2.safetensors"] and inversion.read_bytes() == before


def test_seeds_are_drawn_as_nvidia_s_generate_py_and_older_tables_as_they_were(tiny_generator, tmp_path):
    # A seed drew z with torch.randn, so `generate --seeds` gave other samples than NVIDIA's generate.py for the
    # same pickle. It draws as NVIDIA's now; a labels table that `directions label` wrote before (a generator column,
    # no z column) keeps its torch draw, and the direction probes keep theirs.
    from hyperinverter.editing.directions import w_probe
    from hyperinverter.generate import z_from_seeds
    from hyperinverter.inversion.files import generator_fingerprint

    G = tiny_generator
    assert torch.equal(z_from_seeds([3, 7], G.z_dim),
                       torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, G.z_dim) for s in (3, 7)]))
                       .float())
    torched = torch.stack([torch.randn(G.z_dim, generator=torch.Generator().manual_seed(s)) for s in (3, 7)])
    assert torch.equal(z_from_seeds([3, 7], G.z_dim, draw="torch"), torched)
    with torch.no_grad():
        assert torch.equal(w_probe(G), G.mapping(z_from_seeds(range(4), G.z_dim, draw="torch"))[:, 0])
        ws = {draw: G.mapping(z_from_seeds([3, 7], G.z_dim, draw=draw)) for draw in ("nvidia", "torch")}
    fingerprint = generator_fingerprint(G)
    old = f"seed,trunc,generator,a\n3,1,{fingerprint},1\n7,1,{fingerprint},0\n"
    tables = {"hand.csv": ("seed,a\n3,1\n7,0\n", "nvidia"), "old.csv": (old, "torch"),
              "new.csv": ("seed,z,a\n3,torch,1\n7,torch,0\n", "torch")}
    for name, (text, draw) in tables.items():
        (tmp_path / name).write_text(text)
        assert torch.allclose(label_codes(read_labels(tmp_path / name), G), ws[draw]), name
    (tmp_path / "bad.csv").write_text("seed,z,a\n3,numpy,1\n")
    with pytest.raises(SchemaError, match="row 2: 'z' is 'numpy'; it must be one of nvidia, torch"):
        read_labels(tmp_path / "bad.csv")


def test_train_from_labels_holds_a_seed_s_rows_out_together(tiny_generator, tmp_path, monkeypatch):
    # What the `directions train` command runs: its held-out split must get the table's seeds, or a seed's rows at
    # two truncations (images much alike) fall on both sides and the held-out accuracy is optimistic.
    from hyperinverter.editing import boundaries

    seeds = list(range(100))
    rows = ["seed,trunc,a"]
    for psi in (0.5, 1.0):
        w = _w(tiny_generator, seeds, psi)
        rows += [f"{s},{psi},{float(v):.5f}" for s, v in zip(seeds, w[:, 3] - w[:, 5])]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    split, made = boundaries._split, []
    monkeypatch.setattr(boundaries, "_split", lambda *args, **kwargs: made.append(split(*args, **kwargs)) or made[-1])
    train_from_labels(tiny_generator, path, "a")
    index, _ = binary_classes(read_labels(path).attributes["a"], 0.3)
    seed_of = np.asarray(seeds * 2)[index]
    train, test = made[0]
    assert len(test) and not set(seed_of[train]) & set(seed_of[test])
