"""The YAML presets under configs/: every file parses strictly into its trainer's config, and the official
Phase II presets hold the numbers of the official HyperInverter scripts.

The official numbers are those of the shipped training scripts as read from VinAIResearch/HyperInverter
(sample_scripts/*.sh, training/coach.py); they are quoted in the team's reference note on the official code
(section 4, "Hyperparameters of the shipped scripts").
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from hyperinverter.cli.main import main
from hyperinverter.config_base import decode, encode
from hyperinverter.models.encoders import TrunkConfig
from hyperinverter.training import TRAINERS
from hyperinverter.training.config import ConfigError, load_config
from hyperinverter.training.inversion import InversionTrainingConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = {"ffhq-1024": CONFIGS / "ffhq-1024.yaml", "church-256": CONFIGS / "church-256.yaml"}
PATH_KEYS = ("data", "generator", "w_encoder")

# File name -> the trainer (`hyperinverter train NAME`) it is written for.
TRAINER_OF_STEM = {"generator": "generator", "w-encoder": "w-encoder", "hypernetwork": "hypernetwork",
                   "ffhq-1024": "hypernetwork", "church-256": "hypernetwork", "hyperstyle": "hyperstyle",
                   "discriminator": "generator", "sketch-generator": "generator", "psp": "psp", "e4e": "psp",
                   **{f"e2style-{run}": "e2style" for run in ("stage1", "stage2", "stage3", "sr2", "sr4", "sr8", "sr16",
                                                                "inpainting", "colorization", "denoising")}}
CONFIG_CLASS = {name: trainer.load()[0] for name, trainer in TRAINERS.items()}

ALL_YAML = sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))


def _id(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def test_the_presets_exist():
    assert all(p.is_file() for p in PRESETS.values())
    assert set(PRESETS.values()) <= set(ALL_YAML)


@pytest.mark.parametrize("path", ALL_YAML, ids=_id)
def test_every_yaml_parses_into_its_config_without_unknown_keys(path):
    stem = path.stem
    assert stem in TRAINER_OF_STEM, f"{_id(path)}: add its trainer to TRAINER_OF_STEM in this test"
    cls = CONFIG_CLASS[TRAINER_OF_STEM[stem]]
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data, f"{_id(path)} is not a mapping"
    fields = {f.name for f in dataclasses.fields(cls)}
    assert not set(data) - fields, f"{_id(path)}: unknown keys {sorted(set(data) - fields)}"
    cfg = load_config(cls, path)  # strict: types checked, __post_init__ run
    plain = encode(cfg)  # nested configs as mappings, tuples as lists
    for key, value in data.items():
        got = plain[key]
        assert (got if not isinstance(value, dict) else {k: got[k] for k in value}) == value, key


def test_unknown_keys_are_rejected():
    # The strictness the test above relies on.
    with pytest.raises(ConfigError, match="hidden_dims"):
        load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], ["hidden_dims=64"])


def test_a_bad_optional_value_says_why():
    # An optional nested config said only "{'resolution': 48} does not fit GeneratorConfig | None".
    from hyperinverter.training.gan import GeneratorTrainingConfig

    with pytest.raises(ConfigError, match=r"generator: resolution must be a power of two in \[8, 2048\], got 48"):
        decode(GeneratorTrainingConfig, {"run_dir": "r", "data": "d", "steps": 1, "generator": {"resolution": 48}})
    with pytest.raises(ConfigError, match="adv_start must be a step \\(0 or more\\), got -3"):
        load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], ["adv_start=-3"])  # (an internal error)


@pytest.mark.parametrize("override, message", [
    ("steps.x=1", r"^override 'steps.x=1': steps holds 500000, not a config of its own keys$"),
    ("hflip.x.y=1", r"^override 'hflip.x.y=1': hflip holds True, not a config of its own keys$"),
    ("=5", r"^override '=5': needs a key before '='"),
    ("steps=[1", r"^override 'steps=\[1': its value is not a YAML scalar, list or mapping \(expected ','"),
    ("steps=!!python/object/apply:os.system", r"its value is not a YAML .* constructor for the tag"),
])
def test_overrides_that_were_internal_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], [override, "seed=1"])


def test_a_bad_value_given_on_the_command_line_is_named_with_the_file():
    # It was blamed on the file alone ("w-encoder.yaml: val_every must be >= 1, got 0"), where val_every is 250.
    with pytest.raises(ConfigError, match=r"ffhq-1024.yaml with val_every=0: .*val_every must be >= 1, got 0"):
        load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], ["steps=5", "val_every=0"])
    with pytest.raises(ConfigError, match=r"ffhq-1024.yaml with keep_checkpoints=-1: .*must be >= 0 \(0 keeps every"):
        load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], ["keep_checkpoints=-1"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_paths_are_placeholders_that_overrides_replace(name, tmp_path):
    cfg = load_config(InversionTrainingConfig, PRESETS[name])
    for key in PATH_KEYS:
        assert getattr(cfg, key).startswith("/path/to/"), f"{name}: {key} should be a placeholder"
    overrides = [f"{key}={tmp_path / key}" for key in PATH_KEYS] + ["steps=10"]
    cfg = load_config(InversionTrainingConfig, PRESETS[name], overrides)
    assert [getattr(cfg, key) for key in PATH_KEYS] == [str(tmp_path / key) for key in PATH_KEYS]
    assert cfg.steps == 10


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_cli_hands_the_preset_to_the_hypernetwork_trainer(name, tmp_path, monkeypatch, capsys):
    from hyperinverter.training import TRAINERS, Trainer
    from hyperinverter.training.loop import TrainingResult

    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        return TrainingResult(tmp_path, tmp_path / "final", None, cfg.steps)

    monkeypatch.setitem(TRAINERS, "hypernetwork", Trainer("", lambda: (InversionTrainingConfig, fake_train)))
    code = main(["train", "hypernetwork", "--config", str(PRESETS[name]), f"data={tmp_path}", "w_encoder=e1/"])
    assert code == 0
    (cfg,) = seen
    assert cfg.data == str(tmp_path) and cfg.w_encoder == "e1/"
    assert cfg == load_config(InversionTrainingConfig, PRESETS[name], [f"data={tmp_path}", "w_encoder=e1/"])


# Official Phase II numbers (reference note, section 4 table; D = hidden_dim of the released scripts).
OFFICIAL_COMMON = {
    "steps": 500_000,
    "loss_resolution": 256,  # L2, LPIPS and ID on AdaptiveAvgPool2d(256) images
    "l2_weight": 1.0,
    "lpips_weight": 0.8,
    "lpips_net": "alex",
    "lr": 1e-4,
    "lr_d": 1e-4,
    "betas_d": (0.9, 0.999),  # the discriminator's plain Adam, no lazy rescaling
    "lazy_d": False,
    "r1_interval": 16,
    "batch_size": 8,
    "hidden_dim": 128,
    "targets": "conv_without_bias",
    "feature_channels": 512,
    "feature_size": 8,
    "regressor_width": 64,
    "val_every": 1000,
    "checkpoint_every": 5000,
    "seed": 2107,
    "hflip": True,
}
OFFICIAL = {
    "ffhq-1024": {**OFFICIAL_COMMON, "trunk": TrunkConfig("ir_se", 50), "id_weight": 0.1,
                  "adv_weight": 0.005, "adv_start": 200_000, "r1_gamma": 10.0},
    # MoCo (0.5) is not implemented here: no identity term for churches.
    "church-256": {**OFFICIAL_COMMON, "trunk": TrunkConfig("resnet", 34), "id_weight": 0.0,
                   "adv_weight": 0.15, "adv_start": 100_000, "r1_gamma": 100.0},
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_holds_the_official_numbers(name):
    cfg = load_config(InversionTrainingConfig, PRESETS[name])
    for key, value in OFFICIAL[name].items():
        assert getattr(cfg, key) == value, f"{name}: {key} = {getattr(cfg, key)!r}, official {value!r}"
    assert cfg.trunk.widths == (64, 128, 256, 512)
    assert cfg.grad_accum == 1
    assert cfg.dfeat_weight == 0.0  # official losses only; the offline substitute is opt-in
    assert 0 < cfg.val_fraction <= 0.05  # model selection on a validation split, never the test set


def test_ffhq_identity_term_is_the_official_arcface_on_the_psp_crop():
    from hyperinverter.losses.identity import FFHQ_CROP, IDENTITY_MODELS

    cfg = load_config(InversionTrainingConfig, PRESETS["ffhq-1024"])
    assert cfg.id_model == "arcface" and cfg.id_model in IDENTITY_MODELS
    assert cfg.id_weight == 0.1 and cfg.id_samples is None
    assert cfg.id_crop == FFHQ_CROP
    # At the official 256 px loss resolution the crop is exactly pSp's x[:, :, 35:223, 32:220].
    top, bottom, left, right = (round(f * cfg.loss_resolution) for f in cfg.id_crop)
    assert (top, bottom, left, right) == (35, 223, 32, 220)
    # The offline switch the header offers is a valid config too.
    assert load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], ["id_model=sface"]).id_model == "sface"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_header_lists_the_deviations(name):
    header = "\n".join(line for line in PRESETS[name].read_text().splitlines() if line.startswith("#"))
    assert "Deviations from the official code" in header
    for topic in ("validation split", "LPIPS needs local files", "batch stays 8", "backbone_init", "memory",
                  "preload"):
        assert topic in header, f"{name}: the header does not mention {topic!r}"
    assert ("MoCo" in header) == (name == "church-256")
    assert "SFace" in header


# Trainable parameters of the official architectures at D=128, in millions (reference note, section 3.3,
# derived from the official code): (E2, hypernetworks, number of target layers).
OFFICIAL_SIZES = {"ffhq-1024": (1024, 135.0, 184.7, 26), "church-256": (256, 97.0, 171.6, 20)}


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_preset_builds_the_official_architecture(name):
    import torch

    from hyperinverter.models.encoders import FeatureEncoder, FeatureEncoderConfig
    from hyperinverter.models.hypernetwork import HyperNetwork
    from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

    resolution, e2_millions, hyper_millions, n_targets = OFFICIAL_SIZES[name]
    cfg = load_config(InversionTrainingConfig, PRESETS[name])
    with torch.device("meta"):  # shapes only: nothing is allocated
        G = Generator(GeneratorConfig(resolution=resolution, channel_base=32768, channel_max=512))  # StyleGAN2 config-f
        # Built as the Phase II trainer builds them (E1's input size is 256 for the official W encoders).
        e2 = FeatureEncoder(FeatureEncoderConfig(trunk=cfg.trunk, input_size=256, n_styles=G.num_ws,
                                                 feature_channels=cfg.feature_channels, feature_size=cfg.feature_size))
        hyper = HyperNetwork.from_generator(G, targets=cfg.targets, feature_channels=cfg.feature_channels,
                                            feature_size=cfg.feature_size, hidden_dim=cfg.hidden_dim,
                                            inner_channels=cfg.regressor_width)

    def millions(module):
        return round(sum(p.numel() for p in module.parameters()) / 1e6, 1)

    assert millions(e2) == e2_millions
    assert millions(hyper) == hyper_millions
    assert len(hyper.config.targets) == n_targets


@pytest.mark.parametrize("override, message", [
    ("l2_weight=-1", "l2_weight must be >= 0, got -1"),
    ("r1_gamma=-0.5", "r1_gamma must be >= 0, got -0.5"),
    ("lr=-0.1", "lr must be >= 0, got -0.1"),
    ("lr_d=-1e-4", "lr_d must be >= 0, got -0.0001"),
    ("r1_interval=0", "r1_interval must be >= 1, got 0"),
    ("hidden_dim=0", "hidden_dim must be >= 1, got 0"),
    ("synthetic_fraction=2", r"synthetic_fraction must be in \[0, 1\], got 2"),
    ("id_samples=0", "id_samples must be >= 1, got 0"),
    ("betas_d=[0.0, 1.0]", r"betas_d must each be in \[0, 1\), got \[0.0, 1.0\]"),
    ("grad_accum=7", "batch_size 8 is not divisible by grad_accum=7"),  # (refused after the images were read)
])
def test_numbers_out_of_range_are_refused(override, message):
    # A negative loss weight or penalty, a zero interval or width were taken as they came (negative weights train
    # away from the target, r1_interval=0 divided by zero at the adversarial stage).
    with pytest.raises(ConfigError, match=rf"with {re.escape(override)}: .*{message}"):
        load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], [override])


def test_every_trainer_s_numbers_are_checked_by_name():
    from hyperinverter.training.gan import GeneratorTrainingConfig
    from hyperinverter.training.hyperstyle import HyperStyleTrainingConfig

    base = {"run_dir": "r", "data": "d", "steps": 1, "generator": {"resolution": 16}}
    for key, value, message in [("style_mixing", 2.0, r"style_mixing must be in \[0, 1\]"),
                                ("ema_kimg", -1.0, "ema_kimg must be >= 0"),
                                ("pl_interval", 0, "pl_interval must be >= 1"),
                                ("betas", [2.0, 3.0], r"betas must each be in \[0, 1\), got \[2.0, 3.0\]"),
                                ("lr_g", -1.0, "lr_g must be >= 0")]:
        with pytest.raises(ConfigError, match=message):
            decode(GeneratorTrainingConfig, {**base, key: value})
    hyperstyle = {"run_dir": "r", "data": "d", "steps": 1, "generator": "g", "w_encoder": "w"}
    with pytest.raises(ConfigError, match="n_iters_per_batch must be >= 1, got 0"):
        decode(HyperStyleTrainingConfig, {**hyperstyle, "n_iters_per_batch": 0})
    # As the official code (and docs/training.md): no layers given means every layer, ToRGB included.
    assert decode(HyperStyleTrainingConfig, {**hyperstyle, "layers_to_tune": []}).layers_to_tune == ()


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4 as the string '1e-4': `lr=1e-4` and `lr: 1e-4` were "expected a number".
    config = load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], ["lr=1e-4", "lr_d=2E-5", "r1_gamma=1e1"])
    assert (config.lr, config.lr_d, config.r1_gamma) == (1e-4, 2e-5, 10.0)
    with pytest.raises(ConfigError, match="steps: expected an integer, got '1e3'"):  # counts stay integers
        load_config(InversionTrainingConfig, PRESETS["ffhq-1024"], ["steps=1e3"])


BUNDLED = Path(__file__).resolve().parent.parent / "src" / "hyperinverter" / "bundled"


def _repo_preset(bundled: Path) -> Path:
    domain = {"faces-64": "faces64", "faces-64-sr4": "faces64", "fashion-32": "fashion32"}[bundled.parent.parent.name]
    # (a bundle's E2Style is its last stage's run)
    return CONFIGS / domain / ("e2style-stage3.yaml" if bundled.name == "e2style.yaml" else bundled.name)


@pytest.mark.parametrize("path", sorted(p for p in BUNDLED.glob("*/configs/*.yaml") if _repo_preset(p).is_file()),
                         ids=lambda p: p.relative_to(BUNDLED).as_posix())
def test_a_bundled_config_trains_as_the_model_was_trained(path):
    # A model card says that its resolved configs repeat the run. They were resolved before some keys existed
    # whose default is now the official one, where the presets state what the bundle was trained with: the
    # discriminator's StyleGAN2 lazy Adam (betas_d, lazy_d), and fixed noise maps (random_noise) for pSp, e4e and
    # E2Style. Without those keys the bundled configs trained otherwise.
    cls = CONFIG_CLASS[TRAINER_OF_STEM[_repo_preset(path).stem]]
    bundled, preset = load_config(cls, path), load_config(cls, _repo_preset(path))
    for key in ("betas_d", "lazy_d", "random_noise"):
        if hasattr(preset, key):
            assert getattr(bundled, key) == getattr(preset, key), key
