"""Built-in defense: plain cross-entropy training on clean data."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from advbayes.components import Defense, LossOutput, TrainContext
from advbayes.params import param


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over draws and batch, for logits [S, B, k]."""
    samples = logits.shape[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(samples))


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
        accuracy = (logits.softmax(-1).mean(0).argmax(-1) == y).float().mean()
        return LossOutput(loss=loss, parts={"ce": loss.item(), "acc": accuracy.item()})
