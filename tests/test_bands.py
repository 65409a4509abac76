"""CPU inference runs the high-resolution synthesis blocks band by band, chained: every band is exact, the banded
network gives the whole-map network's image for every noise mode, per-sample offsets, clamping and bf16, and a
chain never holds a whole map of its upstream blocks."""

import itertools

import pytest
import torch

import hyperinverter.models.stylegan2.generator as generator_module
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
from hyperinverter.models.stylegan2.layers import FoldedLayer, _conv
from hyperinverter.models.weight_delta import WeightDelta
from hyperinverter.ops.filters import setup_filter
from hyperinverter.precision import reduced_precision


@pytest.mark.parametrize(("up", "kernel_size", "height"), [(2, 3, 9), (2, 3, 4), (1, 3, 11), (1, 1, 7), (2, 3, 1)])
def test_every_band_of_a_layer_is_exact(up, kernel_size, height):
    """In float64, any rows [start, stop) equal the whole layer's, from the whole input or only the rows they read."""
    gen = torch.Generator().manual_seed(up * 10 + height)
    x = torch.randn(1, 3, height, height + 2, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 3, kernel_size, kernel_size, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    f = setup_filter((1, 3, 3, 1)).double() if up > 1 else None
    whole = _conv(x, weight, up=up, bias=bias, f=f)
    layer = FoldedLayer(weight, bias, up=up, resample_filter=f)
    assert whole.shape[2] == layer.output_height(height)
    for start, stop in itertools.combinations(range(whole.shape[2] + 1), 2):
        band = layer.rows(x, start, stop)
        torch.testing.assert_close(band, whole[:, :, start:stop], rtol=0, atol=1e-12)
        first, last = layer.input_rows(start, stop, height)
        assert 0 <= first < last <= height
        assert torch.equal(layer.rows(x[:, :, first:last], start, stop, first_row=first, input_height=height), band)


def test_a_band_refuses_input_that_lacks_its_rows():
    layer = FoldedLayer(torch.randn(2, 2, 3, 3), None)
    x = torch.randn(1, 2, 16, 16)
    with pytest.raises(AssertionError, match="need input rows"):
        layer.rows(x[:, :, 4:8], 4, 8, first_row=4, input_height=16)


@pytest.fixture
def banded_generator():
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=64, z_dim=16, w_dim=16, mapping_layers=1, channel_base=256,
                                  channel_max=16, conv_clamp=0.5)).eval()
    with torch.no_grad():  # noise and biases that matter, so that a misplaced row shows
        for name, p in G.synthesis.named_parameters():
            if name.endswith(("noise_strength", ".bias")):
                p.normal_()
    return G


def synthesize(G, ws, *, bands: bool, band_bytes: int = 1, **options):
    previous = generator_module.BAND_FROM_BYTES, generator_module.BAND_BYTES
    generator_module.BAND_FROM_BYTES = 0 if bands else float("inf")
    generator_module.BAND_BYTES = band_bytes
    try:
        return G.synthesis(ws, **options)
    finally:
        generator_module.BAND_FROM_BYTES, generator_module.BAND_BYTES = previous


# fp32_up_to: the blocks up to 128 px (all of this generator's) form one fp32 chain; up to 16 px, an fp32 chain
# (b8, b16) hands its whole features to a second chain (b32, b64) that runs under autocast.
@pytest.mark.parametrize(("noise_mode", "dtype", "with_delta", "fp32_up_to"),
                         [("const", torch.float32, False, 128), ("const", torch.float32, True, 128),
                          ("random", torch.float32, True, 128), ("none", torch.float32, False, 128),
                          ("const", torch.bfloat16, True, 128), ("random", torch.bfloat16, False, 128),
                          ("const", torch.bfloat16, True, 16), ("random", torch.bfloat16, True, 16)])
def test_banded_synthesis_gives_the_whole_map_image(banded_generator, monkeypatch, noise_mode, dtype, with_delta,
                                                    fp32_up_to):
    monkeypatch.setattr(generator_module, "FP32_UP_TO_RESOLUTION", fp32_up_to)
    G = banded_generator
    ws = torch.randn(1, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    shapes = G.synthesis.offsettable_parameters()
    names = [n for n in shapes if n.startswith(("b32.", "b64."))]  # every offsettable kind, noise buffers included
    delta = WeightDelta({n: 0.2 * torch.randn(1, *shapes[n], generator=torch.Generator().manual_seed(i))
                         for i, n in enumerate(names)}, mode="add") if with_delta else None
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2

    def run(**bands):
        noise = torch.Generator().manual_seed(7)
        with torch.no_grad(), reduced_precision("cpu", dtype):
            return synthesize(G, ws, weight_delta=delta, noise_mode=noise_mode, noise_generator=noise, **bands)

    whole = run(bands=False)
    for band_bytes in (1, 16 * 64 * 4 * 5, 2**30):  # 4-row bands (the floor), 5-row bands, one band
        banded = run(bands=True, band_bytes=band_bytes)
        assert banded.dtype == torch.float32
        assert (banded - whole).abs().max() <= tolerance, band_bytes


def test_bands_only_where_they_pay_and_never_under_autograd(banded_generator):
    G = banded_generator
    synthesis = G.synthesis
    x = torch.zeros(1, 16, 32, 32)
    with torch.no_grad():
        assert synthesis.band_rows(synthesis.b64, x) is None  # 4 ch x 64^2 x 4 B = 64 KiB, below the threshold
        generator_module.BAND_FROM_BYTES, previous = 0, generator_module.BAND_FROM_BYTES
        try:
            row_bytes = synthesis.b64.conv1.out_channels * 64 * 4
            assert synthesis.band_rows(synthesis.b64, x) == min(max(generator_module.BAND_BYTES // row_bytes, 4), 64)
            assert synthesis.band_rows(synthesis.b64, x.expand(2, -1, -1, -1)) is None  # one sample at a time
            assert synthesis.band_rows(synthesis.b4, None) is None
            with torch.enable_grad():
                assert synthesis.band_rows(synthesis.b64, x) is None  # training and projection need the graph
        finally:
            generator_module.BAND_FROM_BYTES = previous


def test_gradients_are_unchanged_where_bands_are_allowed(banded_generator):
    """With autograd on, bands are off, so projection and training get the whole-map graph."""
    G = banded_generator
    ws = torch.randn(1, G.num_ws, G.w_dim, requires_grad=True)
    synthesize(G, ws, bands=True).square().mean().backward()
    banded_grad = ws.grad.clone()
    ws.grad = None
    synthesize(G, ws, bands=False).square().mean().backward()
    assert torch.equal(banded_grad, ws.grad)


def test_a_chain_holds_only_bands_of_its_upstream_blocks(banded_generator, monkeypatch):
    """Chained, the blocks before the last one are computed a band at a time and kept only until the next band
    has read them: none of them ever holds its whole map, and each computes every row exactly once."""
    G = banded_generator
    computed, kept, upsampled = {}, {}, {}
    compute, rows = generator_module.BlockRows._compute, generator_module.KeptRows.rows
    compute_upsampled = generator_module.UpsampledRows._compute

    def recording_compute(self, start, stop):
        computed.setdefault(self.height, []).append((start, stop))
        return compute(self, start, stop)

    def recording_upsampled(self, start, stop):
        i0, i1 = self.layer.upsampled_inputs(start, stop, self.source.height)
        upsampled.setdefault(self.height, []).append((start, stop, i0, i1))
        return compute_upsampled(self, start, stop)

    def recording_rows(self, start, stop):
        band = rows(self, start, stop)
        key = (type(self).__name__, self.height)
        kept[key] = max(kept.get(key, 0), self._kept.shape[2])
        return band

    monkeypatch.setattr(generator_module.BlockRows, "_compute", recording_compute)
    monkeypatch.setattr(generator_module.KeptRows, "rows", recording_rows)
    monkeypatch.setattr(generator_module.UpsampledRows, "_compute", recording_upsampled)
    ws = torch.randn(1, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        synthesize(G, ws, bands=True, band_bytes=4 * 1024)  # each block's rows are 1 KiB here: 4-row bands
    assert sorted(computed) == [8, 16, 32, 64]
    for height, bands in computed.items():
        assert bands[0][0] == 0 and bands[-1][1] == height
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bands)), f"{height}-px rows computed twice or never"
    # The transposed convs' rows too (R+1 of them in an R-px block); and a band's transposed conv reads one input
    # row before its own, the one the previous band's last row shares (a 3x3 kernel at stride 2).
    assert sorted(upsampled) == [height + 1 for height in (8, 16, 32, 64)]
    for height, bands in upsampled.items():
        assert bands[0][0] == 0 and bands[-1][1] == height
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bands)), f"{height} upsampled rows computed twice"
        assert all(b[2] == a[3] - 1 for a, b in itertools.pairwise(bands)), f"{height}: input halo of one row"
    for height in (16, 32):  # upstream blocks: at most a band, the halo the next block reads twice, and a band
        assert kept["BlockRows", height] <= 3 * 4 and kept["BlockRows", height] < height, kept
    for height in (17, 33, 65):  # the transposed convs' rows: what a band's filter reads (a band, conv1's halo of
        assert kept["UpsampledRows", height] <= 4 + 2 + 3 < height, kept  # 2 rows and the filter's 3), no more


def test_block_rows_are_asked_for_top_to_bottom(banded_generator):
    G = banded_generator
    block = G.synthesis.b16
    x = torch.randn(1, block.conv0.in_channels, 8, 8).contiguous(memory_format=torch.channels_last)
    ws = torch.randn(1, 3, G.w_dim)
    with torch.no_grad():
        rows = block.rows_source(generator_module.WholeRows(x), ws, prefix="b16", weight_delta=None,
                                 noise_mode="const", noise_generator=None, band_rows=4)
        rows.rows(6, 10)
        with pytest.raises(AssertionError, match="top to bottom"):
            rows.rows(2, 4)
        with pytest.raises(AssertionError, match="never computed"):
            rows.finish(torch.zeros(1, 3, 8, 8), block.resample_filter)
