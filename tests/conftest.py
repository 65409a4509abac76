import os
import sys
from pathlib import Path

import pytest
import torch

# Test helpers (recipe regeneration, NVIDIA pickle writer) live next to the tests.
sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(int(os.environ.get("HYPERINVERTER_TEST_THREADS", "2")))


@pytest.fixture
def tiny_generator():
    """A 32px generator with small widths and W dims, deterministic weights."""
    from hyperinverter.models.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16)
    # Non-zero noise strengths and biases, so that those paths are exercised.
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or (name.endswith(".bias") and "affine" not in name):
                p.normal_(0, 0.1)
    return G.eval()
