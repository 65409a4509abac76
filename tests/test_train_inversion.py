"""Phase I and Phase II trainers on tiny models: losses fall on a fixed batch, adversarial stage, resume, outputs."""

import pytest
import torch
from safetensors.torch import load_file

from hyperinverter.io.gan import save_gan
from hyperinverter.models.encoders import TrunkConfig
from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.training.inversion import InversionTrainingConfig, train_hypernetwork, train_w_encoder

ENCODER = dict(encoder_resolution=64, trunk=TrunkConfig("ir_se", units=(1, 1, 1, 1), widths=(8, 16, 32, 64)))


@pytest.fixture
def gan_dir(tmp_path, tiny_generator):
    torch.manual_seed(2)
    D = Discriminator(DiscriminatorConfig(resolution=32, channel_base=256, channel_max=16))
    save_gan(tmp_path / "gan", tiny_generator, D)
    return tmp_path / "gan"


@pytest.fixture
def images(tiny_generator):
    """Images the generator can make, so that inversion can succeed."""
    with torch.no_grad():
        x = tiny_generator(torch.randn(8, 16, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8)


def config(run_dir, gan_dir, **kw):
    base = dict(run_dir=str(run_dir), data="unused", generator=str(gan_dir), steps=30, batch_size=8, lr=2e-3,
                hflip=False, log_every=10, val_every=1000, sample_every=1000, checkpoint_every=1000,
                progress=False, tensorboard=False, device="cpu", feature_channels=16, feature_size=2, hidden_dim=8,
                regressor_width=8, **ENCODER)
    base.update(kw)
    return InversionTrainingConfig(**base)


def test_phase1_then_phase2_losses_fall(tmp_path, gan_dir, images):
    p1 = train_w_encoder(config(tmp_path / "p1", gan_dir, steps=40, synthetic_fraction=0.25, dfeat_weight=0.5),
                         images=images, val_images=images[:4])
    l2 = [h["loss/l2"] for h in p1.history if "loss/l2" in h]
    assert l2[-1] < 0.7 * l2[0], l2
    assert any("loss/latent" in h for h in p1.history) and any("loss/dfeat" in h for h in p1.history)
    assert p1.best_model is not None and (p1.final_model / "pipeline.json").is_file()

    p2 = train_hypernetwork(config(tmp_path / "p2", gan_dir, steps=40, w_encoder=str(p1.final_model),
                                   adv_weight=0.05, adv_start=30, r1_interval=2),
                            images=images, val_images=images[:4])
    l2b = [h["loss/l2"] for h in p2.history if "loss/l2" in h]
    assert l2b[-1] < 0.8 * l2b[0], l2b
    assert any("loss/adv" in h for h in p2.history) and any("loss/D" in h for h in p2.history)

    pipe = InversionPipeline.from_pretrained(p2.final_model, device="cpu")
    x = images.float() / 127.5 - 1
    result = pipe.invert(x)
    assert result.weight_delta is not None
    phase1_mse = (result.initial_image - x).square().mean()
    final_mse = (result.image - x).square().mean()
    assert final_mse < phase1_mse  # Phase II improves on Phase I on the images it was trained on


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_the_discriminator_judges_the_encoder_step_s_own_images(tmp_path, gan_dir, images, grad_accum):
    # As the official coach: D's fakes are the encoder step's ŷ, detached. They were rendered again, which ran E2 in
    # training mode twice more per step: its BatchNorm statistics moved four times a step instead of two.
    p1 = train_w_encoder(config(tmp_path / "p1", gan_dir, steps=1), images=images, val_images=images[:2])
    p2 = train_hypernetwork(config(tmp_path / "p2", gan_dir, steps=3, w_encoder=str(p1.final_model), adv_weight=0.1,
                                   adv_start=1, r1_interval=2, log_every=1, grad_accum=grad_accum),
                            images=images, val_images=images[:2])
    assert sum("loss/D" in h for h in p2.history) == 2
    e2 = InversionPipeline.from_pretrained(p2.final_model, device="cpu").inverter("hyperinverter").feature_encoder
    counts = {int(m.num_batches_tracked) for m in e2.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert counts == {3 * 2 * grad_accum}  # 3 steps x 2 images (the input, the W-image) x micro-batches


def test_the_discriminator_s_adam_is_the_official_coach_s_unless_asked_for_stylegan2_s(tmp_path, gan_dir):
    # The official coach: plain Adam(lr 1e-4, betas 0.9 / 0.999). It was StyleGAN2's lazily rescaled (0, 0.99).
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.pipeline import save_pipeline
    from hyperinverter.training.inversion import phase2_task

    save_pipeline({"phase1": Phase1.create(InversionPipeline.from_pretrained(gan_dir, device="cpu").generator)},
                  tmp_path / "p1")

    def adam(**kw):
        cfg = config(tmp_path / "run", gan_dir, w_encoder=str(tmp_path / "p1"), adv_weight=0.1, adv_start=0, **kw)
        group = phase2_task(cfg, torch.device("cpu"), None).opt_d.param_groups[0]
        return group["lr"], group["betas"]

    assert adam() == (1e-4, (0.9, 0.999))
    ratio = 16 / 17
    lr, betas = adam(betas_d=(0.0, 0.99), lazy_d=True)
    assert lr == pytest.approx(1e-4 * ratio) and betas == pytest.approx((0.0, 0.99**ratio))


def test_phase1_resume_is_exact(tmp_path, gan_dir, images):
    kw = dict(steps=6, checkpoint_every=2, synthetic_fraction=0.25, hflip=True)
    train_w_encoder(config(tmp_path / "a", gan_dir, **kw), images=images, val_images=images[:2])
    train_w_encoder(config(tmp_path / "b", gan_dir, **{**kw, "steps": 4}), images=images, val_images=images[:2])
    train_w_encoder(config(tmp_path / "b", gan_dir, **kw), images=images, val_images=images[:2])
    a = load_file(tmp_path / "a" / "checkpoints" / "checkpoint-00000006.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "checkpoint-00000006.safetensors")
    assert not (tmp_path / "a" / "checkpoints" / ".lock").exists()  # (a finished run left its lock file)
    for k in a:
        if k.startswith(("module.", "optim.")):
            assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_a_run_resumed_between_log_lines_logs_what_an_uninterrupted_one_does(tmp_path, gan_dir, images):
    # A run killed after a checkpoint that is not a log step lost the statistics since its last log line: the next
    # line averaged only the steps after the resume.
    import json
    import shutil

    kw = {"steps": 6, "checkpoint_every": 1, "keep_checkpoints": 0, "log_every": 4}
    train_w_encoder(config(tmp_path / "a", gan_dir, **kw), images=images, val_images=images[:2])
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)  # as a run killed after step 5's checkpoint left it
    shutil.copy(tmp_path / "a" / "checkpoints" / "checkpoint-00000005.safetensors", tmp_path / "b" / "checkpoints")
    train_w_encoder(config(tmp_path / "b", gan_dir, **kw), images=images, val_images=images[:2])

    def last_line(run):
        rows = [json.loads(line) for line in (tmp_path / run / "stats.jsonl").read_text().splitlines()]
        row = [r for r in rows if "loss/total" in r][-1]  # (not the validation's line)
        return {k: v for k, v in row.items() if not k.startswith(("speed/", "time"))}

    a, b = last_line("a"), last_line("b")
    assert a["step"] == b["step"] == 6 and a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(a[k])) for k in a), (a, b)


def test_phase2_needs_a_phase1_model(tmp_path, gan_dir, images):
    with pytest.raises(ValueError, match="Phase I"):
        train_hypernetwork(config(tmp_path / "x", gan_dir), images=images, val_images=images[:2])


def test_phase1_refuses_a_phase1_model_to_start_from(tmp_path, gan_dir, capsys):
    # The config is both phases': w_encoder in a Phase I run was ignored, and E1 trained from scratch.
    from hyperinverter.cli.main import main

    cfg = tmp_path / "w.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path}\ngenerator: {gan_dir}\nsteps: 1\n")
    assert main(["train", "w-encoder", "--config", str(cfg), f"w_encoder={gan_dir}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {cfg}: w_encoder: is Phase II's frozen Phase I model")
    assert not (tmp_path / "run").exists()


def test_phase2_and_hyperstyle_need_a_phase1_of_their_generator(tmp_path, gan_dir, tiny_generator):
    # A Phase I trained for another generator was taken as it came: its codes mean nothing to this generator,
    # and Phase II trained on them without a word.
    import copy

    from hyperinverter.errors import CheckpointError, InputError
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.models.encoders import WEncoder, WEncoderConfig
    from hyperinverter.pipeline import save_pipeline
    from hyperinverter.training.encoders import frozen_phase1

    e1 = WEncoder(WEncoderConfig(trunk=ENCODER["trunk"], w_dim=tiny_generator.w_dim))
    save_pipeline({"phase1": Phase1(tiny_generator, w_encoder=e1, encoder_resolution=64)}, tmp_path / "p1-fp16",
                  dtype=torch.float16)
    phase1 = frozen_phase1(str(tmp_path / "p1-fp16"), tiny_generator, torch.device("cpu"), generator_name="gan")
    assert not any(p.requires_grad for p in phase1.parameters())  # (an fp16 copy of the generator is the same)
    other = copy.deepcopy(tiny_generator)
    with torch.no_grad():
        next(other.synthesis.parameters()).add_(0.1)
    with pytest.raises(CheckpointError, match=r"p1-fp16: was trained with another generator than the run's "
                                              r"generator \(other-gan\) \(.* differs by 0.1"):
        frozen_phase1(str(tmp_path / "p1-fp16"), other, torch.device("cpu"), generator_name="other-gan")
    save_gan(tmp_path / "generator-only", tiny_generator)
    with pytest.raises(InputError, match="generator-only: holds no trained Phase I .*, only a generator; give"):
        frozen_phase1(str(tmp_path / "generator-only"), tiny_generator, torch.device("cpu"), generator_name="gan")


def test_phase1_trains_e1_through_its_image_in_bf16(tmp_path, gan_dir, images):
    """Image losses alone (no synthetic pairs, no latent loss) must reach E1, also under bf16 autocast."""
    p1 = train_w_encoder(config(tmp_path / "p1", gan_dir, steps=40, precision="bf16"), images=images,
                         val_images=images[:4])
    l2 = [h["loss/l2"] for h in p1.history if "loss/l2" in h]
    assert l2[-1] < 0.7 * l2[0], l2
    assert not any("loss/latent" in h for h in p1.history)


def test_loss_options(gan_dir):
    x, y = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    cfg = config("unused", gan_dir, loss_resolution=16)
    _, parts = cfg.reconstruction_loss(None, torch.device("cpu"))(x, y)
    pooled = torch.nn.functional.mse_loss(torch.nn.functional.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(y, 2))
    assert abs(parts["loss/l2"] - float(pooled)) < 1e-6
    with pytest.raises(ValueError, match="precision"):
        config("unused", gan_dir, precision="fp8")
    with pytest.raises(ValueError, match="id_samples"):
        config("unused", gan_dir, id_samples=0)


def test_torchrun_phase2_two_ranks_equal_one_process(tmp_path, gan_dir, images):
    """2 CPU ranks (gloo) end with the same parameters as 1 process whose 2 micro-batches are the ranks' shards."""
    import os
    import socket
    import subprocess
    import sys

    from hyperinverter.io.images import save_image

    p1 = train_w_encoder(config(tmp_path / "p1", gan_dir, steps=2), images=images, val_images=images[:2])
    for i, img in enumerate(images):
        save_image((img.float() / 127.5 - 1)[None], tmp_path / "data" / f"{i:03d}.png")
    overrides = [f"data={tmp_path / 'data'}", f"generator={gan_dir}", f"w_encoder={p1.final_model}", "steps=3",
                 "batch_size=8", "lr=0.002", "hflip=false", "val_fraction=0.0", "checkpoint_every=1",
                 "tensorboard=false", "progress=false", "device=cpu", "encoder_resolution=64",
                 "trunk.units=[1,1,1,1]", "trunk.widths=[8,16,32,64]", "feature_channels=16", "feature_size=2",
                 "hidden_dim=8", "regressor_width=8"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cli = ["-m", "hyperinverter.cli.main", "train", "hypernetwork"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={port}", *cli]
    subprocess.run([*torchrun, f"run_dir={tmp_path / 'ddp'}", *overrides], check=True, env=env, timeout=240,
                   capture_output=True)
    from hyperinverter.cli.main import main

    assert main(["train", "hypernetwork", f"run_dir={tmp_path / 'single'}", "grad_accum=2", *overrides]) == 0
    a = load_file(tmp_path / "ddp" / "checkpoints" / "checkpoint-00000003.safetensors")
    b = load_file(tmp_path / "single" / "checkpoints" / "checkpoint-00000003.safetensors")
    params = [k for k in a if k.startswith("module.trainable.") and not k.endswith(("running_mean", "running_var",
                                                                                     "num_batches_tracked"))]
    assert len(params) > 10
    for k in params:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    first = load_file(tmp_path / "ddp" / "checkpoints" / "checkpoint-00000001.safetensors")
    assert any(not torch.equal(first[k], a[k]) for k in params)  # training moved them


def test_clear_errors_for_a_missing_discriminator_and_a_used_run_dir(tmp_path, gan_dir, images, tiny_generator):
    save_gan(tmp_path / "g-only", tiny_generator)
    with pytest.raises(ValueError, match="no discriminator"):
        train_w_encoder(config(tmp_path / "a", tmp_path / "g-only", dfeat_weight=0.5), images=images)
    train_w_encoder(config(tmp_path / "b", gan_dir, steps=2, checkpoint_every=1), images=images, val_images=images[:2])
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_w_encoder(config(tmp_path / "b", gan_dir, steps=2, resume=False), images=images)


def test_encoders_start_from_a_pretrained_trunk(tmp_path, gan_dir, images):
    """backbone_init loads an IR-SE file (ArcFace layout) into the trained encoder's trunk, strictly."""
    from hyperinverter.models.encoders import WEncoder, WEncoderConfig

    torch.manual_seed(123)
    donor = WEncoder(WEncoderConfig(trunk=ENCODER["trunk"], in_channels=3, w_dim=16))
    trunk = {k: v for k, v in donor.state_dict().items() if k.startswith(("input_layer.", "body."))}
    torch.save(trunk, tmp_path / "trunk.pth")
    result = train_w_encoder(config(tmp_path / "p1", gan_dir, steps=1, lr=0.0, backbone_init=str(tmp_path / "trunk.pth")),
                             images=images, val_images=images[:2])
    trained = InversionPipeline.from_pretrained(result.final_model, device="cpu").inverter().w_encoder.state_dict()
    for k, v in trunk.items():
        if "running" not in k and "num_batches" not in k:  # BN statistics move even at lr 0
            assert torch.equal(trained[k], v), k
    torch.save({**trunk, "extra.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="extra.weight"):
        train_w_encoder(config(tmp_path / "p2", gan_dir, steps=1, backbone_init=str(tmp_path / "bad.pth")),
                        images=images, val_images=images[:2])


def test_a_resume_that_cannot_go_on_leaves_the_run_as_it_was(tmp_path, gan_dir, images):
    """What a training fuzzing pass found: (1) a run whose checkpoints were gone or unreadable started again from step
    0 and replaced its final model; (2) a resume refused for another configuration had already rewritten the run's
    config.yaml; (3) an encoder run resumed against another generator behind the same path without a word; (4) a
    checkpoint whose progress record was damaged was an internal error, not a fall-back to the one before."""
    import json
    import shutil

    from conftest import build_tiny_generator
    from hyperinverter.errors import OutputError
    from hyperinverter.io.checkpoints import read_safetensors, save_safetensors
    from hyperinverter.training.checkpointing import CheckpointMismatchError, list_checkpoints

    run = tmp_path / "run"
    train_w_encoder(config(run, gan_dir, steps=4, checkpoint_every=2), images=images, val_images=images[:2])
    final = (run / "final" / "w_encoder" / "model.safetensors").read_bytes()
    settings = (run / "config.yaml").read_text()

    # (2) refused for another configuration: config.yaml unchanged
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        train_w_encoder(config(run, gan_dir, steps=6, trunk=TrunkConfig("ir_se", units=(1, 1, 1, 1),
                                                                        widths=(8, 16, 32, 32))), images=images)
    assert (run / "config.yaml").read_text() == settings

    # (3) another generator behind the same path
    shutil.copytree(gan_dir, tmp_path / "gan-before")
    other = tmp_path / "gan"
    shutil.rmtree(other)
    save_gan(other, build_tiny_generator(seed=5), Discriminator(DiscriminatorConfig(resolution=32, channel_base=256,
                                                                                  channel_max=16)))
    with pytest.raises(CheckpointMismatchError, match="were trained against another generator"):
        train_w_encoder(config(run, other, steps=6), images=images)
    shutil.rmtree(other)
    shutil.copytree(tmp_path / "gan-before", other)

    # (4) a damaged progress record in the newest checkpoint: the run resumes from the one before
    newest = list_checkpoints(run / "checkpoints")[-1]
    tensors, metadata = read_safetensors(newest)
    meta = json.loads(metadata["training"])
    meta["progress"]["position"] = "twelve"
    save_safetensors(newest, tensors, metadata={**metadata, "training": json.dumps(meta)}, replace_any=True)
    resumed = train_w_encoder(config(run, gan_dir, steps=6, checkpoint_every=2), images=images,
                              val_images=images[:2])
    assert resumed.steps == 6

    # (1) no checkpoint left to resume from: refused, the final model kept
    final = (run / "final" / "w_encoder" / "model.safetensors").read_bytes()
    for path in list_checkpoints(run / "checkpoints"):
        path.write_bytes(path.read_bytes()[:100])  # unreadable
    with pytest.raises(OutputError, match="holds a run .*none of which reads back.* no checkpoint to resume it"):
        train_w_encoder(config(run, gan_dir, steps=8), images=images)
    for path in list_checkpoints(run / "checkpoints"):
        path.unlink()
    with pytest.raises(OutputError, match=r"holds a run \(final/, best/, stats.jsonl\).*resume=false"):
        train_w_encoder(config(run, gan_dir, steps=8), images=images)
    assert (run / "final" / "w_encoder" / "model.safetensors").read_bytes() == final


def test_the_losses_run_in_fp32_under_reduced_precision():
    # .float() on the inputs left autocast on: the loss networks' convolutions ran in bf16 (LPIPS 20 % off).
    from hyperinverter.losses.reconstruction import ReconstructionLoss
    from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig

    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(resolution=32, channel_base=256, channel_max=32)).eval()
    loss = ReconstructionLoss(dfeat_weight=1.0, discriminator=D)
    output, target = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    reference, _ = loss(output, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced, _ = loss(output.bfloat16(), target.bfloat16())
    assert reduced.dtype == torch.float32
    torch.testing.assert_close(reduced, loss(output.bfloat16().float(), target.bfloat16().float())[0],
                               rtol=1e-6, atol=1e-7)
    assert abs(float(reduced) - float(reference)) < 0.01 * float(reference)


def test_random_noise_is_refused_where_the_method_renders_with_fixed_noise_only(tmp_path, gan_dir, images):
    with pytest.raises(ValueError, match="random_noise: phase1 renders with the generator's fixed noise maps only"):
        train_w_encoder(config(tmp_path / "p1", gan_dir, steps=1, random_noise=True), images=images)


def test_phase2_losses_are_the_official_coach_s(tmp_path, gan_dir, images):
    # An independent reading of the official training step (models/hyper_inverter.py, training/coach.py): E1 frozen
    # in eval mode, w = E1(x_r) + w_avg on every row, E2 in training mode on x_r then on the resized W-image, each
    # hypernetwork on cat(E2(x_w), E2(x)); L2 on AdaptiveAvgPool'd images + λ_adv softplus(-D(ŷ)) at full size;
    # D: ½[softplus(D(ŷ.detach())) + softplus(-D(y))]; R1: γ/2 mean‖∇D(y)‖² (× the interval, by the loop).
    import copy

    import torch.nn.functional as F

    from hyperinverter.training.inversion import phase2_task

    p1 = train_w_encoder(config(tmp_path / "p1", gan_dir, steps=1), images=images, val_images=images[:2])
    cfg = config(tmp_path / "p2", gan_dir, w_encoder=str(p1.final_model), adv_weight=0.005, adv_start=0,
                 loss_resolution=16, r1_gamma=10.0)
    task = phase2_task(cfg, torch.device("cpu"), None)
    task.trainable.train()
    method, G = task.method, task.method.generator
    x = images.float() / 127.5 - 1
    gen = torch.Generator().manual_seed(0)
    e2, hyper = copy.deepcopy(method.feature_encoder).train(), method.hypernetwork
    assert not method.w_encoder.training
    with torch.no_grad():
        phase = {p.name: p for p in task.phases()}
        loss, stats = task.loss(phase["encoder"], {"x": x}, step=0, gen=gen)

        def resized(t):
            return F.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False)

        w = (method.w_encoder(resized(x)) + G.w_avg)[:, None].expand(-1, G.num_ws, -1)
        w_image = G.synthesis(w, noise_mode="const")
        input_features = e2(resized(x))
        delta = hyper(e2(resized(w_image)), input_features)
        y_hat = G.synthesis(w, weight_delta=delta, noise_mode="const")
        l2 = F.mse_loss(F.adaptive_avg_pool2d(y_hat, 16), F.adaptive_avg_pool2d(x, 16))
        adv = F.softplus(-task.D(y_hat)).mean()
        torch.testing.assert_close(stats["loss/l2"], float(l2), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(float(loss), float(l2 + 0.005 * adv), rtol=1e-5, atol=1e-7)
        d_loss, _ = task.loss(phase["D"], {"x": x}, step=0, gen=gen)
        expected = 0.5 * (F.softplus(task.D(y_hat)).mean() + F.softplus(-task.D(x)).mean())
        torch.testing.assert_close(float(d_loss), float(expected), rtol=1e-5, atol=1e-7)
    r1, _ = task.loss(phase["D_r1"], {"x": x}, step=0, gen=gen)
    real = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(task.D(real).sum(), real)
    torch.testing.assert_close(float(r1.detach()), float(5.0 * grad.square().flatten(1).sum(1).mean()), rtol=1e-5,
                               atol=0)
    # E2's BatchNorm statistics moved as the reference's did: one batch of inputs, then one of W-images
    for ours, reference in zip(method.feature_encoder.modules(), e2.modules()):
        if isinstance(ours, torch.nn.BatchNorm2d):
            torch.testing.assert_close(ours.running_mean, reference.running_mean)
            assert int(ours.num_batches_tracked) == 2


def test_a_trained_model_keeps_its_generator_s_framing_and_discriminator(tmp_path, gan_dir, images):
    """A run's model keeps what its generator came with: the face framing (``align_scale``, which ``invert --align``
    crops at) of a bundle it was trained from, and the domain's frozen discriminator, which the optimisation methods
    use as their perceptual distance. Runs saved neither, whether or not a loss term had loaded the discriminator."""
    import json

    from hyperinverter.convert.gan_files import load_gan

    first = train_w_encoder(config(tmp_path / "first", gan_dir, steps=2), images=images, val_images=images[:4])
    index = json.loads((first.final_model / "pipeline.json").read_text())
    assert index["align_scale"] == 1.0 and index["discriminator"] == "discriminator"
    assert "faces" not in index  # not known: no identity term (which a faces Phase I lacks too), nor a bundle's word
    index.update(align_scale=0.8, faces=True)  # (as faces-64's framing)
    (first.final_model / "pipeline.json").write_text(json.dumps(index))
    second = train_w_encoder(config(tmp_path / "second", first.final_model, steps=2, dfeat_weight=0.5), images=images,
                            val_images=images[:4])
    pipe = InversionPipeline.from_pretrained(second.final_model, device="cpu")
    assert pipe.align_scale == 0.8 and pipe.faces is True
    said = train_w_encoder(config(tmp_path / "said", first.final_model, steps=1, faces=False), images=images,
                           val_images=images[:4])
    assert InversionPipeline.from_pretrained(said.final_model, device="cpu").faces is False  # (as the run is told)
    domain = load_gan(gan_dir, with_discriminator=True).discriminator.state_dict()
    for key, value in pipe.discriminator.state_dict().items():
        torch.testing.assert_close(value, domain[key], rtol=0, atol=0, msg=key)


def test_a_run_from_a_rosinality_file_does_not_warn_of_a_discriminator_it_never_asked_for(tmp_path, gan_dir, images,
                                                                                          caplog):
    # Saving its model read the generator file again for its discriminator: a rosinality file's is not read, which
    # the loader warned of in a run whose loss terms needed none.
    from hyperinverter.convert.gan_files import convert_generator

    convert_generator(gan_dir, tmp_path / "g.pt")
    with caplog.at_level("WARNING"):
        run = train_w_encoder(config(tmp_path / "run", tmp_path / "g.pt", steps=1), images=images,
                              val_images=images[:4])
    assert "discriminator" not in caplog.text
    assert InversionPipeline.from_pretrained(run.final_model, device="cpu").discriminator is None


def test_fp16_training_on_a_cpu_is_refused_before_the_run_folder_is_made(tmp_path, gan_dir, images):
    # Inference refuses fp16 on a CPU; training took it, with no loss scaling there (a 512-px conv's weight gradient
    # 19 % off fp32's), and left a run folder.
    with pytest.raises(ValueError, match="^precision: fp16 runs on GPUs only"):
        train_w_encoder(config(tmp_path / "run", gan_dir, steps=1, precision="fp16"), images=images,
                        val_images=images[:4])
    assert not (tmp_path / "run").exists()


class _Killed(BaseException):
    """As a SIGKILL: no checkpoint is written on the way out."""


def _train_killed_after(run, gan_dir, images, settings, last_step):
    """A W-encoder run in ``run`` killed as it comes to log a step past ``last_step``."""
    from hyperinverter.training.run import RunLogger

    logged = RunLogger.scalars

    def scalars(self, step, values):
        if step > last_step:
            raise _Killed
        logged(self, step, values)

    with pytest.MonkeyPatch.context() as m, pytest.raises(_Killed):
        m.setattr(RunLogger, "scalars", scalars)
        train_w_encoder(config(run, gan_dir, **settings), images=images, val_images=images[:2])


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, gan_dir, images):
    """A run killed between its first log line and its first checkpoint could not be run again in its folder ("holds
    a run (stats.jsonl) but no checkpoint"): it loses nothing by starting again, seeded as it was. One that logged
    the step of its first checkpoint is still refused."""
    import json

    from hyperinverter.errors import OutputError
    from hyperinverter.training.checkpointing import list_checkpoints

    run = tmp_path / "run"
    settings = {"steps": 6, "log_every": 1, "val_every": 2, "checkpoint_every": 5}
    _train_killed_after(run, gan_dir, images, settings, 3)
    assert not list_checkpoints(run / "checkpoints") and (run / "best").is_dir()
    def steps(folder):
        return [json.loads(line)["step"] for line in (folder / "stats.jsonl").read_text().splitlines()]

    assert max(steps(run)) == 3

    result = train_w_encoder(config(run, gan_dir, **settings), images=images, val_images=images[:2])
    assert result.steps == 6
    clean = train_w_encoder(config(tmp_path / "clean", gan_dir, **settings), images=images, val_images=images[:2])
    assert steps(run) == steps(clean.run_dir)  # (each step logged once, as by a run never stopped)

    for path in list_checkpoints(run / "checkpoints"):
        path.unlink()
    (run / "final").rename(tmp_path / "final-aside")
    with pytest.raises(OutputError, match=r"holds a run \(best/, stats.jsonl\)"):  # (it logged step 5 and on)
        train_w_encoder(config(run, gan_dir, **settings), images=images, val_images=images[:2])


def test_a_run_killed_while_writing_its_first_checkpoint_starts_again(tmp_path, gan_dir, images):
    """A run logs the step of its first checkpoint, validates, saves best/ and samples before it writes that
    checkpoint: one killed in between (a SIGKILL in the writing) held no checkpoint and had logged that step, and was
    refused ("holds a run (best/, stats.jsonl) but no checkpoint"), so it could never be run again in its folder."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    settings = {"steps": 6, "log_every": 1, "val_every": 1, "checkpoint_every": 5}
    run = tmp_path / "run"
    torch.save(images, tmp_path / "images.pt")
    script = ("import json, os, signal, sys, torch\n"
              "sys.path.insert(0, sys.argv[1])\n"
              "from test_train_inversion import config\n"
              "from hyperinverter.training import loop\n"
              "from hyperinverter.training.inversion import train_w_encoder\n"
              "loop.save_checkpoint = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
              "images = torch.load(sys.argv[2], weights_only=True)\n"
              "train_w_encoder(config(sys.argv[3], sys.argv[4], **json.loads(sys.argv[5])), images=images,\n"
              "                val_images=images[:2])\n")
    killed = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path / "images.pt"),
                             str(run), str(gan_dir), json.dumps(settings)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    def steps(folder):
        return [json.loads(line)["step"] for line in (folder / "stats.jsonl").read_text().splitlines()]

    assert max(steps(run)) == 5 and (run / "best").is_dir() and not list((run / "checkpoints").glob("*.safetensors"))
    result = train_w_encoder(config(run, gan_dir, **settings), images=images, val_images=images[:2])
    assert result.steps == 6 and (run / "final").is_dir()
    clean = train_w_encoder(config(tmp_path / "clean", gan_dir, **settings), images=images, val_images=images[:2])
    assert steps(run) == steps(clean.run_dir)


def test_a_run_killed_before_its_first_checkpoint_is_not_replaced_by_another_config(tmp_path, gan_dir, images):
    """Started again, a run stopped before its first checkpoint retraces its steps only with its own config: with
    another learning rate, its best/ was replaced by another run's at the first validation, without a word. A longer
    run (or other logging) still retraces it."""
    from hyperinverter.errors import OutputError

    run = tmp_path / "run"
    settings = {"steps": 4, "log_every": 1, "val_every": 1, "checkpoint_every": 5}
    _train_killed_after(run, gan_dir, images, settings, 2)

    def files(folder):
        return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}

    best = files(run / "best")
    with pytest.raises(OutputError, match=r"stopped at step 2 with another config \(lr: 0\.002 -> 0\.001\)"):
        train_w_encoder(config(run, gan_dir, **dict(settings, lr=1e-3)), images=images, val_images=images[:2])
    assert files(run / "best") == best
    result = train_w_encoder(config(run, gan_dir, **dict(settings, steps=5, log_every=2)), images=images,
                             val_images=images[:2])
    assert result.steps == 5


def test_a_folder_named_stats_jsonl_is_no_logged_step(tmp_path):
    # Read as a run's log, a folder of that name was an IsADirectoryError from inside the check; the run folder's
    # results are still kept.
    from hyperinverter.errors import OutputError
    from hyperinverter.training.run import check_nothing_to_lose

    (tmp_path / "best").mkdir()
    (tmp_path / "stats.jsonl").mkdir()
    with pytest.raises(OutputError, match=r"holds a run \(best/\) but no checkpoint to resume it from"):
        check_nothing_to_lose(tmp_path, {"steps": 4}, first_checkpoint=2)
    assert (tmp_path / "best").is_dir() and (tmp_path / "stats.jsonl").is_dir()
