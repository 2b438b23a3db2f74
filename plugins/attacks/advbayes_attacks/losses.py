"""Attack losses of a stochastic classifier, the expectation over draws taken on probabilities, logits or losses."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

LOSSES = ("ce", "cw", "margin", "dlr")
EXPECTATIONS = ("probs", "logits", "loss")


def _other_max(values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max over classes i != y, per example (last dimension = classes)."""
    mask = F.one_hot(y, values.shape[-1]).bool().expand_as(values)
    return values.masked_fill(mask, float("-inf")).amax(dim=-1)


def _at(values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """values[..., y] per example."""
    index = y.view(*([1] * (values.dim() - 2)), -1, 1).expand(*values.shape[:-1], 1)
    return values.gather(-1, index).squeeze(-1)


def dlr(z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Croce & Hein's difference-of-logits ratio (targeted when `target` is given); shift and scale invariant in z."""
    needed = 3 if target is None else 4
    if z.shape[-1] < needed:  # its denominator reads the 3rd (targeted: 4th) largest logit
        raise ValueError(f"the DLR loss needs at least {needed} classes, the model has {z.shape[-1]}: use loss 'ce'")
    ordered = z.sort(dim=-1).values
    if target is None:
        return -(_at(z, y) - _other_max(z, y)) / (ordered[..., -1] - ordered[..., -3] + 1e-12)
    return -(_at(z, y) - _at(z, target)) / (ordered[..., -1] - 0.5 * (ordered[..., -3] + ordered[..., -4]) + 1e-12)


def _loss(
    kind: str, logits: torch.Tensor, log_probs: torch.Tensor, y: torch.Tensor, kappa: float, target: torch.Tensor | None
) -> torch.Tensor:
    if kind == "ce":
        return -_at(log_probs, y) if target is None else _at(log_probs, target)
    if kind == "cw":
        if target is not None:
            return (_at(logits, target) - _other_max(logits, target)).clamp_max(kappa)
        return (_other_max(logits, y) - _at(logits, y)).clamp_min(-kappa)
    if kind == "dlr":
        return dlr(log_probs, y, target)  # log-probabilities differ from logits by a per-draw shift only
    probs = log_probs.exp()
    if target is not None:
        return _at(probs, target) - _other_max(probs, target)
    return _other_max(probs, y) - _at(probs, y)


class _PerExampleScale(torch.autograd.Function):
    """Identity forward; the backward divides each example's gradient by its largest |component| (over draws and
    classes), so a gradient of 1e-200 in float64 reaches a float32 network as one of order 1."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor) -> torch.Tensor:
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        scale = gradient.abs().amax(dim=(0, 2), keepdim=True)
        return gradient / torch.where(scale > 0, scale, torch.ones_like(scale))


def example_scaled(logits: torch.Tensor) -> torch.Tensor:
    """Per-draw logits [S, B, k], unchanged, whose backward rescales each example's gradient to a largest component
    of 1: the direction an attack steps along is kept, the magnitude it never reads is not.

    Why: a confident network's softmax saturates. Where the top two logits differ by more than ~104 the other classes'
    probabilities are 0 in float32, and the cross-entropy's gradient, softmax - onehot, is exactly 0 (an HMC posterior
    of an MNIST MLP at its prior's scale: 83 % of digits per draw). Cast to float64 first, they underflow only past
    ~745, but a gradient of exp(-470) would still round to 0 on its way back into a float32 network; rescaled per
    example it does not. Sign (L_inf) and unit-length (L2) steps are unchanged by a per-example factor.
    """
    return _PerExampleScale.apply(logits)


def predictive_log_probs(logits: torch.Tensor, average: str = "probs") -> torch.Tensor:
    """log of the averaged prediction [B, k] from logits [S, B, k]: log-mean-softmax, or log-softmax of mean logits."""
    if average == "logits" or logits.shape[0] == 1:  # one draw: both are its log-softmax (logsumexp of one is exact)
        return F.log_softmax(logits.mean(dim=0), dim=-1)
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def attack_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    loss: str = "ce",
    expectation: str = "probs",
    kappa: float = 0.0,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example attack loss [B] from per-draw logits [S, B, k]; the attacker maximizes it.

    probs: loss of the averaged probabilities (CW on the averaged logits); logits: loss of the averaged
    logits; loss: the mean over draws of each draw's loss. Log-probabilities are computed stably
    (log-mean-exp over draws), so a saturated softmax does not zero the gradient by round-off alone.
    With `target`, the loss rises as the target class gains on all others (targeted attacks).
    Labels of any integer dtype are accepted (one_hot and gather need int64).
    """
    y = y.long()
    target = None if target is None else target.long()
    if expectation == "loss":
        return _loss(loss, logits, F.log_softmax(logits, dim=-1), y, kappa, target).mean(dim=0)
    mean_logits = logits.mean(dim=0)
    if expectation == "logits":
        return _loss(loss, mean_logits, F.log_softmax(mean_logits, dim=-1), y, kappa, target)
    return _loss(loss, mean_logits, predictive_log_probs(logits), y, kappa, target)
