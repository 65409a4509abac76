"""The evaluation protocol: per-method means over a held-out folder, the quality bars, the CLI report."""

import csv
import json
import os

import pytest
import torch

from hyperinverter.cli.main import main
from hyperinverter.evaluation import EvaluationReport, evaluate, quality_bars
from hyperinverter.io.images import save_image
from hyperinverter.metrics import PIXEL_METRICS


@pytest.fixture
def without_inception(monkeypatch):
    """``evaluate`` with the Inception distance left out (its report notes it as unavailable), for tests of what
    the command writes and resumes, not of its metrics: the network's pass at 256 px over every scored pair was most
    of their time (50 s of the editability report's test). ``test_cli_writes_the_report`` keeps it."""
    from hyperinverter import inception_metrics

    monkeypatch.setattr(inception_metrics, "inception_metric",
                        lambda *args, **kwargs: ({}, "Inception distance: unavailable here (left out by the test)"))


def test_means_match_a_direct_computation(pipeline):
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    report = evaluate(pipeline, x, dataset="random", batch_size=2, progress=False)
    result = pipeline.invert(x)
    for method, output in (("phase1", result.initial_image), ("hyperinverter", result.image)):
        for name, fn in PIXEL_METRICS.items():
            assert abs(report.metrics[method][name] - float(fn(output, x).mean())) < 1e-4, (method, name)
    assert report.num_images == 5 and report.seconds_per_image["hyperinverter"] > 0


def test_quality_bars():
    def report(p2_mse, p2_ssim):
        return EvaluationReport("d", 1, {"phase1": {"mse": 0.10, "ssim": 0.5},
                                         "hyperinverter": {"mse": p2_mse, "ssim": p2_ssim}}, {})

    assert all(quality_bars(report(0.05, 0.6)).values())
    bars = quality_bars(report(0.07, 0.6))  # better, but only 30% lower MSE
    assert bars["mse better"] and not bars["mse at least 40% lower"]
    assert not quality_bars(report(0.05, 0.4))["ssim better"]
    assert "- [ ] mse at least 40% lower" in report(0.07, 0.6).to_markdown()


def test_cli_writes_the_report(pipeline, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYPERINVERTER_CACHE", str(tmp_path / "cache"))  # SFace is converted into it
    pipeline.save_pretrained(tmp_path / "model")
    for i in range(3):
        save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1,
                   tmp_path / "held-out" / f"{i}.png")
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "held-out"),
                 "--identity", "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["num_images"] == 3 and set(saved["metrics"]) == {"phase1", "hyperinverter"}
    assert -1 <= saved["metrics"]["hyperinverter"]["id_sim"] <= 1
    assert saved["metrics"]["hyperinverter"]["inception_dist"] > 0  # the protocol's metrics beside the pixel ones
    assert "per_image" not in saved  # the JSON holds the means; every image's scores are in the CSV
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(r["image"], r["method"]) for r in rows] == [(f"{i}.png", m) for m in ("phase1", "hyperinverter")
                                                         for i in range(3)]
    for method in ("phase1", "hyperinverter"):
        for metric in ("mse", "ssim", "id_sim"):
            mean = sum(float(r[metric]) for r in rows if r["method"] == method) / 3
            assert mean == pytest.approx(saved["metrics"][method][metric], rel=1e-5, abs=1e-6)
    assert "quality bars:" in capsys.readouterr().out and "MSE change" in (tmp_path / "report.md").read_text()
    assert "protocol: images in [-1, 1] at 32 px; MSE" in (tmp_path / "report.md").read_text()
    # A report (or a benchmark) written into the held-out folder: its plot was a held-out image the next time.
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "held-out"),
                 "--out", str(tmp_path / "held-out" / "report"), "--device", "cpu"]) == 2
    assert main(["benchmark", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "held-out"),
                 "--out", str(tmp_path / "held-out" / "bench"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "report is inside " in err and "bench is inside " in err and "would be read as held-out images" in err
    assert sorted(p.name for p in (tmp_path / "held-out").iterdir()) == ["0.png", "1.png", "2.png"]


@pytest.mark.usefixtures("without_inception")
def test_editability_of_a_model_without_directions_uses_its_principal_ones(pipeline, tmp_path, capsys):
    # A user's own bundle ships no named directions: editability was skipped ("ships no directions").
    pipeline.save_pretrained(tmp_path / "model")
    save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1,
               tmp_path / "held-out" / "0.png")
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "held-out"),
                 "--editability", "2", "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    assert "principal directions in W (GANSpace" in capsys.readouterr().out
    saved = json.loads((tmp_path / "report-editability.json").read_text())
    assert saved["directions"][:2] == ["principal direction 1", "principal direction 2"]
    assert set(saved["metrics"]) == {"phase1", "hyperinverter"} and saved["metrics"]["hyperinverter"]["mse"] > 0


@pytest.mark.usefixtures("without_inception")
def test_the_editability_report_never_replaces_the_evaluation_report(pipeline, tmp_path):
    # `--out scores.md` (or any OUT with a dot) named the editability report scores.md too: it replaced the
    # evaluation's report and means, leaving only the .csv of what was evaluated.
    pipeline.save_pretrained(tmp_path / "model")
    save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1,
               tmp_path / "held-out" / "0.png")
    for out in ("scores.md", "run.v1"):
        assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "held-out"),
                     "--editability", "2", "--out", str(tmp_path / out), "--device", "cpu"]) == 0
        stem = tmp_path / out.split(".")[0]
        means = json.loads(stem.with_suffix(".json").read_text())
        assert "dataset" in means and "directions" not in means
        assert "Ground-truth editability" not in stem.with_suffix(".md").read_text()
        assert "Ground-truth editability" in (tmp_path / f"{stem.name}-editability.md").read_text()
        assert "directions" in json.loads((tmp_path / f"{stem.name}-editability.json").read_text())


def test_iterative_methods_are_scored_at_every_iteration(tiny_generator, tmp_path):
    from PIL import Image

    from hyperinverter.methods.hyperstyle import HyperStyle
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.pipeline import InversionPipeline

    torch.manual_seed(0)
    styled = HyperStyle.create(tiny_generator).eval()
    phase1 = Phase1(tiny_generator, w_encoder=styled.w_encoder, encoder_resolution=styled.encoder_resolution)
    pipe = InversionPipeline({"phase1": phase1, "hyperstyle": styled}, device="cpu")
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    report = evaluate(pipe, x, dataset="random", batch_size=2, progress=False)
    assert set(report.iterations) == {"hyperstyle"}  # phase1 has no iterations
    steps = report.iterations["hyperstyle"]
    result = pipe.invert(x, method="hyperstyle")
    assert len(steps) == 5
    for t, values in enumerate(steps):
        assert abs(values["mse"] - float(PIXEL_METRICS["mse"](result.steps[t], x).mean())) < 1e-4
    assert steps[-1]["mse"] == report.metrics["hyperstyle"]["mse"]
    seconds = [v["seconds"] for v in steps]
    assert all(a < b for a, b in zip(seconds, seconds[1:]))  # each iteration costs time
    assert abs(seconds[-1] - report.seconds_per_image["hyperstyle"]) < 1e-9
    markdown = report.to_markdown()
    assert "Per iteration, hyperstyle" in markdown and "| 5 |" in markdown
    image = Image.open(report.plot(tmp_path / "report.png"))
    assert image.size[0] > 600 and image.size[1] > 300
    report.save(tmp_path / "report")
    assert len(json.loads((tmp_path / "report.json").read_text())["iterations"]["hyperstyle"]) == 5


def test_the_last_iteration_is_the_result_and_is_scored_once(tiny_generator):
    # Every iterative method's last step is its result, which was scored twice: for fashion-32's 10,000 images
    # with the Inception distance (HyperStyle's 5 steps and E2Style's 3) 2 of 14 network scorings per batch.
    from hyperinverter.methods.hyperstyle import HyperStyle
    from hyperinverter.pipeline import InversionPipeline

    torch.manual_seed(0)
    pipe = InversionPipeline({"hyperstyle": HyperStyle.create(tiny_generator).eval()}, device="cpu")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scored = []

    def counted(a, b):
        scored.append(a.shape[0])
        return PIXEL_METRICS["mse"](a, b)

    report = evaluate(pipe, x, dataset="random", batch_size=2, progress=False, extra_metrics={"counted": counted})
    assert sum(scored) == 3 * 5  # each image at its 4 first steps and as the result
    assert report.iterations["hyperstyle"][-1]["counted"] == report.metrics["hyperstyle"]["counted"]


# --- two folders ----------------------------------------------------------------------------------------------


def _write_pairs(tmp_path, n=3, noise=0.1):

    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        gt = torch.rand(3, 16, 16, generator=gen) * 2 - 1
        save_image(gt, tmp_path / "gt" / f"{i:03d}.png")
        save_image((gt + noise * torch.randn(3, 16, 16, generator=gen)).clamp(-1, 1), tmp_path / "pred" / f"{i:03d}.png")


def test_two_folders_are_paired_by_name_and_scored(tmp_path, capsys):
    from hyperinverter.evaluation import evaluate_folders
    from hyperinverter.io.images import pil_to_tensor, read_image

    _write_pairs(tmp_path)
    report, problems = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    assert not problems and report.num_images == 3
    x = torch.cat([pil_to_tensor(read_image(tmp_path / "pred" / f"{i:03d}.png")) for i in range(3)])
    y = torch.cat([pil_to_tensor(read_image(tmp_path / "gt" / f"{i:03d}.png")) for i in range(3)])
    for name, fn in PIXEL_METRICS.items():
        assert report.metrics["pred"][name] == pytest.approx(float(fn(x, y).mean()), rel=1e-5)
    # A batch is bounded by its values too (32 phone photos held several GB): the same scores, pair by pair.
    from hyperinverter import evaluation

    batches = []
    add = evaluation.add_metric_sums
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "FOLDER_BATCH_VALUES", y[0].numel())
        patch.setattr(evaluation, "add_metric_sums",
                      lambda sums, a, *rest: batches.append(len(a)) or add(sums, a, *rest))
        one_by_one, _ = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    assert batches == [1, 1, 1]
    assert one_by_one.metrics["pred"] == pytest.approx(report.metrics["pred"], rel=1e-6)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report.md").is_file() and "| pred |" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["image"] for r in rows] == ["000.png", "001.png", "002.png"] and {r["method"] for r in rows} == {"pred"}
    for i, row in enumerate(rows):
        assert float(row["psnr"]) == pytest.approx(float(PIXEL_METRICS["psnr"](x[i : i + 1], y[i : i + 1])), rel=1e-5)
    # Identity on folders scores the FFHQ face box, as --model does (it embedded the whole frame), unless told.
    for flag, where in (([], "the face crop of the FFHQ framing at align scale 1"),
                        (["--whole-frame"], "the whole image")):
        assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--identity", *flag,
                     "--out", str(tmp_path / "id")]) == 0
        assert f"cosine similarity on {where}" in (tmp_path / "id.md").read_text()


def test_two_folders_are_scored_on_the_given_device(tmp_path, capsys, monkeypatch):
    # --device was accepted and ignored: the folders were always scored on the CPU, also with --device cuda.
    from hyperinverter import evaluation

    _write_pairs(tmp_path)
    folders = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main(["evaluate", *folders, "--device", "nope", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("error: --device: invalid device 'nope'")
    asked = []
    evaluate_folders = evaluation.evaluate_folders
    monkeypatch.setattr(evaluation, "evaluate_folders",
                        lambda *a, **k: asked.append(k.get("device")) or evaluate_folders(*a, **k))
    assert main(["evaluate", *folders, "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    assert asked == [torch.device("cpu")]


def test_mismatched_folders_are_an_error_naming_the_files(tmp_path, capsys):
    from hyperinverter.evaluation import FolderPairs

    _write_pairs(tmp_path)
    (tmp_path / "pred" / "002.png").rename(tmp_path / "pred" / "009.png")
    with pytest.raises(ValueError, match=r"1 only in .*pred \(009\); 1 only in .*gt \(002\)"):
        FolderPairs.match(tmp_path / "pred", tmp_path / "gt")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "do not hold the same images" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "r")]) == 2


def test_a_broken_link_fails_its_pair_and_the_rest_is_scored(tmp_path, capsys):
    # A broken link in --pred ended the whole run (exit 2); in --data it was left out without a word.
    _write_pairs(tmp_path)
    (tmp_path / "pred" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--out", str(tmp_path / "r")]) == 1
    assert f"failed: {tmp_path / 'pred' / 'gone.png'}: is a broken symbolic link" in capsys.readouterr().err
    scored = [row["image"] for row in csv.DictReader((tmp_path / "r.csv").open())]
    assert scored == sorted(p.name for p in (tmp_path / "gt").iterdir())
    from hyperinverter.evaluation import load_heldout_images

    _, names, failures = load_heldout_images(tmp_path / "pred", resolution=16, channels=3)
    gone = tmp_path / "pred" / "gone.png"
    assert names == scored and [str(e) for e in failures] == [f"{gone}: is a broken symbolic link"]


def test_two_images_are_one_pair(tmp_path, capsys):
    # `evaluate --pred a.png --gt b.png` was "error: PosixPath('.') has an empty name".
    from hyperinverter.evaluation import evaluate_folders

    _write_pairs(tmp_path)
    pred, gt = tmp_path / "pred" / "001.png", tmp_path / "gt" / "002.png"  # any two names
    one, _ = evaluate_folders(pred, gt, progress=False)
    both, _ = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    assert one.num_images == 1 and one.metrics["pred"]["mse"] != both.metrics["pred"]["mse"]
    assert main(["evaluate", "--pred", str(pred), "--gt", str(pred), "--out", str(tmp_path / "same")]) == 0
    assert [r["image"] for r in csv.DictReader((tmp_path / "same.csv").open())] == ["001.png"]
    assert float(next(csv.DictReader((tmp_path / "same.csv").open()))["mse"]) == 0
    assert main(["evaluate", "--pred", str(pred), "--gt", str(tmp_path / "gt"), "--out", str(tmp_path / "r")]) == 2
    assert "001.png is a file, but" in capsys.readouterr().err


def test_the_options_of_one_mode_are_refused_in_the_other(tmp_path, capsys):
    # They were ignored without a word: --max-images 1 scored every pair, --editability wrote no report, exit 0.
    _write_pairs(tmp_path)
    folders = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main(["evaluate", *folders, "--max-images", "1", "--editability", "2", "--out", str(tmp_path / "r")]) == 2
    assert "error: --max-images, --editability: apply only with --model and --data" in capsys.readouterr().err
    assert main(["evaluate", *folders, "--option", "phase1.steps=1", "--out", str(tmp_path / "r")]) == 2
    assert "error: --option: applies only with --model and --data" in capsys.readouterr().err
    # The folders are scored by fp32 metrics, as with --model: --dtype bf16 was accepted and changed nothing (fp32,
    # what runs, is the default that every command running the models has).
    for dtype in ("bf16", "fp16"):
        assert main(["evaluate", *folders, "--dtype", dtype, "--out", str(tmp_path / "r")]) == 2
        assert "error: --dtype: applies only with --model and --data" in capsys.readouterr().err
    assert main(["evaluate", "--model", "m", "--data", str(tmp_path / "gt"), "--whole-frame", "--out",
                 str(tmp_path / "r")]) == 2
    assert "error: --whole-frame: applies only with --pred and --gt" in capsys.readouterr().err
    # Without --identity nothing is framed: it was ignored without a word.
    assert main(["evaluate", *folders, "--whole-frame", "--out", str(tmp_path / "r")]) == 2
    assert "error: --whole-frame: applies only with --identity" in capsys.readouterr().err
    assert not list(tmp_path.glob("r.*"))


def test_a_pipe_or_a_device_given_as_a_side_is_refused_naming_it(tmp_path, capsys):
    # `evaluate --pred /dev/null --gt DIR` was "error: PosixPath('.') has an empty name", naming no file.
    _write_pairs(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    for pred, gt, cause in ((os.devnull, tmp_path / "gt", f"{os.devnull}: is a device"),
                            (tmp_path / "pred", tmp_path / "fifo", f"{tmp_path / 'fifo'}: is a named pipe")):
        assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "r")]) == 2
        assert f"error: {cause}, not an image or a folder" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_a_pair_of_other_sizes_or_an_unreadable_file_is_reported_and_left_out(tmp_path):
    from hyperinverter.evaluation import evaluate_folders

    _write_pairs(tmp_path)
    save_image(torch.zeros(3, 8, 12), tmp_path / "pred" / "001.png")
    (tmp_path / "pred" / "000.png").write_bytes(b"broken")
    report, problems = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    assert report.num_images == 1 and len(problems) == 2
    assert any("000.png" in p for p in problems)
    assert any("001.png: it is 12x8 pixels, the ground truth 16x16" in p for p in problems), problems


def test_lpips_is_reported_unavailable_offline_never_dropped(tmp_path, monkeypatch):
    from hyperinverter.evaluation import lpips_metric

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))  # no backbone file there
    metrics, note = lpips_metric()
    assert metrics == {} and note.startswith("LPIPS-alex: unavailable here") and "alexnet" in note
    _write_pairs(tmp_path)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--out", str(tmp_path / "report")]) == 0
    assert "LPIPS-alex: unavailable here" in (tmp_path / "report.md").read_text()


def test_ground_truth_editability_compares_edits_with_the_generators_own(pipeline):
    from hyperinverter.editing import LinearDirection
    from hyperinverter.evaluation import ground_truth_editability

    G = pipeline.generator
    gen = torch.Generator().manual_seed(5)
    directions = {"a": LinearDirection(torch.randn(1, G.w_dim, generator=gen), name="a"),
                  "b": LinearDirection(torch.randn(1, G.w_dim, generator=gen), name="b")}
    methods = ["phase1", "hyperinverter"]
    report = ground_truth_editability(pipeline, directions, methods=methods, num_images=6, strengths=(-1.0, 1.0),
                                      batch_size=4)
    assert set(report.metrics) == set(methods) and report.num_images == 6
    for method in methods:  # the overall mean is the mean of the directions' means
        for metric in ("mse", "ssim"):
            by_direction = [report.by_direction[method][d][metric] for d in directions]
            assert report.metrics[method][metric] == pytest.approx(sum(by_direction) / 2, rel=1e-6)
    # strength 0: the "edit" is the reconstruction of the generated image, scored against that image
    zero = ground_truth_editability(pipeline, {"a": directions["a"]}, methods=["hyperinverter"], num_images=6,
                                    strengths=(0.0,), batch_size=4)
    with torch.no_grad():
        z = torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(0))
        x = pipeline.render(G.mapping(z))
        expected = float(PIXEL_METRICS["mse"](pipeline.invert(x, method="hyperinverter").image, x).mean())
    assert zero.metrics["hyperinverter"]["mse"] == pytest.approx(expected, rel=1e-5)
    assert "| hyperinverter |" in report.to_markdown()


def test_ground_truth_editability_does_not_depend_on_the_global_random_state(pipeline):
    # Its codes come from its own seed and the optimisers draw from their own per-image seeds, so a run repeats.
    from hyperinverter.editing import LinearDirection
    from hyperinverter.evaluation import ground_truth_editability

    direction = LinearDirection(torch.randn(1, pipeline.generator.w_dim, generator=torch.Generator().manual_seed(5)))
    reports = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        reports.append(ground_truth_editability(pipeline, {"a": direction}, methods=["w-opt", "hyperinverter"],
                                                num_images=2, options={"w-opt": {"steps": 3, "progress": False}}))
    assert reports[0].metrics == reports[1].metrics
    other_seed = ground_truth_editability(pipeline, {"a": direction}, methods=["hyperinverter"], num_images=2, seed=1)
    assert other_seed.metrics["hyperinverter"] != reports[0].metrics["hyperinverter"]


def _held_out(tmp_path, count: int):
    for i in range(count):
        save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1,
                   tmp_path / "held-out" / f"{i}.png")
    return ["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "held-out"), "--batch-size", "2",
            "--out", str(tmp_path / "report"), "--device", "cpu"]


@pytest.mark.usefixtures("without_inception")
def test_an_interrupted_evaluation_resumes_without_redoing_work(pipeline, tmp_path, monkeypatch, capsys):
    from hyperinverter.pipeline import InversionPipeline

    pipeline.save_pretrained(tmp_path / "model")
    command = _held_out(tmp_path, 5)
    assert main(command) == 0
    complete = json.loads((tmp_path / "report.json").read_text())
    assert not (tmp_path / "report.work").exists()  # the scores' records go once the report is written

    calls: list[str] = []
    real_invert = InversionPipeline.invert

    def invert(self, images, *, method=None, **kw):
        calls.append(method)
        if calls.count("hyperinverter") == 2:
            raise KeyboardInterrupt  # stopped during the second batch
        return real_invert(self, images, method=method, **kw)

    monkeypatch.setattr(InversionPipeline, "invert", invert)
    (tmp_path / "report.json").unlink()
    assert main(command) == 130
    assert not (tmp_path / "report.json").exists()
    stored = sorted(p.relative_to(tmp_path / "report.work").as_posix() for p in (tmp_path / "report.work").rglob("*"))
    assert stored == [".lock", "hyperinverter", "hyperinverter/batch-00000.json", "phase1", "phase1/batch-00000.json",
                      "phase1/batch-00001.json", "run.json"]

    from hyperinverter.evaluation import evaluation_work
    with evaluation_work(tmp_path / "report"):  # another evaluation into the same --out is running
        capsys.readouterr()
        assert main(command) == 2
        assert "report.work: is in use: another process is writing this evaluation there" in capsys.readouterr().err

    calls.clear()
    monkeypatch.setattr(InversionPipeline, "invert", lambda self, images, *, method=None, **kw: calls.append(method)
                        or real_invert(self, images, method=method, **kw))
    capsys.readouterr()
    assert main(command) == 0
    assert calls == ["hyperinverter", "phase1", "hyperinverter"]  # only what is missing
    assert f"resumed the interrupted evaluation stored in {tmp_path / 'report.work'}" in capsys.readouterr().out
    resumed = json.loads((tmp_path / "report.json").read_text())
    for method, values in complete["metrics"].items():
        assert resumed["metrics"][method] == pytest.approx(values, rel=1e-6)
    assert not (tmp_path / "report.work").exists()


@pytest.mark.usefixtures("without_inception")
def test_an_evaluation_stopped_in_its_editability_resumes_its_scores(pipeline, tmp_path, monkeypatch, capsys):
    # The scores' records went once the report was written, before the plot and --editability (minutes to hours
    # with the optimisation methods): stopped there, the next run inverted every image again.
    from hyperinverter import evaluation
    from hyperinverter.pipeline import InversionPipeline

    pipeline.save_pretrained(tmp_path / "model")
    command = [*_held_out(tmp_path, 3), "--methods", "phase1", "--editability", "2"]

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(evaluation, "ground_truth_editability", interrupted)
        assert main(command) == 130
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.work" / "run.json").is_file()
    calls: list[str] = []
    real_invert = InversionPipeline.invert
    monkeypatch.setattr(InversionPipeline, "invert", lambda self, images, *, method=None, **kw: calls.append(method)
                        or real_invert(self, images, method=method, **kw))
    capsys.readouterr()
    assert main(command) == 0
    assert f"resumed the interrupted evaluation stored in {tmp_path / 'report.work'}" in capsys.readouterr().out
    assert len(calls) == 1  # the editability's one inversion: the held-out scores were stored
    assert (tmp_path / "report-editability.json").is_file() and not (tmp_path / "report.work").exists()


@pytest.mark.usefixtures("without_inception")
def test_stored_scores_of_other_weights_or_images_are_refused(pipeline, tmp_path, capsys, monkeypatch):
    from hyperinverter.pipeline import InversionPipeline

    pipeline.save_pretrained(tmp_path / "model")
    command = _held_out(tmp_path, 3)

    def interrupted(self, images, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(InversionPipeline, "invert", interrupted)
        assert main(command) == 130
    assert (tmp_path / "report.work" / "run.json").is_file()

    # The same generator with a retrained encoder: the stored work is another model's.
    with torch.no_grad():
        next(pipeline.inverter("hyperinverter").parts()["w_encoder"].parameters()).add_(0.01)
    pipeline.save_pretrained(tmp_path / "model")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "report.work") in err and "other methods" in err

    # Back to the first weights, but one image changed under its old name.
    (tmp_path / "report.work" / "run.json").unlink()
    assert main([*command, "--methods", "phase1"]) == 0
    save_image(torch.zeros(1, 3, 32, 32), tmp_path / "held-out" / "1.png")
    (tmp_path / "report.work").mkdir()
    (tmp_path / "report.work" / "notes.txt").write_text("a user's file")
    with monkeypatch.context() as m:
        m.setattr(InversionPipeline, "invert", interrupted)
        assert main([*command, "--methods", "phase1"]) == 130
    save_image(torch.ones(1, 3, 32, 32), tmp_path / "held-out" / "1.png")
    assert main([*command, "--methods", "phase1"]) == 2
    assert "other images" in capsys.readouterr().err

    # A finished run removes only its own records, and what a killed one left half-written.
    (tmp_path / "report.work" / "run.json").unlink()
    (tmp_path / "report.work" / "phase1").mkdir()
    (tmp_path / "report.work" / "phase1" / ".batch-00000.json.0123456789abcdef.partial").write_text("{")
    assert main([*command, "--methods", "phase1"]) == 0
    assert sorted(p.name for p in (tmp_path / "report.work").iterdir()) == ["notes.txt"]


def test_a_domain_in_a_band_of_the_square_is_scored_on_the_band(tiny_generator):
    # The cars domain fills rows 64 to 448 of its 512-px square; the official codes compare those rows only.
    # Scoring the whole square counted a quarter of black rows that any method matches.
    from hyperinverter.io.images import content_of
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.metrics import mse
    from hyperinverter.models.encoders import TrunkConfig, WEncoder, WEncoderConfig
    from hyperinverter.pipeline import InversionPipeline

    rows = (0.125, 0.875)
    torch.manual_seed(0)
    e1 = WEncoder(WEncoderConfig(trunk=TrunkConfig("ir_se", units=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
                                 w_dim=tiny_generator.w_dim))
    pipe = InversionPipeline(Phase1(tiny_generator, w_encoder=e1, encoder_resolution=64, content_rows=rows))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x[..., :4, :] = x[..., 28:, :] = -1
    report = evaluate(pipe, x, dataset="cars", progress=False)
    output = pipe.invert(x).image
    assert report.per_image["phase1"]["mse"] == pytest.approx(mse(content_of(output, rows), x[..., 4:28, :]).tolist())
    assert report.metrics["phase1"]["mse"] != pytest.approx(float(mse(output, x).mean()), rel=1e-3)
    # What lies outside the band is no part of the inversion: other pixels there change no score.
    y = x.clone()
    y[..., :4, :] = 1
    assert evaluate(pipe, y, dataset="cars", progress=False).metrics["phase1"] == pytest.approx(report.metrics["phase1"])


@pytest.mark.usefixtures("without_inception")
def test_a_report_never_replaces_a_users_file(tmp_path, capsys):
    # `evaluate --out notes` wrote notes.md, notes.json and notes.csv over a user's files of those names. Reports now
    # carry a mark (a closing HTML comment, a "written_by" key, a header of ours), and replace only reports of ours.
    from hyperinverter.io.files import written_by_us

    _write_pairs(tmp_path)
    command = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out",
               str(tmp_path / "notes")]
    assert main(command) == 0
    written = [tmp_path / f"notes{suffix}" for suffix in (".md", ".json", ".csv")]
    assert all(written_by_us(p) for p in written)
    assert (tmp_path / "notes.md").read_text().rstrip().endswith("<!-- written by hyperinverter -->")
    assert json.loads((tmp_path / "notes.json").read_text())["written_by"] == "hyperinverter"
    assert main(command) == 0  # its own report is replaced
    for path, users in zip(written, ("# my notes\n", '{"mine": true}\n', "name,score\nme,1\n")):
        before = {p: p.read_bytes() for p in written}
        path.write_text(users)
        capsys.readouterr()
        assert main(command) == 2
        assert f"{path}: exists and was not written by hyperinverter" in capsys.readouterr().err
        assert path.read_text() == users and all(p.read_bytes() == before[p] for p in written if p != path)
        path.write_bytes(before[path])
    # A table of face labels is ours by its header; a user's hand-made one (no generator column) is not.
    (tmp_path / "labels.csv").write_text("seed,trunc,generator,yaw\n1,1,0123456789abcdef,0.5\n")
    (tmp_path / "mine.csv").write_text("seed,trunc,smile\n1,1,0.5\n")
    assert written_by_us(tmp_path / "labels.csv") and not written_by_us(tmp_path / "mine.csv")
