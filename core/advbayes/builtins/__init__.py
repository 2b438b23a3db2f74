"""The built-in plugin: the components that make a run work with no other plugin installed."""

from __future__ import annotations

from typing import Any

from advbayes.builtins.attacks import NoAttack
from advbayes.builtins.datasets import HalfMoons
from advbayes.builtins.defenses import Standard
from advbayes.builtins.metrics import Accuracy
from advbayes.builtins.models import MLP
from advbayes.hookspecs import hookimpl


@hookimpl
def register_datasets(register: Any) -> None:
    """half-moons."""
    register(HalfMoons)


@hookimpl
def register_models(register: Any) -> None:
    """mlp."""
    register(MLP)


@hookimpl
def register_defenses(register: Any) -> None:
    """standard."""
    register(Standard)


@hookimpl
def register_attacks(register: Any) -> None:
    """none."""
    register(NoAttack)


@hookimpl
def register_metrics(register: Any) -> None:
    """accuracy."""
    register(Accuracy)
