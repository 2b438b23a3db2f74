"""Built-in defense: plain cross-entropy training on clean data."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import nn

from advbayes.components import Defense, LossOutput, TrainContext
from advbayes.losses import ensemble_accuracy, mean_cross_entropy
from advbayes.params import param


@attrs.frozen(kw_only=True)
class Standard(Defense):
    """No defense: cross-entropy on clean data (averaged over train_samples draws for stochastic models)."""

    name: ClassVar[str] = "standard"
    train_samples: int = param(1, kind=int, ge=1, help="draws per training step")

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Cross-entropy of the batch; train accuracy reported beside it."""
        x, y = batch
        logits = model(x, samples=self.train_samples)
        loss = mean_cross_entropy(logits, y)
        return LossOutput(loss=loss, parts={"ce": loss.detach(), "acc": ensemble_accuracy(logits.detach(), y)})
