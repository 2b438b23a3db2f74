"""advbayes-attacks: gradient attacks (FGSM, FGM, PGD with EOT, restarts, best iterate), random sign, transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advbayes.hookspecs import hookimpl
from advbayes_attacks.attacks import FGM, FGSM, PGD, RandomSign, Transfer

__version__ = "0.1.0"


@hookimpl
def register_attacks(register: Any) -> None:
    """fgsm, fgm, pgd, random-sign, transfer."""
    for attack in (FGSM, FGM, PGD, RandomSign, Transfer):
        register(attack)


@hookimpl
def registry_files() -> Path:
    """The papers' attack entries: pgd-20, pgd-40, eot-pgd-10, training attacks."""
    return Path(__file__).with_name("registry.toml")
