"""HyperStyle: multiplicative offsets, the shared hypernetwork, the official layer table, released layouts, the
iterations, training and resume."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from hyperinverter.cli.main import main
from hyperinverter.errors import CheckpointError
from hyperinverter.convert.rosinality import from_nvidia
from hyperinverter.io.components import load_component, save_component_module
from hyperinverter.methods.hyperstyle import HyperStyle, pool_to
from hyperinverter.methods.phase1 import Phase1
from hyperinverter.models.encoders import WEncoder, WEncoderConfig
from hyperinverter.models.hyperstyle import (
    OFFICIAL_LAYERS,
    OFFICIAL_SHARED,
    HyperStyleNet,
    hyperstyle_targets,
)
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig
from hyperinverter.models.weight_delta import WeightDelta
from hyperinverter.pipeline import InversionPipeline, save_pipeline
from hyperinverter.training.optim import Ranger


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def method(tiny_generator):
    torch.manual_seed(0)
    return HyperStyle.create(tiny_generator).eval()


def test_multiplicative_offsets_against_per_sample_generators(tiny_generator):
    G = tiny_generator
    shapes = G.synthesis.offsettable_parameters()
    gen = torch.Generator().manual_seed(1)
    delta = WeightDelta({name: 0.3 * torch.randn(2, *shapes[name], generator=gen)
                         for name in ("b4.conv1.weight", "b16.conv0.weight", "b32.torgb.weight")}, mode="scale")
    ws = G.mapping(torch.randn(2, G.z_dim, generator=gen))
    with torch.no_grad():
        batched = G.synthesis(ws, weight_delta=delta)
        for b in range(2):
            single = copy.deepcopy(G)
            params = dict(single.synthesis.named_parameters())
            for name, d in delta.items():
                params[name].mul_(1 + d[b])  # θ·(1+Δ) on the raw stored weight
            assert torch.allclose(single.synthesis(ws[b : b + 1]), batched[b : b + 1], atol=1e-5)


def test_the_shared_hypernet_is_one_parameter(method, tmp_path):
    net = method.hypernetwork
    shared = [t for t in net.config.targets if t.shared]
    assert len(shared) >= 2
    for t in shared:
        assert net.refinement_blocks[str(t.index)].hypernet is net.shared_weight_hypernet
    unique = {id(p) for p in net.parameters()}
    assert len(unique) == len(list(net.parameters()))  # parameters() lists the shared ones once
    state = net.state_dict()
    for t in shared:  # ... while the state dict names them under every block, as the official files do
        assert state[f"refinement_blocks.{t.index}.hypernet.w1"].data_ptr() == state["shared_weight_hypernet.w1"].data_ptr()
    save_component_module(tmp_path / "net", net)
    from hyperinverter.io.checkpoints import read_safetensors

    stored, _ = read_safetensors(tmp_path / "net" / "model.safetensors")
    assert not any(".hypernet." in k for k in stored)  # stored once
    again = load_component(tmp_path / "net")
    assert again.refinement_blocks[str(shared[0].index)].hypernet is again.shared_weight_hypernet
    assert torch.equal(again.shared_weight_hypernet.w2, net.shared_weight_hypernet.w2)


# The official table (weight_formats §4.4): index -> (synthesis layer, weight shape) at 1024, config-f.
TABLE_1024 = {0: ("b4.conv1", (512, 512)), 1: ("b4.torgb", (3, 512)), 2: ("b8.conv0", (512, 512)),
              3: ("b8.conv1", (512, 512)), 4: ("b8.torgb", (3, 512)), 11: ("b64.conv0", (512, 512)),
              14: ("b128.conv0", (256, 512)), 15: ("b128.conv1", (256, 256)), 17: ("b256.conv0", (128, 256)),
              20: ("b512.conv0", (64, 128)), 23: ("b1024.conv0", (32, 64)), 24: ("b1024.conv1", (32, 32)),
              25: ("b1024.torgb", (3, 32))}


@pytest.mark.parametrize("resolution", [256, 1024])
def test_the_official_layer_table(resolution):
    with torch.device("meta"):
        G = Generator(GeneratorConfig(resolution=resolution, channel_base=32768))
    every = {t.index: t for t in hyperstyle_targets(G, ())}
    assert len(every) == {256: 20, 1024: 26}[resolution]
    for index, (layer, (out_ch, in_ch)) in TABLE_1024.items():
        if index < len(every) and (resolution == 1024 or index < 14):
            assert every[index].name == f"{layer}.weight" and every[index].shape[:2] == (out_ch, in_ch), index
    default = hyperstyle_targets(G)
    assert [t.index for t in default] == [i for i in OFFICIAL_LAYERS if i < len(every)]
    assert {t.index for t in default if t.shared} == set(OFFICIAL_SHARED)
    assert all(t.shape[2] == 3 for t in default)  # no ToRGB by default


def test_full_size_parameter_count():
    """The official faces network (1024, default layers): ≈332.7M trainable parameters (methods_baselines §1.3)."""
    with torch.device("meta"):
        G = Generator(GeneratorConfig(resolution=1024, channel_base=32768))
        net = HyperStyleNet.from_generator(G)
    millions = sum(p.numel() for p in net.parameters()) / 1e6
    trunk = sum(p.numel() for n, p in net.named_parameters() if n.startswith(("conv1", "bn1", "relu", "body"))) / 1e6
    assert round(trunk, 2) == 21.29 and round(millions, 1) == 332.7


def test_delta_accumulates_over_iterations(method):
    x = images(2)

    size = method.hypernetwork.config.input_size  # the hypernetwork reads 64 px: x and ŷ are resized to it
    with torch.no_grad():
        result = method.invert(x, iterations=2)
        first = method.hypernetwork(torch.cat([pool_to(x, size), pool_to(result.initial_image, size)], 1))
        second = method.hypernetwork(torch.cat([pool_to(x, size), pool_to(result.steps[0], size)], 1))
    assert len(result.steps) == 2 and torch.equal(result.steps[-1], result.image)
    assert result.weight_delta.mode == "scale"
    for name in first:
        assert torch.allclose(result.weight_delta[name], first[name] + second[name], atol=1e-6)
    assert torch.allclose(method.generator.synthesis(result.ws, weight_delta=first), result.steps[0], atol=1e-5)
    assert torch.equal(result.ws, method.encode_w(x))  # the codes never change
    for bad in (0, 101):  # (10**9 ran for good, keeping every iteration's image)
        with pytest.raises(ValueError, match=f"iterations must be a whole number from 1 to 100, got {bad}"):
            method.invert(x, iterations=bad)
    with pytest.raises(ValueError, match="option iterations of hyperstyle: expected an integer, got True"):
        method.invert(x, iterations=True)  # (`--option iterations=true`: it ran one iteration)


def test_grayscale_generators_read_two_channels():
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, img_channels=1, z_dim=16, w_dim=16, mapping_layers=2,
                                  channel_base=256, channel_max=16)).eval()
    method = HyperStyle.create(G).eval()
    assert method.hypernetwork.config.image_channels == 1
    assert method.hypernetwork.conv1.in_channels == 2  # the target and the current image, one channel each
    with torch.no_grad():
        result = method.invert(torch.rand(2, 1, 32, 32) * 2 - 1, iterations=2)
    assert result.image.shape == (2, 1, 32, 32)


def _official_files(tmp_path, method, latent_avg, **domain):
    """A released-layout hyperstyle .pt and its W encoder .pt, from our weights (the official key names);
    ``domain``: more opts of both (``dataset_type``)."""
    G = method.generator
    decoder = from_nvidia(G.state_dict(), G.config)
    decoder.pop("latent_avg")
    hyper = {f"hypernet.{k}": v.clone() for k, v in method.hypernetwork.state_dict().items()}
    opts = {"layers_to_tune": ",".join(str(t.index) for t in method.hypernetwork.config.targets),
            "encoder_type": "SharedWeightsHyperNetResNet", "output_size": G.resolution, "n_iters_per_batch": 5,
            "hypernet_input_size": method.hypernetwork.config.input_size, **domain}
    rows = latent_avg[None].repeat(G.num_ws, 1)
    torch.save({"state_dict": {**hyper, **{f"decoder.{k}": v for k, v in decoder.items()}}, "opts": opts,
                "latent_avg": rows}, tmp_path / "hyperstyle_ffhq.pt")
    encoder = {f"encoder.{k}": v for k, v in method.w_encoder.state_dict().items()}
    torch.save({"state_dict": {**encoder, **{f"decoder.{k}": v for k, v in decoder.items()}}, "opts": {**domain},
                "latent_avg": rows}, tmp_path / "faces_w_encoder.pt")
    return tmp_path / "hyperstyle_ffhq.pt", tmp_path / "faces_w_encoder.pt"


def test_released_files_load_strictly_and_round_trip(method, tmp_path, capsys):
    latent_avg = torch.randn(method.generator.w_dim)
    hs_file, w_file = _official_files(tmp_path, method, latent_avg)
    assert main(["import-official", str(hs_file), "--w-encoder", str(w_file), "--out", str(tmp_path / "bundle")]) == 0
    pipe = InversionPipeline.from_pretrained(tmp_path / "bundle", device="cpu")
    assert pipe.default_method == "hyperstyle" and set(pipe.methods) == {"phase1", "hyperstyle"}
    # The reference: our method with the file's average code.
    encoder = WEncoder(WEncoderConfig.from_dict({**method.w_encoder.config.to_dict(), "own_latent_avg": True}))
    encoder.load_state_dict({**method.w_encoder.state_dict(), "latent_avg": latent_avg})
    reference = HyperStyle(method.generator, w_encoder=encoder.eval(), hypernetwork=method.hypernetwork,
                           encoder_resolution=method.encoder_resolution)
    x = images(2)
    expected, got = reference.invert(x, iterations=3), pipe.invert(x, iterations=3)
    assert torch.allclose(expected.ws, got.ws, atol=1e-5) and torch.allclose(expected.image, got.image, atol=1e-4)
    # Strict: the copies of the shared hypernetwork must agree, and every key must be known.
    ckpt = torch.load(hs_file, weights_only=True)
    shared_copy = next(k for k in ckpt["state_dict"] if ".hypernet.w1" in k)
    ckpt["state_dict"][shared_copy] = ckpt["state_dict"][shared_copy] + 1
    torch.save(ckpt, tmp_path / "tampered.pt")
    result = main(["import-official", str(tmp_path / "tampered.pt"), "--w-encoder", str(w_file), "--out",
                   str(tmp_path / "b2")])
    assert result == 2 and "copies of the shared hypernetwork differ" in capsys.readouterr().err
    ckpt = torch.load(hs_file, weights_only=True)
    ckpt["state_dict"]["hypernet.refinement_blocks.0.extra"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "extra.pt")
    assert main(["import-official", str(tmp_path / "extra.pt"), "--w-encoder", str(w_file), "--out",
                 str(tmp_path / "b3")]) == 2
    assert "unexpected keys: ['refinement_blocks.0.extra']" in capsys.readouterr().err
    assert main(["import-official", str(hs_file), "--out", str(tmp_path / "b4")]) == 2
    assert "give its W encoder file too" in capsys.readouterr().err
    # A W encoder whose file holds another generator than the HyperStyle file's was taken (its codes then mean
    # nothing to the hypernetwork's generator).
    ckpt = torch.load(w_file, weights_only=True)
    ckpt["state_dict"]["decoder.style.1.weight"] = ckpt["state_dict"]["decoder.style.1.weight"] + 0.5
    torch.save(ckpt, tmp_path / "other_w_encoder.pt")
    assert main(["import-official", str(hs_file), "--w-encoder", str(tmp_path / "other_w_encoder.pt"), "--out",
                 str(tmp_path / "b5")]) == 2
    err = capsys.readouterr().err
    assert "other_w_encoder.pt: was trained with another generator than the one in hyperstyle_ffhq.pt" in err, err
    assert not (tmp_path / "b5").exists()


def test_released_files_of_the_other_official_settings_load(tiny_generator, tmp_path):
    # The official code reads an empty layers_to_tune as every layer, gives a separable model's ToRGB layers a 1x1
    # conv head (not a separable block), and always builds the shared hypernetwork, used or not: each of these
    # files was refused, and training refused layers_to_tune: [].
    for name, layers, separable in [("every-separable", (), True), ("no-shared", (1,), False)]:
        torch.manual_seed(0)
        method = HyperStyle.create(tiny_generator, layers=layers, separable=separable).eval()
        blocks = method.hypernetwork.refinement_blocks
        if separable:  # (the tiny generator's 3x3 layers are all shared ones)
            assert isinstance(blocks["1"].output[0], torch.nn.Conv2d)  # ToRGB: the official 1x1 conv head
        opts = {"layers_to_tune": "" if not layers else "1",
                "encoder_type": "SharedWeightsHyperNetResNetSeparable" if separable else "SharedWeightsHyperNetResNet"}
        (tmp_path / name).mkdir()
        hs_file, w_file = _official_files(tmp_path / name, method, torch.zeros(tiny_generator.w_dim), **opts)
        if name == "no-shared":
            ckpt = torch.load(hs_file, weights_only=True)
            assert method.hypernetwork.shared_weight_hypernet is None
            unused = HyperStyle.create(tiny_generator).hypernetwork.shared_weight_hypernet.state_dict()
            ckpt["state_dict"].update({f"hypernet.shared_weight_hypernet.{k}": v for k, v in unused.items()})
            torch.save(ckpt, hs_file)
        assert main(["import-official", str(hs_file), "--w-encoder", str(w_file), "--out",
                     str(tmp_path / name / "bundle")]) == 0, name
        pipe = InversionPipeline.from_pretrained(tmp_path / name / "bundle", device="cpu")
        loaded = pipe.inverter("hyperstyle").hypernetwork
        assert [t.index for t in loaded.config.targets] == [t.index for t in method.hypernetwork.config.targets]
        pair = torch.rand(1, 6, 64, 64, generator=torch.Generator().manual_seed(1))  # (the tiny hypernetwork's size)
        torgb = next(t.name for t in loaded.config.targets if t.index == 1)
        assert torch.allclose(loaded(pair).tensors[torgb], method.hypernetwork(pair).tensors[torgb])


def test_released_files_keep_the_1024_px_default_layers_to_tune(method, tmp_path, capsys):
    # The official default layers_to_tune lists the 1024-px generator's layers (up to 24), and the 256- and 512-px
    # releases (cars, AFHQ wild) keep it: the official code builds blocks only for its generator's layers and ignores
    # the rest. Such a file was refused ("layers [20, 21, 23, 24] do not exist").
    layers, count = method.hypernetwork.config.targets, len(method.generator.synthesis.layers())
    default = "0,2,3,5,6,8,9,11,12,14,15,17,18,20,21,23,24"
    assert count <= 24 and [t.index for t in layers] == [int(i) for i in default.split(",") if int(i) < count]
    hs_file, w_file = _official_files(tmp_path, method, torch.zeros(method.generator.w_dim), layers_to_tune=default)
    assert main(["import-official", str(hs_file), "--w-encoder", str(w_file), "--out", str(tmp_path / "b")]) == 0, \
        capsys.readouterr().err
    loaded = InversionPipeline.from_pretrained(tmp_path / "b", device="cpu").inverter("hyperstyle").hypernetwork
    assert [t.index for t in loaded.config.targets] == [t.index for t in layers]
    # Listing none of the generator's layers is still an error (an empty list means every layer).
    hs_file, w_file = _official_files(tmp_path, method, torch.zeros(method.generator.w_dim), layers_to_tune="23,24")
    assert main(["import-official", str(hs_file), "--w-encoder", str(w_file), "--out", str(tmp_path / "c")]) == 2
    assert "lists none of the generator's layers" in capsys.readouterr().err


def test_released_cars_files_read_the_cars_rows_and_feed_back_the_car(method, tmp_path, capsys):
    # The cars releases were refused. The official code reads the 192x256 car photo, both in its W encoder and as
    # the hypernetwork's target, and feeds back each image cropped to the car's rows and pooled to 192x256
    # (the W image: face_pool, then rows 32:224; later ones: rows 64:448, then AdaptiveAvgPool2d((192, 256))).
    # An earlier version fed back the whole square (car and black rows) squashed into 192x256.
    import torch.nn.functional as F

    latent_avg = torch.randn(method.generator.w_dim)
    hs_file, w_file = _official_files(tmp_path, method, latent_avg, dataset_type="cars_encode")
    assert main(["import-official", str(hs_file), "--w-encoder", str(w_file), "--out", str(tmp_path / "cars")]) == 0
    pipe = InversionPipeline.from_pretrained(tmp_path / "cars", device="cpu")
    assert pipe.content_rows == (0.125, 0.875) and pipe.inverter().hypernetwork.config.input_shape == (48, 64)
    G = method.generator
    official = HyperStyleNet(dataclasses.replace(method.hypernetwork.config, input_height=48)).eval()
    official.load_state_dict(method.hypernetwork.state_dict())  # the same weights, on 3:4 inputs
    x = images(2)
    with torch.no_grad():
        photo = F.interpolate(x[..., 4:28, :], size=(48, 64), mode="bilinear", align_corners=False)
        ws = (method.w_encoder(photo) + latent_avg)[:, None].repeat(1, G.num_ws, 1)
        image, delta = G.synthesis(ws, noise_mode="const"), None
        for _ in range(2):
            # (pool_to is the official AdaptiveAvgPool2d((192, 256)) on a release's 384x512 rows; here it enlarges)
            step = official(torch.cat([photo, pool_to(image[..., 4:28, :], (48, 64))], dim=1))
            delta = step if delta is None else delta.plus(step)
            image = G.synthesis(ws, weight_delta=delta, noise_mode="const")
        got = pipe.invert(x, iterations=2)
    torch.testing.assert_close(got.ws, ws, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.image, image, rtol=1e-4, atol=1e-4)
    # Its first pass as a method of its own reads the car's rows too (it read the whole square squashed).
    torch.testing.assert_close(pipe.invert(x, method="phase1").ws, ws, rtol=1e-5, atol=1e-5)
    # A cars hypernetwork with a faces W encoder (or the reverse) is refused.
    (tmp_path / "faces").mkdir()
    _, faces_w = _official_files(tmp_path / "faces", method, latent_avg, dataset_type="ffhq_encode")
    assert main(["import-official", str(hs_file), "--w-encoder", str(faces_w), "--out", str(tmp_path / "mixed")]) == 2
    assert "were trained on different domains" in capsys.readouterr().err
    ckpt = torch.load(w_file, weights_only=True)  # a W encoder file that does not say: it follows the hypernetwork
    torch.save({**ckpt, "opts": {}}, tmp_path / "unsaid.pt")
    assert main(["import-official", str(hs_file), "--w-encoder", str(tmp_path / "unsaid.pt"), "--out",
                 str(tmp_path / "cars2")]) == 0
    assert InversionPipeline.from_pretrained(tmp_path / "cars2", device="cpu").content_rows == (0.125, 0.875)


def test_training_lowers_the_loss_and_resumes_exactly(tiny_generator, tmp_path):
    from safetensors.torch import load_file

    from hyperinverter.io.gan import save_gan
    from hyperinverter.models.encoders import TrunkConfig
    from hyperinverter.training.hyperstyle import HyperStyleTrainingConfig, train_hyperstyle

    torch.manual_seed(4)
    save_gan(tmp_path / "gan", tiny_generator)
    save_pipeline(Phase1.create(tiny_generator), tmp_path / "phase1")
    with torch.no_grad():
        x = tiny_generator(torch.randn(8, 16, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    data = ((x + 1) * 127.5).round().to(torch.uint8)

    def config(run, steps, lr=1e-3, checkpoint_every=2):
        return HyperStyleTrainingConfig(
            run_dir=str(tmp_path / run), data="unused", generator=str(tmp_path / "gan"),
            w_encoder=str(tmp_path / "phase1"), steps=steps, batch_size=4, n_iters_per_batch=2, lr=lr,
            trunk=TrunkConfig("resnet", units=(1, 1, 1, 1), widths=(8, 16, 32, 64)), input_size=64,
            hyper_inner=8, refine_inner=8, hflip=False, log_every=5, val_every=1000, sample_every=1000,
            checkpoint_every=checkpoint_every, progress=False, tensorboard=False, device="cpu")

    result = train_hyperstyle(config("fit", 20, lr=5e-3, checkpoint_every=10), images=data, val_images=data[:4])
    losses = [h["loss/l2"] for h in result.history if "loss/l2" in h]
    assert losses[-1] < 0.8 * losses[0], losses
    assert any("loss/iteration_2" in h for h in result.history)
    bundle = InversionPipeline.from_pretrained(result.final_model, device="cpu")
    assert bundle.default_method == "hyperstyle" and "phase1" in bundle.methods

    train_hyperstyle(config("a", 6), images=data, val_images=data[:4])
    train_hyperstyle(config("b", 4), images=data, val_images=data[:4])
    train_hyperstyle(config("b", 6), images=data, val_images=data[:4])
    a = load_file(tmp_path / "a" / "checkpoints" / "checkpoint-00000006.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "checkpoint-00000006.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_layers_to_tune_the_generator_lacks_are_a_config_error(tiny_generator, tmp_path, capsys):
    # They failed as "layers [100] do not exist", naming neither layers_to_tune nor the config file.
    from hyperinverter.cli.main import main
    from hyperinverter.io.gan import save_gan

    save_gan(tmp_path / "gan", tiny_generator)
    config = tmp_path / "h.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path / 'data'}\ngenerator: {tmp_path / 'gan'}\n"
                      f"w_encoder: {tmp_path / 'none'}\nsteps: 1\ndevice: cpu\n")
    assert main(["train", "hyperstyle", "--config", str(config), "layers_to_tune=[100]"]) == 2
    assert (f"error: {config}: layers_to_tune: layers [100] do not exist: a 32-px generator has layers"
            in capsys.readouterr().err)


def test_ranger_centralises_gradients_and_looks_ahead():
    """Ranger = RAdam on centralised gradients, with a Lookahead every k steps: checked against a plain RAdam."""
    torch.manual_seed(0)
    target = torch.randn(4, 3)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    twin = torch.nn.Parameter(weight.detach().clone())  # plain RAdam on centralised gradients, no lookahead
    ranger = Ranger([weight], lr=0.1, k=3, alpha=0.5)
    radam = torch.optim.RAdam([twin], lr=0.1, betas=(0.95, 0.999), eps=1e-5)
    start = weight.detach().clone()
    for step in range(1, 4):
        for p, opt in ((weight, ranger), (twin, radam)):
            opt.zero_grad()
            (p - target).square().sum().backward()
            if opt is radam:
                p.grad.sub_(p.grad.mean(dim=1, keepdim=True))
            opt.step()
        if step < 3:
            assert torch.allclose(weight, twin)  # the same steps until the lookahead
        assert torch.allclose(weight.grad.mean(dim=1), torch.zeros(4), atol=1e-6)  # centralised
    slow = start + 0.5 * (twin.detach() - start)  # step 3: halfway back from where RAdam went
    assert torch.allclose(weight.detach(), slow) and torch.allclose(ranger.state[weight]["slow"], slow)
    assert ranger.state_dict()["state"][0]["lookahead_step"] == 3


def test_domain_adaptation_renders_with_a_fine_tuned_generator(method, tmp_path, capsys):
    from hyperinverter.io.gan import save_gan
    from hyperinverter.io.images import save_image

    pipe = InversionPipeline(method, device="cpu")
    pipe.save_pretrained(tmp_path / "bundle")
    styled = copy.deepcopy(method.generator)  # a stand-in for a fine-tuned copy
    with torch.no_grad():
        for name, p in styled.synthesis.named_parameters():
            if name.endswith(".bias"):
                p.add_(0.3)
    save_gan(tmp_path / "styled", styled)
    x = images(1)
    save_image(x, tmp_path / "in" / "face.png")
    assert main(["invert", str(tmp_path / "in"), "--model", str(tmp_path / "bundle"), "--render-with",
                 str(tmp_path / "styled"), "--adapt-from", "16", "--option", "iterations=2", "--out",
                 str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "face_adapted.png").is_file()
    assert main(["invert", str(tmp_path / "in"), "--model", str(tmp_path / "bundle"), "--render-with",
                 str(tmp_path / "styled"), "--adapt-from", str(2**70), "--out", str(tmp_path / "out2"),
                 "--device", "cpu"]) == 2  # (accepted: every offset dropped, a plain rendering named "adapted")
    assert not (tmp_path / "out2").exists()
    result = pipe.invert([tmp_path / "in" / "face.png"], iterations=2)
    adapted = pipe.adapt(result, styled, min_resolution=16)
    fine = {f"{layer.name}.weight" for layer in styled.synthesis.layers()
            if layer.kind == "conv" and layer.resolution >= 16}
    with torch.no_grad():  # the render's own kernels (without autograd a single image's coarse layers run batched)
        expected = styled.synthesis(result.ws, weight_delta=result.weight_delta.only(fine))
    assert torch.allclose(adapted, expected, atol=1e-6)
    assert not torch.allclose(adapted, pipe.render(result.ws, result.weight_delta), atol=1e-2)
    written = torch.from_numpy(__import__("numpy").asarray(__import__("PIL.Image").Image.open(
        tmp_path / "out" / "face_adapted.png"), dtype="float32")).permute(2, 0, 1)[None] / 127.5 - 1
    assert torch.allclose(written, adapted.clamp(-1, 1), atol=1 / 127)
    other = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=512,
                                      channel_max=32))
    save_gan(tmp_path / "wide", other)
    assert main(["invert", str(tmp_path / "in"), "--model", str(tmp_path / "bundle"), "--render-with",
                 str(tmp_path / "wide"), "--out", str(tmp_path / "out2"), "--device", "cpu"]) == 2
    assert "another architecture (channel_base, channel_max differ)" in capsys.readouterr().err
    # --adapt-from without --render-with was ignored without a word: a plain inversion, exit 0.
    assert main(["invert", str(tmp_path / "in"), "--model", str(tmp_path / "bundle"), "--adapt-from", "16",
                 "--out", str(tmp_path / "out3"), "--device", "cpu"]) == 2
    assert "error: --adapt-from: applies only with --render-with" in capsys.readouterr().err
    assert not (tmp_path / "out3").exists()


def test_a_rerun_with_another_rendering_generator_renders_again(method, tmp_path):
    # A re-run into the same --out with another --render-with generator or --adapt-from skipped every input as done,
    # keeping the old NAME_adapted.png; one without --render-with kept it too, and the strip that showed it.
    from PIL import Image

    from hyperinverter.io.files import written_by_us
    from hyperinverter.io.gan import save_gan
    from hyperinverter.io.images import save_image

    InversionPipeline(method, device="cpu").save_pretrained(tmp_path / "bundle")
    for name, shift in (("a", 0.3), ("b", 0.6)):
        styled = copy.deepcopy(method.generator)
        with torch.no_grad():
            for parameter_name, p in styled.synthesis.named_parameters():
                if parameter_name.endswith(".bias"):
                    p.add_(shift)
        save_gan(tmp_path / name, styled)
    save_image(images(1), tmp_path / "in" / "face.png")
    adapted = tmp_path / "out" / "face_adapted.png"

    def invert(*extra):
        assert main(["invert", str(tmp_path / "in"), "--model", str(tmp_path / "bundle"), "--option", "iterations=1",
                     "--out", str(tmp_path / "out"), "--device", "cpu", *extra]) == 0
        return adapted.read_bytes() if adapted.exists() else None

    first = invert("--render-with", str(tmp_path / "a"), "--adapt-from", "16")
    assert invert("--render-with", str(tmp_path / "a"), "--adapt-from", "16") == first  # (done: skipped)
    other = invert("--render-with", str(tmp_path / "b"), "--adapt-from", "16")
    assert other not in (None, first)
    assert invert("--render-with", str(tmp_path / "b"), "--adapt-from", "8") not in (None, other)
    assert invert() is None  # (a plain run: the earlier rendering of ours goes)
    adapted.write_bytes(first)  # (ours, yet not this run's: a plain run makes the picture again and removes it)
    assert invert() is None
    Image.new("RGB", (8, 8)).save(adapted)  # a user's file of that name is left alone
    assert not written_by_us(adapted) and invert() is not None


def test_training_starts_from_a_torchvision_resnet_file(tiny_generator, tmp_path):
    """backbone_init: a torchvision-layout ResNet file (3-channel stem) loads strictly into the 6-channel trunk:
    its RGB filters on the target's channels, N(0, 1) on ŷ's, as the official stem."""
    from hyperinverter.convert.backbones import _trunk_of, torchvision_resnet_key_map
    from hyperinverter.io.gan import save_gan
    from hyperinverter.models.encoders import TrunkConfig
    from hyperinverter.training.hyperstyle import HyperStyleTrainingConfig, train_hyperstyle

    trunk = TrunkConfig("resnet", units=(1, 1, 1, 1), widths=(8, 16, 32, 64))
    torch.manual_seed(7)
    donor = WEncoder(WEncoderConfig(trunk=trunk, in_channels=3, w_dim=16))
    ours = donor.state_dict()
    file = {tv: ours[key].clone() for tv, key in torchvision_resnet_key_map(_trunk_of(donor)).items()}
    file["fc.weight"] = torch.zeros(10, 64)  # the classifier, skipped
    torch.save(file, tmp_path / "resnet.pth")
    save_gan(tmp_path / "gan", tiny_generator)
    save_pipeline(Phase1.create(tiny_generator), tmp_path / "phase1")
    data = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    cfg = HyperStyleTrainingConfig(
        run_dir=str(tmp_path / "run"), data="unused", generator=str(tmp_path / "gan"),
        w_encoder=str(tmp_path / "phase1"), steps=1, batch_size=4, n_iters_per_batch=1, lr=0.0, trunk=trunk,
        input_size=64, hyper_inner=8, refine_inner=8, backbone_init=str(tmp_path / "resnet.pth"),
        val_every=1000, sample_every=1000, progress=False, tensorboard=False, device="cpu")
    result = train_hyperstyle(cfg, images=data, val_images=data[:2])
    net = InversionPipeline.from_pretrained(result.final_model, device="cpu").inverter("hyperstyle").hypernetwork
    trained = net.state_dict()
    assert torch.equal(trained["conv1.weight"][:, :3], ours["conv1.weight"])  # RGB filters on x
    extra = trained["conv1.weight"][:, 3:]  # ŷ's channels: N(0, 1), where the module's own init is far smaller
    assert 0.9 < float(extra.std()) < 1.1 and abs(float(extra.mean())) < 0.1, (extra.std(), extra.mean())
    for tv, key in torchvision_resnet_key_map(_trunk_of(donor)).items():
        if key != "conv1.weight" and "running" not in key and "num_batches" not in key:
            assert torch.equal(trained[key], ours[key]), key
    file["layer1.0.conv1.weight"] = file["layer1.0.conv1.weight"][:, :4]  # a file of another network
    torch.save(file, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="layer1.0.conv1.weight|body.0.conv1.weight"):
        train_hyperstyle(HyperStyleTrainingConfig(**{**cfg.__dict__, "run_dir": str(tmp_path / "bad"),
                                                     "backbone_init": str(tmp_path / "bad.pth")}),
                         images=data, val_images=data[:2])


def test_join_holds_once_a_w_encoder_two_bundles_share(tiny_generator, tmp_path):
    # A HyperStyle trained from a bundle's Phase I, saved as a bundle of its own and joined back: its W encoder,
    # the same weights as the Phase I's, was written into the joined bundle twice.
    from conftest import build_tiny_pipeline

    build_tiny_pipeline(tiny_generator).save_pretrained(tmp_path / "hyper")
    phase1 = copy.deepcopy(InversionPipeline.from_pretrained(tmp_path / "hyper", device="cpu").methods["phase1"])
    torch.manual_seed(0)
    hyperstyle = HyperStyle(phase1.generator, w_encoder=phase1.w_encoder, encoder_resolution=64,
                            hypernetwork=HyperStyle.create(phase1.generator).hypernetwork)
    InversionPipeline({"phase1": phase1, "hyperstyle": hyperstyle}, device="cpu").save_pretrained(tmp_path / "hs")
    assert main(["join", str(tmp_path / "hyper"), str(tmp_path / "hs"), "--out", str(tmp_path / "all")]) == 0
    joined = InversionPipeline.from_pretrained(tmp_path / "all", device="cpu")
    assert joined.methods["hyperstyle"].w_encoder is joined.methods["phase1"].w_encoder
    assert sorted(p.name for p in (tmp_path / "all").iterdir() if (p / "config.json").is_file()) == [
        "feature_encoder", "generator", "hypernetwork", "hyperstyle_hypernetwork", "w_encoder"]
    x = images(1)
    alone = InversionPipeline.from_pretrained(tmp_path / "hs", device="cpu").invert(x, method="hyperstyle")
    assert torch.equal(joined.invert(x, method="hyperstyle").image, alone.image)
