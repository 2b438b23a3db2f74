"""advbayes-attacks: FGSM, FGM, PGD, APGD(-T), Square, FAB-T, AutoAttack's worst case, random sign, transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advbayes import hookimpl

__version__ = "0.2.0"


@hookimpl
def register_attacks(register: Any) -> None:
    """fgsm, fgm, pgd, apgd, square, fab-t, worst-case, random-sign, transfer."""
    from advbayes_attacks.apgd import APGD
    from advbayes_attacks.attacks import FGM, FGSM, PGD, RandomSign, Transfer
    from advbayes_attacks.ensemble import FABTargeted, WorstCase
    from advbayes_attacks.square import Square

    for attack in (FGSM, FGM, PGD, APGD, Square, FABTargeted, WorstCase, RandomSign, Transfer):
        register(attack)


@hookimpl
def registry_files() -> Path:
    """The papers' attack entries (pgd-20, pgd-40, eot-pgd-10, training attacks) and autoattack / autoattack-rand."""
    return Path(__file__).with_name("registry.toml")
