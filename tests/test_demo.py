"""`hyperinverter demo` on tiny stand-ins of the bundled models: aligned faces, held-out examples, edits,
interpolations and the index page; a missing bundled model is reported and the rest still runs."""

import torch

from hyperinverter import catalogue
from hyperinverter.cli.main import main
from hyperinverter.editing import LinearDirection, save_direction
from hyperinverter.io.images import save_image
from hyperinverter.methods.hyperinverter import HyperInverter
from hyperinverter.models.encoders import encoder_preset
from hyperinverter.models.hypernetwork import HyperNetwork
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
from hyperinverter.pipeline import save_pipeline


def tiny_bundle(folder, channels, *, examples=0, with_hyperstyle=False):
    torch.manual_seed(channels)
    G = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16,
                  img_channels=channels))
    preset = encoder_preset("tiny", in_channels=channels, n_styles=G.num_ws)
    H = HyperNetwork.from_generator(G, feature_channels=16, feature_size=2, hidden_dim=8, inner_channels=8)
    model = HyperInverter(G, w_encoder=preset.build_w_encoder(),
                          feature_encoder=preset.build_feature_encoder(), hypernetwork=H, encoder_resolution=64)
    if with_hyperstyle:  # as the bundled models: phase1, hyperinverter and hyperstyle on one W encoder
        from hyperinverter.methods.hyperstyle import HyperStyle
        from hyperinverter.methods.phase1 import Phase1
        from hyperinverter.models.hyperstyle import HyperStyleNet

        styled = HyperStyle(G, w_encoder=model.w_encoder, hypernetwork=HyperStyleNet.from_generator(
            G, trunk=HyperStyle.create(G).hypernetwork.config.trunk, input_size=64, hyper_inner=8, refine_inner=8),
            encoder_resolution=64)
        phase1 = Phase1(G, w_encoder=model.w_encoder, encoder_resolution=64)
        save_pipeline({"phase1": phase1, "hyperinverter": model, "hyperstyle": styled}, folder,
                      default_method="hyperinverter")
    else:
        save_pipeline(model, folder)  # HyperInverter alone: its first pass is in its results
    save_direction(LinearDirection(torch.randn(1, 16), name="dir", default_strength=2.0), folder / "directions" / "dir.safetensors")
    for i in range(examples):
        save_image(torch.rand(1, channels, 32, 32) * 2 - 1, folder / "examples" / f"{i:05d}.png")


def tiny_restoration_bundle(folder):
    from hyperinverter.methods.e2style import E2Style

    G = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256,
                                  channel_max=16))
    method = E2Style(G, encoders=E2Style.create(G, stages=1).encoders, encoder_resolution=64, task="sr4")
    save_pipeline(method, folder)


def test_demo_runs_every_bundled_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(catalogue, "BUNDLED_DIR", tmp_path / "bundled")
    tiny_bundle(tmp_path / "bundled" / "faces-64", 3, examples=3)
    tiny_bundle(tmp_path / "bundled" / "fashion-32", 1, examples=3, with_hyperstyle=True)
    tiny_restoration_bundle(tmp_path / "bundled" / "faces-64-sr4")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    faces = sorted(p.name for p in out.glob("face_*.png"))
    assert faces == ["face_astronaut.png", "face_biden.png", "face_obama.png"]  # one face each, no mission patch
    assert len(list(out.glob("fashion-32_*.png"))) == 3
    # The restoration model: the faces model's held-out faces, degraded by its task and restored (it was not run).
    restored = sorted(p.name for p in out.glob("faces-64-sr4_*.png"))
    assert restored == ["faces-64-sr4_00000.png", "faces-64-sr4_00001.png"]
    page = (out / "index.html").read_text()
    assert page.count("<figure>") == len(faces) + 3 + 2 and "edit: dir" in page
    assert "clean (held out) | degraded (sr4) | restored" in page
    # the bundle's other method gets a column; phase1, HyperInverter's own first pass, does not get a second one
    assert "input | Phase I (W) | HyperInverter | HyperStyle | edit: dir" in page
    assert "input | Phase I (W) | HyperInverter | edit: dir" in page  # faces-64 here holds HyperInverter alone
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0  # an earlier demo's folder: written again
    # A user's file at a picture's name in it is not (it was replaced without a word).
    (out / "face_obama.png").write_text("mine")
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 2
    assert "face_obama.png: exists and was not written by hyperinverter" in capsys.readouterr().err
    assert (out / "face_obama.png").read_text() == "mine"
    # A folder of the user's is refused as it is (the demo wrote its index.html over theirs).
    user = tmp_path / "site"
    user.mkdir()
    (user / "index.html").write_text("mine")
    assert main(["demo", "--out", str(user), "--device", "cpu"]) == 2
    assert "holds files that are not an earlier demo's" in capsys.readouterr().err
    assert [p.name for p in user.iterdir()] == ["index.html"] and (user / "index.html").read_text() == "mine"


def test_a_missing_bundled_model_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(catalogue, "BUNDLED_DIR", tmp_path / "bundled")
    tiny_bundle(tmp_path / "bundled" / "fashion-32", 1, examples=2)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    assert "not run: the bundled model 'faces-64' is not in this installation" in capsys.readouterr().err
    assert len(list((tmp_path / "demo").glob("*.png"))) == 2
    monkeypatch.setattr(catalogue, "BUNDLED_DIR", tmp_path / "nothing")
    assert main(["demo", "--out", str(tmp_path / "demo2"), "--device", "cpu"]) == 1


def test_an_interrupted_demo_s_folder_is_written_again(tmp_path, monkeypatch, capsys):
    # A demo stopped (Ctrl-C, SIGTERM, a kill) before it wrote index.html left pictures that every later demo into
    # the folder refused as "files that are not an earlier demo's": `make demo` failed until the folder was deleted.
    monkeypatch.setattr(catalogue, "BUNDLED_DIR", tmp_path / "bundled")
    tiny_bundle(tmp_path / "bundled" / "fashion-32", 1, examples=2)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    (out / "index.html").unlink()  # stopped before its index
    (out / ".fashion-32_00001.png.0123456789abcdef-999999999.partial").write_bytes(b"half")  # killed mid-write
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fashion-32_00000.png", "fashion-32_00001.png", "index.html"]
    (out / "index.html").unlink()
    (out / "photo.png").write_text("mine")  # a user's file: the folder is not a demo's
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 2
    assert "holds files that are not an earlier demo's" in capsys.readouterr().err
    assert (out / "photo.png").read_text() == "mine" and not (out / "index.html").exists()


def test_a_device_or_precision_it_cannot_run_is_refused_before_any_folder_is_made(tmp_path, monkeypatch, capsys):
    # (`demo --dtype fp16` on a CPU, or `--device cuda` without CUDA, made --out and left it empty)
    monkeypatch.setattr(catalogue, "BUNDLED_DIR", tmp_path / "bundled")
    tiny_bundle(tmp_path / "bundled" / "fashion-32", 1, examples=1)
    assert main(["demo", "--out", str(tmp_path / "half"), "--device", "cpu", "--dtype", "fp16"]) == 2
    assert "error: fp16 runs on GPUs only" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "gpu"), "--device", "cuda:99"]) == 2
    assert "error: --device: device 'cuda:99'" in capsys.readouterr().err
    assert not (tmp_path / "half").exists() and not (tmp_path / "gpu").exists()
