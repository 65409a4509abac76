"""``hyperinverter train TRAINER``: a YAML config + ``key=value`` overrides (trainers: ``training.TRAINERS``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training import TRAINERS


def register(sub) -> None:
    p = sub.add_parser("train", help="train a generator or an inversion method on the shared training loop")
    kinds = p.add_subparsers(dest="trainer", metavar="TRAINER", required=True)
    for name, trainer in TRAINERS.items():
        q = kinds.add_parser(name, help=trainer.help,
                             description=f"{trainer.help}. Runs under torchrun for several processes/GPUs.")
        q.add_argument("--config", type=Path, help="YAML config (see configs/)")
        q.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                       help="continue from the run folder's latest readable checkpoint (the default), or refuse "
                       "to start over a run folder that has checkpoints (--no-resume)")
        q.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=1000 lr_g=0.002")
        q.set_defaults(func=run_train, trainer_name=name)


def run_train(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, naming
    from ..training.config import load_config

    config_class, train = TRAINERS[args.trainer_name].load()
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"resume={str(args.resume).lower()}")
    try:
        result = train(load_config(config_class, args.config, overrides))
    except ConfigError as e:  # (a trainer's own check of its config: named with the file, as load_config's are)
        raise naming(e, args.config) if args.config is not None else e from None
    if result.final_model is not None:
        print(f"trained {result.steps} steps; model written to {result.final_model}")
    return 0
