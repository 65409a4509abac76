"""Batch inversion of files: bad files reported, torchrun sharding disjoint and complete, aligned faces with
their placement, `edit --paste-back`, and the pipeline's own crop scale."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hostile
from hyperinverter.align import ffhq_quad
from hyperinverter.apps import SAMPLES_DIR
from hyperinverter.cli.main import main
from hyperinverter.editing import LinearDirection, save_direction
from hyperinverter.inversion.batch import invert_files, rank_shard
from hyperinverter.inversion.files import load_inversion
from hyperinverter.io.checkpoints import read_safetensors, save_safetensors
from hyperinverter.io.images import find_images
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.progress import progress_bar


def write_photos(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = (torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()
        Image.fromarray(arr).save(folder / f"p{i}.png")
    return sorted(folder.iterdir())


def face_landmarks(cx, cy, s=1.0):
    """68 plausible landmarks: eyes at 36..47, mouth corners 48 and 54, the rest near the centre."""
    lm = np.tile([cx, cy], (68, 1)).astype(float)
    lm[36:42] = [cx - 15 * s, cy - 10 * s]
    lm[42:48] = [cx + 15 * s, cy - 10 * s]
    lm[48], lm[54] = [cx - 10 * s, cy + 20 * s], [cx + 10 * s, cy + 20 * s]
    return lm


class TwoFaces:
    """A stand-in detector: two faces per photo, the larger first, like Dlib68Detector."""

    def __call__(self, image):
        return [face_landmarks(60, 60, 1.2), face_landmarks(130, 70, 0.8)]


def test_rank_shard_is_disjoint_and_complete():
    items = list(range(11))
    shares = [rank_shard(items, {"RANK": str(r), "WORLD_SIZE": "3"})[0] for r in range(3)]
    assert sorted(sum(shares, [])) == items and all(len(s) >= 3 for s in shares)
    assert rank_shard(items, {})[0] == items
    with pytest.raises(ValueError, match="outside"):
        rank_shard(items, {"RANK": "3", "WORLD_SIZE": "3"})


def test_bad_files_are_reported_and_the_rest_written(pipeline, tmp_path):
    paths = write_photos(tmp_path / "in", 3)
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    report = invert_files(pipeline, [*paths, broken], tmp_path / "out", batch_size=2, progress=False)
    assert len(report.written) == 3 and len(report.failed) == 1 and "broken.jpg" in str(report.failed[0])
    ws, delta, meta = load_inversion(tmp_path / "out" / "p1.safetensors")
    assert ws.shape == (1, 8, 16) and delta is not None and meta["placement"] is None
    # Same results as inverting the batch at once: batching of files does not change the numbers.
    x = pipeline.prepare(paths)
    assert torch.allclose(pipeline.render(ws, delta), pipeline.invert(x).select(1).image, atol=1e-5)


def test_a_bad_batch_size_is_named(pipeline, tmp_path):
    paths = write_photos(tmp_path / "in", 1)
    for bad in ("2", 0, 1.5):  # ("2" was a TypeError inside, 1.5 failed deep in the loop)
        with pytest.raises(ValueError, match="batch_size must be a whole number of 1 or more"):
            invert_files(pipeline, paths, tmp_path / "out", batch_size=bad, progress=False)
    assert len(invert_files(pipeline, paths, tmp_path / "out", batch_size=np.int64(2), progress=False).written) == 1


def test_the_progress_bar_counts_finished_files(pipeline, tmp_path, monkeypatch):
    # It counted files as read, before their (for optimisation, minutes-long) inversion: 4/8 while 2 were written.
    from hyperinverter.inversion import batch

    bars = []

    def recorded(*args, **kwargs):
        bars.append(progress_bar(*args, **kwargs))
        return bars[-1]

    seen = []
    real_invert = pipeline.invert
    monkeypatch.setattr(batch, "progress_bar", recorded)
    monkeypatch.setattr(pipeline, "invert", lambda *a, **k: seen.append(bars[0].n) or real_invert(*a, **k))
    paths = write_photos(tmp_path / "in", 5)
    invert_files(pipeline, paths, tmp_path / "out", batch_size=2, progress=True)
    assert seen == [0, 2, 4] and bars[0].n == 5


def test_torchrun_ranks_split_the_files(pipeline, tmp_path, monkeypatch):
    paths = write_photos(tmp_path / "in", 5)
    outputs = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        report = invert_files(pipeline, paths, tmp_path / "out", progress=False)
        assert (report.rank, report.world_size) == (rank, 2)
        outputs.append({p.name for p in report.written})
    assert not outputs[0] & outputs[1]
    assert outputs[0] | outputs[1] == {f"p{i}.safetensors" for i in range(5)}


def test_torchrun_ranks_invert_on_their_own_gpu(pipeline, tmp_path, monkeypatch):
    """Under torchrun on GPUs, ``--device auto`` (the default) and ``cuda`` are each rank's own GPU (its
    ``LOCAL_RANK``), as in training: every rank of a sharded invert loaded its model on GPU 0. (No GPU here: CUDA is
    pretended, and the model loaded where a rank asks is the tiny CPU pipeline.)"""
    asked = []

    def from_pretrained(model, *, device, **kwargs):
        asked.append(device)
        return pipeline

    monkeypatch.setattr(InversionPipeline, "from_pretrained", from_pretrained)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    paths = write_photos(tmp_path / "in", 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, device in ((0, "auto"), (1, "cuda"), (1, "cuda:0"), (1, "cpu")):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert main(["invert", *map(str, paths), "--out", str(tmp_path / "out"), "--model", "m", "--device", device,
                     "--overwrite"]) == 0
    assert asked == ["cuda:0", "cuda:1", "cuda:0", "cpu"]  # (a device named with its index is kept)


def test_aligned_faces_keep_their_placement_and_paste_back(pipeline, tmp_path):
    photo = Image.fromarray((np.random.default_rng(0).random((160, 200, 3)) * 255).astype(np.uint8))
    photo.save(tmp_path / "group.png")
    report = invert_files(pipeline, [tmp_path / "group.png"], tmp_path / "out", detector=TwoFaces(), progress=False)
    assert sorted(p.name for p in report.written) == ["group-face0.safetensors", "group-face1.safetensors"]
    _, _, meta = load_inversion(tmp_path / "out" / "group-face1.safetensors")
    assert meta["source"].endswith("group.png") and meta["placement"]["source_size"] == [200, 160]
    assert np.allclose(meta["placement"]["quad"], ffhq_quad(face_landmarks(130, 70, 0.8)))

    pipeline.save_pretrained(tmp_path / "model")
    save_direction(LinearDirection(torch.randn(1, 16), name="dir"), tmp_path / "dir.safetensors")
    assert main(["edit", str(tmp_path / "out" / "group-face1.safetensors"), "--model", str(tmp_path / "model"),
                 "--direction", str(tmp_path / "dir.safetensors"), "--strength", "3", "--paste-back",
                 "--out", str(tmp_path / "edits"), "--device", "cpu"]) == 0
    pasted = Image.open(tmp_path / "edits" / "group_dir_+3_photo.png")  # (the photo's name: its faces given)
    assert pasted.size == photo.size
    diff = np.abs(np.asarray(pasted, dtype=float) - np.asarray(photo, dtype=float)).sum(-1)
    x0, y0 = meta["placement"]["quad"][0]
    assert diff[int(y0) + 30, int(x0) + 30] > 0  # inside the face: changed
    assert diff[150, 5] == 0  # far from it: untouched


def group_photo_edit_setup(pipeline, tmp_path, inversions: str = "inv") -> Path:
    """A photo of two faces inverted into ``tmp_path / inversions``, the model saved to ``tmp_path / "model"`` and a
    direction ``dir`` to ``tmp_path / "dir.safetensors"``: what `edit --paste-back` reads. -> the photo."""
    photo = tmp_path / "group.png"
    hostile.photo(0, (200, 160)).save(photo)
    invert_files(pipeline, [photo], tmp_path / inversions, detector=TwoFaces(), progress=False)
    pipeline.save_pretrained(tmp_path / "model")
    save_direction(LinearDirection(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), name="dir"),
                   tmp_path / "dir.safetensors")
    return photo


def test_the_faces_of_one_photo_are_pasted_back_into_one_photo(pipeline, tmp_path, capsys):
    # `edit --paste-back` on a photo of several faces wrote a photo per face, each with only that face edited.
    from hyperinverter.align import paste_back_placements
    from hyperinverter.io.images import read_image

    photo = group_photo_edit_setup(pipeline, tmp_path)
    command = ["edit", str(tmp_path / "inv"), "--model", str(tmp_path / "model"), "--direction",
               str(tmp_path / "dir.safetensors"), "--strength", "-3", "3", "--paste-back", "--device", "cpu"]
    assert main([*command, "--out", str(tmp_path / "edits")]) == 0
    edits = tmp_path / "edits"
    assert sorted(p.name for p in edits.glob("*_photo.png")) == ["group_dir_+3_photo.png", "group_dir_-3_photo.png"]
    placements = [load_inversion(tmp_path / "inv" / f"group-face{i}.safetensors")[2]["placement"] for i in (0, 1)]
    for label in ("-3", "+3"):
        crops = [Image.open(edits / f"group-face{i}_dir_{label}.png").convert("RGB") for i in (0, 1)]
        pasted = np.asarray(Image.open(edits / f"group_dir_{label}_photo.png"))
        # Both faces, the second (smaller) over the first where their crops overlap: what the API gives.
        assert np.array_equal(pasted, np.asarray(paste_back_placements(read_image(photo), crops, placements)))
        alone = [np.asarray(paste_back_placements(read_image(photo), [c], [pl])) for c, pl in zip(crops, placements)]
        assert all((np.abs(pasted.astype(int) - a).sum(-1) > 0).any() for a in alone)
    capsys.readouterr()
    assert main([*command, "--out", str(edits)]) == 0
    assert "edits of 0 input(s) along 'dir'" in (out := capsys.readouterr().out) and "2 already done" in out
    # A face that cannot be pasted back (aligned in a photo of another size) is reported; the others still paste.
    tensors, metadata = read_safetensors(tmp_path / "inv" / "group-face1.safetensors")
    record = json.loads(metadata["inversion"])
    record.update(picture={"index": 2, "count": 3}, placement={**record["placement"], "source_size": [20, 10]})
    save_safetensors(tmp_path / "inv" / "group-face2.safetensors", tensors, {"inversion": json.dumps(record)})
    assert main([*command, "--out", str(tmp_path / "again")]) == 1
    err = capsys.readouterr().err
    assert f"failed: {tmp_path / 'inv' / 'group-face2.safetensors'}: cannot paste back into its photo" in err
    assert "aligned in a 20x10 photo" in err
    assert sorted(p.name for p in (tmp_path / "again").glob("*_photo.png")) == sorted(
        p.name for p in edits.glob("*_photo.png"))
    assert not list((tmp_path / "again").glob("group-face2*"))
    for label in ("-3", "+3"):
        name = f"group_dir_{label}_photo.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / name)), np.asarray(Image.open(edits / name)))



class ThreeFaces:
    def __call__(self, image):
        return [face_landmarks(50, 60, 1.0), face_landmarks(100, 70, 0.9), face_landmarks(150, 60, 0.8)]


def test_the_faces_of_one_photo_are_edited_in_batched_synthesis_calls(pipeline, tmp_path, monkeypatch, capsys):
    # `edit --paste-back` made one synthesis call per face: now --batch-size images at once (faces × strengths),
    # each face with its own Δθ, as edited one by one; a face whose edit fails still fails alone.
    from hyperinverter.align import paste_back_placements
    from hyperinverter.errors import NonFiniteError
    from hyperinverter.io.images import read_image, tensor_to_pil
    from hyperinverter.models.stylegan2.generator import SynthesisNetwork

    photo = tmp_path / "group.png"
    hostile.photo(0, (200, 160)).save(photo)
    invert_files(pipeline, [photo], tmp_path / "inv", detector=ThreeFaces(), progress=False)
    pipeline.save_pretrained(tmp_path / "model")
    direction = LinearDirection(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), name="dir")
    save_direction(direction, tmp_path / "dir.safetensors")
    files = [tmp_path / "inv" / f"group-face{i}.safetensors" for i in range(3)]
    loaded = [pipeline.load_result(f) for f in files]
    expected = paste_back_placements(
        read_image(photo), [tensor_to_pil(pipeline.edit(r, direction, 3.0))[0].convert("RGB") for r, _ in loaded],
        [record["placement"] for _, record in loaded])
    calls = []
    synthesis = SynthesisNetwork.forward

    def spy(self, ws, weight_delta=None, **kw):
        calls.append((len(ws), weight_delta.batch_size))
        return synthesis(self, ws, weight_delta=weight_delta, **kw)

    monkeypatch.setattr(SynthesisNetwork, "forward", spy)
    command = ["edit", *map(str, files), "--model", str(tmp_path / "model"), "--direction",
               str(tmp_path / "dir.safetensors"), "--paste-back", "--device", "cpu", "--batch-size", "4"]
    assert main([*command, "--strength", "-3", "3", "--out", str(tmp_path / "edits")]) == 0
    assert sorted(calls) == [(1, 1)] * 3 + [(2, 2), (4, 4)]  # each face's reconstruction; two faces × two strengths
    calls.clear()
    assert main([*command, "--strength", "3", "--out", str(tmp_path / "one")]) == 0
    assert sorted(calls) == [(1, 1)] * 3 + [(3, 3)]
    pasted = np.asarray(Image.open(tmp_path / "one" / "group_dir_+3_photo.png"), dtype=int)
    assert np.abs(pasted - np.asarray(expected, dtype=int)).max() <= 1
    assert np.array_equal(pasted, np.asarray(Image.open(tmp_path / "edits" / "group_dir_+3_photo.png"), dtype=int))

    def fails_with_face1(self, codes, *args):  # (the second face's edit cannot be made)
        if any(torch.equal(codes[i : i + 1].cpu(), loaded[1][0].ws) for i in range(len(codes))):
            raise NonFiniteError(None, "the edited image holds NaN or infinite values")
        return render_edits(self, codes, *args)

    render_edits = InversionPipeline._render_edits
    monkeypatch.setattr(InversionPipeline, "_render_edits", fails_with_face1)
    capsys.readouterr()
    assert main([*command, "--strength", "3", "--out", str(tmp_path / "two")]) == 1
    assert f"failed: {files[1]}: the edited image holds NaN" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == [
        "group-face0_dir_+3.png", "group-face0_dir_strip.png", "group-face2_dir_+3.png", "group-face2_dir_strip.png",
        "group_dir_+3_photo.png"]

def test_the_faces_of_one_photo_stay_one_photo_beside_another_folder_of_its_faces(pipeline, tmp_path, capsys):
    # The faces were grouped by their output names: a face sharing its name with another folder's was prefixed with
    # its folder, and `edit res other --paste-back` pasted res's two faces into two photos, one face each.
    import shutil

    group_photo_edit_setup(pipeline, tmp_path, "res")
    (tmp_path / "other").mkdir()
    shutil.copy(tmp_path / "res" / "group-face0.safetensors", tmp_path / "other")
    assert main(["edit", str(tmp_path / "res"), str(tmp_path / "other"), "--model", str(tmp_path / "model"),
                 "--direction", str(tmp_path / "dir.safetensors"), "--strength", "3", "--paste-back",
                 "--out", str(tmp_path / "edits"), "--device", "cpu"]) == 0
    capsys.readouterr()
    photos = sorted(p.name for p in (tmp_path / "edits").glob("*_photo.png"))
    assert photos == ["other_group_dir_+3_photo.png", "res_group_dir_+3_photo.png"]
    one = np.asarray(Image.open(tmp_path / "edits" / photos[0])).astype(int)
    both = np.asarray(Image.open(tmp_path / "edits" / photos[1])).astype(int)
    assert (np.abs(both - one).sum(-1) > 0).any()  # res's photo has its second face edited too


def test_a_face_given_twice_is_pasted_back_with_both_inputs_edits(pipeline, tmp_path, capsys):
    # One file given twice was one input by its path: both inputs' edits went to the second's names, and the first's
    # were never written (while the run said it wrote both); without --paste-back each has its own.
    group_photo_edit_setup(pipeline, tmp_path)
    face = str(tmp_path / "inv" / "group-face0.safetensors")
    assert main(["edit", face, face, "--model", str(tmp_path / "model"), "--direction",
                 str(tmp_path / "dir.safetensors"), "--strength", "3", "--paste-back", "--out", str(tmp_path / "edits"),
                 "--device", "cpu"]) == 0
    assert "wrote edits of 2 input(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "edits").glob("*.png")) == [
        "inv_group-face0_2_dir_+3.png", "inv_group-face0_2_dir_strip.png", "inv_group-face0_dir_+3.png",
        "inv_group-face0_dir_strip.png", "inv_group_dir_+3_photo.png"]


def test_edit_resumes_on_the_same_inversion_photo_and_direction(pipeline, tmp_path, capsys):
    # `edit` redid every input when run again; now it skips the inputs whose edits it would make again.
    photo, direction = group_photo_edit_setup(pipeline, tmp_path, "out"), tmp_path / "dir.safetensors"
    inversions = sorted(map(str, (tmp_path / "out").glob("*.safetensors")))

    def edit(*extra: str, status: int = 0) -> str:
        capsys.readouterr()
        assert main(["edit", *inversions, "--model", str(tmp_path / "model"), "--direction", str(direction),
                     "--strength", "3", "--paste-back", "--out", str(tmp_path / "edits"), "--device", "cpu",
                     *extra]) == status
        return capsys.readouterr().out.replace(str(tmp_path), "TMP")

    assert "edits of 2 input(s)" in edit()
    strip = tmp_path / "edits" / "group-face1_dir_strip.png"
    assert edit() == "wrote edits of 0 input(s) along 'dir' to TMP/edits; 2 already done, 0 failed\n"
    assert "edits of 2 input(s)" in edit("--overwrite")
    # Another photo under the same name (pasted back into), another direction under the same name, or an inversion
    # file made again: each is other work.
    hostile.photo(1, (200, 160)).save(photo)
    assert "edits of 2 input(s)" in edit()
    save_direction(LinearDirection(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)), name="dir"),
                   direction)
    assert "edits of 2 input(s)" in edit()
    invert_files(pipeline, [photo], tmp_path / "out", detector=TwoFaces(), progress=False, overwrite=True)
    before = strip.read_bytes()
    assert "edits of 2 input(s)" in edit() and strip.read_bytes() != before
    # A file that is not this run's work (a user's image under an edit's name) is never taken for it, nor
    # replaced: its input fails, even with --overwrite, and the other is done.
    hostile.photo(2, (10, 10)).save(strip)
    assert "edits of 0 input(s) along 'dir' to TMP/edits; 1 already done, 1 failed" in edit(status=1)
    assert "edits of 1 input(s) along 'dir' to TMP/edits; 0 already done, 1 failed" in edit("--overwrite", status=1)
    assert Image.open(strip).size == (10, 10)


def test_the_pipeline_keeps_its_crop_scale(pipeline, tmp_path):
    pipeline.align_scale = 0.8
    pipeline.save_pretrained(tmp_path / "model")
    again = InversionPipeline.from_pretrained(tmp_path / "model", device="cpu")
    assert again.align_scale == 0.8
    tight, loose = ffhq_quad(face_landmarks(60, 60), scale=0.8), ffhq_quad(face_landmarks(60, 60))
    assert np.allclose(tight.mean(0), loose.mean(0))  # same centre
    assert np.isclose(np.linalg.norm(tight[3] - tight[0]), 0.8 * np.linalg.norm(loose[3] - loose[0]))


def test_cli_align_on_a_real_photo(pipeline, tmp_path, capsys):
    """dlib finds the astronaut's face; a blank photo is reported as having none, the run goes on and its exit
    status says that an input failed."""
    pipeline.save_pretrained(tmp_path / "model")
    Image.new("RGB", (120, 120), "gray").save(tmp_path / "blank.png")
    out = tmp_path / "out"
    assert main(["invert", str(SAMPLES_DIR / "astronaut.jpg"), str(tmp_path / "blank.png"), "--align",
                 "--model", str(tmp_path / "model"), "--out", str(out), "--device", "cpu"]) == 1
    assert "blank.png: no face found (the detector finds upright, roughly frontal faces" in capsys.readouterr().err
    _, _, meta = load_inversion(out / "astronaut.safetensors")  # one face: the patch on her suit scores too low
    quad = np.asarray(meta["placement"]["quad"])
    assert 150 < quad[:, 0].mean() < 300 and meta["placement"]["source_size"] == [512, 512]
    # dlib's own threshold takes the patch as a second face: both are written, the largest first.
    assert main(["invert", str(SAMPLES_DIR / "astronaut.jpg"), "--align", "--min-face-score", "0",
                 "--model", str(tmp_path / "model"), "--out", str(tmp_path / "all"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "all").glob("*.safetensors")) == ["astronaut-face0.safetensors",
                                                                               "astronaut-face1.safetensors"]


def test_quiet_hides_every_progress_bar(pipeline, tmp_path, capsys):
    # -q ("only warnings and errors") still drew the bars of invert, edit, restore and the rest.
    from hyperinverter.progress import progress_bars

    write_photos(tmp_path / "in", 2)
    pipeline.save_pretrained(tmp_path / "model")
    command = ["invert", str(tmp_path / "in"), "--model", str(tmp_path / "model"), "--device", "cpu", "--overwrite"]
    assert main([*command, "--out", str(tmp_path / "out")]) == 0
    assert "invert: 100%" in capsys.readouterr().err
    assert main([*command, "--out", str(tmp_path / "out"), "-q"]) == 0
    assert capsys.readouterr().err == ""
    with progress_bars(False):
        bars = [progress_bar(range(3)), progress_bar(total=3, disable=False)]
    bars += [progress_bar(range(3)), progress_bar(range(3), disable=True)]
    assert [bar.disable for bar in bars] == [True, True, False, True]
    for bar in bars:
        bar.close()


def test_results_inside_an_input_folder_are_not_taken_for_inputs(pipeline, tmp_path, capsys):
    # `invert photos/ --out photos/inverted`, run again to resume: it took its own results for inputs, renamed
    # every picture to tell them apart (so nothing counted as done) and inverted the reconstructions too.
    write_photos(tmp_path / "photos", 2)
    pipeline.save_pretrained(tmp_path / "model")
    command = ["invert", str(tmp_path / "photos"), "--model", str(tmp_path / "model"), "--device", "cpu",
               "--out", str(tmp_path / "photos" / "inverted")]
    assert main(command) == 0
    before = sorted(p.name for p in (tmp_path / "photos" / "inverted").iterdir())
    capsys.readouterr()
    assert main(command) == 0
    assert "wrote 0 picture(s)" in (out := capsys.readouterr().out) and "2 input(s) already done, 0 failed" in out
    assert sorted(p.name for p in (tmp_path / "photos" / "inverted").iterdir()) == before
    # A result named explicitly is still an input.
    found = find_images([tmp_path / "photos", tmp_path / "photos" / "inverted" / "p0.png"],
                        skip=[tmp_path / "photos" / "inverted"])
    assert [p.name for p in found.paths] == ["p0.png", "p1.png", "p0.png"]


def test_paste_back_finds_the_photo_from_another_folder(pipeline, tmp_path, monkeypatch):
    # `invert photos/group.png --align` records its photo; `edit --paste-back` run from another folder looked for
    # "photos/group.png" there: "cannot paste back into its photo (no such file)".
    (tmp_path / "photos").mkdir()
    hostile.photo(0, (200, 160)).save(tmp_path / "photos" / "group.png")
    monkeypatch.chdir(tmp_path)
    invert_files(pipeline, [Path("photos/group.png")], Path("inv"), detector=TwoFaces(), progress=False)
    assert load_inversion(tmp_path / "inv" / "group-face0.safetensors")[2]["source"] == str(
        tmp_path / "photos" / "group.png")
    pipeline.save_pretrained(tmp_path / "model")
    save_direction(LinearDirection(torch.randn(1, 16), name="dir"), tmp_path / "dir.safetensors")
    monkeypatch.chdir(tmp_path / "inv")
    assert main(["edit", "group-face0.safetensors", "--model", str(tmp_path / "model"), "--direction",
                 str(tmp_path / "dir.safetensors"), "--paste-back", "--out", "edits", "--device", "cpu"]) == 0
    assert (tmp_path / "inv" / "edits" / "group_dir_default_photo.png").is_file()


def test_a_folder_without_images_is_named_as_the_error(pipeline, tmp_path, capsys):
    # It was "error: no images found in DIR", the one input error not in the `<file>: <cause>` form.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    pipeline.save_pretrained(tmp_path / "model")
    for command in ("invert", "restore"):
        assert main([command, str(tmp_path / "empty"), "--model", str(tmp_path / "model"), "--device", "cpu",
                     "--out", str(tmp_path / command)]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: {tmp_path / 'empty'}: no image files in it (looked for .png, .jpg,"), error
        assert not (tmp_path / command).exists()  # nothing was written


def test_outputs_of_an_older_reading_of_the_photos_are_made_again(pipeline, tmp_path, capsys, monkeypatch):
    # A change to how a photo becomes what a method reads (a face crop's shrink, a small photo's encoder input) gave
    # other pixels for the same photo, and a re-run skipped the outputs of the old reading as done.
    from hyperinverter.inversion import files
    from hyperinverter.io import images

    write_photos(tmp_path / "photos", 2)
    pipeline.save_pretrained(tmp_path / "model")
    model = ["--model", str(tmp_path / "model"), "--device", "cpu"]
    invert = ["invert", str(tmp_path / "photos"), *model, "--out", str(tmp_path / "inverted")]
    edit = ["edit", str(tmp_path / "photos" / "p0.png"), *model, "--direction", "dir", "--out", str(tmp_path / "e")]
    save_direction(LinearDirection(torch.randn(1, pipeline.generator.w_dim), name="dir"), tmp_path / "dir.safetensors")
    edit[edit.index("dir")] = str(tmp_path / "dir.safetensors")
    assert main(invert) == 0 and main(edit) == 0
    capsys.readouterr()
    assert main(invert) == 0 and "2 input(s) already done" in capsys.readouterr().out
    assert main(edit) == 0 and "1 already done" in capsys.readouterr().out
    monkeypatch.setattr(files, "PHOTO_READING", images.PHOTO_READING + 1)
    assert main(invert) == 0 and "wrote 2 picture(s)" in capsys.readouterr().out
    assert main(edit) == 0 and "0 already done" in capsys.readouterr().out
