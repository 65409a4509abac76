"""The modulated conv's weight paths: the fused weight in every layout, the kept demodulation sums, and the kernel a
single image gets."""

import pytest
import torch

from conftest import build_tiny_generator
from hyperinverter.models.stylegan2.generator import SINGLE_BATCHED_UP_TO_RESOLUTION
from hyperinverter.models.stylegan2.layers import (
    demodulation_sums,
    forget_demodulation_sums,
    fused_weight,
    modulated_conv2d,
    transposed_conv_layout,
)


def official_fused_weight(weight, styles, *, demodulate, gain):
    """NVIDIA's ``modulated_conv2d`` (fused path), step by step."""
    w = (weight if weight.ndim == 5 else weight.unsqueeze(0)) * styles.reshape(styles.shape[0], 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    return w * gain


LAYOUTS = {
    "contiguous": lambda w: w.contiguous(),
    "channels_last": lambda w: w.contiguous(memory_format=torch.channels_last),
    "transposed_conv": transposed_conv_layout,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize(("demodulate", "gain"), [(True, 2**0.5), (False, 1.0), (False, 0.5)])
def test_fused_weight_equals_the_official_steps_with_their_gradients(layout, per_sample, demodulate, gain):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 16, 24, 3, 3, generator=gen) if per_sample else torch.randn(16, 24, 3, 3, generator=gen)
    weight = (torch.stack([LAYOUTS[layout](w) for w in weight]) if per_sample else LAYOUTS[layout](weight))
    styles = torch.randn(3, 24, generator=gen)
    before = weight.clone()
    with torch.no_grad():
        got = fused_weight(weight, styles, demodulate=demodulate, gain=gain, dtype=torch.float32)
    expected = official_fused_weight(weight, styles, demodulate=demodulate, gain=gain)
    assert got.shape == (3, 16, 24, 3, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(weight, before)  # scaled in place: its own new tensor, never the weight
    # with autograd: the same values and gradients (no in-place step on what the backward pass reads)
    w1, s1 = weight.clone().requires_grad_(), styles.clone().requires_grad_()
    w2, s2 = weight.clone().requires_grad_(), styles.clone().requires_grad_()
    probe = torch.randn(expected.shape, generator=gen)
    (fused_weight(w1, s1, demodulate=demodulate, gain=gain, dtype=torch.float32) * probe).sum().backward()
    (official_fused_weight(w2, s2, demodulate=demodulate, gain=gain) * probe).sum().backward()
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-6)


def test_demodulation_sums_are_kept_per_version_of_the_weight():
    weight = torch.randn(8, 6, 3, 3)
    sums = demodulation_sums(weight)
    torch.testing.assert_close(sums, weight.square().sum(dim=[2, 3]))
    assert demodulation_sums(weight) is sums  # kept
    with torch.no_grad():
        weight.mul_(2)  # changed in place: a new version
    torch.testing.assert_close(demodulation_sums(weight), 4 * sums)
    param = torch.nn.Parameter(torch.randn(8, 6, 3, 3), requires_grad=False)
    first = demodulation_sums(param)
    param.data = torch.randn(8, 6, 3, 3)  # new values under the same parameter (a module conversion does this)
    torch.testing.assert_close(demodulation_sums(param), param.square().sum(dim=[2, 3]))
    assert not torch.equal(demodulation_sums(param), first)
    # A write through .data (or a collective) is no new version: forget_demodulation_sums drops what was kept.
    kept = demodulation_sums(param)
    param.data.mul_(3)
    assert demodulation_sums(param) is kept
    forget_demodulation_sums()
    torch.testing.assert_close(demodulation_sums(param), 9 * kept)
    trained = torch.nn.Parameter(torch.randn(8, 6, 3, 3))  # tracked by autograd: computed, differentiable
    assert demodulation_sums(trained).grad_fn is not None
    assert demodulation_sums(trained) is not demodulation_sums(trained)


def test_a_single_image_takes_the_batched_kernel_at_low_resolution_without_autograd(tiny_generator):
    G = tiny_generator
    x = torch.randn(1, 8, 8, 8)
    choose = G.synthesis.choose_kernel
    with torch.no_grad():
        assert choose(None, SINGLE_BATCHED_UP_TO_RESOLUTION, x) == "batched"
        assert choose(None, 2 * SINGLE_BATCHED_UP_TO_RESOLUTION, x) == "loop"
        assert choose(torch.randn(1, 4, 8, 3, 3), 8, x) == "loop"  # per-sample weights
    assert choose(None, 8, x) == "loop"  # with autograd: fused, as before
    ws = torch.randn(1, G.num_ws, G.w_dim)
    with torch.no_grad():
        single = G.synthesis(ws)
    fused = G.synthesis(ws)
    assert fused.requires_grad
    assert (single - fused.detach()).abs().max() <= 1e-5


@pytest.mark.parametrize("kernel", ["batched", "grouped", "loop"])
@pytest.mark.parametrize("up", [1, 2])
def test_a_float64_model_computes_in_float64(kernel, up):
    # The full-precision regions cast with .float(), which lowered a float64 model to fp32: gradcheck failed for
    # every kernel, and outputs labelled float64 carried fp32's precision.
    from hyperinverter.ops.filters import setup_filter

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    f = setup_filter([1, 3, 3, 1]).double() if up > 1 else None

    def conv(x, weight, styles):
        return modulated_conv2d(x, weight, styles, up=up, resample_filter=f, kernel=kernel)

    assert conv(x, weight, styles).dtype == torch.float64
    assert torch.autograd.gradcheck(conv, (x, weight, styles))
    G = build_tiny_generator().double().eval()
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=gen, dtype=torch.float64))
        image = G.synthesis(ws, noise_mode="const")
        assert ws.dtype == image.dtype == torch.float64
        reference = build_tiny_generator().eval().synthesis(ws.float(), noise_mode="const")
    assert 0 < (image - reference).abs().max() < 1e-4  # (the same network, at another precision)


@pytest.mark.parametrize("kernel", ["batched", "grouped", "loop"])
@pytest.mark.parametrize("up", [1, 2])
def test_fp16_stays_in_range_with_large_styles_and_weights(kernel, up):
    # The batched kernel scales the activations by the raw styles before its fp16 conv: without NVIDIA's
    # pre-normalisation (exact under demodulation) those sums left fp16's range and the image was inf.
    from hyperinverter.ops.filters import setup_filter

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 8, 8, generator=gen) * 30
    weight = torch.randn(32, 64, 3, 3, generator=gen) * 3
    styles = torch.randn(2, 64, generator=gen) * 40
    f = setup_filter([1, 3, 3, 1]) if up > 1 else None
    reference = modulated_conv2d(x.double(), weight.double(), styles.double(), up=up, resample_filter=f.double()
                                 if f is not None else None, kernel=kernel)
    half = modulated_conv2d(x.half(), weight, styles, up=up, resample_filter=f, kernel=kernel)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert (half.double() - reference).abs().max() < 2e-3 * reference.abs().max()


def test_fp16_pre_normalisation_keeps_a_zero_channel_finite():
    # Its scales were taken in the weights' dtype: in fp16 the floor 1e-30 is 0, and an all-zero output channel
    # was 0/0, NaN through the rest of the image (it was 0 before the pre-normalisation).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 6, generator=gen).half()
    weight = torch.randn(4, 8, 3, 3, generator=gen)
    weight[1] = 0
    out = modulated_conv2d(x, weight.half(), (torch.rand(2, 8, generator=gen) + 0.5).half(), kernel="batched")
    assert torch.isfinite(out).all() and (out[:, 1] == 0).all()
