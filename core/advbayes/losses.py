"""Training losses shared by defenses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from advbayes.components import LossOutput


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over draws and batch, for logits [S, B, k]."""
    samples = logits.shape[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(samples))


def ensemble_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of the draw-averaged probabilities, for logits [S, B, k]."""
    return (logits.softmax(-1).mean(0).argmax(-1) == y).float().mean()


def elbo_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_train: int,
    samples: int = 1,
    prior_sigma: float = 1.0,
    kl_weight: float = 1.0,
) -> LossOutput:
    """The negative ELBO per training example of a Bayesian model: cross-entropy averaged over `samples` fresh
    draws plus kl_weight * KL(q || N(0, prior_sigma^2)) / n_train (kl_weight 1 is the full ELBO; Adv-BNN uses
    1/50). Parts: ce, kl and the accuracy of the draw-averaged prediction."""
    from advbayes.components import LossOutput
    from advbayes.stochastic import as_sampled, kl

    if n_train < 1:
        raise ValueError(f"elbo_loss: n_train must be the number of training examples (>= 1), got {n_train}")
    logits = as_sampled(model)(x, samples=samples)
    ce = mean_cross_entropy(logits, y)
    divergence = kl(model, prior_sigma)
    return LossOutput(
        loss=ce + kl_weight / n_train * divergence,
        parts={"ce": ce.detach(), "kl": divergence.detach(), "acc": ensemble_accuracy(logits.detach(), y)},
    )
