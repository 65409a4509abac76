"""Metrics: identities, monotonicity, agreement with direct formulas."""

import numpy as np
import pytest
import torch

from hyperinverter.metrics import ms_ssim, mse, psnr, ssim


def test_identical_images():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(mse(x, x), torch.zeros(2))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(psnr(x, x), torch.full((2,), 80.0))  # piq's epsilon 1e-8 caps it


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
    assert float(p[0]) == pytest.approx(80.0) and abs(float(p[1]) - 20.0) < 1e-3
    assert torch.allclose(mse(x, y)[1], torch.tensor(0.04))


def test_mse_compares_256_px_images_like_the_papers():
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    y = (x + 0.1 * torch.randn(1, 3, 512, 512)).clamp(-1, 1)  # fine noise mostly averages away at 256 px
    def resized(images):  # torchvision's Resize(256) on tensors
        return torch.nn.functional.interpolate(images, size=256, mode="bilinear", antialias=True)

    assert torch.allclose(mse(x, y), (resized(x) - resized(y)).square().mean(), rtol=1e-5)
    small = torch.rand(1, 3, 64, 64)
    assert torch.allclose(mse(small, -small), (2 * small).square().mean())  # untouched below 256 px


def test_outputs_beyond_the_range_score_as_their_saved_images():
    # A generator's pixels overshoot [-1, 1] (a third of fashion-32's at its black background). The papers score
    # the saved 8-bit files, where they are clipped; MSE and the network metrics (LPIPS, identity) counted the
    # overshoot: fashion-32's MSE was 1.5-2.5 % above that of its saved reconstructions.
    from hyperinverter.metrics import FeatureMetric, same_targets

    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 300, 300, generator=gen) * 2 - 1
    output = (target + 0.3 * torch.randn(target.shape, generator=gen)) * 1.3  # well beyond the range
    saved = output.clamp(-1, 1)
    torch.testing.assert_close(mse(output, target), mse(saved, target))
    torch.testing.assert_close(mse(target, output), mse(target, saved))
    metric = FeatureMetric(lambda images: images.flatten(1), lambda a, b: (a - b).square().mean(dim=1), chunk=2)
    torch.testing.assert_close(metric(output, target), (saved - target).square().flatten(1).mean(dim=1))
    with same_targets():  # the targets' kept features too
        metric(saved, output)
        torch.testing.assert_close(metric(target, output), (target - saved).square().flatten(1).mean(dim=1))


def test_network_metrics_run_on_bounded_chunks_whatever_the_batch(monkeypatch):
    # `make evaluate` scores batches of 256: the Inception distance ran them at once (512 images at 299 px, 20 GB).
    from hyperinverter import inception_metrics

    seen = []

    class Recording(torch.nn.Module):
        def features(self, images):
            seen.append(images.shape[0])
            return [images.flatten(1)]

        def compare(self, a, b):
            return (a[0] - b[0]).abs().mean(dim=1)

    monkeypatch.setattr(inception_metrics.InceptionDistance, "from_files", classmethod(lambda cls, *a: Recording()))
    metric = inception_metrics.inception_metric("cpu")[0]["inception_dist"]
    a, b = torch.rand(40, 1, 8, 8), torch.rand(40, 1, 8, 8)
    assert torch.equal(metric(a, b), (a - b).flatten(1).abs().mean(dim=1)) and seen == [32, 32, 16]


def test_scoring_several_outputs_embeds_the_targets_once():
    # evaluate and benchmark score every method's reconstruction of a batch against it: the network metrics
    # embedded the same targets once per method and per iteration (about half of evaluate's time).
    from hyperinverter.metrics import FeatureMetric, same_targets

    embedded = []

    def features(images):
        embedded.append(images.shape[0])
        return [images.flatten(1) * 2, images.mean(dim=(1, 2, 3))]

    def compare(a, b):
        return (a[0] - b[0]).square().mean(dim=1) + (a[1] - b[1]).abs()

    metric = FeatureMetric(features, compare, chunk=4)
    target = torch.rand(6, 3, 8, 8)
    outputs = [torch.rand(6, 3, 8, 8) for _ in range(3)]
    alone = [metric(o, target) for o in outputs]
    assert embedded == [8, 4] * 3  # each chunk: output and target in one pass
    embedded.clear()
    with same_targets():
        kept = [metric(o, target) for o in outputs]
        assert embedded == [8, 4, 4, 2, 4, 2]  # the targets once, then the outputs alone
        target.add_(0)  # changed in place: another target
        embedded.clear()
        metric(outputs[0], target)
        assert embedded == [8, 4]
    for a, b in zip(alone, kept):
        torch.testing.assert_close(a, b)
    embedded.clear()
    with same_targets(budget_bytes=4000):  # room for the first chunk's features (4 x 193 floats), not the next
        for o in outputs[:2]:
            metric(o, target)
    assert embedded == [8, 4, 4, 4]
    with pytest.raises(ValueError, match="one shape"):
        metric(outputs[0][:, :1], target)

def test_the_metrics_resize_as_the_papers_scripts():
    # The papers' L2 and LPIPS compare images resized by torchvision's Resize(256) (bilinear, antialiased, from the
    # saved PNGs); the metrics average-pooled them, which scored a reconstruction that lacks fine detail up to
    # 5.8 times the papers' MSE at 1024 px.
    from PIL import Image

    from hyperinverter.io.images import tensor_to_uint8
    from hyperinverter.metrics import resized_to_width

    gen = torch.Generator().manual_seed(0)
    coarse = torch.nn.functional.interpolate(torch.rand(2, 3, 64, 64, generator=gen), size=512, mode="bicubic")
    truth = (coarse + 0.3 * torch.rand(2, 3, 512, 512, generator=gen)).clamp(0, 1) * 2 - 1  # with fine detail
    blurred = torch.nn.functional.avg_pool2d(truth, 5, stride=1, padding=2, count_include_pad=False)

    def papers(images):  # PNG bytes, then PIL's bilinear Resize, as the official scripts read them
        return torch.stack([torch.from_numpy(np.array(Image.fromarray(a).resize((256, 256), Image.BILINEAR)))
                            .permute(2, 0, 1).float() / 127.5 - 1 for a in tensor_to_uint8(images)])

    torch.testing.assert_close(resized_to_width(truth, 256), papers(truth), rtol=0, atol=0.02)
    quantized = [torch.from_numpy(tensor_to_uint8(t)).permute(0, 3, 1, 2).float() / 127.5 - 1 for t in (blurred, truth)]
    ours, reference = mse(*quantized), (papers(blurred) - papers(truth)).square().flatten(1).mean(dim=1)
    torch.testing.assert_close(ours, reference, rtol=0.03, atol=1e-5)
    assert resized_to_width(truth[:, :, :384], 256).shape[-2:] == (192, 256)  # (a domain's 3:4 content rows)


def test_reports_say_when_ms_ssim_has_fewer_scales_than_published():
    from hyperinverter.metrics import ms_ssim_scales, protocol_note

    assert [ms_ssim_scales(n, n) for n in (11, 21, 41, 64, 81, 160, 161, 1024)] == [1, 2, 3, 3, 4, 4, 5, 5]
    assert ms_ssim_scales(32, 256) == ms_ssim_scales(32, 32) == 2
    assert "3 of its 5 scales" in protocol_note(64) and "not comparable" in protocol_note(32)
    assert "scales" not in protocol_note(256) and "scales" not in protocol_note()
