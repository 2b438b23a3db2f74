"""Test helpers: fixture plugin distributions, files, and small components that plugins would provide."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes import Attack, AttackResult, Defense, LossOutput, TrainContext, hookimpl
from advbayes.params import param
from advbayes.stochastic import BayesBatchNorm2d, StochasticLayer


def install_fixture_plugin(site: Path, name: str, source: str, version: str = "0.1.0") -> None:
    """Install a one-module plugin distribution into `site` as pip would: module, METADATA, entry point."""
    module = name.replace("-", "_")
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{module}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[advbayes]\n{name} = {module}\n")
    (dist_info / "RECORD").write_text("")


def write(path: Path, text: str) -> Path:
    """Write dedented text to a file and return its path."""
    path.write_text(textwrap.dedent(text))
    return path


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


def draw_network(original: nn.Module, stochastic: nn.Module, s: int) -> nn.Module:
    """Draw s of the stochastic model as a plain torch network: the original with w = mu + sigma * eps[s]."""
    plain = copy.deepcopy(original)
    for name, module in stochastic.net.named_modules():
        if isinstance(module, StochasticLayer):
            target = plain.get_submodule(name)
            for attr in ("weight", "bias"):
                gaussian = getattr(module, attr)
                if gaussian is not None:
                    value = gaussian.mu + gaussian.sigma * gaussian.eps[s]
                    setattr(target, attr, nn.Parameter(value.detach().clone()))
            if isinstance(module, BayesBatchNorm2d):
                target.running_mean.copy_(module.running_mean)
                target.running_var.copy_(module.running_var)
    return plain
