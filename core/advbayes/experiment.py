"""The experiment: which data set, model, defense, attacks, budgets and metrics make one run."""

from __future__ import annotations

from typing import Any

import attrs

from advbayes.params import SEED_LIMIT, ParamError, entry_list_param, entry_param, list_param, param

OPTIMIZERS = ("adam", "adamw", "sgd")


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
    epochs: int = param(1, kind=int, ge=0, help="training epochs")
    seed: int = param(0, kind=int, ge=0, le=SEED_LIMIT, help="seed of python, numpy and torch")
    seeds: tuple[int, ...] = list_param(
        (), kind=int, ge=0, le=SEED_LIMIT, help="run once per seed (a run each); tables give mean +- sd"
    )
    batch_size: int = param(128, kind=int, ge=1, help="training batch size")
    eval_batch_size: int = param(256, kind=int, ge=1, help="evaluation batch size")
    optimizer: str | None = param(None, kind=str, choices=OPTIMIZERS, optional=True, help="default: the defense's")
    lr: float | None = param(None, gt=0.0, optional=True, help="learning rate; default: the defense's")
    weight_decay: float = param(0.0, ge=0.0, help="weight decay")
    momentum: float = param(0.9, ge=0.0, lt=1.0, help="SGD momentum")
    description: str = param("", kind=str, help="one line shown by `advbayes list`")

    def __attrs_post_init__(self) -> None:
        if self.defense is not None and self.defenses:
            raise ParamError("defenses", "either `defense` or `defenses`, not both", self.defenses)
        if self.defense is None and not self.defenses:
            object.__setattr__(self, "defense", "standard")
