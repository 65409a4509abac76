"""Convolutions with weights packed once for oneDNN: the same results as nn.Conv2d everywhere they run, the same
state_dict, one copy of the weight; pipelines loaded from a bundle pack their trained parts' large weights."""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hyperinverter.ops import prepacked
from hyperinverter.ops.prepacked import (
    PrepackedConv2d,
    available,
    parameter_count,
    prepack_convolutions,
    unpack_convolutions,
)

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN")


def conv(in_channels=6, out_channels=5, kernel=3, **kw):
    torch.manual_seed(0)
    c = nn.Conv2d(in_channels, out_channels, kernel, **kw).eval()
    with torch.no_grad():
        if c.bias is not None:
            c.bias.normal_()
    return c


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kw", [{"padding": 1}, {"stride": 2, "padding": 1}, {"kernel": 1, "bias": False},
                                {"stride": 2, "padding": (0, 1), "bias": False}, {"dilation": 2, "padding": 2}])
@pytest.mark.parametrize("batch", [1, 3])
def test_same_result_as_conv2d_with_one_copy_of_the_weight(layout, kw, batch):
    plain = conv(**kw)
    packed = PrepackedConv2d(copy.deepcopy(plain))
    assert not packed.packed  # packed at the first call, for its input size
    x = torch.randn(batch, 6, 9, 11).contiguous(memory_format=layout)
    with torch.no_grad():
        expected, got = plain(x), packed(x)
    assert packed.packed and packed._plain is None and packed.packed_for == (9, 11)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_packs_again_for_another_size_but_not_for_another_batch():
    plain = conv(in_channels=16, out_channels=8, kernel=1)
    packed = PrepackedConv2d(copy.deepcopy(plain))
    packs = []
    original = packed._pack
    packed._pack = lambda shape: (packs.append(shape), original(shape))[1]
    with torch.no_grad():
        for shape in [(2, 16, 8, 8), (1, 16, 8, 8), (4, 16, 8, 8), (3, 16, 5, 7), (1, 16, 5, 7), (1, 16, 8, 8)]:
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-5)
            assert packed.packed_for == shape[-2:]
    assert packs == [(2, 16, 8, 8), (3, 16, 5, 7), (1, 16, 8, 8)]


def test_falls_back_where_the_packed_op_does_not_apply():
    plain = conv(padding=1)
    packed = PrepackedConv2d(copy.deepcopy(plain))
    x = torch.randn(2, 6, 8, 8)
    # autograd through the input (the packed op has no backward)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    plain(xa).square().sum().backward()
    packed(xb).square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    assert not packed.packed
    # autocast to bf16 casts as it does for nn.Conv2d, packed weight or not
    with torch.no_grad():
        packed(x)
    assert packed.packed
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = plain(x), packed(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)
    # another dtype: a plain weight from then on, and packed again in fp32
    packed.double()
    assert not packed.packed and packed.weight.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(packed(x.double()), plain.double()(x.double()))
        assert not packed.packed
        packed.float()(x)
    assert packed.packed


def test_state_dict_keys_and_values_are_conv2d_ones():
    plain = conv(padding=1)
    packed = PrepackedConv2d(copy.deepcopy(plain))
    with torch.no_grad():
        packed(torch.randn(1, 6, 7, 7))
    ours, theirs = packed.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        assert not ours[k].is_mkldnn
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)

    other = PrepackedConv2d(conv(padding=1))
    with torch.no_grad():
        other.bias.zero_()
    other.load_state_dict(plain.state_dict())
    x = torch.randn(1, 6, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(other(x), plain(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match=r"weight"):  # strict: missing keys are named
        other.load_state_dict({"bias": plain.bias.detach()})
    with pytest.raises(RuntimeError, match=r"size mismatch for weight"):
        other.load_state_dict({"weight": torch.zeros(5, 6, 1, 1), "bias": plain.bias.detach()})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"extra\""):
        other.load_state_dict({**plain.state_dict(), "extra": torch.zeros(1)})


def test_copies_pickles_and_unpacks_to_the_same_conv():
    plain = conv(padding=1)
    packed = PrepackedConv2d(copy.deepcopy(plain))
    x = torch.randn(1, 6, 7, 7)
    with torch.no_grad():
        expected = plain(x)
        packed(x)
        for twin in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
            assert not twin.packed
            torch.testing.assert_close(twin(x), expected, rtol=1e-5, atol=1e-5)
            assert twin.packed
        back = packed.to_conv2d()
        assert type(back) is nn.Conv2d
        torch.testing.assert_close(back(x), expected, rtol=0, atol=0)


def test_prepack_swaps_large_plain_convs_only_and_unpack_restores_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8),
                          nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2),  # grouped: left as it is
                          nn.Conv2d(8, 4, 1)).eval()
    before = parameter_count(model)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
    assert prepack_convolutions(model) == 0  # every weight is under PACK_FROM_BYTES
    assert prepack_convolutions(model, min_bytes=8 * 8 * 9 * 4) == 1  # the 8->8 3x3 only
    assert prepack_convolutions(model, min_bytes=0) == 2
    assert prepack_convolutions(model, min_bytes=0) == 0  # idempotent
    assert parameter_count(model) == before
    assert [type(m).__name__ for m in model.modules() if "Conv" in type(m).__name__] == [
        "PrepackedConv2d", "PrepackedConv2d", "Conv2d", "PrepackedConv2d"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), FlopCounterMode(display=False) as packed_count:
        model(x)
    assert unpack_convolutions(model) == 3
    with torch.no_grad(), FlopCounterMode(display=False) as plain_count:
        model(x)
    assert packed_count.get_total_flops() == plain_count.get_total_flops() > 0
    assert all(type(m) is not PrepackedConv2d for m in model.modules())
    # Un-packed weights are trainable again where they were (they came back frozen beside trainable biases).
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_a_weight_packed_mid_pass_gets_a_mapping_of_its_own(monkeypatch):
    """Packing allocates the weight inside ``memory.kept_apart``, whatever the heap policy: it outlives the pass and
    must not settle between the activations the next pass reuses."""
    entered = []
    real = prepacked.kept_apart

    def spy():
        entered.append(True)
        return real()
    monkeypatch.setattr(prepacked, "kept_apart", spy)
    packed = PrepackedConv2d(conv(padding=1))
    with torch.no_grad():
        packed(torch.randn(1, 6, 7, 7))
        packed(torch.randn(1, 6, 7, 7))
    assert entered == [True]


def test_bundle_loaded_pipeline_packs_large_weights_and_saves_plain_ones(pipeline, tmp_path, monkeypatch):
    from hyperinverter.pipeline import InversionPipeline

    def packed_parts(p):
        model = p.inverter("hyperinverter")
        return [m for m in model.modules() if isinstance(m, PrepackedConv2d)]

    pipeline.save_pretrained(tmp_path / "a")
    assert not packed_parts(InversionPipeline.from_pretrained(tmp_path / "a", device="cpu")), (
        "the tiny model's weights are all under PACK_FROM_BYTES")
    monkeypatch.setattr(prepacked, "PACK_FROM_BYTES", 0)

    loaded = InversionPipeline.from_pretrained(tmp_path / "a", device="cpu")
    assert not packed_parts(pipeline), "a pipeline over modules it was given leaves them as they are"
    model = loaded.inverter("hyperinverter")
    assert any(isinstance(m, PrepackedConv2d) for m in model.w_encoder.modules())
    assert any(isinstance(m, PrepackedConv2d) for m in model.feature_encoder.modules())
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    expected, got = pipeline.invert(x, batch_size=2), loaded.invert(x, batch_size=2)
    assert all(m.packed for m in packed_parts(loaded))
    torch.testing.assert_close(got.image, expected.image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.ws, expected.ws, rtol=1e-4, atol=1e-4)
    assert not packed_parts(InversionPipeline.from_pretrained(tmp_path / "a", device="cpu", dtype="bf16")), (
        "bf16 pipelines keep plain weights (autocast casts them)")

    loaded.save_pretrained(tmp_path / "b")  # the packed pipeline saves what it loaded
    again = InversionPipeline.from_pretrained(tmp_path / "b", device="cpu")
    for name, tensor in pipeline.inverter("hyperinverter").state_dict().items():
        torch.testing.assert_close(again.inverter("hyperinverter").state_dict()[name], tensor, rtol=0, atol=0)
