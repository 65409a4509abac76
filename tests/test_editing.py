"""Edit directions: InterFaceGAN shift, GANSpace set-coordinate rule, PCA basis, file formats."""

import numpy as np
import pytest
import torch

from hyperinverter.editing import (
    GANSpaceDirection,
    LinearDirection,
    compute_ganspace,
    load_direction,
    save_direction,
)
from hyperinverter.editing.ganspace import GANSpaceBasis


def test_linear_direction_shifts_every_layer():
    ws = torch.randn(2, 6, 4)
    d = LinearDirection(torch.tensor([[1.0, 0, 0, 0]]))
    out = d.apply(ws, 2.0)
    assert torch.allclose(out - ws, torch.tensor([2.0, 0, 0, 0]).expand_as(ws))
    per_layer = LinearDirection(torch.randn(6, 4))
    assert torch.allclose(per_layer.apply(ws, 1.0) - ws, per_layer.vector.expand_as(ws))
    with pytest.raises(ValueError, match="does not fit"):
        LinearDirection(torch.randn(5, 4)).apply(ws, 1.0)
    with pytest.raises(ValueError, match="direction 'nan' holds NaN or infinite values"):
        LinearDirection(torch.tensor([[1.0, float("nan"), 0, 0]]), name="nan")  # (each edit was a NaN image)


def test_ganspace_sets_the_coordinate_on_its_layers_only():
    comp = torch.linalg.qr(torch.randn(4, 4))[0].T  # orthonormal rows
    basis = GANSpaceBasis(comp=comp, mean=torch.randn(4), std=torch.tensor([3.0, 2.0, 1.0, 0.5]))
    d = GANSpaceDirection(basis, index=1, start=2, end=4, default_strength=5.0)
    ws = torch.randn(3, 6, 4).repeat(1, 1, 1)
    ws[:] = ws[:, :1]  # a W code: all layers equal
    out = d.apply(ws)
    coord = ((out[:, 2] - basis.mean) @ comp[1]) / basis.std[1]
    assert torch.allclose(coord, torch.full((3,), 5.0), atol=1e-5)
    assert torch.equal(out[:, :2], ws[:, :2]) and torch.equal(out[:, 4:], ws[:, 4:])
    # other principal coordinates are untouched
    for j in (0, 2, 3):
        assert torch.allclose((out[:, 2] - ws[:, 2]) @ comp[j], torch.zeros(3), atol=1e-5)


def test_compute_ganspace_from_a_generator(tiny_generator):
    basis = compute_ganspace(tiny_generator, num_samples=4000, num_components=8)
    assert basis.comp.shape == (8, 16)
    assert torch.allclose(basis.comp @ basis.comp.T, torch.eye(8), atol=1e-4)
    assert torch.all(basis.std[:-1] >= basis.std[1:])
    assert not any(t.requires_grad for t in (basis.mean, basis.comp, basis.std))  # (no graph over 4000 samples)
    with torch.no_grad():
        w = tiny_generator.mapping(torch.randn(4000, 16, generator=torch.Generator().manual_seed(9)))[:, 0]
    proj_std = ((w - basis.mean) @ basis.comp[0]).std()
    assert abs(float(proj_std) / float(basis.std[0]) - 1) < 0.1


def test_direction_files_round_trip_and_foreign_formats(tmp_path):
    vec = torch.randn(1, 8)
    vec = vec / vec.norm()
    torch.save(vec, tmp_path / "age.pt")
    d = load_direction(tmp_path / "age.pt")
    assert isinstance(d, LinearDirection) and d.name == "age" and torch.equal(d.vector, vec)
    torch.save(vec[:, None].repeat(1, 6, 1), tmp_path / "pose.pt")  # [1, 18, 512]-style, identical rows
    assert load_direction(tmp_path / "pose.pt").vector.shape == (1, 8)
    np.save(tmp_path / "smile.npy", vec.numpy())
    assert torch.allclose(load_direction(tmp_path / "smile.npy").vector, vec)

    comp = torch.linalg.qr(torch.randn(8, 8))[0].T[:5]
    torch.save({"comp": comp[:, None], "mean": torch.randn(1, 8), "std": torch.rand(5) + 1}, tmp_path / "pca.pt")
    with pytest.raises(ValueError, match="GANSpace basis"):
        load_direction(tmp_path / "pca.pt")
    g = load_direction(tmp_path / "pca.pt", index=2, start=0, end=3, strength=-4.0)
    assert isinstance(g, GANSpaceDirection) and g.basis.comp.shape == (5, 8)
    # GANSpace's own dump (harskish/ganspace's .npz: lat_comp, lat_mean, lat_stdev, and more) was refused.
    official = torch.load(tmp_path / "pca.pt", weights_only=True)
    np.savez_compressed(tmp_path / "pca.npz", lat_comp=official["comp"].numpy(), lat_mean=official["mean"].numpy(),
                        lat_stdev=official["std"].numpy(), act_comp=np.zeros((5, 3)), var_ratio=np.ones(5))
    from_npz = load_direction(tmp_path / "pca.npz", index=2, start=0, end=3, strength=-4.0)
    ws = torch.randn(2, 6, 8)
    assert torch.allclose(from_npz.apply(ws), g.apply(ws))
    np.savez(tmp_path / "other.npz", comp=np.zeros((5, 8)))
    with pytest.raises(ValueError, match=r"other.npz: is not a GANSpace .npz file: missing \['lat_comp'"):
        load_direction(tmp_path / "other.npz", index=0, start=0, end=1, strength=1.0)
    # complex components lost their imaginary part, with numpy's ComplexWarning and its source line
    np.savez(tmp_path / "complex.npz", lat_comp=official["comp"].numpy() * 1j, lat_mean=official["mean"].numpy(),
             lat_stdev=official["std"].numpy())
    with pytest.raises(ValueError, match=r"complex.npz: a GANSpace basis must hold real numbers, got \['lat_comp"):
        load_direction(tmp_path / "complex.npz", index=0, start=0, end=1, strength=1.0)

    for direction in (d, g):
        path = save_direction(direction, tmp_path / f"{direction.name}.safetensors")
        again = load_direction(path)
        ws = torch.randn(2, 6, 8)
        assert torch.allclose(again.apply(ws), direction.apply(ws))

    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError):
        load_direction(tmp_path / "bad.pt")


def test_parse_layer_range():
    from hyperinverter.editing.sheet import parse_layer_range

    assert parse_layer_range("3:8", 10) == (3, 8)
    assert parse_layer_range(":", 10) == (0, 10)
    assert parse_layer_range("2:", 10) == (2, 10)
    for bad in ("5:5", "0:11", "x:3", "3"):
        with pytest.raises(ValueError, match="layer range"):
            parse_layer_range(bad, 10)


def test_ganspace_sheet_edits_only_its_layers(tiny_generator, tmp_path):
    """The sheet's tiles for a layer range equal G(direction.apply(w)) on those layers (rendered, not faked)."""
    from PIL import Image

    from hyperinverter.editing.sheet import render_ganspace_sheet
    from hyperinverter.generate import z_from_seeds
    from hyperinverter.io.images import tensor_to_pil

    G = tiny_generator
    basis = compute_ganspace(G, num_samples=2000, num_components=4)
    path = render_ganspace_sheet(G, basis, tmp_path / "sheet.png", components=[2], layers=(1, 3), seeds=[5],
                                 strength=2.0, steps=3, truncation_psi=1.0)
    sheet = Image.open(path).convert("RGB")
    tile, pad, label_w, header_h = 64, 2, 150, 34
    assert sheet.size == (label_w + 4 * (tile + pad) + 10, header_h + tile + pad)
    with torch.no_grad():
        ws = G.mapping(z_from_seeds([5], G.z_dim))
        edited = GANSpaceDirection(basis, 2, 1, 3, 2.0).apply(ws, 2.0)
        expected = tensor_to_pil(G.synthesis(edited, noise_mode="const"))[0].resize((tile, tile), Image.NEAREST)
    x0 = label_w + 3 * (tile + pad)  # orig, -2, 0, +2
    got = sheet.crop((x0, header_h, x0 + tile, header_h + tile))
    assert np.abs(np.asarray(got, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    with pytest.raises(ValueError, match="out of range"):
        render_ganspace_sheet(G, basis, tmp_path / "bad.png", components=[4])


def test_ganspace_command_writes_sheet_and_named_directions(tiny_generator, tmp_path):
    from hyperinverter.cli.main import main
    from hyperinverter.io.gan import save_gan

    save_gan(tmp_path / "gan", tiny_generator)
    out = tmp_path / "dirs" / "sheet.png"
    args = ["ganspace", "--model", str(tmp_path / "gan"), "--out", str(out), "--samples", "2000",
            "--components", "0-1", "--layers", "1:4", "--save", "first=0:0:3", "--save", "second=1:2:5:1.5"]
    assert main(args) == 0
    assert out.is_file()
    first, second = load_direction(out.parent / "first.safetensors"), load_direction(out.parent / "second.safetensors")
    assert (first.index, first.start, first.end, first.default_strength) == (0, 0, 3, 3.0)
    assert (second.index, second.start, second.end, second.default_strength) == (1, 2, 5, 1.5)
    assert torch.allclose(first.basis.comp, second.basis.comp)
    # A layer range outside the generator is refused before anything is written.
    assert main(["ganspace", "--model", str(tmp_path / "gan"), "--out", str(tmp_path / "x.png"),
                 "--save", f"bad=0:0:{tiny_generator.num_ws + 1}"]) != 0
    assert not (tmp_path / "bad.safetensors").exists() and not (tmp_path / "x.png").exists()


def test_principal_directions_by_name_everywhere(pipeline, tmp_path, capsys):
    # The web page offers "principal direction N" for a model without named directions; edit and pipe.edit take
    # the same name and give the same edit.
    from hyperinverter.cli.main import main
    from hyperinverter.editing.directions import principal_direction, principal_directions
    from hyperinverter.io.images import save_image
    from hyperinverter.pipeline import InversionPipeline

    G = pipeline.generator
    listed = principal_directions(G)["principal direction 2"]
    named = principal_direction("principal direction 2", G)
    assert torch.equal(named.basis.comp[1], listed.basis.comp[1]) and named.default_strength == 3.0
    assert principal_direction("hair", G) is None
    pipeline.save_pretrained(tmp_path / "model")
    pipe = InversionPipeline.from_pretrained(tmp_path / "model", device="cpu")
    result = pipe.invert(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert torch.allclose(pipe.edit(result, "principal direction 2", 1.5), pipe.edit(result, listed, 1.5))
    save_image(result.image, tmp_path / "photo.png")
    assert main(["invert", str(tmp_path / "photo.png"), "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "inv"), "--device", "cpu"]) == 0
    assert main(["edit", str(tmp_path / "inv" / "photo.safetensors"), "--model", str(tmp_path / "model"),
                 "--direction", "principal direction 2", "--strength", "1.5", "--out", str(tmp_path / "edits"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "edits" / "photo_principal direction 2_+1.5.png").is_file()
    assert main(["edit", str(tmp_path / "inv" / "photo.safetensors"), "--model", str(tmp_path / "model"),
                 "--direction", "principal direction 0", "--out", str(tmp_path / "edits"), "--device", "cpu"]) == 2
    assert "names no principal direction of this generator (they are 1 to 16)" in capsys.readouterr().err


def test_edit_renders_an_inputs_strengths_in_one_synthesis_call(pipeline, tmp_path, monkeypatch):
    # It rendered one edit per call: S + 1 calls per input (the reconstruction, then each strength).
    from hyperinverter.cli.main import main
    from hyperinverter.io.images import pil_to_tensor, read_image, save_image
    from hyperinverter.models.stylegan2.generator import SynthesisNetwork
    from hyperinverter.pipeline import InversionPipeline

    pipeline.save_pretrained(tmp_path / "model")
    save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1, tmp_path / "photo.png")
    assert main(["invert", str(tmp_path / "photo.png"), "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "inv"), "--device", "cpu"]) == 0
    batches, forward = [], SynthesisNetwork.forward
    monkeypatch.setattr(SynthesisNetwork, "forward", lambda self, ws, **kw: batches.append(len(ws)) or
                        forward(self, ws, **kw))
    assert main(["edit", str(tmp_path / "inv" / "photo.safetensors"), "--model", str(tmp_path / "model"),
                 "--direction", "principal direction 1", "--strength", "-2", "0.5", "2", "--out",
                 str(tmp_path / "edits"), "--device", "cpu"]) == 0
    assert batches == [1, 3]
    pipe = InversionPipeline.from_pretrained(tmp_path / "model", device="cpu")
    result, _ = pipe.load_result(tmp_path / "inv" / "photo.safetensors")
    for strength in ("-2", "+0.5", "+2"):
        written = pil_to_tensor(read_image(tmp_path / "edits" / f"photo_principal direction 1_{strength}.png"))
        expected = pipe.edit(result, "principal direction 1", float(strength)).clamp(-1, 1)
        assert (written - expected).abs().max() <= 1 / 127.5 + 1e-6  # one level of 8 bits


def test_strengths_that_would_share_a_file_are_refused(pipeline, tmp_path, capsys):
    # The edits are named by a strength's first 6 digits: `--strength 1.0000001 1.0000002` (or 2 2) wrote both
    # edits to one file, the second replacing the first, while the strip showed both; -0 and 0 were two files.
    from hyperinverter.cli.main import main
    from hyperinverter.io.images import save_image

    pipeline.save_pretrained(tmp_path / "model")
    save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1, tmp_path / "photo.png")
    assert main(["invert", str(tmp_path / "photo.png"), "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "inv"), "--device", "cpu"]) == 0
    capsys.readouterr()

    def edit(*strengths: str) -> int:
        return main(["edit", str(tmp_path / "inv" / "photo.safetensors"), "--model", str(tmp_path / "model"),
                     "--direction", "principal direction 1", "--strength", *strengths, "--out",
                     str(tmp_path / "edits"), "--device", "cpu"])

    for strengths, named in ((["2", "2"], "+2"), (["1.0000001", "1.0000002"], "+1"), (["-0", "0"], "+0")):
        assert edit(*strengths) == 2
        assert f"error: --strength: {named} given more than once" in capsys.readouterr().err
        assert not (tmp_path / "edits").exists()
    # A strength past ±1e300 was blamed on the direction's default strength when first ("direction ...: its default
    # strength must be"), and failed the run after --out was made when not ("strength must be").
    for strengths in (["1e308"], ["1", "2e300"]):
        assert edit(*strengths) == 2
        assert "error: --strength must be a finite number within ±1e300, got" in capsys.readouterr().err
        assert not (tmp_path / "edits").exists()
    assert edit("-0", "1") == 0
    assert sorted(p.name for p in (tmp_path / "edits").iterdir()) == [
        "photo_principal direction 1_+0.png", "photo_principal direction 1_+1.png",
        "photo_principal direction 1_strip.png"]


def test_the_official_pca_files_give_their_named_edits(tmp_path, pipeline, capsys):
    # The releases ship GANSpace bases (ffhq_pca.pt, cars_pca.pt, church_pca.pt) and name their edits in code;
    # `directions import` writes those edits as files of ours, so a model's directions/ folder offers them.
    from hyperinverter.cli.direction_commands import OFFICIAL_DOMAINS
    from hyperinverter.cli.main import main
    from hyperinverter.editing.official import OFFICIAL_GANSPACE_EDITS

    assert set(OFFICIAL_DOMAINS) == set(OFFICIAL_GANSPACE_EDITS)  # (the CLI names them without importing torch)

    comp = torch.nn.functional.normalize(torch.randn(80, 1, 512, generator=torch.Generator().manual_seed(0)), dim=2)
    official = {"comp": comp, "mean": torch.randn(1, 512), "std": torch.rand(80) + 0.5}
    torch.save(official, tmp_path / "cars_pca.pt", _use_new_zipfile_serialization=False)  # the legacy format
    out = tmp_path / "directions"
    assert main(["directions", "import", str(tmp_path / "cars_pca.pt"), "--edits", "cars", "--out", str(out)]) == 0
    assert sorted(p.stem for p in out.iterdir()) == sorted(OFFICIAL_GANSPACE_EDITS["cars"])
    cube = load_direction(out / "cube.safetensors")
    assert (cube.index, cube.start, cube.end, cube.default_strength) == (16, 3, 6, 25.0)
    ws = torch.randn(2, 1, 512).repeat(1, 16, 1)  # one w on every layer, as an encoder into W gives
    edited = cube.apply(ws)  # the official rule: the coordinate (measured on layer 0) set to 25 on layers 3:6
    coord = ((edited[:, 3] - official["mean"]) @ comp[16, 0]) / official["std"][16]
    torch.testing.assert_close(coord, torch.full((2,), 25.0), rtol=1e-4, atol=1e-3)
    assert torch.equal(edited[:, :3], ws[:, :3]) and torch.equal(edited[:, 6:], ws[:, 6:])
    # In a model's folder they are its named directions, listed by name; here, of a 16-d model with 8 codes, each
    # listed as what it is: a cars direction that cannot edit this model (it was listed as fine, exit 0).
    pipeline.save_pretrained(tmp_path / "model")
    assert main(["directions", "import", str(tmp_path / "cars_pca.pt"), "--edits", "cars", "--out",
                 str(tmp_path / "model" / "directions")]) == 0
    capsys.readouterr()
    assert main(["directions", "list", "--model", str(tmp_path / "model")]) == 1
    listed, err = capsys.readouterr()
    assert [line.split()[:2] for line in listed.splitlines()[1:]] == [[name, "misfit"] for name in sorted(
        OFFICIAL_GANSPACE_EDITS["cars"])]
    assert "pose_1.safetensors: does not fit this model's generator: direction 'pose_1' is a basis of 512-d codes, " \
           "but the codes are 16-d" in err
    assert "grass.safetensors: does not fit this model's generator: direction 'grass' edits layers 9:11 but codes " \
           "have 8" in err

    # One edit of one's own, and an InterFaceGAN vector, named by the file.
    assert main(["directions", "import", str(tmp_path / "cars_pca.pt"), "--component", "3", "--layers", "0:4",
                 "--strength", "-2", "--name", "my edit", "--out", str(out)]) == 0
    assert load_direction(out / "my edit.safetensors").index == 3
    torch.save(torch.randn(1, 512), tmp_path / "age.pt")
    torch.save(torch.randn(1, 512).repeat(18, 1)[None], tmp_path / "pose.pt")  # [1, 18, 512], 18 equal rows
    torch.save(torch.randn(1, 18, 512), tmp_path / "per_layer.pt")
    capsys.readouterr()
    for name in ("age", "pose", "per_layer"):
        assert main(["directions", "import", str(tmp_path / f"{name}.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "(every layer," in printed[1] and "(one vector for each of 18 layers," in printed[2]
    assert isinstance(load_direction(out / "age.safetensors"), LinearDirection)
    assert load_direction(out / "pose.safetensors").vector.shape == (1, 512)  # e4e's pose.pt is a W direction

    # Refused, naming the file, and nothing written: a name that is taken, an InterFaceGAN file or a small basis
    # for --edits, --edits with one edit's settings.
    before = sorted(out.iterdir())
    assert main(["directions", "import", str(tmp_path / "cars_pca.pt"), "--edits", "cars", "--out", str(out)]) == 2
    assert "pose_1.safetensors: exists (and 4 more): --overwrite replaces it" in capsys.readouterr().err
    assert main(["directions", "import", str(tmp_path / "age.pt"), "--edits", "faces", "--out", str(out)]) == 2
    assert "age.pt: is not a GANSpace basis" in capsys.readouterr().err
    torch.save({**official, "comp": comp[:40], "std": official["std"][:40]}, tmp_path / "small.pt")
    assert main(["directions", "import", str(tmp_path / "small.pt"), "--edits", "faces", "--out", str(out)]) == 2
    assert "small.pt: holds 40 components; the official faces edits use 59" in capsys.readouterr().err
    assert main(["directions", "import", str(tmp_path / "cars_pca.pt"), "--edits", "cars", "--name", "x", "--out",
                 str(out)]) == 2
    from test_styleclip import write_mapper

    write_mapper(tmp_path / "purple_hair.pt")
    assert main(["directions", "import", str(tmp_path / "purple_hair.pt"), "--out", str(out)]) == 2
    assert "purple_hair.pt: is a StyleCLIPDirection, which has no file format of ours" in capsys.readouterr().err
    assert sorted(out.iterdir()) == before
    # A direction file that is not ours under one of the names is never replaced, not even with --overwrite.
    from safetensors.torch import save_file

    save_file({"vector": torch.zeros(1, 512)}, out / "grass.safetensors")
    written = {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()}
    assert main(["directions", "import", str(tmp_path / "cars_pca.pt"), "--edits", "cars", "--overwrite", "--out",
                 str(out)]) == 2
    assert "grass.safetensors: exists and was not written by hyperinverter" in capsys.readouterr().err
    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()} == written  # none written again
    (out / "grass.safetensors").unlink()
    assert main(["directions", "import", str(tmp_path / "cars_pca.pt"), "--edits", "cars", "--overwrite", "--out",
                 str(out)]) == 0


def test_a_direction_found_on_another_generator_is_named_as_such(tmp_path, capsys, caplog):
    # A direction file recorded its name only: one found on another model (with codes of the same size) was
    # applied without a word. Now it records its generator's codes for fixed latents, and using it on a model whose
    # mapping gives other codes is a warning; the same generator in bf16 is the same W space.
    from conftest import build_tiny_generator, build_tiny_pipeline
    from hyperinverter.cli.main import main
    from hyperinverter.editing.directions import w_probe, w_space_mismatch
    from hyperinverter.io.gan import save_gan
    from hyperinverter.io.images import save_image
    from hyperinverter.pipeline import InversionPipeline

    own, other = build_tiny_generator(), build_tiny_generator(seed=7)
    save_gan(tmp_path / "gan", own)
    assert main(["ganspace", "--model", str(tmp_path / "gan"), "--out", str(tmp_path / "dirs" / "sheet.png"),
                 "--samples", "2000", "--save", "first=0:0:3"]) == 0
    found = load_direction(tmp_path / "dirs" / "first.safetensors")
    assert torch.equal(found.w_probe, w_probe(own)) and found.w_probe.shape == (4, own.w_dim)
    assert w_space_mismatch(found, own) is None and w_space_mismatch(found, own.to(torch.bfloat16).float()) is None
    assert "found on another generator" in w_space_mismatch(found, other)
    linear = LinearDirection(torch.ones(1, 16), name="up", w_probe=w_probe(other))
    save_direction(linear, tmp_path / "up.safetensors")
    assert torch.equal(load_direction(tmp_path / "up.safetensors").w_probe, linear.w_probe)
    assert w_space_mismatch(LinearDirection(torch.ones(1, 16)), other) is None  # (a vector alone: nothing to check)

    build_tiny_pipeline(own).save_pretrained(tmp_path / "model", dtype="bf16")
    pipe = InversionPipeline.from_pretrained(tmp_path / "model", device="cpu")
    result = pipe.invert(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    with caplog.at_level("WARNING"):
        pipe.edit(result, found)  # its own generator, stored in bf16: no warning
        assert not caplog.records
        pipe.edit(result, linear)
        pipe.edit(result, linear, 2.0)  # warned once per direction
    assert [r.getMessage() for r in caplog.records if "found on another generator" in r.getMessage()] == [
        caplog.records[0].getMessage()] and "direction 'up'" in caplog.records[0].getMessage()

    save_image(result.image, tmp_path / "photo.png")
    assert main(["invert", str(tmp_path / "photo.png"), "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "inv"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["edit", str(tmp_path / "inv" / "photo.safetensors"), "--model", str(tmp_path / "model"),
                 "--direction", str(tmp_path / "up.safetensors"), "--out", str(tmp_path / "edits"),
                 "--device", "cpu"]) == 0  # a warning, not a refusal: the edit is written
    assert "found on another generator" in capsys.readouterr().err
    assert (tmp_path / "edits" / "photo_up_default.png").is_file()


def test_a_vector_direction_kept_to_layers_as_e2styles_official_edits(tmp_path, pipeline, capsys):
    # E2Style's edits (age.npy, smile.npy: [18, 512], equal rows) change rows 0-7 only; --layers was ignored for a
    # vector direction, and the edit changed every layer.
    from hyperinverter.cli.main import main
    from hyperinverter.errors import SchemaError

    G = pipeline.generator
    row = torch.randn(1, G.w_dim, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "age.npy", row.repeat(G.num_ws, 1).double().numpy())  # (float64, as E2Style's)
    assert load_direction(tmp_path / "age.npy").vector.shape == (1, G.w_dim)  # equal rows: a W direction
    kept = load_direction(tmp_path / "age.npy", start=0, end=4)
    ws = torch.randn(2, G.num_ws, G.w_dim)
    edited = kept.apply(ws, 20.0)
    torch.testing.assert_close(edited[:, :4], ws[:, :4] + 20.0 * row)
    assert torch.equal(edited[:, 4:], ws[:, 4:])
    # Imported, the file keeps its layers; one row needs the model's number of layers.
    out = tmp_path / "directions"
    assert main(["directions", "import", str(tmp_path / "age.npy"), "--layers", "0:4", "--strength", "20", "--out",
                 str(out)]) == 0
    assert f"(layers 0:4 of {G.num_ws}, default strength 20)" in capsys.readouterr().out
    torch.testing.assert_close(load_direction(out / "age.safetensors").apply(ws), edited)
    torch.save(row, tmp_path / "one_row.pt")
    with pytest.raises(SchemaError, match="one_row.pt: holds one vector for every layer: layers 0:4 need"):
        load_direction(tmp_path / "one_row.pt", start=0, end=4)
    torch.testing.assert_close(load_direction(tmp_path / "one_row.pt", start=0, end=4, num_ws=G.num_ws).apply(ws, 20.0),
                               edited)
    with pytest.raises(SchemaError, match=f"layers 2:99 are not within its {G.num_ws} rows"):
        load_direction(tmp_path / "age.npy", start=2, end=99)
    # edit --layers on a one-row file, through the model's number of layers.
    pipeline.save_pretrained(tmp_path / "model")
    x = torch.rand(1, 3, G.resolution, G.resolution, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inversion = pipeline.save_result(pipeline.invert(x), tmp_path / "a.safetensors")
    assert main(["edit", str(inversion), "--model", str(tmp_path / "model"), "--direction",
                 str(tmp_path / "one_row.pt"), "--layers", "0:4", "--strength", "20", "--out",
                 str(tmp_path / "edits")]) == 0
    from PIL import Image

    from hyperinverter.io.images import tensor_to_uint8

    result, _ = pipeline.load_result(inversion)
    expected = tensor_to_uint8(pipeline.edit(result, load_direction(tmp_path / "age.npy", start=0, end=4), 20.0))
    with Image.open(tmp_path / "edits" / "a_one_row_+20.png") as written:
        assert np.array_equal(np.asarray(written.convert("RGB")), expected[0])


def test_a_component_index_for_a_single_direction_is_refused(pipeline, tmp_path, capsys):
    # `edit --direction yaw --component 3` and `directions import age.npy --component 3` on a vector direction
    # ignored the index without a word (exit 0).
    from hyperinverter.cli.main import main
    from hyperinverter.io.images import save_image

    pipeline.save_pretrained(tmp_path / "model")
    save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1, tmp_path / "photo.png")
    assert main(["invert", str(tmp_path / "photo.png"), "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "inv"), "--device", "cpu"]) == 0
    save_direction(LinearDirection(torch.randn(1, 16), name="yaw"), tmp_path / "yaw.safetensors")
    np.save(tmp_path / "age.npy", np.ones((1, 16), np.float32))
    capsys.readouterr()
    for argv, source in ((["edit", str(tmp_path / "inv" / "photo.safetensors"), "--model", str(tmp_path / "model"),
                           "--direction", str(tmp_path / "yaw.safetensors"), "--out", str(tmp_path / "edits")],
                          tmp_path / "yaw.safetensors"),
                         (["directions", "import", str(tmp_path / "age.npy"), "--out", str(tmp_path / "dirs")],
                          tmp_path / "age.npy")):
        assert main([*argv, "--component", "3"]) == 2
        assert f"error: {source}: is one direction, not a GANSpace basis: a component index (3)" in \
            capsys.readouterr().err
        assert main(argv) == 0


def test_an_official_direction_tensor_edits_as_its_file_does(pipeline, tmp_path):
    # e4e's and HyperStyle's pose.pt is [1, 18, 512]; their code adds it as loaded (w + f·d). Given to pipe.edit as
    # torch.load returns it, it was refused ("must be [1|num_ws, w_dim]") while the same file's path was read.
    G = pipeline.generator
    x = torch.rand(2, 3, G.resolution, G.resolution, generator=torch.Generator().manual_seed(3)) * 2 - 1
    result = pipeline.invert(x)
    row = torch.nn.functional.normalize(torch.randn(1, G.w_dim, generator=torch.Generator().manual_seed(4)), dim=1)
    pose = row[:, None].repeat(1, G.num_ws, 1)
    torch.save(pose, tmp_path / "pose.pt")
    expected = pipeline.render(result.ws + 2.5 * pose, result.weight_delta)  # the official edit, as they render it
    torch.testing.assert_close(pipeline.edit(result, str(tmp_path / "pose.pt"), 2.5), expected)
    torch.testing.assert_close(pipeline.edit(result, torch.load(tmp_path / "pose.pt"), 2.5), expected)


def e4e_factorize_weight(g_ema: dict, num_layers: int, layers):
    """e4e's editings/sefa.py factorize_weight, on a rosinality state dict (``num_layers``: rosinality's, its
    modulated convs)."""
    weights = []
    if layers == "all" or 0 in layers:
        weights.append(g_ema["conv1.conv.modulation.weight"].numpy().T)
    layers = list(range(num_layers - 1)) if layers == "all" else [l - 1 for l in layers if l != 0]
    for idx in layers:
        weights.append(g_ema[f"convs.{idx}.conv.modulation.weight"].numpy().T)
    weight = np.concatenate(weights, axis=1).astype(np.float32)
    weight = weight / np.linalg.norm(weight, axis=0, keepdims=True)
    values, vectors = np.linalg.eig(weight.dot(weight.T))
    return layers, vectors.T, values


def e4e_edit(codes: np.ndarray, layers, boundaries: np.ndarray, sem_id: int, distances) -> list[np.ndarray]:
    """e4e's sefa.edit for one semantic: each distance's codes."""
    edited = []
    for d in distances:
        code = codes.copy()
        code[:, layers, :] += boundaries[sem_id:sem_id + 1] * d
        edited.append(code)
    return edited


def test_sefa_is_e4e_factorisation_and_edit(tiny_generator):
    # SeFa as e4e's editings/sefa.py finds and applies it, checked against a numpy copy of that code run on the
    # same weights under rosinality's names: the same directions (up to sign) in np.linalg.eig's order, the same
    # eigenvalues, the same rows (l-1: e4e's off-by-one), the same edited codes.
    from hyperinverter.convert.rosinality import from_nvidia
    from hyperinverter.editing.sefa import factorize_weight, sefa_directions

    G = tiny_generator
    g_ema = from_nvidia(G.state_dict(), G.config)
    num_layers = 1 + sum(1 for k in g_ema if k.startswith("convs.") and k.endswith(".conv.weight"))
    codes = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    distances = np.linspace(-15.0, 15.0, 11)
    for layers in ((2, 3, 4, 5), (5, 2, 0, 3), (0, 1), "all"):
        ref_rows, ref_vectors, ref_values = e4e_factorize_weight(g_ema, num_layers, layers)
        ours = factorize_weight(G, layers)
        assert list(ours.rows) == ref_rows
        np.testing.assert_allclose(ours.eigenvalues.numpy(), ref_values, rtol=1e-5, atol=1e-5)  # unsorted, as e4e
        signs = np.sign((ours.vectors.numpy() * ref_vectors).sum(axis=1))
        np.testing.assert_allclose(ours.vectors.numpy() * signs[:, None], ref_vectors, atol=1e-5)
        for sem_id in (0, 3):
            direction = ours.direction(sem_id, strength=1.0)
            expected = e4e_edit(codes.numpy(), ref_rows, ref_vectors, sem_id, distances)
            for d, code in zip(distances, expected):
                torch.testing.assert_close(direction.apply(codes, float(signs[sem_id] * d)), torch.from_numpy(code),
                                           rtol=1e-6, atol=1e-5)
    assert factorize_weight(G, (2, 3, 4, 5)).rows == (1, 2, 3, 4)
    assert factorize_weight(G, (2, 3, 4, 5), rows="styled").rows == (2, 3, 4, 5)  # the rows that style them
    directions = sefa_directions(G, count=3, strength=15.0)
    assert list(directions) == ["sefa_0", "sefa_1", "sefa_2"]
    assert all(d.default_strength == 15.0 and d.w_probe is not None for d in directions.values())
    assert sefa_directions(G, count=1)["sefa_0"].default_strength > 0  # 2 stds of the codes along it
    # Bad layers are named: out of range, twice, not numbers, none, or only 0 (no row to edit in e4e's rule).
    for layers, message in (((2, 7), r"SeFa layer 7 is out of range: .* 0 to 6"),
                            ((2, 2), r"\[2\] given more than once"), ((), "at least one layer"),
                            ((0,), "edit no row"), ("every", "'all'"), ((-1,), "layer -1 is out of range")):
        with pytest.raises(ValueError, match=message):
            factorize_weight(G, layers)
    with pytest.raises(TypeError, match="not a layer number"):
        factorize_weight(G, (2, 3.0))
    with pytest.raises(ValueError, match="count must be 1 to 16"):
        sefa_directions(G, count=17)


def test_the_sefa_command_writes_direction_files(tiny_generator, pipeline, tmp_path, capsys):
    from hyperinverter.cli.main import main
    from hyperinverter.editing.catalogue import direction_catalogue
    from hyperinverter.editing.sefa import factorize_weight

    pipeline.save_pretrained(tmp_path / "model")
    out = tmp_path / "model" / "directions"
    assert main(["directions", "sefa", "--model", str(tmp_path / "model"), "--layers", "2-5", "--count", "3",
                 "--out", str(out)]) == 0
    assert "sefa_0.safetensors: sefa_0 (eigenvalue" in capsys.readouterr().out
    factorisation = factorize_weight(tiny_generator, (2, 3, 4, 5))
    for i in range(3):
        direction = load_direction(out / f"sefa_{i}.safetensors")
        assert isinstance(direction, LinearDirection) and direction.w_probe is not None
        torch.testing.assert_close(direction.vector[1:5], factorisation.vectors[i].expand(4, -1))
        assert not direction.vector[0].any() and not direction.vector[5:].any()  # e4e's rows 1-4
    entries = {e.name: e for e in direction_catalogue(tmp_path / "model")}
    assert entries["sefa_1"].layers == (1, 5) and entries["sefa_1"].metadata["eigenvalue"] == pytest.approx(
        float(factorisation.eigenvalues[1]))
    edited = pipeline.edit(pipeline.invert(torch.zeros(1, 3, 32, 32)), load_direction(out / "sefa_0.safetensors"))
    assert torch.isfinite(edited).all()

    # Refused before anything is written: names taken, bad layers, a count beyond w_dim, a bad prefix.
    before = sorted(out.iterdir())
    sefa = ["directions", "sefa", "--model", str(tmp_path / "model"), "--out", str(out)]
    assert main([*sefa, "--layers", "2-5", "--count", "3"]) == 2
    assert "sefa_0.safetensors: exists (and 2 more): --overwrite replaces it" in capsys.readouterr().err
    assert main([*sefa, "--layers", "2,9"]) == 2
    assert "error: SeFa layer 9 is out of range" in capsys.readouterr().err
    assert main([*sefa, "--layers", "0"]) == 2
    assert "edit no row" in capsys.readouterr().err
    assert main([*sefa, "--count", "17"]) == 2
    assert "--count 17: the generator has 16 SeFa directions" in capsys.readouterr().err
    for layers in ("5-2", "0-1000000000", "2,,3"):
        with pytest.raises(SystemExit):
            main([*sefa, "--layers", layers])
    with pytest.raises(SystemExit):
        main([*sefa, "--prefix", "../x"])
    assert sorted(out.iterdir()) == before
    assert main([*sefa, "--layers", "all", "--rows", "styled", "--strength", "15", "--prefix", "all"]) == 0
    every = load_direction(out / "all_0.safetensors")
    assert every.default_strength == 15.0 and every.vector[:7].any(dim=1).all() and not every.vector[7].any()


def test_e4es_face_edits_on_ffhq_pca(tmp_path, capsys):
    # e4e's notebook names its own five face edits on ffhq_pca.pt, with other values than HyperInverter's table
    # (eye_openness 20, not 5; white_hair, which HyperInverter's lacks); `--edits faces-e4e` writes them.
    from hyperinverter.cli.main import main

    e4e = {"eye_openness": (54, 7, 8, 20), "smile": (46, 4, 5, -20), "trimmed_beard": (58, 7, 9, 20),
           "white_hair": (57, 7, 10, -24), "lipstick": (34, 10, 11, 20)}  # as e4e's inference_playground has them
    comp = torch.nn.functional.normalize(torch.randn(80, 1, 512, generator=torch.Generator().manual_seed(0)), dim=2)
    official = {"comp": comp, "mean": torch.randn(1, 512), "std": torch.rand(80) + 0.5}
    torch.save(official, tmp_path / "ffhq_pca.pt")
    out = tmp_path / "directions"
    assert main(["directions", "import", str(tmp_path / "ffhq_pca.pt"), "--edits", "faces-e4e", "--out",
                 str(out)]) == 0
    assert sorted(p.stem for p in out.iterdir()) == sorted(e4e)
    ws = torch.randn(2, 1, 512).repeat(1, 18, 1)
    for name, (index, start, end, value) in e4e.items():
        edit = load_direction(out / f"{name}.safetensors")
        assert (edit.index, edit.start, edit.end, edit.default_strength) == (index, start, end, value)
        edited = edit.apply(ws)  # e4e's ganspace.edit: the coordinate set to the value on rows start:end
        coord = ((edited[:, start] - official["mean"]) @ comp[index, 0]) / official["std"][index]
        torch.testing.assert_close(coord, torch.full((2,), float(value)), rtol=1e-4, atol=1e-3)
        assert torch.equal(edited[:, :start], ws[:, :start]) and torch.equal(edited[:, end:], ws[:, end:])
    torch.save({**official, "comp": comp[:50], "std": official["std"][:50]}, tmp_path / "small.pt")
    assert main(["directions", "import", str(tmp_path / "small.pt"), "--edits", "faces-e4e", "--out",
                 str(tmp_path / "other")]) == 2
    assert "small.pt: holds 50 components; the official faces-e4e edits use 59" in capsys.readouterr().err
