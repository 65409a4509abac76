"""Image helpers: centred squares and labelled rows of panels."""

import numpy as np
import pytest
import torch
from PIL import Image

from hyperinverter.io.images import center_square, labelled_row, make_grid, tensor_to_pil


def test_center_square_keeps_the_middle():
    image = Image.fromarray(np.arange(6 * 4, dtype=np.uint8).reshape(4, 6))  # 6 wide, 4 high
    square = center_square(image)
    assert square.size == (4, 4)
    assert np.array_equal(np.asarray(square), np.asarray(image)[:, 1:5])
    assert center_square(square) is square


def test_labelled_row_puts_the_panels_under_a_header():
    panels = torch.rand(3, 3, 40, 40) * 2 - 1
    out = labelled_row(panels, ["input", "Phase I (W)", "a label far too long for its column"])
    row = tensor_to_pil(make_grid(panels, nrow=3))[0]
    header = out.height - row.height
    assert out.width == row.width and header > 0
    assert np.array_equal(np.asarray(out)[header:], np.asarray(row))  # the panels, unchanged
    top = np.asarray(out)[:header]
    assert (top < 128).any(axis=2).any()  # some text was drawn
    third = top[:, 2 + 2 * 42 : 2 + 2 * 42 + 40]
    assert (third < 128).any() and (top[:, 2 + 2 * 42 + 40 :] == 255).all()  # the long label is cut to its column
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        labelled_row(panels, ["a", "b"])
