"""The CUDA paths: per-sample offsets through the grouped-conv kernel equal the CPU path, reduced precision on a
GPU stays close to fp32, and training steps run in bf16. Skipped without a CUDA device;
``benchmarks/gpu_check.py`` runs them on a lent GPU (no fixtures, so it can call them without pytest too)."""

import tempfile

import pytest
import torch

from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
from hyperinverter.models.weight_delta import WeightDelta

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def small_generator(resolution: int = 64) -> Generator:
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=resolution, z_dim=32, w_dim=32, channel_base=2048, channel_max=64))
    return G.eval().requires_grad_(False)


def per_sample_delta(G: Generator, batch: int, mode: str, scale: float = 0.3) -> WeightDelta:
    gen = torch.Generator().manual_seed(1)
    shapes = G.synthesis.offsettable_parameters()
    return WeightDelta({n: torch.randn(batch, *s, generator=gen) * scale for n, s in shapes.items()}, mode=mode)


def test_grouped_kernel_on_cuda_equals_the_cpu_path():
    G = small_generator()
    ws = G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(2)))
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 alone moves a conv by ~1e-2; the kernels are the question
    try:
        for mode in ("add", "scale"):
            delta = per_sample_delta(G, 4, mode)
            with torch.no_grad():
                G.synthesis.kernel = "loop"
                reference = G.synthesis(ws, weight_delta=delta)
                Gc = G.cuda()
                for kernel in ("auto", "grouped"):
                    Gc.synthesis.kernel = kernel
                    out = Gc.synthesis(ws.cuda(), weight_delta=delta.to("cuda")).cpu()
                    assert (out - reference).abs().max() < 1e-3, (mode, kernel)
                G.cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        G.synthesis.kernel = "auto"


def test_reduced_precision_on_cuda_stays_close_and_returns_fp32():
    from hyperinverter.pipeline import InversionPipeline

    pipe = InversionPipeline.from_pretrained("fashion-32", device="cuda")
    with torch.no_grad():
        images = pipe.generator(torch.randn(4, pipe.generator.z_dim, device="cuda")).clamp(-1, 1)
    reference = pipe.invert(images, method="hyperinverter")
    for dtype in ("bf16", "fp16"):
        result = pipe.invert(images, method="hyperinverter", dtype=dtype)
        assert result.image.dtype == torch.float32 and result.ws.dtype == torch.float32
        assert all(d.dtype == torch.float32 for d in result.weight_delta.values())
        change = (result.image - reference.image).abs().mean()
        assert 0 < change < 0.01, (dtype, float(change))


def test_results_kept_on_the_cpu_render_on_a_cuda_pipeline():
    # invert_files keeps results on the CPU; render, interpolate and blend did not move their Δθ to the GPU.
    from hyperinverter.pipeline import InversionPipeline

    pipe = InversionPipeline.from_pretrained("fashion-32", device="cuda")
    with torch.no_grad():
        images = pipe.generator(torch.randn(2, pipe.generator.z_dim, device="cuda")).clamp(-1, 1)
    a, b = (pipe.invert(images[i : i + 1]).to("cpu") for i in range(2))
    for image in (pipe.render(a.ws, a.weight_delta), pipe.blend(a, b, 0.5), pipe.interpolate(a, b, 3)):
        assert image.device.type == "cuda" and torch.isfinite(image).all()
    torch.testing.assert_close(pipe.blend(a, b, 0.0).cpu(), a.image, rtol=0, atol=1e-3)


def test_a_phase2_training_step_runs_in_bf16_on_cuda():
    from hyperinverter.methods.hyperinverter import HyperInverter

    G = small_generator(32).cuda()
    model = HyperInverter.create(G).cuda().train()
    trainable = [p for n, p in model.named_parameters() if not n.startswith(("generator.", "w_encoder."))]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    with torch.no_grad():
        images = G(torch.randn(4, G.z_dim, device="cuda")).clamp(-1, 1)
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (model(images).image.float() - images).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def run_without_pytest() -> dict[str, str]:
    """Each test's outcome, for machines without pytest."""
    outcomes = {}
    for name, test in sorted(globals().items()):
        if name.startswith("test_") and callable(test):
            try:
                with tempfile.TemporaryDirectory():
                    test()
                outcomes[name] = "passed"
            except Exception as e:  # noqa: BLE001  (a report)
                outcomes[name] = f"FAILED: {e!r}"[:300]
    return outcomes
