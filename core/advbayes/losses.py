"""Training losses shared by defenses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over draws and batch, for logits [S, B, k]."""
    samples = logits.shape[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(samples))


def ensemble_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of the draw-averaged probabilities, for logits [S, B, k]."""
    return (logits.softmax(-1).mean(0).argmax(-1) == y).float().mean()
