"""scripts/package_bundled.py on tiny random run folders: the bundle loads, fp16 matches fp32, directions edit,
examples/samples/sheet/model card are written, and failures or interruptions leave no partial folder."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from hyperinverter.convert.gan_files import load_gan
from hyperinverter.data.sources import FASHION_LICENSE
from hyperinverter.editing import GANSpaceDirection, load_direction
from hyperinverter.io.gan import save_gan
from hyperinverter.methods.hyperinverter import HyperInverter
from hyperinverter.methods.phase1 import Phase1
from hyperinverter.models.encoders import encoder_preset
from hyperinverter.models.hypernetwork import HyperNetwork
from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from hyperinverter.pipeline import InversionPipeline, save_pipeline
from hyperinverter.training.config import to_yaml
from hyperinverter.training.gan import GeneratorTrainingConfig
from hyperinverter.training.inversion import InversionTrainingConfig

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "package_bundled.py"
BATCH = 4


def _load_script():
    spec = importlib.util.spec_from_file_location("package_bundled", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["package_bundled"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


pb = _load_script()


def _write_stats(run_dir: Path, records: list[dict]) -> None:
    (run_dir / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 9')  # torn line


def _scalar(step: int, t: float, **losses: float) -> dict:
    return {"step": step, "time": t, **{f"loss/{k}": v for k, v in losses.items()}, "speed/img_per_s": 2.0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine they cost a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """Tiny fashion32 run folders: a 1-channel 32 px GAN (with D), Phase I and Phase II `best` pipelines,
    resolved configs and stats; plus a training folder and a held-out folder of images."""
    root = tmp_path_factory.mktemp("pkg")
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, img_channels=1, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256,
                  channel_max=16)).eval()
    with torch.no_grad():  # a w_avg away from zero, as after training
        G.mapping.w_avg.copy_(G.mapping(torch.randn(256, 16))[:, 0].mean(0))
    D = Discriminator(DiscriminatorConfig(resolution=32, img_channels=1, channel_base=256, channel_max=16))
    preset = encoder_preset("tiny", in_channels=1)
    E1 = preset.build_w_encoder()
    H = HyperNetwork.from_generator(G, feature_channels=16, feature_size=2, hidden_dim=8, inner_channels=8)
    with torch.no_grad():  # small, non-zero offsets
        for name, p in H.named_parameters():
            if name.endswith(("w1", "w2")):
                p.mul_(0.1)
    run = root / "runs"
    save_gan(run / "fashion32-generator" / "final", G, D)
    phase1 = Phase1(G, w_encoder=E1, encoder_resolution=64)
    save_pipeline(phase1, run / "fashion32-w-encoder" / "best")
    save_pipeline({"phase1": phase1, "hyperinverter": HyperInverter(
        G, w_encoder=E1, feature_encoder=preset.build_feature_encoder(), hypernetwork=H, encoder_resolution=64)},
        run / "fashion32-hypernetwork" / "best", default_method="hyperinverter")

    train, heldout = root / "data" / "train", root / "data" / "test"
    for folder, split in ((train, "train"), (heldout, "test")):
        folder.mkdir(parents=True)
        gen = torch.Generator().manual_seed(len(split))
        for i in range(12):
            Image.fromarray((torch.rand(32, 32, generator=gen) * 255).byte().numpy(), mode="L").save(
                folder / f"{i:06d}.png")
        labels = [i % 4 for i in range(12)]
        (folder / "dataset.json").write_text(json.dumps({"split": split, "labels": labels}))

    common = {"data": str(train), "log_every": 50, "device": "cpu"}
    gen_cfg = GeneratorTrainingConfig(run_dir=str(run / "fashion32-generator"), generator=G.config,
                                      steps=200, batch_size=BATCH, **common)
    inv = dict(generator=str(run / "fashion32-generator" / "final"), steps=100, batch_size=BATCH,
               encoder_resolution=64, **common)
    configs = {"generator": gen_cfg,
               "w-encoder": InversionTrainingConfig(run_dir=str(run / "fashion32-w-encoder"), **inv),
               "hypernetwork": InversionTrainingConfig(run_dir=str(run / "fashion32-hypernetwork"),
                                                       w_encoder=str(run / "fashion32-w-encoder" / "best"), **inv)}
    for kind, cfg in configs.items():
        (run / f"fashion32-{kind}" / "config.yaml").write_text(to_yaml(cfg))
    # generator: 200 steps, resumed at 100 after a long idle gap; every window of 50 steps takes 100 s
    _write_stats(run / "fashion32-generator", [
        _scalar(50, 1000.0, G=1.0, D=1.2), _scalar(100, 1100.0, G=0.9, D=1.1),
        _scalar(150, 9e5, G=0.8, D=1.0), _scalar(200, 9e5 + 100, G=0.7, D=0.9)])
    for kind in ("w-encoder", "hypernetwork"):
        _write_stats(run / f"fashion32-{kind}", [
            _scalar(50, 2000.0, l2=0.5), {"step": 50, "time": 2010.0, "val/loss": 0.40},
            _scalar(100, 2100.0, l2=0.4), {"step": 100, "time": 2110.0, "val/loss": 0.45}])
    return {"root": root, "runs": run, "train": train, "heldout": heldout}


@pytest.fixture(scope="module")
def bundle(runs):
    """The packaging through the script's command line, once for all checks."""
    metrics = runs["root"] / "metrics.md"
    metrics.write_text("| method | mse ↓ |\n|---|---|\n| phase1 | 0.1234 |\n")
    out = runs["root"] / "bundled" / "fashion-32"
    argv = ["--domain", "fashion32", "--runs", str(runs["runs"]), "--out", str(out), "--examples",
            str(runs["heldout"]), "--metrics", str(metrics), "--device", "cpu", "-q"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(SCRIPT.parents[1])  # the repository's configs/ give the training commands
        assert pb.main(argv) == 0
    return out


def test_bundle_loads_and_fp16_matches_fp32(bundle, runs):
    pipe = InversionPipeline.from_pretrained(bundle, device="cpu")
    assert all(v.dtype == torch.float32 for m in pipe.methods.values() for v in m.state_dict().values()
               if v.is_floating_point())
    with safe_open(str(bundle / "hypernetwork" / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        assert {f.get_tensor(k).dtype for k in names} == {torch.float16}  # stored in fp16
    reference = InversionPipeline.from_pretrained(runs["runs"] / "fashion32-hypernetwork" / "best", device="cpu")
    examples = sorted((bundle / "examples").glob("*.png"))
    a, b = reference.invert(examples), pipe.invert(examples)
    assert (a.image - b.image).abs().max() < 1e-2 and (a.initial_image - b.initial_image).abs().max() < 1e-2
    assert not torch.equal(a.image, a.initial_image)  # Phase II is part of the bundle
    assert not any(p.name.startswith(".") for p in bundle.parent.iterdir())  # no temporary folders left
    assert (bundle / "pipeline.json").stat().st_mode & 0o777 == 0o644


def test_directions_load_and_edit(bundle):
    pipe = InversionPipeline.from_pretrained(bundle, device="cpu")
    files = sorted((bundle / "directions").glob("*.safetensors"))
    assert {p.stem for p in files} == set(pb.DIRECTIONS["fashion32"])
    result = pipe.invert(sorted((bundle / "examples").glob("*.png"))[:2])
    for path in files:
        d = load_direction(path)
        index, layers, strength = pb.DIRECTIONS["fashion32"][path.stem]
        assert isinstance(d, GANSpaceDirection) and d.name == path.stem
        assert (d.index, f"{d.start}:{d.end}", d.default_strength) == (index, layers, strength)
        assert (pipe.edit(result, d) - result.image).abs().max() > 1e-3


def test_examples_samples_sheet_and_card(bundle, runs):
    examples = sorted((bundle / "examples").glob("*.png"))
    assert 0 < len(examples) <= 8
    for p in examples:  # copied byte for byte from the held-out folder
        assert p.read_bytes() == (runs["heldout"] / p.name).read_bytes()
    labels = json.loads((runs["heldout"] / "dataset.json").read_text())["labels"]
    assert {labels[int(p.stem)] for p in examples} == {0, 1, 2, 3}  # every class is shown
    samples = Image.open(bundle / "samples.png")
    assert samples.size == (8 * 34 + 2, 8 * 34 + 2)  # 8x8 grid of 32 px with 2 px padding
    sheet = Image.open(bundle / "ganspace_sheet.png")
    assert sheet.height >= 8 * 64 and sheet.width > 3 * 6 * 64
    assert sorted(p.name for p in (bundle / "configs").iterdir()) == ["generator.yaml", "hypernetwork.yaml",
                                                                         "w-encoder.yaml"]
    card = (bundle / "MODEL_CARD.md").read_text()
    assert FASHION_LICENSE in card
    assert "hyperinverter train generator --config configs/fashion32/generator.yaml" in card
    assert "| generator | `final` (EMA generator) | 200 / 200 | 0.11 |" in card  # 4 windows x 100 s, gap skipped
    assert "0.40000 (50)" in card and "0.45000 (100)" in card  # best and final validation loss
    assert "`hypernetwork/model.safetensors`" in card and "## Evaluation" in card
    assert "| phase1 | 0.1234 |" in card
    assert "What was chosen, and why:" in card and pb.DOMAINS["fashion32"].recipe[0] in card


def test_interrupted_packaging_leaves_no_partial_folder(runs, monkeypatch):
    out = runs["root"] / "interrupted" / "fashion-32"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pb, "write_samples", boom)  # after the pipeline and directions are written
    kw = {"examples": runs["heldout"], "ganspace_samples": 2000}
    with pytest.raises(KeyboardInterrupt):
        pb.package("fashion32", runs["runs"], out, **kw)
    assert list(out.parent.iterdir()) == []
    # an existing bundle survives a failed packaging untouched
    monkeypatch.undo()
    pb.package("fashion32", runs["runs"], out, **kw)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(pb, "write_model_card", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        pb.package("fashion32", runs["runs"], out, **kw)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir()] == ["fashion-32"]


def test_refusals_leave_nothing(runs):
    out = runs["root"] / "refused" / "fashion-32"
    with pytest.raises(ValueError, match="training data"):
        pb.package("fashion32", runs["runs"], out, examples=runs["train"])
    with pytest.raises(ValueError, match="budget"):
        pb.package("fashion32", runs["runs"], out, examples=runs["heldout"], ganspace_samples=2000, budget_mb=0.1)
    with pytest.raises(ValueError, match="does not fit"):
        pb.package("fashion32", runs["runs"], out, examples=runs["heldout"], ganspace_samples=2000,
                   directions={"bad": (0, "4:12", 3.0)})
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_training_hours_from_stats():
    # speeds: 3 windows of 50 steps at batch 4 and 2 img/s = 100 s each; a resume re-logs step 100
    records = [_scalar(50, 0, G=1), _scalar(100, 100, G=1), _scalar(100, 5e5, G=1)]
    assert pb.training_hours(records, batch_size=4) == pytest.approx(300 / 3600)
    # without speeds: consecutive times, an idle gap counted at the median pace (2 s/step)
    plain = [{"step": s, "time": t} for s, t in ((50, 100), (100, 200), (150, 9e5), (200, 9e5 + 100))]
    assert pb.training_hours(plain, batch_size=None) == pytest.approx(400 / 3600)


def _load_add_method():
    path = SCRIPT.parent / "add_method_to_bundle.py"
    spec = importlib.util.spec_from_file_location("add_method_to_bundle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hyperstyle_run(root: Path, bundle: Path, runs, *, other_encoder: bool = False) -> Path:
    """A tiny HyperStyle run folder trained (here: built) on the bundle's own W encoder and generator."""
    from hyperinverter.methods.hyperstyle import HyperStyle
    from hyperinverter.models.encoders import TrunkConfig
    from hyperinverter.models.hyperstyle import HyperStyleNet
    from hyperinverter.training.hyperstyle import HyperStyleTrainingConfig

    phase1 = InversionPipeline.from_pretrained(bundle, device="cpu").inverter("phase1")
    G, E1 = phase1.generator, phase1.w_encoder
    if other_encoder:
        E1 = encoder_preset("tiny", in_channels=1).build_w_encoder()
    torch.manual_seed(3)
    trunk = TrunkConfig("resnet", units=(1, 1, 1, 1), widths=(8, 16, 32, 64))
    H = HyperStyleNet.from_generator(G, trunk=trunk, input_size=64, hyper_inner=8, refine_inner=8)
    method = HyperStyle(G, w_encoder=E1, hypernetwork=H, encoder_resolution=64)
    run = root / ("hs-other" if other_encoder else "hs")
    save_pipeline({"phase1": Phase1(G, w_encoder=E1, encoder_resolution=64), "hyperstyle": method}, run / "best",
                  default_method="hyperstyle")
    cfg = HyperStyleTrainingConfig(run_dir=str(run), data=str(runs["train"]), generator=str(bundle),
                                   w_encoder=str(bundle), steps=100, batch_size=BATCH, trunk=trunk, device="cpu")
    (run / "config.yaml").write_text(to_yaml(cfg))
    _write_stats(run, [_scalar(50, 3000.0, l2=0.3), {"step": 50, "time": 3010.0, "val/loss": 0.30},
                       _scalar(100, 3100.0, l2=0.2), {"step": 100, "time": 3110.0, "val/loss": 0.25}])
    return run


def test_a_method_trained_later_joins_the_bundle(bundle, runs, tmp_path):
    import shutil

    am = _load_add_method()
    target = tmp_path / "bundled" / "fashion-32"
    shutil.copytree(bundle, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    run = _hyperstyle_run(tmp_path, target, runs)
    generator = runs["runs"] / "fashion32-generator" / "final"
    assert am.main(["--bundle", str(target), "--run", str(run), "--method", "hyperstyle", "--examples",
                    str(runs["heldout"]), "--extra-generator", f"tuned_generator={generator}"]) == 0

    index = json.loads((target / "pipeline.json").read_text())
    assert list(index["methods"]) == ["phase1", "hyperinverter", "hyperstyle"]
    assert index["default_method"] == "hyperinverter"
    assert index["methods"]["hyperstyle"]["components"] == {"w_encoder": "w_encoder",
                                                            "hypernetwork": "hyperstyle_hypernetwork"}
    for path, data in before.items():  # everything else is kept as it was
        if path.name not in ("pipeline.json", "MODEL_CARD.md"):
            assert (target / path).read_bytes() == data, path
    card = (target / "MODEL_CARD.md").read_text()
    assert card.startswith(before[Path("MODEL_CARD.md")].decode())
    assert "## HyperStyle (added after packaging)" in card and "hyperinverter train hyperstyle" in card
    assert "| hyperstyle | `best` (lowest val loss) | 100 / 100 |" in card and "0.25000 (100)" in card
    assert "`hyperstyle_hypernetwork/model.safetensors`" in card and "`tuned_generator/`" in card
    assert (target / "configs" / "hyperstyle.yaml").is_file()

    pipe = InversionPipeline.from_pretrained(target, device="cpu")
    reference = InversionPipeline.from_pretrained(run / "best", device="cpu")
    examples = sorted((target / "examples").glob("*.png"))[:3]
    a, b = reference.invert(examples, method="hyperstyle"), pipe.invert(examples, method="hyperstyle")
    assert (a.image - b.image).abs().max() < 1e-2 and len(b.steps) == 5
    assert pipe.methods["hyperstyle"].w_encoder is pipe.methods["phase1"].w_encoder
    assert load_gan(target / "tuned_generator").generator.resolution == 32

    # a run from another W encoder, or a method the bundle holds, is refused and changes nothing
    kept = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    other = _hyperstyle_run(tmp_path, target, runs, other_encoder=True)
    with pytest.raises(ValueError, match="W encoder is not the bundle's"):
        am.add_method(bundle, other, "hyperstyle", examples=runs["heldout"])
    with pytest.raises(ValueError, match="already holds"):
        am.add_method(target, run, "hyperstyle", examples=runs["heldout"])
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == kept
