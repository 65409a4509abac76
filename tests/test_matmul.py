"""``ops.matmul.addmm``: torch.addmm's result whichever kernel runs it; oneDNN's convolution and inner product only
where they were measured to win (CPU fp32 products without autograd: large ones, and those whose ``b`` is stored
transposed); the hypernetworks' Δθ through it equals the plain product's."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hyperinverter.models.hypernetwork import WeightRegressor
from hyperinverter.models.hyperstyle import SharedWeightsHypernet
from hyperinverter.ops import matmul
from hyperinverter.ops.matmul import (
    addmm,
    addmm_by_convolution,
    convolves,
    inner_product_applies,
    kernel,
    transposed_storage,
)

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")


def operands(m, k, n, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g), torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)


@needs_onednn
@pytest.mark.parametrize("m,k,n", [(512, 128, 4608), (300, 512, 600), (256, 128, 577), (7, 5, 3), (1, 128, 9000)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_same_product_as_torch_whichever_kernel(m, k, n, with_bias):
    bias, a, b = operands(m, k, n)
    bias = bias if with_bias else None
    expected = a @ b if bias is None else torch.addmm(bias, a, b)
    with torch.no_grad():
        for got in (addmm(bias, a, b), addmm_by_convolution(bias, a, b), addmm(bias, a, transposed_storage(b))):
            assert got.shape == (m, n) and got.is_contiguous()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4 * k**0.5)


@needs_onednn
def test_non_contiguous_operands():
    bias, a, b = operands(512, 128, 640)
    a_t, b_t = a.t().contiguous().t(), b.t().contiguous().t()  # same values, column-major
    assert not a_t.is_contiguous() and not b_t.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(addmm(bias, a_t, b_t), torch.addmm(bias, a, b), rtol=1e-5, atol=1e-3)


@needs_onednn
def test_convolves_only_where_it_was_measured_to_win():
    big = operands(512, 128, 4608)
    with torch.no_grad():
        assert convolves(*big[1:], big[0])
        assert convolves(big[1], big[2])  # without a bias too
        assert not convolves(*operands(matmul.CONVOLVE_FROM_ROWS - 1, 512, 65536)[1:])  # too few rows: sgemm wins
        assert not convolves(*operands(512, 128, 200)[1:])  # too little work
        assert not convolves(big[1].double(), big[2].double())  # fp32 only
        assert not convolves(big[1].bfloat16(), big[2].bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not convolves(*big[1:])  # autocast decides the dtype: leave it torch's product
        enabled, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
        try:
            assert not convolves(*big[1:])  # oneDNN switched off: no convolution to win with
        finally:
            torch.backends.mkldnn.enabled = enabled
    a = big[1].clone().requires_grad_()
    assert not convolves(a, big[2])  # autograd records torch's product
    with torch.no_grad():
        assert convolves(a, big[2])


@needs_onednn
def test_inner_product_only_for_a_transposed_b_at_inference():
    bias, a, b = operands(4, 128, 9000)
    b_t = transposed_storage(b)
    assert torch.equal(b_t, b) and b_t.t().is_contiguous() and not b_t.is_contiguous()
    with torch.no_grad():
        assert kernel(a, b_t, bias) == kernel(a[:1], b_t) == "inner_product"
        assert kernel(a, b, bias) == "torch"  # the plain layout: sgemm
        assert kernel(a.bfloat16(), b_t.bfloat16()) == "torch"  # fp32 only
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert kernel(a, b_t) == "torch"
        big_a = torch.randn(512, 128)
        assert inner_product_applies(big_a, b_t) and kernel(big_a, b_t) == "convolution"  # the convolution first
        torch.testing.assert_close(addmm(bias, a, b_t), torch.addmm(bias, a, b), rtol=1e-5, atol=1e-4 * 128**0.5)
    assert kernel(a, b_t.clone().requires_grad_()) == "torch"  # autograd records torch's product


@needs_onednn
def test_gradients_flow_through_the_fallback():
    bias, a, b = operands(512, 128, 4608)
    a.requires_grad_()
    addmm(bias, a, b).square().mean().backward()
    expected = a.detach().clone().requires_grad_()
    torch.addmm(bias, expected, b).square().mean().backward()
    torch.testing.assert_close(a.grad, expected.grad)


@needs_onednn
@pytest.mark.parametrize(("m", "transposed"), [(512, False), (4, True)])  # the convolution, the inner product
def test_flop_count_is_the_product(m, transposed):
    bias, a, b = operands(m, 128, 4608)
    b = transposed_storage(b) if transposed else b
    assert kernel(a, b, bias) == ("inner_product" if transposed else "convolution")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        addmm(bias, a, b)
    assert counter.get_total_flops() == 2 * m * 128 * 4608


def test_shape_mismatches_are_refused():
    bias, a, b = operands(4, 3, 5)
    with pytest.raises(AssertionError, match="cannot multiply"):
        addmm(bias, a, b.t())
    with pytest.raises(AssertionError, match="bias"):
        addmm(bias[:4], a, b)


@needs_onednn
@pytest.mark.parametrize("batch", [1, 2])
def test_hypernetworks_give_the_plain_products_delta(monkeypatch, batch):
    """A 256-channel layer's regressor (HyperInverter) and HyperStyle's shared hypernetwork run their last product
    through oneDNN at inference; Δθ equals the one with torch's product."""
    torch.manual_seed(0)
    regressor = WeightRegressor(shape=(288, 256, 3, 3), feature_channels=8, feature_size=2, hidden_dim=128,
                                inner_channels=4).eval()
    hypernet = SharedWeightsHypernet(z_dim=64, in_channels=512, out_channels=64).eval()
    features = torch.randn(2, batch, 8, 2, 2)
    z = torch.randn(batch, 64)
    chosen, original = [], matmul.kernel
    monkeypatch.setattr(matmul, "kernel", lambda a, b, bias=None: chosen.append((a.shape[0], original(a, b, bias)))
                        or chosen[-1][1])
    with torch.no_grad():
        delta, shared_kernel = regressor(*features), hypernet(z)
        # The code times w1 (stored transposed), then codes per input channel times w2; HyperStyle's code times w2
        # (stored transposed), then its kernel product.
        assert chosen == [(batch, "inner_product"), (batch * 256, "convolution"), (batch, "inner_product"),
                          (batch * 512, "convolution")]
        monkeypatch.setattr(matmul, "kernel", lambda a, b, bias=None: "torch")  # torch's product everywhere
        torch.testing.assert_close(delta, regressor(*features), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared_kernel, hypernet(z), rtol=1e-5, atol=1e-5)
    assert len(chosen) == 4 and delta.shape == (batch, 288, 256, 3, 3) and shared_kernel.shape == (batch, 64, 512, 3, 3)


def test_regressor_checkpoints_keep_the_official_layout_and_load_into_the_fast_one():
    """w1 is held transposed (ops.matmul), but its key, shape and values are the official ``[D, I·D]``; a contiguous
    checkpoint loads into that layout."""
    source = WeightRegressor(shape=(16, 8, 3, 3), feature_channels=8, feature_size=2, hidden_dim=4, inner_channels=4)
    target = WeightRegressor(shape=(16, 8, 3, 3), feature_channels=8, feature_size=2, hidden_dim=4, inner_channels=4)
    assert source.w1.shape == (4, 8 * 4) and source.w1.t().is_contiguous()
    state = {k: v.detach().contiguous() for k, v in source.state_dict().items()}  # as a safetensors file holds it
    target.load_state_dict(state, strict=True)
    assert torch.equal(target.w1, source.w1) and target.w1.t().is_contiguous()
    assert target.to(torch.float64).w1.t().is_contiguous()


@needs_onednn
@pytest.mark.slow  # a cold torch.compile: 13 s on 2 cores, and inductor needs a C++ compiler
def test_a_compiled_regressor_gives_the_eager_delta():
    torch.manual_seed(0)
    regressor = WeightRegressor(shape=(288, 256, 3, 3), feature_channels=8, feature_size=2, hidden_dim=128,
                                inner_channels=4).eval()
    features = torch.randn(2, 1, 8, 2, 2)
    with torch.no_grad():
        # Eagerly, oneDNN's convolution and inner product; compiled, inductor's kernels for aten's product.
        assert convolves(torch.empty(256, 128), regressor.w2)
        assert kernel(torch.empty(1, 128), regressor.w1) == "inner_product"
        eager = regressor(*features)
        compiled = torch.compile(regressor)(*features)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
