"""The experiment: which data set, model, defense, attacks, budgets and metrics make one run."""

from __future__ import annotations

import math
from typing import Any

import attrs

from advbayes.params import SEED_LIMIT, ParamError, entry_list_param, entry_param, list_param, param

OPTIMIZERS = ("adam", "adamw", "sgd", "ivon")


@attrs.frozen(kw_only=True)
class Experiment:
    """A run composed from registry entries: train `model` on `dataset` with `defense`, then attack it."""

    dataset: Any = entry_param("datasets", optional=False, help="data set entry")
    model: Any = entry_param("models", optional=False, help="model entry")
    defense: Any = entry_param("defenses", None, help="defense entry (default: standard)")
    defenses: list[Any] = entry_list_param(
        "defenses", (), help="several defenses, each trained and attacked as its own run"
    )
    attacks: list[Any] = entry_list_param("attacks", ("none",), nonempty=True, help="attack entries to evaluate")
    eps: tuple[float, ...] = list_param((), ge=0.0, help="budgets; empty = each attack's own eps")
    attack_samples: tuple[int, ...] = list_param(
        (), kind=int, ge=1, help="S_A sweep: each value re-runs every attack (a child run each)"
    )
    inference_samples: tuple[int, ...] = list_param(
        (), kind=int, ge=1, help="S_I sweep: each value re-evaluates every attack"
    )
    metrics: list[Any] = entry_list_param("metrics", ("accuracy",), nonempty=True, help="metric entries")
    epochs: int = param(1, kind=int, ge=0, help="training epochs (the cap when until_converged is true)")
    until_converged: bool = param(
        False, kind=bool, help="stop training at the first epoch the posterior has converged (epochs is the cap)"
    )
    convergence_tol: float = param(
        0.02, gt=0.0, lt=1.0, help="converged: width and loss changed by less than this (relative) over the window"
    )
    convergence_window: int = param(5, kind=int, ge=1, le=1000, help="epochs over which convergence is judged")
    seed: int = param(0, kind=int, ge=0, le=SEED_LIMIT, help="seed of python, numpy and torch")
    seeds: tuple[int, ...] = list_param(
        (), kind=int, ge=0, le=SEED_LIMIT, help="run once per seed (a run each); tables give mean +- sd"
    )
    batch_size: int = param(128, kind=int, ge=1, help="training batch size")
    eval_batch_size: int = param(256, kind=int, ge=1, help="evaluation batch size")
    optimizer: str | None = param(None, kind=str, choices=OPTIMIZERS, optional=True, help="default: the defense's")
    lr: float | None = param(None, gt=0.0, optional=True, help="learning rate; default: the defense's")
    scale_lr: float | None = param(
        None,
        gt=0.0,
        optional=True,
        help="learning rate of the posterior's log-sigma parameters; default: the defense's",
    )
    ivon_beta2: float = param(
        0.999, gt=0.0, lt=1.0, help="IVON's Hessian averaging (ivon-opt's default 0.99999 pins the width)"
    )
    ivon_clip_radius: float = param(
        math.inf, gt=0.0, infinite=True, help="IVON's bound on each mean's step (ivon-opt's default: no bound)"
    )
    weight_decay: float = param(0.0, ge=0.0, help="weight decay")
    momentum: float = param(0.9, ge=0.0, lt=1.0, help="SGD momentum")
    description: str = param("", kind=str, help="one line shown by `advbayes list`")

    def __attrs_post_init__(self) -> None:
        if self.defense is not None and self.defenses:
            raise ParamError("defenses", "either `defense` or `defenses`, not both", self.defenses)
        if self.defense is None and not self.defenses:
            object.__setattr__(self, "defense", "standard")
