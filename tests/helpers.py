"""Test helpers of the core's own tests: small components that plugins would provide. The helpers plugin authors
use too (install_fixture_plugin, write, draw_network) live in advbayes.testing and are imported from here as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes import Attack, AttackResult, Defense, LossOutput, TrainContext, hookimpl
from advbayes.params import param
from advbayes.testing import draw_network, install_fixture_plugin, write

__all__ = [
    "SMALL_ATTACKS",
    "DivergingDefense",
    "FailingDefense",
    "InterruptAfterEpoch",
    "ShiftAttack",
    "TestComponents",
    "draw_network",
    "install_fixture_plugin",
    "write",
]

# a registry file of the protocol's sub-attacks with small budgets (--registry): a bench marked off the protocol
SMALL_ATTACKS = Path(__file__).with_name("small_attacks.toml")


@attrs.frozen(kw_only=True)
class FailingDefense(Defense):
    """Raises on the first batch (or KeyboardInterrupt, to imitate Ctrl-C)."""

    name: ClassVar[str] = "failing"
    interrupt: bool = param(False, kind=bool)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Fail."""
        if self.interrupt:
            raise KeyboardInterrupt
        raise RuntimeError("defense exploded on purpose")


class InterruptAfterEpoch:
    """A plugin that presses Ctrl-C once epoch `epoch` is checkpointed (its hook runs after the tracking plugin's), in
    every run or in the runs of one defense."""

    def __init__(self, epoch: int, defense: str | None = None) -> None:
        self.epoch, self.defense = epoch, defense

    @hookimpl(trylast=True)
    def epoch_finished(self, run: Any, epoch: int, metrics: Any, checkpoint: Any) -> None:
        if epoch == self.epoch and self.defense in (None, run.spec["defense"]["name"]):
            raise KeyboardInterrupt


@attrs.frozen(kw_only=True)
class DivergingDefense(Defense):
    """Returns a NaN loss."""

    name: ClassVar[str] = "diverging"

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """NaN times the output, so backward works and the loss is not finite."""
        return LossOutput(loss=model(batch[0]).sum() * float("nan"))


@attrs.frozen(kw_only=True)
class ShiftAttack(Attack):
    """Moves every input component by +eps (a deterministic stand-in with an exactly known perturbation)."""

    name: ClassVar[str] = "shift"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """x + eps, clamped."""
        x_adv = self.clamp(x + self.eps)
        return AttackResult(x_adv=x_adv, delta=x_adv - x)


class TestComponents:
    """A plugin object registering the helper components."""

    @hookimpl
    def register_defenses(self, register: Any) -> None:
        register(FailingDefense)
        register(DivergingDefense)

    @hookimpl
    def register_attacks(self, register: Any) -> None:
        register(ShiftAttack)
