"""Built-in metric: accuracy of the averaged prediction on the attacked inputs."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from advbayes.components import EvalBatch, Metric, MetricState


class AccuracyState(MetricState):
    """Counts correct predictions (argmax of the S_I-averaged probabilities) on attacked inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """Count the batch's correct predictions."""
        self.correct += (batch.probs.argmax(dim=-1) == batch.y).sum().to(self.correct.device)
        self.total += torch.tensor(batch.y.numel(), device=self.total.device)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Accuracy in [0, 1]."""
        return {"accuracy": self.correct.float() / self.total.clamp(min=1)}


@attrs.frozen(kw_only=True)
class Accuracy(Metric):
    """Accuracy of the averaged prediction (S_I draws) on the attacked test inputs."""

    name: ClassVar[str] = "accuracy"

    def create(self) -> MetricState:
        """A fresh counter."""
        return AccuracyState()
