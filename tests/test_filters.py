"""FIR resampling (``upfirdn2d``) equals its definition: zero insertion, padding (negative: cropping), true
convolution, subsampling; in both memory formats."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from hyperinverter.ops.filters import upfirdn2d


def upfirdn2d_by_definition(x, f, *, up, down, padding, gain):
    n, c, h, w = x.shape
    x0, x1, y0, y1 = padding
    z = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    z = z[:, :, max(-y0, 0) : z.shape[2] - max(-y1, 0), max(-x0, 0) : z.shape[3] - max(-x1, 0)]
    fh, fw = f.shape
    out = torch.zeros(n, c, z.shape[2] - fh + 1, z.shape[3] - fw + 1, dtype=x.dtype)
    for i, j in itertools.product(range(fh), range(fw)):  # true convolution: the filter flipped
        out += gain * f[fh - 1 - i, fw - 1 - j] * z[:, :, i : i + out.shape[2], j : j + out.shape[3]]
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up", [1, 2, 4])
@pytest.mark.parametrize("down", [1, 2])
@pytest.mark.parametrize("padding", [(0, 0, 0, 0), (2, 1, 2, 1), (1, 2, -1, 3), (-1, -2, 0, 1), (3, 3, 3, 3)])
@pytest.mark.parametrize("filter_shape", [(4, 4), (3, 5), (1, 1)])
def test_upfirdn2d_is_its_definition(up, down, padding, filter_shape):
    gen = torch.Generator().manual_seed(up + 10 * down)
    x = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    f = torch.rand(*filter_shape, generator=gen, dtype=torch.float64)  # asymmetric: a missing flip shows
    expected = upfirdn2d_by_definition(x, f, up=up, down=down, padding=padding, gain=3.0)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        out = upfirdn2d(x.contiguous(memory_format=memory_format), f, up=up, down=down, padding=padding, gain=3.0)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_upfirdn2d_refuses_padding_that_leaves_no_output():
    with pytest.raises(AssertionError, match="leaves no output"):
        upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(4, 4), padding=(-2, -2, 0, 0))
