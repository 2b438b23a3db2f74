"""advbayes-advbnn: BNN, Adv-BNN, adversarial training, an HMC reference posterior and weight statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advbayes import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_defenses(register: Any) -> None:
    """bnn, adv-bnn, adversarial-training, hmc."""
    from advbayes_advbnn.defenses import BNN, AdvBNN, AdversarialTraining
    from advbayes_advbnn.hmc import HMCDefense

    for defense in (BNN, AdvBNN, AdversarialTraining, HMCDefense):
        register(defense)


@hookimpl
def register_metrics(register: Any) -> None:
    """weight-stats."""
    from advbayes_advbnn.metrics import WeightStats

    register(WeightStats)


@hookimpl
def registry_files() -> Path:
    """The paper's defense entries and the advbnn-mnist-5k experiment."""
    return Path(__file__).with_name("registry.toml")
