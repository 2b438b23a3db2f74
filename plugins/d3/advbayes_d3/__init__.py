"""advbayes-d3: diversity penalties over posterior draws (Defense through Diverse Directions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advbayes.hookspecs import hookimpl
from advbayes_d3.defenses import D3

__version__ = "0.1.0"


@hookimpl
def register_defenses(register: Any) -> None:
    """d3."""
    register(D3)


@hookimpl
def registry_files() -> Path:
    """The paper's MNIST variants."""
    return Path(__file__).with_name("registry.toml")
