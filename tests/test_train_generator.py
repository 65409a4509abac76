"""Generator trainer: the loss falls on a fixed batch, resume is exact, torchrun ranks equal one process."""

import json
import math
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hyperinverter.io.images import save_image
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
from hyperinverter.training.checkpointing import list_checkpoints
from hyperinverter.training.gan import GeneratorTrainingConfig, train_generator

TINY = dict(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=128, channel_max=8)


def teacher_generator():
    torch.manual_seed(1234)
    return Generator(GeneratorConfig(**TINY)).eval()


def teacher_images(n=16):
    with torch.no_grad():
        x = teacher_generator()(torch.randn(n, 8, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8)


def config(run_dir, *, channel_max=8, **kw):
    base = dict(run_dir=str(run_dir), data="unused", steps=4, batch_size=8, log_every=1, sample_every=1000,
                checkpoint_every=2, tensorboard=False, progress=False, r1_interval=2,
                generator=GeneratorConfig(**{**TINY, "channel_max": channel_max}))
    base.update(kw)
    return GeneratorTrainingConfig(**base)


def test_distillation_loss_falls_on_a_fixed_teacher(tmp_path):
    teacher = teacher_generator()
    cfg = config(tmp_path / "run", steps=60, distill_teacher="fixed", distill_steps=60, distill_lr=0.01,
                 distill_train_d=False, log_every=10, checkpoint_every=1000)
    result = train_generator(cfg, images=teacher_images(), teacher=lambda z: teacher(z))
    losses = [h["loss/distill"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0], losses


def test_discriminator_loss_falls_on_a_fixed_batch(tmp_path):
    cfg = config(tmp_path / "run", steps=40, batch_size=8, lr_g=0.0, lr_d=0.01, log_every=10, checkpoint_every=1000)
    result = train_generator(cfg, images=teacher_images(8))
    losses = [h["loss/D"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert (tmp_path / "run" / "final" / "generator" / "model.safetensors").is_file()


def test_resume_reaches_the_same_parameters(tmp_path):
    images = teacher_images()
    kw = dict(style_mixing=0.5, pl_weight=1.0, pl_interval=2, hflip=True)
    train_generator(config(tmp_path / "straight", steps=6, **kw), images=images)
    train_generator(config(tmp_path / "resumed", steps=4, **kw), images=images)  # "interrupted" after step 4
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")][-1].endswith("00000004.safetensors")
    train_generator(config(tmp_path / "resumed", steps=6, **kw), images=images)
    assert_same_weights_and_optimiser(tmp_path / "straight", tmp_path / "resumed", step=6)


def test_a_run_that_could_not_replace_its_final_generator_stops_before_training(tmp_path):
    # docs/training.md finds SeFa directions into the run's final/directions; training on ("raise steps") then
    # trained every step and failed at the end, saying the directions were files hyperinverter did not write.
    from hyperinverter.editing import LinearDirection, save_direction
    from hyperinverter.errors import OutputError

    images, run = teacher_images(), tmp_path / "run"
    train_generator(config(run, steps=2), images=images)
    direction = run / "final" / "directions" / "sefa 1.safetensors"
    save_direction(LinearDirection(torch.ones(1, 8), name="sefa 1"), direction)
    with pytest.raises(OutputError, match=r"final: is a generator folder that also holds directions, which a "
                       r"generator's files do not include and replacing it would lose"):
        train_generator(config(run, steps=4), images=images)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["checkpoint-00000002.safetensors"]
    assert direction.is_file()


def test_a_run_started_afresh_over_a_final_it_could_not_replace_stops_before_training(tmp_path):
    # resume=false (which check_nothing_to_lose offers for a run folder without checkpoints) skipped the check of
    # final/: the run trained every step, wrote its checkpoints, then failed at the end over the directions.
    from hyperinverter.editing import LinearDirection, save_direction
    from hyperinverter.errors import OutputError

    images, run = teacher_images(), tmp_path / "run"
    train_generator(config(run, steps=2), images=images)
    for checkpoint in list_checkpoints(run / "checkpoints"):
        checkpoint.unlink()
    direction = run / "final" / "directions" / "sefa 1.safetensors"
    save_direction(LinearDirection(torch.ones(1, 8), name="sefa 1"), direction)
    with pytest.raises(OutputError, match=r"final: is a generator folder that also holds directions"):
        train_generator(config(run, steps=2, resume=False), images=images)
    assert list_checkpoints(run / "checkpoints") == []
    assert direction.is_file()


def assert_same_weights_and_optimiser(run_a, run_b, *, step):
    a = load_file(run_a / "checkpoints" / f"checkpoint-{step:08d}.safetensors")
    b = load_file(run_b / "checkpoints" / f"checkpoint-{step:08d}.safetensors")
    for k in a:
        if k.startswith(("module.", "optim.")):
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_run_resumes_exactly(tmp_path, monkeypatch, number):
    # SIGTERM (a scheduler's pre-emption, `kill`) ended a run at once, losing every step since its last checkpoint.
    from hyperinverter.training import loop
    from hyperinverter.training.stopping import TrainingStopped

    images = teacher_images()
    kw = {"checkpoint_every": 1000, "style_mixing": 0.5, "hflip": True}
    train_generator(config(tmp_path / "straight", steps=6, **kw), images=images)
    real_generator = loop.step_generator

    def signalled_in_step_3(seed, step):
        if step == 2:
            os.kill(os.getpid(), number)  # arrives while step 3 runs
        return real_generator(seed, step)

    monkeypatch.setattr(loop, "step_generator", signalled_in_step_3)
    previous = signal.getsignal(number)
    with pytest.raises(TrainingStopped) as stopped:
        train_generator(config(tmp_path / "stopped", steps=6, **kw), images=images)
    assert stopped.value.signal_number == number and stopped.value.step == 3
    assert "stopped after step 3 of 6" in str(stopped.value) and "run the same command to resume" in str(stopped.value)
    assert signal.getsignal(number) is previous  # the handlers are given back
    checkpoints = list_checkpoints(tmp_path / "stopped" / "checkpoints")
    assert [p.name for p in checkpoints] == ["checkpoint-00000003.safetensors"]
    assert not (tmp_path / "stopped" / "final").exists()
    monkeypatch.setattr(loop, "step_generator", real_generator)
    train_generator(config(tmp_path / "stopped", steps=6, **kw), images=images)
    assert_same_weights_and_optimiser(tmp_path / "straight", tmp_path / "stopped", step=6)


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    from hyperinverter.training import loop
    from hyperinverter.training.stopping import TrainingStopped

    real_generator = loop.step_generator

    def pressed_twice(seed, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_generator(seed, step)

    monkeypatch.setattr(loop, "step_generator", pressed_twice)
    with pytest.raises(KeyboardInterrupt) as interrupted:
        train_generator(config(tmp_path / "run", steps=6, checkpoint_every=1000), images=teacher_images())
    assert not isinstance(interrupted.value, TrainingStopped)
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []


def test_the_cli_exits_as_the_signal_would_and_says_where_it_stopped(tmp_path, monkeypatch, capsys):
    from hyperinverter.cli.main import main
    from hyperinverter.training import TRAINERS, Trainer, gan
    from hyperinverter.training.stopping import TrainingStopped

    def stopped(cfg):
        raise TrainingStopped("SIGTERM: stopped after step 3 of 6, with a checkpoint in RUN", signal_number=15, step=3)

    monkeypatch.setitem(TRAINERS, "generator", Trainer("", lambda: (gan.GeneratorTrainingConfig, stopped)))
    assert main(["train", "generator", f"run_dir={tmp_path}", "data=unused", "generator.resolution=16",
                 "steps=6"]) == 143
    assert "interrupted: SIGTERM: stopped after step 3 of 6" in capsys.readouterr().err


def test_checkpoints_are_pruned_and_corrupt_latest_falls_back(tmp_path):
    images = teacher_images()
    train_generator(config(tmp_path / "run", steps=8, checkpoint_every=1, keep_checkpoints=2), images=images)
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-00000007.safetensors", "checkpoint-00000008.safetensors"]
    ckpts[-1].write_bytes(b"truncated")
    result = train_generator(config(tmp_path / "run", steps=9, checkpoint_every=1, keep_checkpoints=2), images=images)
    assert result.history[0]["step"] == 8  # resumed from step 7, redid step 8


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_distributed_run(tmp_path, *extra: str) -> list[str]:
    """The teacher's images in ``tmp_path/data`` and the overrides of a tiny generator run on them (plus ``extra``)."""
    data = tmp_path / "data"
    for i, img in enumerate(teacher_images(16)):
        save_image((img.float() / 127.5 - 1)[None], data / f"{i:03d}.png")
    return [f"data={data}", "generator.resolution=16", "generator.z_dim=8", "generator.w_dim=8",
            "generator.mapping_layers=1", "generator.channel_base=128", "generator.channel_max=8", "batch_size=8",
            "r1_interval=2", "val_fraction=0.0", "tensorboard=false", "progress=false", "device=cpu", *extra]


def _train_generator(*args: str, ranks: int = 2) -> None:
    """``hyperinverter train generator ARGS`` under torchrun with ``ranks`` CPU processes (gloo), or in this process."""
    if ranks == 1:
        from hyperinverter.cli.main import main

        assert main(["train", "generator", *args]) == 0
        return
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
              f"--master_port={_free_port()}"]
    subprocess.run([*launch, "-m", "hyperinverter.cli.main", "train", "generator", *args], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=240, capture_output=True)


def _last_logged(run) -> dict:
    return json.loads((run / "stats.jsonl").read_text().splitlines()[-1])


def test_torchrun_two_ranks_equal_one_process_and_log_alike_after_a_resume(tmp_path):
    """2 CPU processes (gloo) hold identical parameters, equal to one process with the same global batch in two
    micro-batches (each shard, a rank's or a micro-batch's, draws its own style-mixing coin and noise), and log the
    same losses: the global batch's (rank 0 logged its own shard's). One torchrun job serves both checks (each job
    costs seconds of process starts)."""
    import shutil

    overrides = _tiny_distributed_run(tmp_path, "steps=4", "noise_mode=random", "style_mixing=0.9",
                                      "checkpoint_every=2", "keep_checkpoints=5", "log_every=4")
    _train_generator(f"run_dir={tmp_path / 'ddp'}", *overrides)
    _train_generator(f"run_dir={tmp_path / 'single'}", "grad_accum=2", *overrides, ranks=1)
    a = load_file(tmp_path / "ddp" / "checkpoints" / "checkpoint-00000004.safetensors")
    b = load_file(tmp_path / "single" / "checkpoints" / "checkpoint-00000004.safetensors")
    params = [k for k in a if k.startswith(("module.G.", "module.D.")) and "w_avg" not in k]
    assert params
    for k in params:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    logged = [_last_logged(tmp_path / run) for run in ("ddp", "single")]
    losses = [k for k in logged[1] if k.startswith("loss/")]
    assert losses and sorted(losses) == sorted(k for k in logged[0] if k.startswith("loss/"))
    for k in losses:
        assert logged[0][k] == pytest.approx(logged[1][k], rel=1e-4, abs=1e-6), k

    # A checkpoint between two log lines keeps the steps since the last one; rank 0 kept its own shard's, which
    # every rank resumed with: the first line after a resume mixed them into the global batch's mean.
    shutil.copytree(tmp_path / "ddp", tmp_path / "resumed")
    for path in (tmp_path / "resumed" / "checkpoints").glob("checkpoint-00000004*"):
        path.unlink()  # (it resumes from step 2, two steps into the window of the line at step 4)
    _train_generator(f"run_dir={tmp_path / 'resumed'}", *overrides)
    resumed = _last_logged(tmp_path / "resumed")
    assert logged[0]["step"] == resumed["step"] == 4
    for k in losses:
        assert resumed[k] == pytest.approx(logged[0][k], rel=1e-6), k


def test_a_rank_whose_peer_stopped_says_so_not_that_it_is_a_bug(tmp_path):
    """Under torchrun a rank that stops (here rank 0: its run folder is in use) leaves the others failing in their
    next collective: each said "internal error ... this is a bug in hyperinverter" (exit 3). Now they say that
    another process of the job ended, and rank 0 names the cause."""
    from hyperinverter.io.files import exclusive_lock

    run = tmp_path / "run"
    overrides = [f"run_dir={run}", f"data={tmp_path / 'data'}", "generator.resolution=16", "steps=2",
                 "tensorboard=false", "progress=false", "device=cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}", "--monitor-interval=5",  # (rank 1 meets rank 0's end before torchrun)
                "-m", "hyperinverter.cli.main", "train", "generator", *overrides]
    with exclusive_lock(run / "checkpoints" / ".lock", what="training", folder=run, remove=True):  # another run
        done = subprocess.run(torchrun, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120, capture_output=True,
                              text=True, check=False)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and f"error: {run}: is in use: another process is training there" in errors[0], errors
    assert "internal error" not in done.stderr and len(errors) == 2, errors
    assert errors[1].startswith("error: rank 1: another process of this torchrun job ended or failed"), errors

def test_a_regulariser_runs_over_the_micro_batches():
    # R1 and path length ran on the whole local batch whatever grad_accum: a batch that fits only in micro-batches
    # ran out of memory at the first regularised step. NVIDIA's loop runs them per micro-batch too.
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.loop import Phase, RunConfig, _run_phase

    torch.manual_seed(0)
    module, x, seen = torch.nn.Linear(3, 1), torch.randn(8, 3), []

    class Task:
        cleans_gradients = False

        def loss(self, phase, batch, *, step, gen):
            seen.append(batch["x"].shape[0])
            return module(batch["x"]).square().mean(), {"loss/reg": 0.0}

    def gradient(grad_accum):
        seen.clear()
        phase = Phase("reg", module, torch.optim.SGD(module.parameters(), lr=0.0), interval=4, regulariser=True)
        _run_phase(phase, {"x": x}, Task(), cfg=RunConfig(run_dir="r", data="d", steps=1, grad_accum=grad_accum),
                   ctx=DistributedContext(), device=torch.device("cpu"), scaler=torch.amp.GradScaler("cpu",
                   enabled=False), trainable=[module], step=0)
        return module.weight.grad.clone()

    whole = gradient(1)
    assert seen == [8]
    parts = gradient(4)
    assert seen == [2, 2, 2, 2]
    torch.testing.assert_close(parts, whole)  # (the mean over equal micro-batches: the same gradient, lazily x4)
    module.zero_grad()
    torch.testing.assert_close(whole, 4 * torch.autograd.grad(module(x).square().mean(), module.weight)[0])



def test_a_step_logs_the_mean_loss_of_its_micro_batches():
    # With grad_accum: K, a step logged the loss of its last micro-batch only (1/K of the batch, and other numbers
    # than the same run without accumulation), while stats.jsonl promises the step's losses.
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.loop import Phase, RunConfig, _run_phase

    torch.manual_seed(0)
    module, x = torch.nn.Linear(3, 1), torch.randn(8, 3)

    class Task:
        cleans_gradients = False

        def loss(self, phase, batch, *, step, gen):
            loss = module(batch["x"]).square().mean()
            return loss, {"loss/total": float(loss.detach())}

    def logged(grad_accum, regulariser):
        phase = Phase("p", module, torch.optim.SGD(module.parameters(), lr=0.0), regulariser=regulariser)
        return _run_phase(phase, {"x": x}, Task(), cfg=RunConfig(run_dir="r", data="d", steps=1, grad_accum=grad_accum),
                          ctx=DistributedContext(), device=torch.device("cpu"),
                          scaler=torch.amp.GradScaler("cpu", enabled=False), trainable=[module], step=0)["loss/total"]

    for regulariser in (False, True):
        assert logged(4, regulariser) == pytest.approx(logged(1, regulariser), rel=1e-6)

def test_each_shard_of_a_step_draws_its_own_randomness():
    # Every rank drew the same style-mixing coin and noise maps from the step's generator
    # (NVIDIA's ranks each have their own seed); one process's micro-batches drew in turn, unlike ranks.
    from hyperinverter.training.run import shard_generator

    def draw(step, phase, shard):
        return torch.rand(4, generator=shard_generator(0, step, phase, shard))

    draws = [draw(3, phase, shard) for phase in ("G", "D") for shard in range(4)] + [draw(4, "G", 0)]
    assert len({tuple(d.tolist()) for d in draws}) == len(draws)
    assert torch.equal(draw(3, "G", 1), draw(3, "G", 1))  # (a resumed run draws the same)


def test_a_sample_draws_from_one_shard_however_the_batch_is_split():
    # Micro-batch m of rank r holds the samples of rank m * world + r of world * grad_accum ranks; it drew from shard
    # r * grad_accum + m, so 2 ranks x 2 micro-batches drew other numbers for its samples than 4 ranks or 4
    # micro-batches (the shard holding samples 2, 6 drew shard 1's, which holds samples 1, 5 in the others).
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.loop import Phase, RunConfig, _run_phase

    class Ranks(DistributedContext):
        def all_reduce_gradients(self, params):  # (each rank alone here)
            pass

    module = torch.nn.Linear(1, 1)

    def draws(world, grad_accum):
        drawn = {}

        class Task:
            cleans_gradients = False

            def loss(self, phase, batch, *, step, gen):
                drawn[tuple(batch["i"].tolist())] = float(torch.rand((), generator=gen))
                return module(batch["i"][:, None].float()).sum(), {}

        for rank in range(world):
            ctx = Ranks(rank=rank, world_size=world)
            phase = Phase("G", module, torch.optim.SGD(module.parameters(), lr=0.0))
            _run_phase(phase, {"i": ctx.shard(torch.arange(8))}, Task(), ctx=ctx, device=torch.device("cpu"),
                       cfg=RunConfig(run_dir="r", data="d", steps=1, grad_accum=grad_accum), step=3,
                       scaler=torch.amp.GradScaler("cpu", enabled=False), trainable=[module])
        return drawn

    assert draws(1, 4) == draws(4, 1) == draws(2, 2)
    assert len(set(draws(2, 2).values())) == 4


def test_streaming_from_disk_equals_preloading(tmp_path):
    """`preload: false` reads each batch from disk and trains exactly as the preloaded run."""
    images = teacher_images()
    for i, x in enumerate(images):
        save_image(x[None].float() / 127.5 - 1, tmp_path / "data" / f"{i:03d}.png")
    for preload in (True, False):
        train_generator(config(tmp_path / f"preload-{preload}", data=str(tmp_path / "data"), preload=preload))
    a = load_file(tmp_path / "preload-True" / "checkpoints" / "checkpoint-00000004.safetensors")
    b = load_file(tmp_path / "preload-False" / "checkpoints" / "checkpoint-00000004.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_generator_trains_on_every_image(tmp_path, caplog):
    # The trainer has no validation, but its val_fraction of 0.02 held images out of training all the same: in a
    # folder of 6, one image never trained.
    import logging

    for i, x in enumerate(teacher_images(6)):
        save_image(x[None].float() / 127.5 - 1, tmp_path / "data" / f"{i}.png")
    with caplog.at_level(logging.INFO):
        train_generator(config(tmp_path / "run", data=str(tmp_path / "data"), steps=1))
        train_generator(config(tmp_path / "given", data=str(tmp_path / "data"), steps=1, val_fraction=0.5))
    loaded = [r.getMessage() for r in caplog.records if "images: ImageFolderDataset" in r.getMessage()]
    assert len(loaded) == 2 and all("6 images" in message for message in loaded), loaded
    assert "val_fraction=0.5 is not used: this run has no validation, and trains on every image" in caplog.text


def test_streaming_replaces_an_unreadable_file(tmp_path):
    from hyperinverter.data.folder import ImageFolderDataset
    from hyperinverter.training.run import StreamedImages

    for i, x in enumerate(teacher_images(3)):
        save_image(x[None].float() / 127.5 - 1, tmp_path / f"{i}.png")
    (tmp_path / "1b-broken.png").write_bytes(b"not a png")  # sorts between 1.png and 2.png
    images = StreamedImages(ImageFolderDataset(tmp_path, resolution=16, split="all"))
    batch = images[torch.tensor([0, 2, 2])]
    assert batch.shape == (3, 3, 16, 16) and images.shape == (4, 3, 16, 16)
    assert torch.equal(batch[1], images[torch.tensor([3])][0])  # the broken file's slot holds the next file


def test_every_seed_a_config_takes_draws_batches(tmp_path):
    # A seed of 10**15 passed the config's check (below 2**63) and stopped the run at its first batch with
    # "Overflow when unpacking long long", naming nothing; seeds that worked keep their batches.
    from hyperinverter.training.run import BatchSampler

    for seed in (0, 10**14, 10**15, 2**63 - 1):
        batches = [BatchSampler(10, 4, seed=seed).next() for _ in range(2)]
        assert torch.equal(batches[0], batches[1]) and sorted(batches[0].tolist()) == sorted(set(batches[0].tolist()))
    assert BatchSampler(10, 4, seed=3, position=10**30).next().shape == (4,)
    gen = torch.Generator().manual_seed(10**14 * 100_003 + 0)  # (below 2**64: the same permutation as before)
    assert torch.equal(BatchSampler(10, 10, seed=10**14).next(), torch.randperm(10, generator=gen))
    result = train_generator(config(tmp_path / "run", steps=1, seed=10**15), images=teacher_images(8))
    assert result.steps == 1


def test_cli_resume_flags(tmp_path, monkeypatch):
    """`--no-resume` refuses a used run folder; `--resume` (the default) continues it."""
    from hyperinverter.cli.main import main
    from hyperinverter.training import gan

    seen = []
    from hyperinverter.training import TRAINERS, Trainer
    from hyperinverter.training.loop import TrainingResult

    monkeypatch.setitem(TRAINERS, "generator", Trainer("", lambda: (
        gan.GeneratorTrainingConfig, lambda cfg: seen.append(cfg.resume) or TrainingResult(tmp_path, None, None, 1))))
    args = ["train", "generator", f"run_dir={tmp_path}", "data=unused", "generator.resolution=16", "steps=1"]
    assert main([*args[:2], "--no-resume", *args[2:]]) == 0
    assert main([*args[:2], "--resume", *args[2:]]) == 0
    assert main(args) == 0
    assert seen == [False, True, True]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    import json

    images = teacher_images()
    train_generator(config(tmp_path / "run", steps=5), images=images)  # checkpoint at 4, logged up to 5
    (tmp_path / "run" / "stats.jsonl").open("a").write('{"step": 5, "loss/G"')  # and a line torn by a crash
    train_generator(config(tmp_path / "run", steps=6), images=images)  # resumes at 4
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    # stats.jsonl dropped a killed run's records past the checkpoint it resumed from; TensorBoard showed them twice.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = teacher_images()
    train_generator(config(tmp_path / "run", steps=5, tensorboard=True), images=images)
    list_checkpoints(tmp_path / "run" / "checkpoints")[-1].unlink()  # killed after logging step 5, before saving it
    train_generator(config(tmp_path / "run", steps=6, tensorboard=True), images=images)  # resumes at 4
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/G")] == [1, 2, 3, 4, 5, 6]


def test_a_run_resumed_with_another_config_says_what_changed(tmp_path, caplog):
    images = teacher_images()
    train_generator(config(tmp_path / "run", steps=2), images=images)
    with caplog.at_level("WARNING"):
        train_generator(config(tmp_path / "run", steps=4, lr_d=0.001), images=images)
    assert "with a changed config (lr_d: 0.0025 -> 0.001; steps: 2 -> 4)" in caplog.text
    # ... and the change took effect: the optimiser's moments resume, its lr is the config's (it kept the old one)
    import json

    from safetensors import safe_open

    with safe_open(list_checkpoints(tmp_path / "run" / "checkpoints")[-1], "pt") as f:
        groups = json.loads(f.metadata()["training"])["optim.D"]["param_groups"]
    assert groups[0]["lr"] == pytest.approx(0.001 * 2 / 3)  # (r1_interval 2: lazy rescaling by 2/3)
    caplog.clear()
    train_generator(config(tmp_path / "run", steps=4, lr_d=0.001), images=images)
    assert "changed config" not in caplog.text


def test_a_run_resumed_on_other_images_says_so(tmp_path, caplog):
    # Files added, removed or replaced in the data folder between a run and its resume changed what it trained on
    # (and every later batch) without a word, where a changed config key is said.
    images = teacher_images()
    train_generator(config(tmp_path / "run", steps=2), images=images)
    with caplog.at_level("WARNING"):
        train_generator(config(tmp_path / "run", steps=4), images=images[:10])
    assert "on other training images than it ran on (16 -> 10 images)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        train_generator(config(tmp_path / "run", steps=6), images=images[:10])
    assert "other training images" not in caplog.text


def test_a_data_folder_named_another_way_holds_the_same_images(tmp_path, monkeypatch):
    # A run streamed from data=faces and resumed with data=/abs/faces (the same folder) said it resumed "on other
    # training images than it ran on": the record held the files' paths as given.
    from hyperinverter.data.folder import ImageFolderDataset
    from hyperinverter.training.loop import _data_record
    from hyperinverter.training.run import StreamedImages

    for i, image in enumerate(teacher_images()[:3]):
        save_image(image.float() / 127.5 - 1, tmp_path / "faces" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    records = [_data_record(StreamedImages(ImageFolderDataset(root, resolution=16, split="all")), None)
               for root in ("faces", tmp_path / "faces")]
    assert records[0] == records[1]


def test_resuming_with_another_model_is_refused(tmp_path):
    import pytest

    from hyperinverter.training.checkpointing import CheckpointMismatchError

    train_generator(config(tmp_path / "run", steps=2), images=teacher_images())
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        train_generator(config(tmp_path / "run", steps=4, channel_max=16), images=teacher_images())


def test_a_stylised_fine_tune_keeps_the_mapping_and_learns_the_style(tmp_path):
    from hyperinverter.convert.gan_files import load_gan
    from hyperinverter.data.sources import stylise_images
    from hyperinverter.io.gan import save_gan

    start = teacher_generator()
    save_gan(tmp_path / "start", start)
    cfg = config(tmp_path / "run", steps=40, init_from=str(tmp_path / "start"), generator=None, freeze_mapping=True,
                 distill_teacher="stylised:sketch", distill_steps=40, distill_lr=0.01, distill_train_d=False,
                 log_every=10, checkpoint_every=1000, ema_kimg=0.0)
    result = train_generator(cfg, images=teacher_images())
    losses = [h["loss/distill"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    tuned = load_gan(tmp_path / "run" / "final").generator
    for name, p in start.mapping.state_dict().items():
        assert torch.equal(tuned.mapping.state_dict()[name], p), name  # every w keeps its meaning
    ws = start.mapping(torch.randn(16, 8, generator=torch.Generator().manual_seed(9)))
    with torch.no_grad():
        target = stylise_images(start.synthesis(ws), "sketch")
        before = (start.synthesis(ws) - target).abs().mean()
        after = (tuned.synthesis(ws) - target).abs().mean()
    assert after < 0.8 * before  # paired: G'(w) moved towards sketch(G(w)) for the same w
    # An adversarial fine-tune with the mapping frozen, path-length regulariser on (it failed: ws needed no grad).
    result = train_generator(config(tmp_path / "adversarial", steps=2, init_from=str(tmp_path / "start"),
                                    generator=None, freeze_mapping=True, pl_weight=2.0, pl_interval=1,
                                    checkpoint_every=1000), images=teacher_images())
    assert all(math.isfinite(h["loss/pl"]) for h in result.history if "loss/pl" in h)
    assert any("loss/pl" in h for h in result.history)
    with pytest.raises(ValueError, match="give init_from"):
        config(tmp_path / "bad", freeze_mapping=True)
    with pytest.raises(ValueError, match="unknown style"):
        train_generator(config(tmp_path / "bad2", init_from=str(tmp_path / "start"), generator=None,
                               distill_teacher="stylised:oil", distill_steps=2), images=teacher_images())


def test_the_stylegan2_recipe_as_nvidias_loop_and_loss(tmp_path):
    # Found against stylegan2-ada-pytorch: Adam was rescaled only where a regulariser ran (its intervals stay 4 and
    # 16 with a weight of 0), style mixing was decided per sample (one coin and one cutoff per call), G_ema's
    # ramp-up read the image count after the step (and stayed on from init_from, where NVIDIA's resume drops it).
    from hyperinverter.training.gan import GANTask, mix_styles

    cfg = config(tmp_path / "run", r1_interval=16, pl_interval=4, pl_weight=0.0, r1_gamma=0.0)
    task = GANTask(cfg, torch.device("cpu"), None)
    assert task.opt_g.param_groups[0]["lr"] == pytest.approx(cfg.lr_g * 4 / 5)
    assert task.opt_d.param_groups[0]["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    G, z = task.G, torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = G.mapping(z)
        mixed = [mix_styles(G, z, 0.5, torch.Generator().manual_seed(s), update_w_avg=False) for s in range(12)]
    for ws in mixed:
        kept = (ws == own).all(dim=2)  # [64, num_ws]: which rows are the samples' own codes
        assert (kept == kept[:1]).all()  # the whole batch alike
        assert kept[0].all() or (kept[0].sum() >= 1 and not kept[0, -1])  # all own, or own up to one cutoff
    assert 0 < sum(not bool((ws == own).all()) for ws in mixed) < 12
    result = train_generator(config(tmp_path / "one", steps=1, checkpoint_every=1), images=teacher_images(8))
    state = load_file(list_checkpoints(tmp_path / "one" / "checkpoints")[-1])
    for key, value in state.items():  # a first step's G_ema is G (the count before it is 0)
        if key.startswith("module.G_ema.") and value.is_floating_point():
            assert torch.equal(value, state[key.replace("module.G_ema.", "module.G.")]), key
    assert result.history


def test_non_finite_gradients_are_cleaned_before_the_generator_trainer_steps(tmp_path):
    # As NVIDIA's loop (misc.nan_to_num on every gradient before opt.step()); an encoder trainer leaves them.
    from hyperinverter.training.gan import GANTask
    from hyperinverter.training.loop import TrainingTask, _clean_gradients

    task = GANTask(config(tmp_path / "run"), torch.device("cpu"), None)
    weight = next(task.D.parameters())
    for cleaning, expected in [(task, [0.0, 1e5, -1e5, 2.0]), (TrainingTask(), None)]:
        weight.grad = torch.zeros_like(weight)
        weight.grad.view(-1)[:4] = torch.tensor([math.nan, math.inf, -math.inf, 2.0])
        _clean_gradients(task.D, cleaning)
        got = weight.grad.view(-1)[:4].tolist()
        assert got == expected if expected else math.isnan(got[0]) and got[1:] == [math.inf, -math.inf, 2.0]


def test_a_bundle_lends_its_discriminator_to_training(tmp_path):
    # A bundle keeps its discriminator beside its generator: `train generator init_from=BUNDLE` started D from
    # scratch, and an encoder's dfeat loss on a bundle said it "holds no discriminator".
    from conftest import build_tiny_generator, build_tiny_pipeline
    from hyperinverter.catalogue import load_model_gan
    from hyperinverter.convert.gan_files import load_gan
    from hyperinverter.models.stylegan2 import Discriminator
    from hyperinverter.pipeline import save_pipeline

    G = build_tiny_generator()
    torch.manual_seed(3)
    D = Discriminator(config(tmp_path / "x", generator=G.config).discriminator_config(G.config))
    save_pipeline(build_tiny_pipeline(G).methods, tmp_path / "bundle", discriminator=D)
    lent = load_model_gan(tmp_path / "bundle", with_discriminator=True).discriminator
    assert all(torch.equal(p, D.state_dict()[k]) for k, p in lent.state_dict().items())
    assert load_model_gan(tmp_path / "bundle").discriminator is None
    with torch.no_grad():
        images = ((G(torch.randn(8, G.z_dim)).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    train_generator(config(tmp_path / "run", generator=None, init_from=str(tmp_path / "bundle"),
                           train_generator=False, steps=1, lr_d=0.0, r1_gamma=0.0), images=images)
    trained = load_gan(tmp_path / "run" / "final", with_discriminator=True).discriminator
    assert all(torch.equal(p, D.state_dict()[k]) for k, p in trained.state_dict().items())  # (lr 0: D as lent)


def test_a_discriminator_section_init_from_would_ignore_is_refused(tmp_path):
    # init_from's discriminator was used whatever the discriminator: section asked (another mbstd group, other
    # widths): the section was silently ignored while config.yaml recorded it, as generator: is refused.
    from hyperinverter.io.gan import save_gan
    from hyperinverter.models.stylegan2 import Discriminator, DiscriminatorConfig
    from hyperinverter.training.gan import GANTask

    G = teacher_generator()
    own = config(tmp_path / "x", generator=G.config).discriminator_config(G.config)
    save_gan(tmp_path / "gan", G, Discriminator(own))
    other = DiscriminatorConfig(**{**own.to_dict(), "mbstd_group_size": 2})
    with pytest.raises(ValueError, match=r"discriminator: .*mbstd_group_size 2 against 4"):
        GANTask(config(tmp_path / "run", generator=None, init_from=str(tmp_path / "gan"), discriminator=other),
                torch.device("cpu"), None)
    same = GANTask(config(tmp_path / "run", generator=None, init_from=str(tmp_path / "gan"), discriminator=own),
                   torch.device("cpu"), None)  # (the section that agrees is fine)
    assert same.D.config == own
