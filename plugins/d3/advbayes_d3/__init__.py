"""advbayes-d3: diversity penalties over posterior draws (Defense through Diverse Directions)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from advbayes import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_defenses(register: Any) -> None:
    """d3."""
    from advbayes_d3.defenses import D3

    register(D3)


@hookimpl
def register_metrics(register: Any) -> None:
    """obfuscation."""
    from advbayes_d3.metrics import Obfuscation

    register(Obfuscation)


@hookimpl
def evaluation_finished(run: Any, attack_label: str, records: Any, figures: Any) -> None:
    """Say it loudly when an attack's black-box accuracy is clearly below its white-box accuracy."""
    for record in records:
        if record.metrics.get("obfuscation_flag", 0.0) > 0:
            warnings.warn(
                f"{run.experiment} / {run.spec['defense']['name']}: at eps {record.eps:g}, transfer accuracy "
                f"{record.metrics['black_box_accuracy']:.3f} is clearly below {attack_label} accuracy "
                f"{record.metrics['white_box_accuracy']:.3f}: the white-box attack is likely obfuscated",
                ObfuscationWarning,
                stacklevel=2,
            )


class ObfuscationWarning(UserWarning):
    """Black-box accuracy clearly below white-box accuracy: the authors' own sign of obfuscated gradients."""


@hookimpl
def registry_files() -> Path:
    """The paper's MNIST variants."""
    return Path(__file__).with_name("registry.toml")
