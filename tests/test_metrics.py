"""Metrics: identities, monotonicity, agreement with direct formulas."""

import torch

from hyperinverter.metrics import ms_ssim, mse, psnr, ssim


def test_identical_images():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(mse(x, x), torch.zeros(2))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-6)
    assert (psnr(x, x) > 100).all()


def test_worse_reconstructions_score_worse():
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 68, 68, generator=gen), 5, 1) * 2 - 1
    small = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    large = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    assert (mse(x, small) < mse(x, large)).all()
    assert (psnr(x, small) > psnr(x, large)).all()
    assert (ssim(x, small) > ssim(x, large)).all()
    assert (ms_ssim(x, small) > ms_ssim(x, large)).all()


def test_psnr_formula_and_per_image_independence():
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[1] += 0.2  # [0,1] error 0.1 -> MSE 0.01 -> 20 dB
    p = psnr(x, y)
    assert p[0] > 100 and abs(float(p[1]) - 20.0) < 1e-3
    assert torch.allclose(mse(x, y)[1], torch.tensor(0.04))
