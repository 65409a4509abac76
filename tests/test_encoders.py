"""Encoders E1/E2: shapes, official key layouts, parameter counts, strict foreign-weight loading, gradients.

The "official" key layouts are generated here from the written specs (weight_formats.md §3.1, §4.2, §4.5 and
torchvision's ResNet naming), independently of the model code, and compared with what the models produce.
Full-size models are built on the meta device where only names, shapes and counts matter.
"""

import copy

import pytest
import torch

from hyperinverter.convert.backbones import (
    load_ir_se_trunk,
    load_prefixed_state_dict,
    load_torchvision_resnet,
    read_state_dict,
    torchvision_resnet_key_map,
)
from hyperinverter.errors import CheckpointError
from hyperinverter.models.encoders import (
    ENCODER_PRESETS,
    FeatureEncoder,
    FeatureEncoderConfig,
    IRSEBackbone,
    ResNetBackbone,
    TrunkConfig,
    WEncoder,
    WEncoderConfig,
    encoder_preset,
)
from hyperinverter.models.encoders.backbones import IRUnit

OFFICIAL_WIDTHS = (64, 128, 256, 512)

# ----------------------------------------------------------------------------------------------------------
# Key layouts written from the specs


def _bn(shapes, prefix, c, tracked=True):
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{p}"] = (c,)
    if tracked:
        shapes[f"{prefix}.num_batches_tracked"] = ()


def ir_se_layout(units, widths, in_channels=3, output_layer=False, tracked=True):
    """``model_ir_se50.pth``-style keys: input_layer, body.{n}.{shortcut_layer,res_layer}[, output_layer]."""
    s = {"input_layer.0.weight": (widths[0], in_channels, 3, 3)}
    _bn(s, "input_layer.1", widths[0], tracked)
    s["input_layer.2.weight"] = (widths[0],)
    n, din = 0, widths[0]
    for count, d in zip(units, widths, strict=True):
        for _ in range(count):
            if din != d:  # conv shortcut only where the width changes; MaxPool (no params) otherwise
                s[f"body.{n}.shortcut_layer.0.weight"] = (d, din, 1, 1)
                _bn(s, f"body.{n}.shortcut_layer.1", d, tracked)
            _bn(s, f"body.{n}.res_layer.0", din, tracked)
            s[f"body.{n}.res_layer.1.weight"] = (d, din, 3, 3)
            s[f"body.{n}.res_layer.2.weight"] = (d,)
            s[f"body.{n}.res_layer.3.weight"] = (d, d, 3, 3)
            _bn(s, f"body.{n}.res_layer.4", d, tracked)
            s[f"body.{n}.res_layer.5.fc1.weight"] = (max(1, d // 16), d, 1, 1)
            s[f"body.{n}.res_layer.5.fc2.weight"] = (d, max(1, d // 16), 1, 1)
            n, din = n + 1, d
    if output_layer:
        _bn(s, "output_layer.0", widths[3], tracked)
        s["output_layer.3.weight"] = (512, widths[3] * 7 * 7)
        s["output_layer.3.bias"] = (512,)
        _bn(s, "output_layer.4", 512, tracked)
    return s


def torchvision_resnet_layout(blocks, widths, in_channels=3):
    """torchvision ResNet (BasicBlock) keys: conv1, bn1, layer{1..4}.{j}.*, fc."""
    s = {"conv1.weight": (widths[0], in_channels, 7, 7)}
    _bn(s, "bn1", widths[0])
    din = widths[0]
    for stage, (count, d) in enumerate(zip(blocks, widths, strict=True)):
        for j in range(count):
            p = f"layer{stage + 1}.{j}"
            s[f"{p}.conv1.weight"] = (d, din, 3, 3)
            _bn(s, f"{p}.bn1", d)
            s[f"{p}.conv2.weight"] = (d, d, 3, 3)
            _bn(s, f"{p}.bn2", d)
            if j == 0 and (stage > 0 or din != d):
                s[f"{p}.downsample.0.weight"] = (d, din, 1, 1)
                _bn(s, f"{p}.downsample.1", d)
            din = d
    s["fc.weight"], s["fc.bias"] = (1000, widths[3]), (1000,)
    return s


def psp_resnet_trunk_layout(blocks, widths, in_channels=3):
    """pSp ``ResNet*IntoW`` trunk: torchvision stem + PReLU ``relu`` + ``body.{n}`` in layer order, no fc."""
    tv = torchvision_resnet_layout(blocks, widths, in_channels)
    s, n = {}, 0
    for key, shape in tv.items():
        if key.startswith("fc."):
            continue
        if key.startswith("layer"):
            layer, j, rest = key.split(".", 2)
            n = sum(blocks[: int(layer[5:]) - 1]) + int(j)
            key = f"body.{n}.{rest}"
        s[key] = shape
        if key == "bn1.num_batches_tracked":
            s["relu.weight"] = (widths[0],)
    return s


def heads_layout(n_styles, c=512, tap_channels=(128, 256, 512)):
    """HyperInverter FeatureEncoder heads: latlayer1/2 and styles.{j}.convs.{0,2,4} (1/2/3 convs)."""
    s = {
        "latlayer1.weight": (c, tap_channels[1], 1, 1),
        "latlayer1.bias": (c,),
        "latlayer2.weight": (c, tap_channels[0], 1, 1),
        "latlayer2.bias": (c,),
    }
    for j in range(n_styles):
        for k in range(1 if j < 3 else 2 if j < 7 else 3):
            s[f"styles.{j}.convs.{2 * k}.weight"] = (c, c, 3, 3)
            s[f"styles.{j}.convs.{2 * k}.bias"] = (c,)
    return s


def random_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1
    return out


def shapes_of(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


IR50 = (3, 4, 14, 3)
R34 = (3, 4, 6, 3)
TINY_UNITS, TINY_WIDTHS = (1, 1, 1, 1), (8, 16, 32, 64)

# ----------------------------------------------------------------------------------------------------------
# Official configs: layouts, taps, parameter counts (meta device: no memory, no init cost)


def test_official_key_layouts_match_the_specs():
    with torch.device("meta"):
        ffhq, church = ENCODER_PRESETS["ffhq"], ENCODER_PRESETS["church"]
        e1_ffhq, e2_ffhq = ffhq.build_w_encoder(), ffhq.build_feature_encoder()
        e1_church, e2_church = church.build_w_encoder(), church.build_feature_encoder()
    trunk_ffhq = ir_se_layout(IR50, OFFICIAL_WIDTHS)
    trunk_church = psp_resnet_trunk_layout(R34, OFFICIAL_WIDTHS)
    linear = {"linear.weight": (512, 512), "linear.bias": (512,)}
    assert shapes_of(e1_ffhq) == {**trunk_ffhq, **linear}
    assert shapes_of(e1_church) == {**trunk_church, **linear}
    assert shapes_of(e2_ffhq) == {**trunk_ffhq, **heads_layout(18)}
    assert shapes_of(e2_church) == {**trunk_church, **heads_layout(14)}
    # weight_formats.md §3.1: conv shortcuts only where stages 2-4 start; §4.3: downsample at 3, 7, 13.
    assert sorted({k.split(".")[1] for k in trunk_ffhq if "shortcut_layer.0" in k}) == ["21", "3", "7"]
    assert sorted({k.split(".")[1] for k in trunk_church if "downsample.0" in k}) == ["13", "3", "7"]
    assert e2_ffhq.c3_proj is None and e2_church.c3_proj is None


def test_official_tap_indices_and_channels():
    with torch.device("meta"):
        ir, rn = IRSEBackbone(depth=50), ResNetBackbone(depth=34)
        tiny = IRSEBackbone(units=TINY_UNITS, widths=TINY_WIDTHS)
    assert ir.tap_indices == (6, 20, 23) and rn.tap_indices == (6, 12, 15)
    assert ir.tap_channels == rn.tap_channels == (128, 256, 512)
    assert tiny.tap_indices == (1, 2, 3) and tiny.tap_channels == (16, 32, 64)
    assert len(IRSEBackbone(depth=100, widths=TINY_WIDTHS).body) == 49


def test_official_parameter_counts():
    with torch.device("meta"):
        counts = {
            (name, kind): n_params(getattr(ENCODER_PRESETS[name], f"build_{kind}")())
            for name in ("ffhq", "church")
            for kind in ("w_encoder", "feature_encoder")
        }
    # Exact counts of the official code measured in official_cpu_timing.md §1.
    assert counts["ffhq", "w_encoder"] == 31_212_736
    assert counts["ffhq", "feature_encoder"] == 134_979_264
    # hyperinverter_official.md §2/§3.1: ≈21.5M and ≈97.0M (derived).
    assert counts["church", "w_encoder"] == pytest.approx(21.5e6, rel=0.01)
    assert counts["church", "feature_encoder"] == pytest.approx(97.0e6, rel=0.01)


# ----------------------------------------------------------------------------------------------------------
# Tiny variants: shapes, splits, gradients


@pytest.mark.parametrize(("preset", "in_channels"), [("tiny", 1), ("tiny_resnet", 3)])
def test_tiny_shapes(preset, in_channels):
    torch.manual_seed(0)
    cfg = encoder_preset(preset, in_channels=in_channels)
    e1, e2 = cfg.build_w_encoder(), cfg.build_feature_encoder()
    x = torch.randn(2, in_channels, 64, 64)
    assert e1(x).shape == (2, 16)
    assert e2(x).shape == (2, 8, 16, 2, 2)
    c1, c2, c3 = e2.backbone.forward_taps(x)
    assert (c1.shape, c2.shape, c3.shape) == ((2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4))
    assert torch.equal(c3, e2.backbone(x))
    assert e2.backbone.forward_taps(x).final.shape == c3.shape
    assert [len(head.convs) // 2 for head in e2.styles] == [1, 1, 1, 2, 2, 2, 2, 3]


def test_w_encoder_takes_any_multiple_of_16_and_rejects_others():
    e1 = encoder_preset("tiny").build_w_encoder().eval()  # eval: a 16 px input ends in 1x1 maps
    for size in (16, 48, 96):
        assert e1(torch.randn(1, 3, size, size)).shape == (1, 16)
    with pytest.raises(AssertionError):
        e1(torch.randn(1, 3, 40, 40))
    with pytest.raises(AssertionError):
        e1(torch.randn(1, 1, 64, 64))
    e2 = encoder_preset("tiny").build_feature_encoder()
    with pytest.raises(AssertionError):
        e2(torch.randn(1, 3, 128, 128))  # E2's head depths are fixed by input_size


@pytest.mark.parametrize("n_styles", [1, 4, 10])
def test_small_style_counts_build_only_what_they_use(n_styles):
    e2 = encoder_preset("tiny", n_styles=n_styles).build_feature_encoder()
    out = e2(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, n_styles, 16, 2, 2)
    assert (e2.latlayer1 is not None) == (n_styles > 3)
    assert (e2.latlayer2 is not None) == (n_styles > 7)
    out.square().mean().backward()
    unused = [k for k, p in e2.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused}"


def test_custom_split_and_feature_size():
    e2 = FeatureEncoder(FeatureEncoderConfig(
        trunk=TrunkConfig(units=TINY_UNITS, widths=TINY_WIDTHS), input_size=64, n_styles=6, feature_channels=8, feature_size=4,
        coarse_end=1, middle_end=2,
    ))  # fmt: skip
    assert e2.levels == ("coarse", "middle", "fine", "fine", "fine", "fine")
    assert [len(h.convs) // 2 for h in e2.styles] == [0, 1, 2, 2, 2, 2]
    assert e2(torch.randn(1, 3, 64, 64)).shape == (1, 6, 8, 4, 4)
    with pytest.raises(ValueError, match="cannot be halved"):
        FeatureEncoder(FeatureEncoderConfig(trunk=TrunkConfig(units=TINY_UNITS, widths=TINY_WIDTHS), input_size=64, feature_size=8))


def test_c3_projection_only_when_widths_differ():
    assert encoder_preset("tiny").build_feature_encoder().c3_proj is not None  # c3 has 64 channels, heads 16
    e2 = encoder_preset("tiny", feature_channels=64).build_feature_encoder()
    assert e2.c3_proj is None and not any(k.startswith("c3_proj") for k in e2.state_dict())


@pytest.mark.parametrize("preset", ["tiny", "tiny_resnet"])
def test_gradients_reach_the_input_and_every_parameter(preset):
    torch.manual_seed(0)
    cfg = ENCODER_PRESETS[preset]
    for model in (cfg.build_w_encoder(), cfg.build_feature_encoder()):
        x = torch.randn(2, 3, 64, 64, requires_grad=True)
        model(x).square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert all(p.grad is not None for p in model.parameters())


def test_trunk_is_shared_not_duplicated():
    e2 = encoder_preset("tiny").build_feature_encoder()
    assert e2.backbone.body is e2.body and not any(k.startswith("backbone.") for k in e2.state_dict())
    twin = copy.deepcopy(e2).to(torch.float64)
    assert twin.backbone.body is twin.body and twin.body is not e2.body
    assert twin(torch.randn(1, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64


def test_train_eval_reaches_the_trunk():
    e1 = encoder_preset("tiny").build_w_encoder()
    e1.eval()
    assert not e1.backbone.training and not e1.body[0].res_layer[0].training
    e1.train()
    assert e1.backbone.training and e1.input_layer[1].training


# ----------------------------------------------------------------------------------------------------------
# Loading foreign weights


def test_arcface_ir_se50_file_loads_strictly():
    layout = ir_se_layout(IR50, OFFICIAL_WIDTHS, output_layer=True, tracked=False)  # 2018 file: no counters
    state = random_state(layout)
    torch.manual_seed(0)
    arcface = IRSEBackbone.arcface()
    assert shapes_of(arcface).keys() - layout.keys() == {k for k in shapes_of(arcface) if "num_batches" in k}
    assert load_ir_se_trunk(arcface, state) == []
    for key in ("input_layer.0.weight", "body.21.shortcut_layer.0.weight", "output_layer.3.weight"):
        assert torch.equal(arcface.state_dict()[key], state[key])
    emb = arcface.eval().embed(torch.randn(2, 3, 112, 112))
    assert emb.shape == (2, 512) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)

    # The encoders take the trunk only; output_layer.* is reported as skipped, nothing else may be left over.
    with torch.device("meta"):
        e1 = ENCODER_PRESETS["ffhq"].build_w_encoder()
    e1 = e1.to_empty(device="cpu")
    skipped = load_ir_se_trunk(e1, state)
    assert skipped == sorted(k for k in layout if k.startswith("output_layer."))
    assert torch.equal(e1.body[23].res_layer[5].fc2.weight, state["body.23.res_layer.5.fc2.weight"])


def test_a_trunk_file_with_nan_or_infinite_weights_is_refused(tmp_path):
    from hyperinverter.errors import NonFiniteWeightsError

    backbone = IRSEBackbone(units=TINY_UNITS, widths=TINY_WIDTHS)
    state = random_state(ir_se_layout(TINY_UNITS, TINY_WIDTHS, output_layer=False))
    state["body.2.res_layer.1.weight"][0] = float("nan")
    state["input_layer.0.weight"][0] = float("inf")
    torch.save(state, tmp_path / "ir_se.pth")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(NonFiniteWeightsError, match=r"ir_se.pth: holds NaN or infinite values in "
                                                    r"\['body.2.res_layer.1.weight', 'input_layer.0.weight'\]"):
        load_ir_se_trunk(backbone, tmp_path / "ir_se.pth")
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # nothing was loaded


def test_ir_se_loading_errors_name_the_keys(tmp_path):
    backbone = IRSEBackbone(units=TINY_UNITS, widths=TINY_WIDTHS)
    state = random_state(ir_se_layout(TINY_UNITS, TINY_WIDTHS, output_layer=False))
    path = tmp_path / "ir_se.pth"
    torch.save(state, path)
    load_ir_se_trunk(backbone, path)
    assert torch.equal(backbone.body[2].res_layer[1].weight, state["body.2.res_layer.1.weight"])

    bad = dict(state)
    del bad["body.1.res_layer.3.weight"]
    bad["body.9.res_layer.1.weight"] = torch.zeros(1)
    bad["input_layer.2.weight"] = torch.zeros(5)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_ir_se_trunk(backbone, bad)
    message = str(err.value)
    assert "missing keys: ['body.1.res_layer.3.weight']" in message
    assert "unexpected keys: ['body.9.res_layer.1.weight']" in message
    assert "input_layer.2.weight: file (5,) vs model (8,)" in message
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # nothing was loaded

    with pytest.raises(CheckpointError, match="unexpected keys: \\['extra.weight'\\]"):
        load_ir_se_trunk(backbone, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="IR-SE trunk"):
        load_ir_se_trunk(encoder_preset("tiny_resnet").build_w_encoder(), state)


def test_trunk_loading_errors_name_the_file(tmp_path):
    # A model_ir_se50.pth put where CurricularFace_Backbone.pth goes (`evaluate --identity`), or a file of another
    # trunk given to training, said "error: IR-SE state dict does not fit IRSEBackbone: ..." without naming it.
    ir_se = tmp_path / "model_ir_se50.pth"
    torch.save(random_state(ir_se_layout(TINY_UNITS, TINY_WIDTHS, output_layer=False)), ir_se)
    with pytest.raises(CheckpointError, match="does not fit IRSEBackbone") as err:
        load_ir_se_trunk(IRSEBackbone(units=TINY_UNITS, widths=(8, 16, 24, 40)), ir_se)
    assert err.value.source == str(ir_se)
    with pytest.raises(CheckpointError, match="cannot adapt") as err:
        load_ir_se_trunk(IRSEBackbone(units=TINY_UNITS, widths=(4, 16, 24, 32), in_channels=6), ir_se,
                         adapt_input_channels=True)
    assert err.value.source == str(ir_se)
    resnet = tmp_path / "resnet34.pth"
    state = random_state(torchvision_resnet_layout(TINY_UNITS, TINY_WIDTHS))
    torch.save({**state, "layer5.0.conv1.weight": torch.zeros(1)}, resnet)
    with pytest.raises(CheckpointError, match="no counterpart") as err:
        load_torchvision_resnet(ResNetBackbone(units=TINY_UNITS, widths=TINY_WIDTHS), resnet)
    assert err.value.source == str(resnet)
    del state["layer2.0.downsample.1.running_mean"]
    torch.save(state, resnet)
    with pytest.raises(CheckpointError, match="missing keys") as err:
        load_torchvision_resnet(ResNetBackbone(units=TINY_UNITS, widths=TINY_WIDTHS), resnet)
    assert err.value.source == str(resnet)


def test_stem_adaptation_for_other_input_channels():
    rgb = random_state(ir_se_layout(TINY_UNITS, TINY_WIDTHS))
    gray = IRSEBackbone(units=TINY_UNITS, widths=TINY_WIDTHS, in_channels=1)
    with pytest.raises(CheckpointError, match="input_layer.0.weight"):
        load_ir_se_trunk(gray, rgb)
    load_ir_se_trunk(gray, rgb, adapt_input_channels=True)
    assert torch.allclose(gray.input_layer[0].weight, rgb["input_layer.0.weight"].sum(1, keepdim=True))
    six = IRSEBackbone(units=TINY_UNITS, widths=TINY_WIDTHS, in_channels=6)
    torch.manual_seed(3)
    load_ir_se_trunk(six, rgb, adapt_input_channels=True)
    stem = six.input_layer[0].weight.detach()
    assert torch.equal(stem[:, :3], rgb["input_layer.0.weight"])
    torch.manual_seed(3)  # ReStyle's and HyperStyle's extra channels: torch.randn, N(0, 1)
    assert torch.equal(stem[:, 3:], torch.randn(stem.shape)[:, 3:])

    # E2Style's refinement stages load the trunk without its stem, which keeps its own initialisation.
    six = IRSEBackbone(units=TINY_UNITS, widths=TINY_WIDTHS, in_channels=6)
    own = {k: v.clone() for k, v in six.state_dict().items()}
    skipped = load_ir_se_trunk(six, rgb, skip_input_layer=True)
    assert skipped == sorted(k for k in rgb if k.startswith("input_layer."))
    loaded = six.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, own[key] if key.startswith("input_layer.") else rgb[key]), key


def test_torchvision_resnet34_maps_onto_the_body(tmp_path):
    layout = torchvision_resnet_layout(R34, OFFICIAL_WIDTHS)
    state = random_state(layout)
    with torch.device("meta"):
        e2 = ENCODER_PRESETS["church"].build_feature_encoder()
    key_map = torchvision_resnet_key_map(e2.backbone)
    assert key_map["layer1.0.conv1.weight"] == "body.0.conv1.weight"
    assert key_map["layer3.0.downsample.0.weight"] == "body.7.downsample.0.weight"
    assert key_map["layer4.2.bn2.running_var"] == "body.15.bn2.running_var"
    assert set(key_map) == {k for k in layout if not k.startswith("fc.")}

    e2 = e2.to_empty(device="cpu")
    with torch.no_grad():  # to_empty leaves garbage, possibly NaN (NaN != NaN): give PReLU a known value
        e2.relu.weight.fill_(0.25)
    relu_before = e2.relu.weight.detach().clone()
    assert load_torchvision_resnet(e2, state) == ["fc.bias", "fc.weight"]
    assert torch.equal(e2.body[7].downsample[0].weight, state["layer3.0.downsample.0.weight"])
    assert torch.equal(e2.conv1.weight, state["conv1.weight"])
    assert torch.equal(e2.relu.weight, relu_before)  # PReLU has no torchvision counterpart

    tiny = ResNetBackbone(units=TINY_UNITS, widths=TINY_WIDTHS)
    tiny_state = random_state(torchvision_resnet_layout(TINY_UNITS, TINY_WIDTHS))
    path = tmp_path / "resnet.pth"
    torch.save({**tiny_state, "layer5.0.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="no counterpart: \\['layer5.0.conv1.weight'\\]"):
        load_torchvision_resnet(tiny, path)
    del tiny_state["layer2.0.downsample.1.running_mean"]
    with pytest.raises(CheckpointError, match="missing keys: \\['body.1.downsample.1.running_mean'\\]"):
        load_torchvision_resnet(tiny, tiny_state)


@pytest.mark.parametrize("preset", ["tiny", "tiny_resnet"])
def test_psp_style_checkpoints_round_trip(tmp_path, preset):
    torch.manual_seed(0)
    cfg = ENCODER_PRESETS[preset]
    source_e1, source_e2 = cfg.build_w_encoder().eval(), cfg.build_feature_encoder().eval()
    checkpoint = {
        "state_dict": {
            **{f"encoder.{k}": v for k, v in source_e1.state_dict().items()},
            **{f"w_bar_encoder.{k}": v for k, v in source_e2.state_dict().items()},
            "decoder.style.1.weight": torch.zeros(2),
        },
        "opts": {"encoder_type": "BackboneEncoderUsingLastLayerIntoW", "output_size": 32, "learn_in_w": True},
        "latent_avg": torch.zeros(1, 16),
    }
    path = tmp_path / "psp.pt"
    torch.save(checkpoint, path)
    torch.manual_seed(1)
    e1, e2 = cfg.build_w_encoder().eval(), cfg.build_feature_encoder().eval()
    load_prefixed_state_dict(e1, path, prefix="encoder")
    load_prefixed_state_dict(e2, path, prefix="w_bar_encoder")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(e1(x), source_e1(x)) and torch.equal(e2(x), source_e2(x))

    state = read_state_dict(path)
    del state["encoder.linear.bias"]
    state["encoder.linear.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_prefixed_state_dict(e1, state, prefix="encoder")
    assert "missing keys: ['linear.bias']" in str(err.value) and "unexpected keys: ['linear.extra']" in str(
        err.value
    )
    with pytest.raises(CheckpointError, match="no keys with prefix 'hypernet.'"):
        load_prefixed_state_dict(e1, state, prefix="hypernet")


def test_full_size_psp_w_encoder_layout_loads(tmp_path):
    # A pSp/HyperInverter W-encoder file written from the spec (encoder.* = IR-SE50 trunk + linear).
    layout = {**ir_se_layout(IR50, OFFICIAL_WIDTHS), "linear.weight": (512, 512), "linear.bias": (512,)}
    state = {f"encoder.{k}": v for k, v in random_state(layout).items()}
    with torch.device("meta"):
        e1 = WEncoder(WEncoderConfig(trunk=TrunkConfig("ir_se", 50), w_dim=512))
    e1 = e1.to_empty(device="cpu")
    load_prefixed_state_dict(e1, {"state_dict": state, "opts": {}})
    assert torch.equal(e1.linear.weight, state["encoder.linear.weight"])
    with torch.no_grad():
        w = e1.eval()(torch.randn(1, 3, 256, 256))
    assert w.shape == (1, 512) and torch.isfinite(w).all()


def test_read_state_dict_rejects_non_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="non-tensor entries \\['opts'\\]"):
        read_state_dict({"a": torch.zeros(1), "opts": {"x": 1}})
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt: is not a readable torch checkpoint"):
        read_state_dict(path)


@pytest.mark.parametrize("stride", [1, 2])
def test_an_ir_unit_of_unchanged_width_adds_its_input_unchanged(stride):
    """The parameter-free shortcut (``MaxPool2d(1, stride)`` officially) is the input itself, subsampled at stride
    2; at stride 1 it runs as the identity, without a copy."""
    torch.manual_seed(0)
    unit = IRUnit(in_channels=16, out_channels=16, stride=stride).eval()
    assert not list(unit.shortcut_layer.parameters())
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), unit.res_layer(x) + x[:, :, ::stride, ::stride], rtol=0, atol=0)
        if stride == 1:
            assert unit.shortcut_layer(x) is x
