"""advbayes-hvi: hierarchical variational inference with the enhanced Bayesian regularizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advbayes import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_defenses(register: Any) -> None:
    """hvi."""
    from advbayes_hvi.defenses import HVI

    register(HVI)


@hookimpl
def registry_files() -> Path:
    """hvi, adv-hvi and the hvi-vs-advbnn-mnist-5k experiment."""
    return Path(__file__).with_name("registry.toml")
