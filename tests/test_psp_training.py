"""pSp's and e4e's trainer: the loss falls, e4e's progressive schedule, delta regulariser and latent
discriminator (with R1) run, and a run resumes exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hyperinverter.models.encoders import TrunkConfig
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.training import TRAINERS
from hyperinverter.training.psp import LatentDiscriminator, PspTrainingConfig, train_psp


@pytest.fixture
def setup(tiny_gan_data, tmp_path):
    gan, data = tiny_gan_data

    def config(run, steps, lr=1e-3, **kw):
        return PspTrainingConfig(
            run_dir=str(tmp_path / run), data="unused", generator=str(gan), steps=steps, batch_size=4,
            lr=lr, optimizer="adam", trunk=TrunkConfig("ir_se", units=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
            encoder_resolution=64, hflip=False, log_every=1, val_every=1000, sample_every=1000, checkpoint_every=2,
            progress=False, tensorboard=False, device="cpu", **kw)

    return config, data, tmp_path


def test_psp_training_lowers_the_loss(setup):
    config, data, _ = setup
    result = train_psp(config("psp", 30, lr=3e-3, w_norm_weight=1e-3), images=data, val_images=data[:4])
    losses = [h["loss/l2"] for h in result.history if "loss/l2" in h]
    assert losses[-1] < 0.7 * losses[0], losses
    assert all("loss/w_norm" in h for h in result.history if "loss/l2" in h)
    pipe = InversionPipeline.from_pretrained(result.final_model, device="cpu")
    assert pipe.default_method == "psp"


def test_e4e_schedule_regulariser_and_latent_discriminator(setup):
    config, data, _ = setup
    cfg = config("e4e", 8, mode="e4e", progressive_start=2, progressive_step_every=2, w_adv_weight=0.1,
                 w_r1_interval=4, delta_reg_weight=1e-2)
    assert [cfg.stage(s, 7) for s in (0, 1, 2, 3, 4, 6, 13, 14)] == [0, 0, 1, 1, 2, 3, 6, None]
    result = train_psp(cfg, images=data, val_images=data[:4])
    by_step = {int(h["step"]) - 1: h for h in result.history if "loss/l2" in h}  # logged after the step
    assert [by_step[s]["stage"] for s in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert "loss/delta" not in by_step[0] and by_step[2]["loss/delta"] > 0  # no deltas at stage 0
    assert all("loss/W_D" in h and "loss/w_adv" in h for h in by_step.values())
    assert [s for s, h in by_step.items() if "loss/W_r1" in h] == [0, 4]
    assert InversionPipeline.from_pretrained(result.final_model, device="cpu").default_method == "e4e"


def test_e4e_resumes_exactly(setup):
    from safetensors.torch import load_file

    config, data, tmp_path = setup
    kw = dict(mode="e4e", progressive_start=1, progressive_step_every=2, w_adv_weight=0.1, w_r1_interval=2)
    train_psp(config("a", 6, **kw), images=data, val_images=data[:4])
    train_psp(config("b", 4, **kw), images=data, val_images=data[:4])
    train_psp(config("b", 6, **kw), images=data, val_images=data[:4])
    a = load_file(tmp_path / "a" / "checkpoints" / "checkpoint-00000006.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "checkpoint-00000006.safetensors")
    assert a.keys() == b.keys() and any("W_D" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_config_rejects_e4e_options_for_psp_and_the_trainer_is_offered():
    with pytest.raises(ValueError, match="e4e"):
        PspTrainingConfig(run_dir="r", data="d", generator="g", steps=1, progressive_start=10)
    assert "psp" in TRAINERS
    assert LatentDiscriminator(16)(torch.zeros(5, 16)).shape == (5,)


def test_the_latent_pool_fills_then_swaps_half_the_codes():
    from hyperinverter.training.psp import LatentPool

    pool = LatentPool(4, 2)
    first = torch.arange(8.0).reshape(4, 2)
    assert torch.equal(pool.query(first, torch.ones(4), torch.zeros(4, dtype=torch.long)), first)  # filling
    assert int(pool.filled) == 4 and torch.equal(pool.codes, first)
    new = torch.full((2, 2), -1.0)
    out = pool.query(new, torch.tensor([0.9, 0.1]), torch.tensor([2, 0]))
    assert torch.equal(out[0], first[2]) and torch.equal(out[1], new[1])  # swapped; kept
    assert torch.equal(pool.codes[2], new[0]) and torch.equal(pool.codes[0], first[0])


def test_the_frozen_generator_may_be_named_as_a_model(setup, pipeline):
    # As every command's --model: a generator file or folder, a bundle (its generator) or a catalogue name.
    config, _, tmp_path = setup
    bundle = pipeline.save_pretrained(tmp_path / "bundle")

    def frozen(generator):
        cfg = dataclasses.replace(config("r", 1), generator=generator)
        return cfg.load_generator(torch.device("cpu"), adversarial=False).generator

    reference = pipeline.generator.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in frozen(str(bundle)).state_dict().items())
    assert frozen("faces-64").config.resolution == 64
    with pytest.raises(FileNotFoundError, match="catalogue names: faces-64"):
        frozen(str(tmp_path / "missing"))


def test_training_forwards_draw_noise_maps_as_the_official_coaches(setup, tiny_generator):
    # pSp's, e4e's and E2Style's official coaches draw new noise maps at every training forward (HyperStyle's and
    # HyperInverter's render with the fixed ones); these trainers rendered with the fixed maps.
    from hyperinverter.methods import registered_methods
    from hyperinverter.training.e2style import E2StyleTrainingConfig
    from hyperinverter.training.encoders import EncoderTrainingConfig
    from hyperinverter.training.hyperstyle import HyperStyleTrainingConfig

    assert PspTrainingConfig.random_noise and E2StyleTrainingConfig.random_noise
    assert not EncoderTrainingConfig.random_noise and not HyperStyleTrainingConfig.random_noise
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for name in ("psp", "e4e", "e2style"):
        method = registered_methods()[name].create(tiny_generator, preset="tiny").eval()
        with torch.no_grad():
            fixed = method(x).image
            drawn = [method(x, noise=torch.Generator().manual_seed(s)).image for s in (1, 1, 2)]
        assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])  # (the step's generator)
        assert not torch.equal(fixed, drawn[0]) and torch.equal(fixed, method.invert(x).image)  # (inference: fixed)
    config, data, _ = setup
    result = train_psp(config("noise", 2), images=data, val_images=data[:4])  # (it runs with them)
    assert all(torch.isfinite(torch.tensor(h["loss/l2"])) for h in result.history if "loss/l2" in h)


def test_e4e_pools_the_real_codes_as_well_as_the_fakes(setup):
    # The official coach queries a pool for the real codes mapping(z) too (real_w_pool, beside fake_w_pool).
    from safetensors.torch import load_file

    config, data, tmp_path = setup
    train_psp(config("pools", 2, mode="e4e", w_adv_weight=0.1, w_pool_size=12), images=data, val_images=data[:4])
    state = load_file(tmp_path / "pools" / "checkpoints" / "checkpoint-00000002.safetensors")
    real, fake = "module.W_pool_real.codes", "module.W_pool.codes"
    assert sorted(k for k in state if k.endswith(".codes")) == [fake, real]
    for key in (real, fake):  # two steps of 4 codes went into each pool of 12
        assert int(state[key.replace(".codes", ".filled")]) == 8
        assert state[key][:8].abs().sum(dim=1).gt(0).all() and not state[key][8:].any()
    assert not torch.equal(state[real][:8], state[fake][:8])


def test_e4e_regularises_its_deltas_only_in_a_progressive_run(setup):
    # The official coach adds the delta loss only with progressive steps; every row active from the start had it.
    config, data, _ = setup
    plain = train_psp(config("plain", 1, mode="e4e"), images=data, val_images=data[:4])
    progressive = train_psp(config("progressive", 2, mode="e4e", progressive_start=0, progressive_step_every=1),
                            images=data, val_images=data[:4])
    assert not any("loss/delta" in h for h in plain.history)
    assert any(h.get("loss/delta", 0) > 0 for h in progressive.history)


def test_the_psp_family_s_loss_targets_are_reduced_as_its_photos_are(setup, tmp_path):
    # The official pSp/e4e/HyperStyle/E2Style targets are their data transforms' PIL Resize(256) of the photo, and
    # the outputs are face_pool'ed; HyperInverter's coach pools both. Both were pooled here.
    import torch.nn.functional as F

    from hyperinverter.losses.reconstruction import ReconstructionLoss
    from hyperinverter.training.inversion import InversionTrainingConfig, phase1_task
    from hyperinverter.training.psp import psp_task

    config, _, _ = setup
    cpu = torch.device("cpu")
    assert psp_task(config("p", 1, loss_resolution=16), cpu, None).criterion.antialias_target
    phase1 = InversionTrainingConfig(**{k: getattr(config("h", 1), k) for k in ("run_dir", "data", "generator",
                                                                               "steps", "device")})
    assert not phase1_task(phase1, cpu, None).criterion.antialias_target
    output, target = (torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (0, 1))
    _, parts = ReconstructionLoss(loss_resolution=16, antialias_target=True)(output, target)
    resized = F.interpolate(target, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    expected = F.mse_loss(F.adaptive_avg_pool2d(output, 16), resized)
    assert parts["loss/l2"] == pytest.approx(float(expected), rel=1e-5)
    _, pooled = ReconstructionLoss(loss_resolution=16)(output, target)
    assert pooled["loss/l2"] != pytest.approx(parts["loss/l2"], rel=1e-3)


def test_an_e4e_run_from_before_the_real_code_pool_resumes(setup, tmp_path):
    # A checkpoint written before the real codes had their own pool lacks that module: the run resumes (the pool
    # starts empty), where any other missing module is still a mismatch.
    import json

    import pytest
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hyperinverter.training.checkpointing import CheckpointMismatchError

    config, data, _ = setup
    kw = {"mode": "e4e", "w_adv_weight": 0.1, "w_pool_size": 12}
    train_psp(config("old", 2, **kw), images=data, val_images=data[:4])
    def write_without(step, module):
        path = tmp_path / "old" / "checkpoints" / f"checkpoint-{step:08d}.safetensors"
        with safe_open(path, "pt") as f:
            meta = json.loads(f.metadata()["training"])
            kept = {k: f.get_tensor(k) for k in list(f.keys()) if not k.startswith(f"module.{module}.")}
        meta["modules"] = [m for m in meta["modules"] if m != module]
        save_file(kept, path, metadata={"training": json.dumps(meta)})

    write_without(2, "W_pool_real")
    result = train_psp(config("old", 4, **kw), images=data, val_images=data[:4])
    assert [int(h["step"]) for h in result.history if "loss/l2" in h] == [3, 4]  # resumed, not started afresh
    write_without(4, "W_D")
    with pytest.raises(CheckpointMismatchError, match="holds modules"):
        train_psp(config("old", 6, **kw), images=data, val_images=data[:4])
