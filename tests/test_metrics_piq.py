"""Our PSNR, SSIM and MS-SSIM against ``piq`` (0.8.0), the reference the evaluation protocol names.

``piq``'s package ``__init__`` imports torchvision (for its FID/LPIPS models), which would pull a CUDA build of
torch, so ``make test`` installs it with ``--no-deps`` and these tests import only the modules they compare
with, under a bare package entry that does not run that ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

from hyperinverter.metrics import MS_SSIM_WEIGHTS, ms_ssim, psnr, ssim


@pytest.fixture(scope="module")
def piq():
    spec = importlib.util.find_spec("piq")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("piq is not installed (make test installs it)")
    saved = {k: v for k, v in sys.modules.items() if k == "piq" or k.startswith("piq.")}
    package = types.ModuleType("piq")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["piq"] = package
    try:
        yield types.SimpleNamespace(psnr=importlib.import_module("piq.psnr").psnr,
                                    ssim=importlib.import_module("piq.ssim").ssim,
                                    ms_ssim=importlib.import_module("piq.ms_ssim").multi_scale_ssim)
    finally:
        for k in [k for k in sys.modules if k == "piq" or k.startswith("piq.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def pair(size: int, channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth image and a noisy, shifted copy, in [-1,1] (values outside are clamped by both sides)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(2, channels, size // 8 + 1, size // 8 + 1, generator=g),
                                           size=(size, size + 3), mode="bilinear", align_corners=False)
    x = base * 2 - 1
    y = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x.double(), y.double()


def unit(t: torch.Tensor) -> torch.Tensor:
    return ((t + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("size", [32, 64, 256])
def test_psnr_and_ssim_match_piq(piq, size):
    x, y = pair(size)
    assert torch.allclose(psnr(x, y).double(), piq.psnr(unit(x), unit(y), reduction="none"), rtol=1e-5)
    expected = piq.ssim(unit(x), unit(y), downsample=False, reduction="none")  # full resolution
    assert torch.allclose(ssim(x, y).double(), expected, atol=1e-6)


@pytest.mark.parametrize("size,channels", [(256, 3), (161, 1), (200, 3)])
def test_ms_ssim_matches_piq_at_five_scales(piq, size, channels):
    x, y = pair(size, channels, seed=size)  # 161 is piq's smallest size; 161 and 203 wide pad odd sides
    expected = piq.ms_ssim(unit(x), unit(y), reduction="none")
    assert torch.allclose(ms_ssim(x, y).double(), expected, atol=1e-6)
    # Far apart too: piq's own five weights are used as they are (they sum to 1.0001); renormalising them moved a
    # score of 0.5 by 3e-5.
    far = (y * 0.3 + 0.7 * torch.rand(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)).clamp(-1, 1)
    expected = piq.ms_ssim(unit(x), unit(far), reduction="none")
    assert expected.max() < 0.9 and torch.allclose(ms_ssim(x, far).double(), expected, atol=2e-6)


@pytest.mark.parametrize("size,scales", [(32, 2), (64, 3), (100, 4)])
def test_ms_ssim_on_small_images_matches_piq_with_the_scales_that_fit(piq, size, scales):
    """piq refuses images under 161 px with five scales; given the first scales' weights it renormalises them,
    which is what we do for a small image."""
    x, y = pair(size, seed=size)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    expected = piq.ms_ssim(unit(x), unit(y), scale_weights=weights, reduction="none")
    assert torch.allclose(ms_ssim(x, y).double(), expected, atol=1e-6)
    with pytest.raises(ValueError):
        piq.ms_ssim(unit(x), unit(y))
