"""The posterior's width: sigma^2 of every Gaussian weight, summarized per layer kind (mean and quantiles)."""

from __future__ import annotations

import torch
from torch import nn

from advbayes.stochastic.layers import BayesBatchNorm2d, BayesConv2d, BayesLinear, StochasticLayer

WIDTH_KEY = "posterior/sigma2_mean"  # the width the convergence verdict follows
QUANTILES = (0.1, 0.5, 0.9)
_KINDS: tuple[tuple[type, str], ...] = ((BayesLinear, "linear"), (BayesConv2d, "conv2d"), (BayesBatchNorm2d, "bn"))
_QUANTILE_LIMIT = 1 << 24  # torch.quantile refuses larger inputs; beyond it a fixed strided subset is summarized


def layer_kind(layer: StochasticLayer) -> str:
    """linear, conv2d, bn, or the class name of another stochastic layer."""
    return next((name for cls, name in _KINDS if isinstance(layer, cls)), type(layer).__name__.lower())


def _summary(sigma2: torch.Tensor, prefix: str) -> dict[str, float]:
    values = sigma2 if sigma2.numel() <= _QUANTILE_LIMIT else sigma2[:: -(-sigma2.numel() // _QUANTILE_LIMIT)]
    quantiles = torch.quantile(values.double(), torch.tensor(QUANTILES, dtype=torch.float64, device=values.device))
    out = {f"{prefix}sigma2_mean": float(sigma2.double().mean())}
    out.update({f"{prefix}sigma2_q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, quantiles)})
    return out


def width_statistics(model: nn.Module) -> dict[str, float]:
    """posterior/sigma2_{mean,q10,q50,q90} over all Gaussian weights and per layer kind (empty: no Gaussian weight)."""
    by_kind: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, StochasticLayer):
                for parameter in layer.gaussian_parameters():
                    sigma2 = (2 * parameter.log_sigma.detach().flatten()).exp()
                    by_kind.setdefault(layer_kind(layer), []).append(sigma2)
        if not by_kind:
            return {}
        out = _summary(torch.cat([t for parts in by_kind.values() for t in parts]), "posterior/")
        for kind, parts in sorted(by_kind.items()):
            out.update(_summary(torch.cat(parts), f"posterior/{kind}/"))
    return out
