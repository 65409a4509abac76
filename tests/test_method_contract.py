"""The contract every registered inversion method keeps, checked on a tiny instance of each (like diffusers'
``PipelineTesterMixin``): a new method gets all of these by registering."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_generator
from hyperinverter.editing import LinearDirection
from hyperinverter.errors import NonFiniteError
from hyperinverter.inversion.batch import invert_files
from hyperinverter.inversion.export import bake_weight_delta
from hyperinverter.io.images import save_image
from hyperinverter.methods import registered_methods
from hyperinverter.pipeline import InversionPipeline

METHODS = sorted(registered_methods())


@pytest.fixture(params=METHODS)
def pipe(request):
    torch.manual_seed(0)
    G = build_tiny_generator()
    method = registered_methods()[request.param].create(G, preset="tiny")
    return InversionPipeline(method, device="cpu", name=f"tiny-{request.param}")


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_registry_holds_the_paper_methods():
    assert {"phase1", "hyperinverter"} <= set(METHODS)
    for name, cls in registered_methods().items():
        assert cls.name == name and cls.label and cls.summary
        json.dumps(dict(cls.options))  # option -> its official default, plain data (shown by `methods`, stored)


def test_the_result_keeps_its_shapes(pipe):
    G = pipe.generator
    result = pipe.invert(images(2))
    assert result.ws.shape == (2, G.num_ws, G.w_dim) and result.image.shape == (2, 3, 32, 32)
    if result.weight_delta is not None:
        shapes = G.synthesis.offsettable_parameters()
        assert all(tuple(t.shape) == (2, *shapes[name]) for name, t in result.weight_delta.items())
    for extra in [result.initial_image, *result.steps]:
        assert extra is None or extra.shape == result.image.shape
    assert (result.initial_image is not None) == (pipe.inverter().initial_label is not None)
    assert result.timings and all(v >= 0 for v in result.timings.values())
    assert torch.allclose(pipe.render(result.ws, result.weight_delta), result.image, atol=1e-5)


def test_batch_equals_single(pipe):
    x = images(3)
    batched = pipe.invert(x, batch_size=3)
    for i in range(3):
        single = pipe.invert(x[i : i + 1])
        assert torch.allclose(single.ws, batched.ws[i : i + 1], atol=1e-5)
        assert torch.allclose(single.image, batched.image[i : i + 1], atol=1e-4)


def test_a_method_in_training_mode_inverts_in_eval_mode_and_stays_as_it_was(pipe):
    # create() gives a method in training mode: invert normalised by the batch and overwrote the BatchNorm statistics.
    method = pipe.inverter()
    if method.name in ("w-opt", "wplus-opt", "pti"):
        return  # (optimisation: 0.1-1e-2 batch differences from Adam, covered by their own tests)
    method.train()
    for module in method.modules():  # statistics that matter, so that batch statistics would show
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    modes = [m.training for m in method.modules()]
    assert any(modes)
    x = images(3)
    batched = method.invert(x)
    single = method.invert(x[1:2])
    assert [m.training for m in method.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in method.state_dict().items())
    assert torch.allclose(single.image, batched.image[1:2], atol=1e-4)
    method.eval()


def test_save_then_load_gives_the_same_result(pipe, tmp_path):
    x = images(2)
    before = pipe.invert(x)
    if not pipe.inverter().components:
        return  # nothing to store: it runs on any bundle
    pipe.save_pretrained(tmp_path / "bundle")
    name = pipe.default_method
    loaded = InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")
    assert name in loaded.methods and loaded.default_method == name
    after = loaded.invert(x)
    assert torch.allclose(before.ws, after.ws, atol=1e-6) and torch.allclose(before.image, after.image, atol=1e-6)


def test_an_edit_of_strength_zero_is_the_reconstruction(pipe):
    result = pipe.invert(images(2))
    direction = LinearDirection(torch.randn(1, pipe.generator.w_dim))
    assert torch.allclose(pipe.edit(result, direction, 0.0), result.image, atol=1e-5)
    assert not torch.allclose(pipe.edit(result, direction, 3.0), result.image, atol=1e-3)
    # Its edits at several strengths in one call, with its offsets (additive or multiplicative) tiled.
    one = result.select(1)
    torch.testing.assert_close(pipe.edit_strengths(one, direction, [0.0, 3.0])[:, 0],
                               torch.cat([one.image, pipe.edit(one, direction, 3.0)]), atol=3e-5, rtol=0)


def test_interpolation_ends_are_the_reconstructions(pipe):
    result = pipe.invert(images(2))
    frames = pipe.interpolate(result.select(0), result.select(1), steps=3)
    assert torch.allclose(frames[0], result.image[0], atol=1e-5)
    assert torch.allclose(frames[-1], result.image[1], atol=1e-5)


def test_an_exported_generator_renders_the_reconstruction(pipe):
    result = pipe.invert(images(1))
    baked = bake_weight_delta(pipe.generator, result.weight_delta)
    with torch.no_grad():
        assert torch.allclose(baked.synthesis(result.ws), result.image, atol=1e-5)


def test_inversion_files_render_the_reconstruction(pipe, tmp_path):
    x = images(2)
    for i in range(2):
        save_image(x[i], tmp_path / "in" / f"{i}.png")
    report = invert_files(pipe, sorted((tmp_path / "in").iterdir()), tmp_path / "out", progress=False)
    assert len(report.written) == 2 and report.ok
    loaded, record = pipe.load_result(report.written[1])
    assert record["method"] == pipe.default_method
    expected = pipe.invert(sorted((tmp_path / "in").iterdir())[1:])  # the same PNG, read back
    assert torch.allclose(loaded.image, expected.image, atol=1e-5)


def test_bad_inputs_are_clear_errors(pipe):
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 32, 32\]"):
        pipe.invert(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        pipe.inverter().invert(torch.zeros(2, 3, 16, 16))
    with pytest.raises(NonFiniteError, match="NaN"):
        pipe.invert(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="has no option \\['colour'\\]"):
        pipe.invert(images(1), colour="blue")
    with pytest.raises(ValueError, match="unknown method 'no-such-method'.*; this model runs "):
        pipe.invert(images(1), method="no-such-method")


def test_each_method_reads_the_photo_reduced_as_its_official_code_does(tiny_generator, monkeypatch):
    # pSp, e4e, HyperStyle and E2Style: their data transforms reduce the photo with PIL's bilinear (Resize(256)),
    # which widens its filter; HyperInverter's model interpolates the full-size tensor without it. Every method
    # reduced as HyperInverter does, which aliased the pSp family's inputs (0.03 from PIL's at 1024 -> 256).
    import numpy as np
    from PIL import Image, ImageFilter

    from hyperinverter.methods import e2style, hyperinverter, hyperstyle, phase1, psp

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    photo = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1))
    x = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    pil = torch.from_numpy(np.asarray(photo.resize((16, 16), Image.BILINEAR)).copy()).permute(2, 0, 1)[None] / 127.5 - 1
    assert (phase1.resize_for_encoder(x, 16, antialias=True) - pil).abs().max() < 2 / 127.5  # (PIL rounds to 8 bits)
    assert (phase1.resize_for_encoder(x, 16) - pil).abs().max() > 10 / 127.5

    calls = []
    for module in (phase1, psp, e2style, hyperstyle, hyperinverter):
        reduce = module.resize_for_encoder
        monkeypatch.setattr(module, "resize_for_encoder",
                            lambda *a, _reduce=reduce, **k: calls.append(k.get("antialias", False)) or _reduce(*a, **k))
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for name, official in [("phase1", False), ("hyperinverter", False), ("psp", True), ("e4e", True),
                           ("e2style", True), ("hyperstyle", True)]:
        calls.clear()
        registered_methods()[name].create(tiny_generator, preset="tiny").invert(image)
        assert calls and set(calls) == {official}, (name, calls)


def test_an_encoder_reads_as_it_was_trained_whatever_its_method(tiny_generator, monkeypatch, tmp_path):
    # A HyperStyle trained here on a HyperInverter Phase I: its W encoder was trained on F.interpolate's reduction,
    # so it reads that way while the hypernetwork reads as HyperStyle's official code; a pSp-family W encoder
    # imported as phase1 reads with antialiasing. The setting travels with the bundle.
    from hyperinverter.errors import SchemaError
    from hyperinverter.methods import hyperstyle, phase1
    from hyperinverter.methods.hyperstyle import HyperStyle

    made = HyperStyle.create(tiny_generator)
    method = HyperStyle(tiny_generator, w_encoder=made.w_encoder, hypernetwork=made.hypernetwork,
                        encoder_resolution=made.encoder_resolution, encoder_antialias=False)
    assert method.settings()["encoder_antialias"] is False and "encoder_antialias" not in made.settings()
    calls = []
    for module in (phase1, hyperstyle):
        reduce = module.resize_for_encoder
        monkeypatch.setattr(module, "resize_for_encoder",
                            lambda *a, _reduce=reduce, **k: calls.append(k.get("antialias", False)) or _reduce(*a, **k))
    method.invert(torch.rand(1, 3, 32, 32) * 2 - 1, iterations=1)
    assert calls == [False, True]  # the W encoder, then the hypernetwork's input
    pipe = InversionPipeline({"hyperstyle": method,
                              "phase1": registered_methods()["phase1"](tiny_generator, w_encoder=made.w_encoder,
                                                                       encoder_antialias=True)}, device="cpu")
    pipe.save_pretrained(tmp_path / "bundle")
    loaded = InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")
    assert loaded.inverter("hyperstyle").encoder_antialias is False and loaded.inverter("phase1").encoder_antialias
    index = json.loads((tmp_path / "bundle" / "pipeline.json").read_text())
    index["methods"]["phase1"]["settings"]["encoder_antialias"] = "yes"
    (tmp_path / "bundle" / "pipeline.json").write_text(json.dumps(index))
    with pytest.raises(SchemaError, match="'encoder_antialias' must be true or false, got 'yes'"):
        InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")


def test_the_registry_refuses_what_is_not_a_method_by_name():
    from hyperinverter.methods import Inverter, register_method

    class Nameless(Inverter):
        label = "nameless"

    class NotAMethod:
        name, label, options = "not-a-method", "x", {}

    for cls in (None, 3, NotAMethod, Nameless):
        with pytest.raises(TypeError, match="Inverter subclass|must set name"):
            register_method(cls)
    assert "not-a-method" not in registered_methods()


@pytest.mark.parametrize("returns", ["tensor", "none", "rows", "batch", "side"])
def test_a_registered_method_that_breaks_the_contract_is_named(returns, monkeypatch):
    from hyperinverter.methods import InversionResult, Inverter, register_method, registry

    def forward(self, x, *, stopwatch=None, **options):
        G, b = self.generator, x.shape[0]
        ws, image = torch.zeros(b, G.num_ws, G.w_dim), torch.zeros_like(x)
        return {"tensor": image, "none": None,
                "rows": InversionResult(ws=ws[:, 1:], image=image),
                "batch": InversionResult(ws=ws[:1], image=image[:1]),
                "side": InversionResult(ws=ws, image=image[..., :16, :16])}[returns]

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register_method(type("Broken", (Inverter,), {"name": "broken", "label": "Broken", "forward": forward}))
    pipe = InversionPipeline(registered_methods()["w-opt"].create(build_tiny_generator()), device="cpu")
    with pytest.raises((TypeError, ValueError), match="method broken returned"):
        pipe.invert(images(2), method="broken")


def test_an_option_of_the_wrong_kind_is_refused_by_name():
    G = build_tiny_generator()
    w_opt, pti = registered_methods()["w-opt"](G), registered_methods()["pti"](G)
    for method, key, value in ((w_opt, "optimize_noise", [False]), (w_opt, "perceptual_weight", torch.ones(2)),
                               (pti, "locality_regularization", [False]), (pti, "perceptual_weight", [1.0])):
        with pytest.raises(ValueError, match=f"option {key} of {method.name}"):
            method.check_options({key: value})
    with pytest.raises(ValueError, match="perceptual_weight must be a finite number of 0 or more"):
        pti.check_options({"perceptual_weight": -1.0})  # (a negative weight rewards the error, as in w-opt)
    assert callable(w_opt.check_options({"progress": print})["progress"])  # a progress callback is still taken
