"""StyleCLIP latent mappers: files in the official layout load strictly and match the official forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hyperinverter.convert.styleclip import load_styleclip_mapper
from hyperinverter.editing.directions import Direction
from hyperinverter.editing.styleclip import StyleCLIPDirection, load_styleclip_direction
from hyperinverter.errors import CheckpointError

OFFICIAL = {"coarse": "course_mapping", "medium": "medium_mapping", "fine": "fine_mapping"}  # sic: "course"


def official_state(levels=("coarse", "medium", "fine"), seed=0) -> dict[str, torch.Tensor]:
    """Random weights in the official key layout, stored as the official EqualLinear stores them (randn / lr_mul),
    with non-zero biases so that the bias path is exercised."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for level in levels:
        for i in range(1, 5):
            state[f"mapper.{OFFICIAL[level]}.mapping.{i}.weight"] = torch.randn(512, 512, generator=g) / 0.01
            state[f"mapper.{OFFICIAL[level]}.mapping.{i}.bias"] = torch.randn(512, generator=g) * 10
    return state


def official_opts(levels=("coarse", "medium", "fine")) -> dict:
    return {"exp_dir": "results/purple_hair", "description": "purple hair", "latents_train_path": "train.pt",
            "batch_size": 2, "learning_rate": 0.5, "id_lambda": 0.1, "stylegan_size": 1024,
            "no_coarse_mapper": "coarse" not in levels, "no_medium_mapper": "medium" not in levels,
            "no_fine_mapper": "fine" not in levels, "work_in_stylespace": False}


def write_mapper(path, state=None, opts=None, levels=("coarse", "medium", "fine")):
    torch.save({"state_dict": official_state(levels) if state is None else state,
                "opts": official_opts(levels) if opts is None else opts}, path)
    return path


def official_forward(state: dict[str, torch.Tensor], levels, w: torch.Tensor) -> torch.Tensor:
    """The official LevelsMapper, re-written plainly: PixelNorm over dim 1, then 4 × (EqualLinear lr_mul 0.01,
    fused leaky ReLU 0.2 · √2, bias on the last dim); rows 0-3 / 4-7 / 8-17; absent levels give zeros."""
    def pixel_norm(x):
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)

    def mapper(x, module):
        x = pixel_norm(x)
        for i in range(1, 5):
            weight, bias = state[f"mapper.{module}.mapping.{i}.weight"], state[f"mapper.{module}.mapping.{i}.bias"]
            out = F.linear(x, weight * (1 / math.sqrt(512)) * 0.01)
            x = F.leaky_relu(out + (bias * 0.01).view(1, 1, -1), negative_slope=0.2) * 2**0.5
        return x

    parts = []
    for level, (start, end) in zip(OFFICIAL, ((0, 4), (4, 8), (8, 18))):
        rows = w[:, start:end]
        parts.append(mapper(rows, OFFICIAL[level]) if level in levels else torch.zeros_like(rows))
    return torch.cat(parts, dim=1)


def codes(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 18, 512, generator=g) * 0.8 + torch.randn(1, 1, 512, generator=g)


LEVEL_SETS = [("coarse", "medium", "fine"), ("coarse", "medium"), ("fine",), ("medium",)]


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_matches_the_official_forward(levels, tmp_path):
    path = write_mapper(tmp_path / "purple_hair.pt", levels=levels)
    mapper = load_styleclip_mapper(path)
    assert mapper.levels == levels and not any(p.requires_grad for p in mapper.parameters())
    w = codes()
    with torch.no_grad():
        ours = mapper(w)
    expected = official_forward(official_state(levels), levels, w)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4), float((ours - expected).abs().max())
    for level, (start, end) in zip(OFFICIAL, ((0, 4), (4, 8), (8, 18))):
        if level not in levels:
            assert not ours[:, start:end].any()  # a disabled level moves nothing
        else:
            assert ours[:, start:end].abs().mean() > 0.1


def test_the_norm_runs_over_the_layer_axis(tmp_path):
    """The official quirk: each level's rows are normalised together, feature by feature (dim 1 of [B, n, 512])."""
    mapper = load_styleclip_mapper(write_mapper(tmp_path / "m.pt"))
    w = codes()
    scaled = w.clone()
    scaled[:, 0] *= 5  # one row of the coarse level: with a per-row norm the others would not change
    with torch.no_grad():
        a, b = mapper(w), mapper(scaled)
    assert not torch.allclose(a[:, 1:4], b[:, 1:4], atol=1e-3)
    assert torch.allclose(a[:, 4:], b[:, 4:])  # other levels are normalised on their own
    norm = mapper.coarse.mapping[0]
    assert torch.allclose(norm(w[:, :4]).square().mean(dim=1), torch.ones(2, 512), atol=1e-4)


def test_direction_edits_with_the_official_multiplier(tmp_path):
    direction = load_styleclip_direction(write_mapper(tmp_path / "afro.pt", levels=("coarse", "medium")))
    assert isinstance(direction, Direction) and direction.name == "afro" and direction.default_strength == 0.1
    w = codes()
    delta = official_forward(official_state(("coarse", "medium")), ("coarse", "medium"), w)
    assert torch.allclose(direction.apply(w), w + 0.1 * delta, rtol=1e-4, atol=1e-4)
    assert torch.allclose(direction.apply(w, 0.5), w + 0.5 * delta, rtol=1e-4, atol=1e-4)
    assert torch.equal(direction.apply(w, 0.0), w)
    assert torch.equal(direction.apply(w)[:, 8:], w[:, 8:])  # no fine mapper: fine rows untouched
    named = load_styleclip_direction(tmp_path / "afro.pt", name="big afro", strength=0.06)
    assert named.name == "big afro" and torch.allclose(named.apply(w), w + 0.06 * delta, rtol=1e-4, atol=1e-4)


def test_pipeline_edit_keeps_the_offsets(tmp_path):
    """``pipeline.edit`` with a mapper renders ``w + α·M(w)`` with the image's own Δθ, on a 18-row generator."""
    from hyperinverter.methods import InversionResult, get_method
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
    from hyperinverter.models.weight_delta import WeightDelta
    from hyperinverter.pipeline import InversionPipeline

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=1024, z_dim=8, w_dim=512, mapping_layers=1, channel_base=1024,
                                  channel_max=2)).eval()
    pipe = InversionPipeline(get_method("w-opt")(G), device="cpu")
    w = codes(batch=1)
    delta = WeightDelta({"b4.conv1.weight": 0.1 * torch.randn(1, *G.synthesis.b4.conv1.weight.shape)}, mode="add")
    result = InversionResult(ws=w, image=torch.zeros(1, 3, 1024, 1024), weight_delta=delta)
    direction = load_styleclip_direction(write_mapper(tmp_path / "m.pt"))
    edited = pipe.edit(result, direction)
    assert torch.allclose(edited, pipe.render(direction.apply(w), delta), atol=1e-5)
    assert not torch.allclose(edited, pipe.render(direction.apply(w), None), atol=1e-3)


def test_codes_of_other_generators_are_refused(tmp_path, pipeline):
    direction = load_styleclip_direction(write_mapper(tmp_path / "m.pt"))
    for shape in [(1, 8, 16), (1, 10, 512), (1, 18, 256), (18, 512)]:
        with pytest.raises(ValueError, match=r"18 rows × 512.*these codes are"):
            direction.apply(torch.zeros(shape))
    result = pipeline.invert(torch.zeros(1, 3, 32, 32))  # the tiny model: 8 rows of 16
    with pytest.raises(ValueError, match=r"StyleCLIP mapper 'm' edits W\+ codes of 18 rows.*\[8, 16\]"):
        pipeline.edit(result, direction)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.pop("mapper.course_mapping.mapping.3.bias"), r"missing keys: \['mapper.course_mapping.mapping.3.bias"),
    (lambda s: s.update({"mapper.fine_mapping.mapping.5.weight": torch.zeros(512, 512)}),
     r"unexpected keys: \['mapper.fine_mapping.mapping.5.weight'\]"),
    (lambda s: s.update({"mapper.medium_mapping.mapping.2.weight": torch.zeros(256, 512)}),
     r"mis-shaped keys: \['mapper.medium_mapping.mapping.2.weight: file \(256, 512\) vs model \(512, 512\)'\]"),
    (lambda s: s.update({"mapper.coarse_mapping.mapping.1.weight": torch.zeros(512, 512)}),
     r"unexpected keys: \['mapper.coarse_mapping.mapping.1.weight'\]"),  # the spelling the official code lacks
    (lambda s: s.update({"mapper.course_mapping.mapping.1.bias": torch.full((512,), float("nan"))}),
     r"NaN or infinite values in \['mapper.course_mapping.mapping.1.bias'\]"),
])
def test_wrong_keys_are_named(change, message, tmp_path):
    state = official_state()
    change(state)
    path = write_mapper(tmp_path / "bad.pt", state=state)
    with pytest.raises(CheckpointError, match=message) as info:
        load_styleclip_mapper(path)
    assert str(path) in str(info.value)


def test_files_of_the_official_coach_hold_its_decoder_too(tmp_path):
    # The official coach saves the whole net's state dict: the mapper's keys and the generator it was trained on
    # (``decoder.*``, which the official loader reads too). Such a file, every released mapper, was refused as having
    # unexpected keys; the edit moves the codes only, so the decoder is not used.
    state = official_state()
    decoder = {"decoder.style.1.weight": torch.randn(512, 512), "decoder.conv1.conv.weight": torch.randn(1, 8, 8, 3, 3),
               "decoder.noises.noise_0": torch.randn(1, 1, 4, 4)}
    mapper = load_styleclip_mapper(write_mapper(tmp_path / "mohawk.pt", state={**state, **decoder}))
    w = codes()
    with torch.no_grad():
        assert torch.allclose(mapper(w), official_forward(state, tuple(OFFICIAL), w), atol=1e-5)


def test_keys_must_agree_with_the_options(tmp_path):
    # A fine mapper in the file, but the options say it was trained without one: its keys are unexpected.
    path = write_mapper(tmp_path / "m.pt", state=official_state(), opts=official_opts(("coarse", "medium")))
    with pytest.raises(CheckpointError, match=r"levels coarse, medium.*unexpected keys: \['mapper.fine_mapping"):
        load_styleclip_mapper(path)
    path = write_mapper(tmp_path / "m.pt", state=official_state(("coarse",)), opts=official_opts())
    with pytest.raises(CheckpointError, match=r"missing keys: \['mapper.fine_mapping.mapping.1.bias'.* and \d+ more"):
        load_styleclip_mapper(path)


@pytest.mark.parametrize(("payload", "message"), [
    (torch.zeros(3), "is not a StyleCLIP mapper file"),
    ({"state_dict": official_state()}, "has no 'opts'"),
    ({"state_dict": official_state(), "opts": [1]}, "'opts' must be the training options"),
    ({"state_dict": official_state(), "opts": {**official_opts(), "no_fine_mapper": "yes"}},
     "'no_fine_mapper' must be true or false"),
    ({"state_dict": {}, "opts": {"no_coarse_mapper": True, "no_medium_mapper": True, "no_fine_mapper": True}},
     "disable all three levels"),
    ({"state_dict": official_state(), "opts": {**official_opts(), "work_in_stylespace": True}}, "StyleSpace"),
    ({"state_dict": {**official_state(), "mapper.note": "hi"}, "opts": official_opts()}, "must map names to tensors"),
])
def test_foreign_files_are_refused(payload, message, tmp_path):
    path = tmp_path / "x.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        load_styleclip_mapper(path)


def test_options_default_to_every_level(tmp_path):
    """The official options default to all three levels: a file whose opts lack the flags has all three."""
    path = write_mapper(tmp_path / "m.pt", opts={"description": "old file"})
    assert load_styleclip_mapper(path).levels == ("coarse", "medium", "fine")


def test_no_code_runs_from_the_file(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": official_state(), "opts": official_opts(), "x": Payload()}, path)
    capsys.readouterr()
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_styleclip_mapper(path)
    assert "ran" not in capsys.readouterr().out


def test_direction_rejects_a_non_finite_strength(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        StyleCLIPDirection(load_styleclip_mapper(write_mapper(tmp_path / "m.pt")), default_strength=float("inf"))


def test_load_direction_and_the_cli_recognise_a_mapper_file(tmp_path):
    from hyperinverter.editing import load_direction
    from hyperinverter.editing.catalogue import resolve_direction
    from hyperinverter.editing.styleclip import StyleCLIPDirection

    path = tmp_path / "purple_hair.pt"
    write_mapper(path)
    direction = load_direction(path)
    assert isinstance(direction, StyleCLIPDirection) and direction.name == "purple_hair"
    assert direction.default_strength == pytest.approx(0.1)
    assert resolve_direction(None, str(path), strength=0.06).default_strength == pytest.approx(0.06)
