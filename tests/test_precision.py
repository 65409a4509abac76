"""Reduced precision (``dtype="bf16"``, ``--dtype``): names are checked, bf16 really runs and stays close to fp32,
results leave in fp32, the fp32 islands hold under autocast, and the precision is recorded where results are kept
(inversion files, benchmark runs)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hyperinverter.cli.main import main
from hyperinverter.editing import LinearDirection
from hyperinverter.errors import SchemaError
from hyperinverter.inversion.files import load_inversion
from hyperinverter.io.checkpoints import encode_safetensors
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.precision import PRECISIONS, cpu_has_native_bf16, dtype_name, resolve_dtype


@pytest.fixture(scope="module")
def fashion():
    return InversionPipeline.from_pretrained("fashion-32", device="cpu")


def generated(pipe: InversionPipeline, n: int = 3) -> torch.Tensor:
    """Images the model can reconstruct: its generator's own renderings of seeded codes."""
    G = pipe.generator
    with torch.no_grad():
        ws = G.mapping(torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(0)))
    return pipe.render(ws).clamp(-1, 1)


def test_names_aliases_and_dtypes_resolve():
    assert resolve_dtype("bf16") == resolve_dtype("bfloat16") == resolve_dtype(torch.bfloat16) == torch.bfloat16
    assert resolve_dtype("fp32") == resolve_dtype("float32") == resolve_dtype(None) == torch.float32
    assert resolve_dtype("FP16", "cuda") == resolve_dtype("half", "cuda") == torch.float16
    assert [dtype_name(d) for d in PRECISIONS.values()] == ["fp32", "bf16", "fp16"]


def test_unknown_names_and_fp16_on_a_cpu_are_refused():
    with pytest.raises(ValueError, match="unknown dtype 'fp64'; use one of fp32, bf16, fp16"):
        resolve_dtype("fp64")
    with pytest.raises(ValueError, match="unknown dtype torch.float64"):
        resolve_dtype(torch.float64)
    with pytest.raises(ValueError, match="fp16 runs on GPUs only; on a CPU use bf16"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="fp16 runs on GPUs only"):
        InversionPipeline.from_pretrained("fashion-32", device="cpu", dtype="fp16")


def test_bf16_inversion_is_close_to_fp32_and_leaves_in_fp32(fashion):
    x = generated(fashion)
    full = fashion.invert(x)
    half = fashion.invert(x, dtype="bf16")
    assert half.image.dtype == half.ws.dtype == torch.float32
    assert all(t.dtype == torch.float32 for _, t in half.weight_delta.items())
    diff = (half.image - full.image).abs().mean().item()
    if diff == 0 and not cpu_has_native_bf16():
        pytest.skip("bf16 gave fp32's numbers exactly on this CPU (no native bf16)")
    assert 0 < diff < 0.01  # bf16 ran (not bit-identical), and costs little
    assert (half.ws - full.ws).abs().max() > 0
    # The per-call override did not change the pipeline's own precision.
    assert fashion.dtype == torch.float32
    assert torch.equal(fashion.invert(x).image, full.image)


def test_a_bf16_pipeline_edits_and_renders_in_fp32():
    pipe = InversionPipeline.from_pretrained("fashion-32", device="cpu", dtype="bf16")
    assert pipe.dtype == torch.bfloat16
    x = generated(pipe, 2)
    result = pipe.invert(x)
    direction = LinearDirection(torch.randn(1, pipe.generator.w_dim, generator=torch.Generator().manual_seed(1)))
    edited = pipe.edit(result, direction, 2.0)
    rendered = pipe.render(result.ws, result.weight_delta)
    frames = pipe.interpolate(result.select(0), result.select(1), steps=3)
    assert edited.dtype == rendered.dtype == frames.dtype == torch.float32
    assert edited.shape == rendered.shape == x.shape and torch.isfinite(edited).all()


def test_the_mapping_network_and_the_styles_stay_fp32_under_autocast():
    """The islands compute exactly what fp32 computes, while autocast rounds the same affine outside them (a
    dtype check alone would not tell: an fp32 bias promotes a bf16 product back to fp32)."""
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
    from hyperinverter.models.stylegan2.layers import SynthesisLayer

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256,
                                  channel_max=32)).eval()
    layer = SynthesisLayer(8, 8, w_dim=16, resolution=8).eval()
    styles = []
    layer.affine.register_forward_hook(lambda module, args, out: styles.append(out))
    z, x, w = torch.randn(2, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 16)
    with torch.no_grad():
        ws_fp32, plain_fp32 = G.mapping(z), layer.affine(w)
        layer(x, w)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ws = G.mapping(z)
            y = layer(x, w)
            plain = layer.affine(w)  # the same affine outside its fp32 region
    styles_fp32, styles_autocast = styles[1], styles[2]
    assert ws.dtype == torch.float32 and torch.equal(ws, ws_fp32)
    assert styles_autocast.dtype == torch.float32 and torch.equal(styles_autocast, styles_fp32)
    assert not torch.equal(plain, plain_fp32)  # autocast was on: only the islands are fp32
    assert y.shape == (2, 8, 8, 8) and torch.isfinite(y).all()


def write_photo(path):
    arr = (torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    Image.fromarray(arr).save(path)
    return path


def test_cli_invert_in_bf16_records_it_and_fp32_redoes_it(tmp_path, capsys):
    photo = write_photo(tmp_path / "shoe.png")
    out = tmp_path / "out"
    assert main(["invert", str(photo), "--model", "fashion-32", "--out", str(out), "--device", "cpu",
                 "--dtype", "bf16"]) == 0
    assert (out / "shoe.png").is_file() and (out / "shoe_compare.png").is_file()
    ws, _, meta = load_inversion(out / "shoe.safetensors")
    assert meta["dtype"] == "bf16" and ws.dtype == torch.float32
    # The same command skips it; another precision is another result, so it is inverted again.
    assert main(["invert", str(photo), "--model", "fashion-32", "--out", str(out), "--device", "cpu",
                 "--dtype", "bf16"]) == 0
    assert "1 input(s) already done" in capsys.readouterr().out
    assert main(["invert", str(photo), "--model", "fashion-32", "--out", str(out), "--device", "cpu"]) == 0
    assert "0 input(s) already done" in capsys.readouterr().out
    assert load_inversion(out / "shoe.safetensors")[2]["dtype"] == "fp32"


def test_every_command_that_runs_the_models_takes_dtype():
    import argparse

    from hyperinverter.cli.main import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    running = ["invert", "edit", "interpolate", "mix", "export-generator", "restore", "swap", "evaluate",
               "benchmark", "demo", "web"]
    for name in running:
        option = next((a for a in commands[name]._actions if "--dtype" in a.option_strings), None)
        assert option is not None, name
        assert option.default == "fp32" and option.choices == ["fp32", "bf16", "fp16"], name


def test_cli_fp16_on_a_cpu_is_a_clean_error(tmp_path, capsys):
    photo = write_photo(tmp_path / "shoe.png")
    code = main(["invert", str(photo), "--model", "fashion-32", "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--dtype", "fp16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: fp16 runs on GPUs only" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.safetensors"))
    with pytest.raises(SystemExit) as usage:  # not a precision at all: a usage error naming the choices
        main(["invert", str(photo), "--model", "fashion-32", "--out", str(tmp_path / "out"), "--dtype", "fp64"])
    assert usage.value.code == 2 and "invalid choice: 'fp64'" in capsys.readouterr().err


def test_inversion_files_without_a_dtype_load_as_fp32_and_a_bad_one_is_refused(tmp_path):
    record = {"source": "a.png", "model": "m", "method": "phase1", "generator": None, "mode": None,
              "placement": None, "picture": None}
    old = tmp_path / "old.safetensors"
    old.write_bytes(encode_safetensors({"ws": torch.zeros(1, 4, 8)}, {"inversion": json.dumps(record)}))
    assert load_inversion(old)[2]["dtype"] == "fp32"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(encode_safetensors({"ws": torch.zeros(1, 4, 8)}, {"inversion": json.dumps({**record,
                                                                                               "dtype": "fp8"})}))
    with pytest.raises(SchemaError, match="'dtype' must be one of fp32, bf16, fp16, got 'fp8'"):
        load_inversion(bad)


def test_a_benchmark_records_its_precision_and_refuses_another_one(pipeline, tmp_path):
    from hyperinverter.benchmark import BenchmarkSettings, run_benchmark
    from hyperinverter.errors import InputError

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = BenchmarkSettings(methods=("phase1",), images=2, batch_size=2, editability_images=0)

    def bench():
        return run_benchmark(pipeline, x, ["a.png", "b.png"], tmp_path / "r", settings=settings, model="m",
                             data="d", command="c", directions={}, progress=False)

    pipeline.dtype = torch.bfloat16
    report = bench()
    assert report.provenance["dtype"] == "bf16" and "- precision: bf16" in report.to_markdown()
    assert json.loads((tmp_path / "r" / "work" / "run.json").read_text())["dtype"] == "bf16"
    pipeline.dtype = torch.float32
    with pytest.raises(InputError, match="holds a benchmark run with other dtype;"):
        bench()


@pytest.mark.parametrize(("batch", "bands"), [(1, False), (2, False), (1, True)])
def test_hyperinverter_traces_as_one_graph(batch, bands, monkeypatch):
    """Under torch.compile a whole inversion is one graph, bands (a CPU's single image at full size) included. A check
    that Dynamo cannot trace (``is_inference``, ``torch.backends.mkldnn.is_available``) broke it inside every
    modulated layer and hypernetwork: the pieces were compiled again for each layer's shapes until Dynamo's
    recompile limit, after which they ran eagerly."""
    from conftest import build_tiny_pipeline
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig, generator
    from hyperinverter.ops.prepacked import unpack_convolutions

    if bands:  # the tiny generator's maps in bands of 4 rows
        monkeypatch.setattr(generator, "BAND_FROM_BYTES", 0)
        monkeypatch.setattr(generator, "BAND_BYTES", 1)

    # A 16-px generator: every kind of layer as at 32 px, and a fifth fewer operations for Dynamo to trace (each
    # trace took 10-17 s of the suite).
    torch.manual_seed(0)
    small = Generator(GeneratorConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256,
                                      channel_max=16)).eval()
    inverter = build_tiny_pipeline(small).inverter("hyperinverter")
    unpack_convolutions(inverter)  # as InversionPipeline.compile does
    x = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(inverter)(x)
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.slow  # a cold torch.compile takes minutes on 2 cores
def test_a_compiled_method_gives_the_eager_result(pipeline):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eager = pipeline.invert(x, method="hyperinverter")
    pipeline.compile("hyperinverter")
    compiled = pipeline.invert(x, method="hyperinverter")
    assert (compiled.image - eager.image).abs().max() < 1e-4
    assert all((compiled.weight_delta[k] - eager.weight_delta[k]).abs().max() < 1e-4 for k in eager.weight_delta)


def test_emulated_bf16_is_named_once_not_at_every_call(fashion, monkeypatch, caplog):
    """Without native bf16 the warning came at loading and again at every invert call and batch: a folder of 1,000
    images in batches of one logged it 1,001 times."""
    from hyperinverter import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    x = generated(fashion, 2)
    with caplog.at_level("WARNING", logger="hyperinverter.precision"):
        resolve_dtype("bf16")  # named here, or already before in this process
        caplog.clear()
        fashion.invert(x, dtype="bf16", batch_size=1)
        fashion.invert(x, dtype="bf16")
    assert not caplog.records, caplog.text


def test_a_pipeline_s_dtype_set_later_is_checked_as_the_constructor_checks_it(pipeline):
    """``pipe.dtype = "bf16"`` reached torch.autocast as a string (render, edit, mix and interpolate failed inside
    torch with a TypeError), and ``torch.float16`` on a CPU ran in fp16 there, past the refusal."""
    ws = pipeline.invert(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1).ws
    pipeline.dtype = "bf16"
    assert pipeline.dtype == torch.bfloat16
    assert pipeline.render(ws).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16 runs on GPUs only"):
        pipeline.dtype = torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp64'"):
        pipeline.dtype = "fp64"
    assert pipeline.dtype == torch.bfloat16  # a refused value leaves it as it was
    pipeline.dtype = None
    assert pipeline.dtype == torch.float32
