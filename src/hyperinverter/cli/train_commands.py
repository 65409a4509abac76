"""``hyperinverter train {generator,w-encoder,hypernetwork}``: YAML config + ``key=value`` overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

TRAINERS = {
    # name: (module, config class, train function, help)
    "generator": ("hyperinverter.training.gan", "GeneratorTrainingConfig", "train_generator",
                  "StyleGAN2 for a small domain (optionally warm-started by distillation)"),
    "w-encoder": ("hyperinverter.training.inversion", "InversionTrainingConfig", "train_w_encoder",
                  "Phase I: the W encoder E1"),
    "hypernetwork": ("hyperinverter.training.inversion", "InversionTrainingConfig", "train_hypernetwork",
                     "Phase II: the feature encoder and the hypernetworks, E1 and G frozen"),
}


def register(sub) -> None:
    p = sub.add_parser("train", help="train a generator, a W encoder (Phase I) or hypernetworks (Phase II)")
    kinds = p.add_subparsers(dest="trainer", metavar="TRAINER", required=True)
    for name, (_, _, _, help_text) in TRAINERS.items():
        q = kinds.add_parser(name, help=help_text,
                             description=f"{help_text}. Runs under torchrun for several processes/GPUs.")
        q.add_argument("--config", type=Path, help="YAML config (see configs/)")
        q.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                       help="continue from the run folder's latest readable checkpoint (the default), or refuse "
                       "to start over a run folder that has checkpoints (--no-resume)")
        q.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=1000 lr_g=0.002")
        q.set_defaults(func=run_train, trainer_name=name)


def run_train(args: argparse.Namespace) -> int:
    import importlib

    from ..training.config import load_config

    module_name, cls_name, fn_name, _ = TRAINERS[args.trainer_name]
    module = importlib.import_module(module_name)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"resume={str(args.resume).lower()}")
    cfg = load_config(getattr(module, cls_name), args.config, overrides)
    result = getattr(module, fn_name)(cfg)
    if result.final_model is not None:
        print(f"trained {result.steps} steps; model written to {result.final_model}")
    return 0
