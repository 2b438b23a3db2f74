"""Built-in attack: none (clean evaluation)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import nn

from advbayes.components import Attack, AttackResult


def perturbation_lengths(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Applied L2 and L_inf lengths per example."""
    flat = delta.detach().flatten(1)
    return {"l2": flat.norm(p=2, dim=1), "linf": flat.abs().amax(dim=1)}


@attrs.frozen(kw_only=True)
class NoAttack(Attack):
    """Clean evaluation: the inputs unchanged, whatever the budget."""

    name: ClassVar[str] = "none"
    uses_eps: ClassVar[bool] = False
    access: ClassVar[str] = "none"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Return x itself with a zero perturbation."""
        delta = torch.zeros_like(x)
        return AttackResult(x_adv=x, delta=delta, diagnostics=perturbation_lengths(delta))
