"""Obfuscation indicator: white-box vs black-box (transfer) accuracy at the same eps, and their gap."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import torch

from advbayes import EvalBatch, EvalContext, Metric, MetricState, RunError, as_sampled, entry_param, param, predict


def clearly_below(white: float, black: float, n: int, margin: float) -> bool:
    """Black-box accuracy below white-box by more than `margin` and by more than two standard errors of the gap."""
    if n == 0:
        return False
    standard_error = math.sqrt((white * (1 - white) + black * (1 - black)) / n)
    return white - black > max(margin, 2 * standard_error)


class ObfuscationState(MetricState):
    """Counts white-box and transfer-attack correct predictions on the same examples."""

    white: torch.Tensor  # states added by add_state
    black: torch.Tensor
    total: torch.Tensor

    def __init__(self, craft: Callable[[EvalBatch], torch.Tensor], margin: float) -> None:
        super().__init__()
        self.craft = craft  # a function, not the source module: the source must not become part of this state
        self.margin = margin
        self.add_state("white", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("black", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """White-box: the batch's own attack; black-box: the source attack at the same eps (0 for eps-free attacks)."""
        x_adv = self.craft(batch)
        with torch.no_grad():
            probs, _ = predict(batch.model, x_adv, batch.inference_samples, batch.prediction_average)
        self.white += (batch.probs.argmax(-1) == batch.y).sum().to(self.white.device)
        self.black += (probs.argmax(-1) == batch.y).sum().to(self.black.device)
        self.total += torch.tensor(batch.y.numel(), device=self.total.device)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """white_box_accuracy, black_box_accuracy, obfuscation_gap (white - black), obfuscation_flag (1 = flagged)."""
        n = self.total.clamp(min=1).float()
        white, black = self.white.float() / n, self.black.float() / n
        flagged = clearly_below(float(white), float(black), int(self.total), self.margin)
        return {
            "white_box_accuracy": white,
            "black_box_accuracy": black,
            "obfuscation_gap": white - black,
            "obfuscation_flag": torch.tensor(float(flagged)),
        }


@attrs.frozen(kw_only=True)
class Obfuscation(Metric):
    """White-box vs transfer accuracy per eps; flags a defense whose black-box accuracy is clearly lower."""

    name: ClassVar[str] = "obfuscation"
    source: str = param(
        "standard",
        kind=str,
        help="the deterministic source: a defense trained earlier in the experiment, or run:<RUN_ID>",
    )
    attack: Any = entry_param("attacks", "pgd-40", optional=False, help="the attack crafted on the source")
    margin: float = param(0.05, ge=0.0, le=1.0, help="smallest gap that flags (also more than 2 standard errors)")
    source_model: Any = attrs.field(default=None, eq=False, repr=False, metadata={"internal": True})
    inner: Any = attrs.field(default=None, eq=False, repr=False, metadata={"internal": True})

    def model_sources(self) -> tuple[str, ...]:
        """The deterministic source."""
        return (self.source,)

    def bind(self, context: EvalContext) -> Metric:
        """Fetch the source model and build its attack."""
        model = as_sampled(context.source_model(self.source)).eval()
        return attrs.evolve(self, source_model=model, inner=context.build_attack(self.attack))

    def create(self) -> MetricState:
        """A fresh state bound to the source model."""
        if self.source_model is None:
            raise RunError("obfuscation metric used before bind(): the run engine binds it to its source model")
        source, inner = self.source_model, self.inner

        def craft(batch: EvalBatch) -> torch.Tensor:
            eps = batch.eps if batch.attack.uses_eps else 0.0  # an eps-free attack (none) compares with clean data
            attack = attrs.evolve(inner, eps=eps, value_range=batch.attack.value_range)
            with torch.enable_grad():  # MetricState runs update() without gradients
                return attack(source, batch.x, batch.y).x_adv

        return ObfuscationState(craft, self.margin)
