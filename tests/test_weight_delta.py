"""Per-sample offsets on every synthesis parameter and noise buffer: zero is a no-op, batching equals separate runs,
both modes, gradients."""

import copy

import pytest
import torch

from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
from hyperinverter.models.weight_delta import WeightDelta


def random_delta(G, batch, names=None, scale=0.3, seed=1, mode="add"):
    gen = torch.Generator().manual_seed(seed)
    shapes = G.synthesis.offsettable_parameters()
    names = names or list(shapes)
    return WeightDelta({n: torch.randn(batch, *shapes[n], generator=gen) * scale for n in names}, mode=mode)


def reference_forward(G, ws, delta):
    """Plain reference: for each sample, a generator whose parameters are θ+Δθ (or θ·(1+Δθ)), run alone."""
    outs = []
    for b in range(ws.shape[0]):
        G_b = copy.deepcopy(G)
        sd = G_b.state_dict()
        for name, d in delta.items():
            key = f"synthesis.{name}"
            sd[key] = sd[key] + d[b] if delta.mode == "add" else sd[key] * (1 + d[b])
        G_b.load_state_dict(sd)
        with torch.no_grad():
            outs.append(G_b.synthesis(ws[b : b + 1]))
    return torch.cat(outs)


def test_offsettable_parameters_are_read_from_the_generator(tiny_generator):
    params = dict(tiny_generator.named_parameters())
    shapes = tiny_generator.synthesis.offsettable_parameters()
    layers = tiny_generator.synthesis.layers()
    assert len(layers) == 1 + 1 + 3 * 3  # b4: conv1, torgb; b8..b32: conv0, conv1, torgb
    assert [layer.name for layer in layers[:5]] == ["b4.conv1", "b4.torgb", "b8.conv0", "b8.conv1", "b8.torgb"]
    assert [layer.w_index for layer in layers[:5]] == [0, 1, 1, 2, 3]
    # every synthesis parameter (PTI tunes them all) and the noise buffers (the projector optimises them)
    noise = {f"{layer.name}.noise_const" for layer in layers if layer.kind == "conv"}
    assert set(shapes) == {k.removeprefix("synthesis.") for k in params if k.startswith("synthesis.")} | noise
    assert {"b4.const", "b8.conv0.bias", "b8.conv0.affine.bias", "b8.conv0.noise_strength", "b8.torgb.bias"} <= set(shapes)
    buffers = dict(tiny_generator.named_buffers())
    for name, shape in shapes.items():
        assert tuple({**params, **buffers}[f"synthesis.{name}"].shape) == shape
    for layer in layers:
        assert shapes[f"{layer.name}.weight"] == layer.weight_shape


@pytest.mark.parametrize("mode", ["add", "scale"])
def test_zero_delta_changes_nothing(tiny_generator, mode):
    ws = tiny_generator.mapping(torch.randn(3, 16))
    zero = WeightDelta({k: v * 0 for k, v in random_delta(tiny_generator, 3).items()}, mode=mode)
    with torch.no_grad():
        plain = tiny_generator.synthesis(ws)
        offset = tiny_generator.synthesis(ws, weight_delta=zero)
    assert (plain - offset).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", ["add", "scale"])
@pytest.mark.parametrize("kernel", ["auto", "batched", "grouped", "loop"])
def test_batched_deltas_equal_separate_reference_runs(tiny_generator, mode, kernel):
    G = tiny_generator
    G.synthesis.kernel = kernel
    ws = torch.randn(4, G.num_ws, G.w_dim)  # a W+ code: every layer different
    delta = random_delta(G, 4, mode=mode)
    with torch.no_grad():
        batched = G.synthesis(ws, weight_delta=delta)
    expected = reference_forward(G, ws, delta)
    assert (batched - expected).abs().max() <= 1e-5
    # and the offsets matter: different samples differ from the plain generator
    with torch.no_grad():
        assert (batched - G.synthesis(ws)).abs().max() > 1e-2


@pytest.mark.parametrize("kernel", ["batched", "grouped", "loop"])
def test_every_kernel_gives_the_same_image(tiny_generator, kernel):
    G = tiny_generator
    ws = torch.randn(3, G.num_ws, G.w_dim)
    with torch.no_grad():
        G.synthesis.kernel = "batched"
        reference = G.synthesis(ws)
        G.synthesis.kernel = kernel
        assert (G.synthesis(ws) - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("kernel", ["batched", "grouped", "loop"])
def test_up_sampling_weights_keep_their_layout_and_any_layout_gives_the_same_image(tiny_generator, kernel):
    """Up-sampling layers store θ so that the transposed conv's [I, O, k, k] view is channels-last, through module
    conversions; the layout is a matter of speed only: θ in the plain layout gives the same image, with offsets."""
    from hyperinverter.models.stylegan2.layers import SynthesisLayer

    G = copy.deepcopy(tiny_generator).to(memory_format=torch.channels_last)
    G.synthesis.kernel = kernel
    ups = [m for m in G.synthesis.modules() if isinstance(m, SynthesisLayer) and m.up > 1]
    assert ups and all(m.weight.transpose(0, 1).is_contiguous(memory_format=torch.channels_last) for m in ups)
    ws, delta = torch.randn(3, G.num_ws, G.w_dim), random_delta(G, 3)
    with torch.no_grad():
        images = G.synthesis(ws), G.synthesis(ws, weight_delta=delta)
        for m in ups:
            m.weight.data = m.weight.data.contiguous()
        plain = G.synthesis(ws), G.synthesis(ws, weight_delta=delta)
    for a, b in zip(images, plain):
        assert (a - b).abs().max() <= 1e-5


def test_subset_of_layers(tiny_generator):
    G = tiny_generator
    ws = G.mapping(torch.randn(2, 16))
    delta = random_delta(G, 2, names=["b16.conv1.weight", "b32.torgb.weight"])
    with torch.no_grad():
        out = G.synthesis(ws, weight_delta=delta)
    assert (out - reference_forward(G, ws, delta)).abs().max() <= 1e-5


def test_multiplicative_mode_is_theta_times_one_plus_delta(tiny_generator):
    """A constant Δ=c in scale mode is the same as multiplying the stored weight by (1+c)."""
    G = tiny_generator
    ws = G.mapping(torch.randn(1, 16))
    name = "b16.torgb.weight"  # toRGB has no demodulation, so the scale is visible in the output
    delta = WeightDelta({name: torch.full((1, *G.synthesis.offsettable_parameters()[name]), 0.5)}, mode="scale")
    G2 = copy.deepcopy(G)
    with torch.no_grad():
        G2.synthesis.b16.torgb.weight.mul_(1.5)
        assert (G.synthesis(ws, weight_delta=delta) - G2.synthesis(ws)).abs().max() <= 1e-5
        # demodulated convs are invariant to a global scale: θ·(1+c) changes nothing there
        conv = "b16.conv1.weight"
        d2 = WeightDelta({conv: torch.full((1, *G.synthesis.offsettable_parameters()[conv]), 2.0)}, mode="scale")
        assert (G.synthesis(ws, weight_delta=d2) - G.synthesis(ws)).abs().max() <= 1e-4


def test_gradients_reach_delta_and_codes(tiny_generator):
    G = tiny_generator
    ws = G.mapping(torch.randn(2, 16)).detach().requires_grad_(True)
    delta = random_delta(G, 2, names=["b8.conv0.weight", "b32.conv1.weight", "b4.torgb.weight", "b16.conv1.affine.weight",
                                      "b4.const", "b8.conv0.bias", "b16.torgb.bias", "b8.conv1.affine.bias",
                                      "b32.torgb.affine.bias", "b16.conv0.noise_strength", "b16.conv0.noise_const"])
    for t in delta.values():
        t.requires_grad_(True)
    G.synthesis(ws, weight_delta=delta).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    for name, t in delta.items():
        assert t.grad is not None and t.grad.abs().sum() > 0, name


def test_bad_deltas_are_rejected(tiny_generator):
    G = tiny_generator
    ws = G.mapping(torch.randn(2, 16))
    with pytest.raises(KeyError, match="b4.conv1.resample_filter"):
        G.synthesis(ws, weight_delta=WeightDelta({"b4.conv1.resample_filter": torch.zeros(2, 4, 4)}))
    with pytest.raises(ValueError, match="expected"):
        G.synthesis(ws, weight_delta=random_delta(G, 3, names=["b8.conv1.weight"]))
    with pytest.raises(ValueError, match="batch size"):
        WeightDelta({"a": torch.zeros(2, 1), "b": torch.zeros(3, 1)})
    with pytest.raises(ValueError, match="mode"):
        WeightDelta({"a": torch.zeros(2, 1)}, mode="mul")


def test_weight_delta_batch_ops(tiny_generator):
    a, b = random_delta(tiny_generator, 2, seed=1), random_delta(tiny_generator, 2, seed=2)
    both = WeightDelta.cat([a, b])
    assert both.batch_size == 4
    assert torch.equal(both.select(2)["b8.conv0.weight"], b["b8.conv0.weight"][:1])
    mid = WeightDelta.blend(a, b, 0.5)
    assert torch.allclose(mid["b4.conv1.weight"], (a["b4.conv1.weight"] + b["b4.conv1.weight"]) / 2)
    # A missing side (a W method's result) counts as no offset; the kinds of offset must agree.
    assert torch.allclose(WeightDelta.blend(a, None, 0.25)["b4.conv1.weight"], 0.75 * a["b4.conv1.weight"])
    assert WeightDelta.blend(None, None, 0.5) is None
    with pytest.raises(ValueError, match="cannot interpolate 'add' and 'scale'"):
        WeightDelta.blend(a, WeightDelta(dict(b), mode="scale"), 0.5)


@pytest.mark.parametrize("resolution,channels", [(8, 1), (16, 3), (64, 1)])
def test_any_resolution_and_channel_count(resolution, channels):
    G = Generator(GeneratorConfig(resolution=resolution, img_channels=channels, z_dim=8, w_dim=8, mapping_layers=1,
                  channel_base=64 * resolution, channel_max=8, conv_clamp=256))
    with torch.no_grad():
        img = G(torch.randn(2, 8), noise_mode="random")
    assert img.shape == (2, channels, resolution, resolution)
    assert G.num_ws == 2 * resolution.bit_length() - 4
    assert torch.isfinite(img).all()


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="power of two"):
        Generator(GeneratorConfig(resolution=48))
    with pytest.raises(ValueError, match="too small"):
        Generator(GeneratorConfig(resolution=64, channel_base=32, channel_max=8))


def test_cpu_split_schedule_matches_batched_at_high_resolution(monkeypatch):
    """A CPU batch continues sample by sample from large activations on; the image must not change."""
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=512, z_dim=8, w_dim=8, mapping_layers=1, channel_base=2048, channel_max=8)).eval()
    ws = torch.randn(3, G.num_ws, G.w_dim)
    delta = random_delta(G, 3, names=["b64.conv0.weight", "b512.torgb.weight"])
    for name, param in G.synthesis.named_parameters():
        if name.endswith("noise_strength"):  # (0 as built: the noise would not show)
            param.data.fill_(0.5)

    def passes():
        # Random noise, from a seeded generator and from the global RNG: the maps NVIDIA's layers draw for the
        # batch (sample by sample, they were drawn in another order: other maps for a seed).
        torch.manual_seed(2)
        return (G.synthesis(ws), G.synthesis(ws, weight_delta=delta),
                G.synthesis(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(1)),
                G.synthesis(ws, weight_delta=delta, noise_mode="random"))

    with torch.no_grad():
        G.synthesis.kernel = "batched"
        expected = passes()
        G.synthesis.kernel = "auto"
        assert G.synthesis._split_resolution(ws, None) == 512  # 4 channels x 512^2 >= 2^20 elements
        got = passes()
        from hyperinverter.models.stylegan2 import generator

        monkeypatch.setattr(generator, "BAND_FROM_BYTES", 0)  # each sample's high blocks in bands of 64 rows
        monkeypatch.setattr(generator, "BAND_BYTES", 4 * 512 * 4 * 64)
        in_bands = passes()
    for a, b, c in zip(expected, got, in_bands, strict=True):
        assert (a - b).abs().max() <= 1e-5 and (a - c).abs().max() <= 1e-5
