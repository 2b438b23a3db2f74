"""Attack losses of a stochastic classifier, with the expectation over draws taken on probabilities, logits or losses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("ce", "cw", "margin")
EXPECTATIONS = ("probs", "logits", "loss")


def _other_max(values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max over classes i != y, per example (last dimension = classes)."""
    mask = F.one_hot(y, values.shape[-1]).bool().expand_as(values)
    return values.masked_fill(mask, float("-inf")).amax(dim=-1)


def _true(values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """values[..., y] per example."""
    index = y.view(*([1] * (values.dim() - 2)), -1, 1).expand(*values.shape[:-1], 1)
    return values.gather(-1, index).squeeze(-1)


def _loss(kind: str, logits: torch.Tensor, log_probs: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    if kind == "ce":
        return -_true(log_probs, y)
    if kind == "cw":
        return (_other_max(logits, y) - _true(logits, y)).clamp_min(-kappa)
    probs = log_probs.exp()
    return _other_max(probs, y) - _true(probs, y)


def attack_loss(
    logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", expectation: str = "probs", kappa: float = 0.0
) -> torch.Tensor:
    """Per-example attack loss [B] from per-draw logits [S, B, k]; the attacker maximizes it.

    probs: loss of the averaged probabilities (CW on the averaged logits); logits: loss of the averaged
    logits; loss: the mean over draws of each draw's loss. Log-probabilities are computed stably
    (log-mean-exp over draws), so a saturated softmax does not zero the gradient by round-off alone.
    """
    if expectation == "loss":
        return _loss(loss, logits, F.log_softmax(logits, dim=-1), y, kappa).mean(dim=0)
    mean_logits = logits.mean(dim=0)
    if expectation == "logits":
        return _loss(loss, mean_logits, F.log_softmax(mean_logits, dim=-1), y, kappa)
    log_mean_probs = torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])
    return _loss(loss, mean_logits, log_mean_probs, y, kappa)
