import os
import socket
import sys
from pathlib import Path

import pytest
import torch

# Test helpers (recipe regeneration, NVIDIA pickle writer) live next to the tests.
sys.path.insert(0, str(Path(__file__).parent))

# One thread by default: the test models are tiny, so more threads only add synchronisation, and on a busy
# machine (a training run beside the tests) two threads each waiting for the other made the suite 4x slower.
torch.set_num_threads(int(os.environ.get("HYPERINVERTER_TEST_THREADS", "1")))


@pytest.fixture(scope="session", autouse=True)
def gradio_upload_folder(tmp_path_factory):
    """Each pytest worker's web pages keep their uploads in a folder of their own, as each `hyperinverter web` does
    (``apps.web.private_upload_folder``): in Gradio's one folder per machine, a page that another worker closed
    deleted the photo (the same file) that this worker's page had just been given."""
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio-uploads"))


def lock_holder(pid: int) -> str:
    """How a lock file names the process ``pid`` of this host (``hyperinverter.io.files.exclusive_lock``)."""
    return f"pid {pid} on {socket.gethostname()}"


def build_tiny_generator(seed: int = 0, *, channel_base: int = 256):
    """A 32px generator with small widths and W dims, deterministic weights."""
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=channel_base, channel_max=16))
    # Non-zero noise strengths and biases, so that those paths are exercised.
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or (name.endswith(".bias") and "affine" not in name):
                p.normal_(0, 0.1)
    return G.eval()


@pytest.fixture
def tiny_generator():
    return build_tiny_generator()


def build_tiny_pipeline(tiny_generator):
    """A tiny HyperInverter pipeline (random encoders, small non-zero offsets) on the tiny generator."""
    from hyperinverter.methods.hyperinverter import HyperInverter
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.models.encoders import encoder_preset
    from hyperinverter.models.hypernetwork import HyperNetwork
    from hyperinverter.pipeline import InversionPipeline

    torch.manual_seed(3)
    preset = encoder_preset("tiny")
    H = HyperNetwork.from_generator(tiny_generator, feature_channels=16, feature_size=2, hidden_dim=8,
                                    inner_channels=8)
    with torch.no_grad():  # small, non-zero offsets
        for name, p in H.named_parameters():
            if name.endswith(("w1", "w2")):
                p.mul_(0.1)
    model = HyperInverter(tiny_generator, w_encoder=preset.build_w_encoder(),
                          feature_encoder=preset.build_feature_encoder(), hypernetwork=H, encoder_resolution=64)
    phase1 = Phase1(tiny_generator, w_encoder=model.w_encoder, encoder_resolution=64)
    return InversionPipeline({"phase1": phase1, "hyperinverter": model}, default_method="hyperinverter", device="cpu")


@pytest.fixture
def pipeline(tiny_generator):
    return build_tiny_pipeline(tiny_generator)


@pytest.fixture
def tiny_gan_data(tiny_generator, tmp_path):
    """For trainer tests: the tiny generator saved as a GAN folder, and 8 of its images as uint8 training data."""
    from hyperinverter.io.gan import save_gan

    torch.manual_seed(4)
    save_gan(tmp_path / "gan", tiny_generator)
    with torch.no_grad():
        x = tiny_generator(torch.randn(8, 16, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return tmp_path / "gan", ((x + 1) * 127.5).round().to(torch.uint8)
