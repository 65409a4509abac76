"""Trainers, all on the one loop of :mod:`.loop`. ``TRAINERS``: the ones the command line offers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Trainer:
    """A trainer the CLI offers: ``load()`` -> (its config class, its train function), imported on use."""

    help: str
    load: Callable[[], tuple[type, Callable[..., Any]]]


def _generator():
    from .gan import GeneratorTrainingConfig, train_generator

    return GeneratorTrainingConfig, train_generator


def _w_encoder():
    from .inversion import InversionTrainingConfig, train_w_encoder

    return InversionTrainingConfig, train_w_encoder


def _hypernetwork():
    from .inversion import InversionTrainingConfig, train_hypernetwork

    return InversionTrainingConfig, train_hypernetwork


def _hyperstyle():
    from .hyperstyle import HyperStyleTrainingConfig, train_hyperstyle

    return HyperStyleTrainingConfig, train_hyperstyle


def _psp():
    from .psp import PspTrainingConfig, train_psp

    return PspTrainingConfig, train_psp


def _e2style():
    from .e2style import E2StyleTrainingConfig, train_e2style

    return E2StyleTrainingConfig, train_e2style


TRAINERS: dict[str, Trainer] = {
    "generator": Trainer("StyleGAN2 for a small domain (optionally warm-started by distillation)", _generator),
    "w-encoder": Trainer("HyperInverter Phase I: the W encoder E1", _w_encoder),
    "hypernetwork": Trainer("HyperInverter Phase II: the feature encoder and the hypernetworks, E1 and G frozen",
                            _hypernetwork),
    "hyperstyle": Trainer("HyperStyle: its hypernetwork on a frozen W encoder (a Phase I bundle)", _hyperstyle),
    "psp": Trainer("pSp or e4e (mode: e4e): a W+ encoder, G frozen", _psp),
    "e2style": Trainer("E2Style: one stage per run (stage > 1 refines init_from's frozen stages); a restoration "
                       "task (inpainting, sr4, colorization...) with 'task'", _e2style),
}
