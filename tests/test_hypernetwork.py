"""Hypernetworks: targets and routing from the generator, the official raw view, batching, counts, loading."""

import pytest
import torch

from hyperinverter.errors import CheckpointError
from hyperinverter.io.checkpoints import load_state_dict_strict
from hyperinverter.models.hypernetwork import HyperNetwork, HyperNetworkConfig, WeightRegressor
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig


def features(n, c=16, s=4, batch=2, seed=0):
    return torch.randn(batch, n, c, s, s, generator=torch.Generator().manual_seed(seed))


def tiny(G, **kw):
    return HyperNetwork.from_generator(G, feature_channels=16, feature_size=4, hidden_dim=8, inner_channels=8, **kw)


def test_target_sets_and_routing(tiny_generator):
    H = tiny(tiny_generator)
    assert H.target_names[:5] == ["b4.conv1.weight", "b4.torgb.weight", "b8.conv0.weight", "b8.conv1.weight",
                                  "b8.torgb.weight"]
    assert [t.feature_index for t in H.targets] == [0, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7]
    assert H.num_features == tiny_generator.num_ws == 8
    assert len(tiny(tiny_generator, targets="conv_without_bias_without_torgb").targets) == 7
    every = tiny(tiny_generator, targets="all_without_bias")
    assert len(every.targets) == 22 and "b16.conv0.affine.weight" in every.target_names
    with pytest.raises(ValueError, match="unknown target set"):
        tiny(tiny_generator, targets="everything")


def test_deltas_fit_the_generator_and_render(tiny_generator):
    G = tiny_generator
    H = tiny(G, targets="all_without_bias")
    delta = H(features(8), features(8, seed=1))
    shapes = G.synthesis.offsettable_parameters()
    assert set(delta) == set(H.target_names)
    for name, t in delta.items():
        assert t.shape == (2, *shapes[name])
    ws = G.mapping(torch.randn(2, 16))
    img = G.synthesis(ws, weight_delta=scaled(delta, 1e-3))
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()


def scaled(delta, s):
    from hyperinverter.models.weight_delta import WeightDelta

    return WeightDelta({k: v * s for k, v in delta.items()}, mode=delta.mode)


def test_official_raw_view_formula():
    """Δθ = view((z @ w1 + b1).view(B, I, D) @ w2 + b2, [B, O, I, k, k]): checked against explicit loops."""
    torch.manual_seed(0)
    r = WeightRegressor(shape=(3, 2, 2, 2), feature_channels=4, feature_size=2, hidden_dim=5, inner_channels=4)
    with torch.no_grad():
        r.b1.normal_()
        r.b2.normal_()
    hw, hx = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    out = r(hw, hx)
    z = r.feature_extractor(r.fusion(torch.cat([hw, hx], 1))).flatten(1)[0]
    a = z @ r.w1 + r.b1  # [I*D]
    m = torch.stack([a[i * 5 : (i + 1) * 5] @ r.w2 + r.b2 for i in range(2)])  # [I, O*k*k]
    flat = m.flatten()  # raw order: I-major
    assert torch.allclose(out[0].flatten(), flat, atol=1e-6)
    assert not torch.allclose(out[0], m.view(2, 3, 2, 2).permute(1, 0, 2, 3), atol=1e-3)  # not a permute


def test_samples_are_independent_and_gradients_reach_every_parameter(tiny_generator):
    H = tiny(tiny_generator)
    a, b = features(8), features(8, seed=1)
    full = H(a, b)
    alone = H(a[1:], b[1:])
    for k in full:
        assert torch.allclose(full[k][1:], alone[k], atol=1e-5)
    sum(v.square().sum() for v in full.values()).backward()
    for name, p in H.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_feature_shapes_are_rejected(tiny_generator):
    H = tiny(tiny_generator)
    with pytest.raises(AssertionError, match="image_features"):
        H(features(8, c=15), features(8, c=15))


def test_official_parameter_counts():
    with torch.device("meta"):
        G = Generator(GeneratorConfig(resolution=1024))
        for hidden, expected in ((128, 184_665_563), (256, 642_351_195)):
            H = HyperNetwork.from_generator(G, hidden_dim=hidden)
            assert sum(p.numel() for p in H.parameters()) == expected
        assert sum(torch.Size(t.shape).numel() for t in H.targets) == 23_592_864
        G256 = Generator(GeneratorConfig(resolution=256))
        assert sum(torch.Size(t.shape).numel() for t in HyperNetwork.from_generator(G256).targets) == 23_454_336


def test_official_checkpoint_layout_loads_strictly(tiny_generator):
    """A released-checkpoint-style dict: hypernet.weight_regressors.<name>.{fusion.0, feature_extractor.*, w1..b2}."""
    H = tiny(tiny_generator)
    ckpt = {f"hypernet.{k}": v.clone() for k, v in H.state_dict().items()}
    ckpt["w_bar_encoder.body.0.weight"] = torch.zeros(1)
    sd = {k[len("hypernet."):]: v for k, v in ckpt.items() if k.startswith("hypernet.")}
    assert "weight_regressors.b8_conv0_weight.fusion.0.weight" in sd
    assert "weight_regressors.b8_conv0_weight.feature_extractor.6.weight" not in sd  # S=4: .0, .2, .4 only
    H2 = tiny(tiny_generator)
    load_state_dict_strict(H2, sd, source="official")
    sd.pop("weight_regressors.b16_torgb_weight.w2")
    with pytest.raises(CheckpointError, match="b16_torgb_weight.w2"):
        load_state_dict_strict(H2, sd, source="official")


def test_official_regressor_keys_at_full_size():
    with torch.device("meta"):
        r = WeightRegressor(shape=(512, 512, 3, 3))
    shapes = {k: tuple(v.shape) for k, v in r.state_dict().items()}
    assert shapes == {
        "fusion.0.weight": (512, 1024, 1, 1), "fusion.0.bias": (512,),
        "feature_extractor.0.weight": (64, 512, 3, 3), "feature_extractor.0.bias": (64,),
        "feature_extractor.2.weight": (64, 64, 4, 4), "feature_extractor.2.bias": (64,),
        "feature_extractor.4.weight": (64, 64, 4, 4), "feature_extractor.4.bias": (64,),
        "feature_extractor.6.weight": (128, 64, 4, 4), "feature_extractor.6.bias": (128,),
        "w1": (128, 512 * 128), "b1": (512 * 128,), "w2": (128, 512 * 9), "b2": (512 * 9,),
    }


def test_config_round_trip(tiny_generator):
    H = tiny(tiny_generator, targets="all_without_bias")
    again = HyperNetwork(HyperNetworkConfig.from_dict(H.config.to_dict()))
    assert again.target_names == H.target_names


def test_feature_encoder_chunks_give_the_whole_batch_result(tiny_generator, monkeypatch):
    """Inference runs the feature encoder a chunk of samples per call; the offsets must not depend on the chunks."""
    import hyperinverter.methods.hyperinverter as hi
    from conftest import build_tiny_pipeline

    assert hi.feature_encoder_chunk(torch.device("cpu"), 256, 9) == 4
    assert hi.feature_encoder_chunk(torch.device("cpu"), 256, 3) == 3
    assert hi.feature_encoder_chunk(torch.device("cpu"), 64, 9) == 9
    assert hi.feature_encoder_chunk(torch.device("cuda"), 256, 9) == 9
    model = build_tiny_pipeline(tiny_generator).methods["hyperinverter"].eval()
    x, w_image = torch.rand(5, 3, 64, 64) * 2 - 1, torch.rand(5, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        whole = model.predict_delta(x, w_image)
        monkeypatch.setattr(hi, "feature_encoder_chunk", lambda device, resolution, batch: 2)  # chunks of 2, 2, 1
        chunked = model.predict_delta(x, w_image)
    assert whole.keys() == chunked.keys()
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-5, atol=1e-6)
