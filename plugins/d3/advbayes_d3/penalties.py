"""D3's penalties on unit input-gradient directions u [K, B, D] of K posterior draws; one value per example each.

E_k and Var_k are over the K draws (population variance), per input dimension d.
"""

from __future__ import annotations

import torch


def unit_directions(gradients: torch.Tensor) -> torch.Tensor:
    """u_k = g_k / ||g_k||_2 per draw and example, flattened: [K, B, ...] -> [K, B, D] (0 for a zero gradient)."""
    flat = gradients.flatten(2)
    return flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def variance(u: torch.Tensor) -> torch.Tensor:
    """Var_k[u_d] per example and dimension: [B, D]."""
    return u.var(dim=0, unbiased=False)


def omega_m(u: torch.Tensor) -> torch.Tensor:
    """Mean penalty: sum_d (E_k[u_d])^2."""
    return u.mean(dim=0).pow(2).sum(dim=-1)


def omega_v1(u: torch.Tensor) -> torch.Tensor:
    """Min-variance penalty: -min_d Var_k[u_d]."""
    return -variance(u).amin(dim=-1)


def omega_v2(u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft-min variance penalty: -sum_d softmin_d(temperature * Var_k[u_d]) Var_k[u_d] (-> Omega_V1 as it grows)."""
    var = variance(u)
    return -(torch.softmax(-temperature * var, dim=-1) * var).sum(dim=-1)


def omega_v3(u: torch.Tensor) -> torch.Tensor:
    """Target-variance penalty (the paper's "V"): sum_d (Var_k[u_d] - 1/D)^2."""
    return (variance(u) - 1.0 / u.shape[-1]).pow(2).sum(dim=-1)


def omega_s(u: torch.Tensor) -> torch.Tensor:
    """Non-sparsity penalty: -E_k[||u_k||_1]."""
    return -u.abs().sum(dim=-1).mean(dim=0)
