"""advbayes-rse: an example third-party plugin adding the Random Self-Ensemble defense."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advbayes import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_defenses(register: Any) -> None:
    """rse."""
    from advbayes_rse.defense import RandomSelfEnsemble

    register(RandomSelfEnsemble)


@hookimpl
def registry_files() -> Path:
    """Named entries and an experiment using the defense."""
    return Path(__file__).with_name("registry.toml")
