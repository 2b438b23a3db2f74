"""The built-in plugin: the components that make a run work with no other plugin installed.

Like every plugin, it imports its components inside the hooks: loading plugins must stay cheap, because the CLI's
--help and shell completion load them and never need a component (or torch).
"""

from __future__ import annotations

from typing import Any

from advbayes.hookspecs import hookimpl


@hookimpl
def register_datasets(register: Any) -> None:
    """half-moons."""
    from advbayes.builtins.datasets import HalfMoons

    register(HalfMoons)


@hookimpl
def register_models(register: Any) -> None:
    """mlp."""
    from advbayes.builtins.models import MLP

    register(MLP)


@hookimpl
def register_defenses(register: Any) -> None:
    """standard."""
    from advbayes.builtins.defenses import Standard

    register(Standard)


@hookimpl
def register_attacks(register: Any) -> None:
    """none."""
    from advbayes.builtins.attacks import NoAttack

    register(NoAttack)


@hookimpl
def register_metrics(register: Any) -> None:
    """accuracy."""
    from advbayes.builtins.metrics import Accuracy

    register(Accuracy)
