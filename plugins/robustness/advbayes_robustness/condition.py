"""Däubener & Fischer's robustness conditions: margins, per-class input gradients, cos(alpha), r~_c and r_c."""

from __future__ import annotations

import attrs
import torch
from torch import nn

from advbayes import as_sampled

DISCRIMINANTS = ("probs", "logits")


def discriminant_jacobian(
    model: nn.Module, x: torch.Tensor, samples: int, on: str = "probs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) [B, k] averaged over `samples` draws and its input Jacobian [B, k, D], all classes in one batched backward.

    on "probs": f_c is the averaged softmax probability (the paper); "logits": the averaged logit.
    """
    if on not in DISCRIMINANTS:
        raise ValueError(f"on must be one of {DISCRIMINANTS}, got {on!r}")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = as_sampled(model)(x, samples=samples)
        f = logits.softmax(-1).mean(0) if on == "probs" else logits.mean(0)
        classes = f.shape[-1]
        # row c of the batched grad_outputs selects class c for every example: one vmapped backward
        selectors = torch.eye(classes, device=f.device, dtype=f.dtype).unsqueeze(1).expand(classes, *f.shape)
        (jacobian,) = torch.autograd.grad(f, x, grad_outputs=selectors, is_grads_batched=True)
    return f.detach(), jacobian.flatten(2).transpose(0, 1)


@attrs.frozen(kw_only=True)
class Conditions:
    """Per-example quantities; the class-wise minima are over c != y."""

    correct: torch.Tensor  # f^I classifies the clean input correctly
    margin: torch.Tensor  # f_y - max_{c != y} f_c
    gradient_norm: torch.Tensor  # ||grad f_{y-c}|| for the c minimizing r~
    cos_alpha: torch.Tensor  # cos(alpha_c) for the c minimizing r~
    r_linear: torch.Tensor  # min_c r~_c (inf when every cos >= 0)
    r_smooth: torch.Tensor  # min_c r_c
    attack_length: torch.Tensor  # ||delta||_2
    linear_robust: torch.Tensor  # correct and min_c r~_c > ||delta||
    smooth_robust: torch.Tensor  # correct and min_c r_c > ||delta||


def robustness_conditions(
    f: torch.Tensor, jacobian: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, smoothness: float
) -> Conditions:
    """Theorem 3.2 (linear, r~_c) and Theorem 3.4 (L-smooth, r_c) for every example of a batch."""
    rows = torch.arange(len(y), device=y.device)
    f_yc = f[rows, y].unsqueeze(1) - f  # [B, k]
    g = jacobian[rows, y].unsqueeze(1) - jacobian  # grad f_{y-c}: [B, k, D]
    d = delta.detach().flatten(1).to(g.dtype)
    length = d.norm(dim=1)
    g_norm = g.norm(dim=-1)
    denominator = g_norm * length.unsqueeze(1)
    cos = torch.where(
        denominator > 0, (g @ d.unsqueeze(-1)).squeeze(-1) / denominator.clamp_min(1e-30), torch.zeros_like(f_yc)
    )
    inf = torch.full_like(f_yc, float("inf"))
    r_tilde = torch.where(cos >= 0, inf, -f_yc / (g_norm * cos).clamp_max(-1e-30))
    v = g_norm * cos - smoothness * length.unsqueeze(1)
    r = torch.where(v >= 0, inf, f_yc / v.abs().clamp_min(1e-30))
    is_true = torch.zeros_like(f_yc, dtype=torch.bool)
    is_true[rows, y] = True
    r_tilde = r_tilde.masked_fill(is_true, float("inf"))
    r = r.masked_fill(is_true, float("inf"))
    r_linear, worst = r_tilde.min(dim=1)
    closest = f_yc.masked_fill(is_true, float("inf")).argmin(dim=1)
    worst = torch.where(torch.isinf(r_linear), closest, worst)  # no c with cos < 0: report the closest class
    r_smooth = r.min(dim=1).values
    correct = f.argmax(-1) == y
    return Conditions(
        correct=correct,
        margin=f_yc.masked_fill(is_true, float("inf")).min(dim=1).values,
        gradient_norm=g_norm[rows, worst],
        cos_alpha=cos[rows, worst],
        r_linear=r_linear,
        r_smooth=r_smooth,
        attack_length=length,
        linear_robust=correct & (r_linear > length),
        smooth_robust=correct & (r_smooth > length),
    )
