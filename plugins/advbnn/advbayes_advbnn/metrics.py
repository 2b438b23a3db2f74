"""weight-stats: per Bayesian layer and overall, mean of mu, mean of sigma^2 and KL per parameter; log-sigma histogram."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes.components import EvalBatch, Metric, MetricState
from advbayes.params import param
from advbayes.stochastic import StochasticLayer


def layer_statistics(model: nn.Module, prior_sigma: float) -> dict[str, dict[str, float]]:
    """name -> {count, mean_mu, mean_sigma2, kl_per_param} for every Gaussian layer, plus "overall"."""
    stats: dict[str, dict[str, float]] = {}
    totals = {"count": 0, "mu": 0.0, "sigma2": 0.0, "kl": 0.0}
    with torch.no_grad():
        for name, layer in model.named_modules():
            if not isinstance(layer, StochasticLayer):
                continue
            parameters = layer.gaussian_parameters()
            count = sum(p.mu.numel() for p in parameters)
            mu = float(sum(p.mu.sum() for p in parameters))
            sigma2 = float(sum((2 * p.log_sigma).exp().sum() for p in parameters))
            divergence = float(layer.kl(prior_sigma))
            stats[name] = {"count": count, "mean_mu": mu / count, "mean_sigma2": sigma2 / count, "kl_per_param": divergence / count}
            for key, value in (("count", count), ("mu", mu), ("sigma2", sigma2), ("kl", divergence)):
                totals[key] += value
    if totals["count"]:
        count = totals["count"]
        stats["overall"] = {
            "count": count,
            "mean_mu": totals["mu"] / count,
            "mean_sigma2": totals["sigma2"] / count,
            "kl_per_param": totals["kl"] / count,
        }
    return stats


class WeightStatsState(MetricState):
    """Reads the posterior of the evaluated model once (it does not depend on the batches)."""

    def __init__(self, prior_sigma: float) -> None:
        super().__init__()
        self.prior_sigma = prior_sigma
        self.stats: dict[str, dict[str, float]] = {}
        self.log_sigma: torch.Tensor | None = None

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """Read the model's Gaussian parameters (first batch only)."""
        if self.log_sigma is not None:
            return
        self.stats = layer_statistics(batch.model, self.prior_sigma)
        values = [
            p.log_sigma.detach().flatten().cpu()
            for m in batch.model.modules()
            if isinstance(m, StochasticLayer)
            for p in m.gaussian_parameters()
        ]
        self.log_sigma = torch.cat(values) if values else torch.zeros(0)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """weight_mean_mu, weight_mean_sigma2, weight_kl_per_param overall and per layer (none for a deterministic model)."""
        out: dict[str, torch.Tensor] = {}
        for name, values in self.stats.items():
            prefix = "weight" if name == "overall" else f"weight/{name}"
            for key in ("mean_mu", "mean_sigma2", "kl_per_param"):
                out[f"{prefix}_{key}" if name == "overall" else f"{prefix}/{key}"] = torch.tensor(values[key])
        return out

    def figures(self) -> dict[str, Any]:
        """The density of log sigma over all stochastic weights (Adv-BNN's Fig. 4)."""
        if self.log_sigma is None or not self.log_sigma.numel():
            return {}
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
        axes.hist(self.log_sigma.numpy(), bins=100, density=True)
        axes.set_xlabel("log sigma")
        axes.set_ylabel("density")
        axes.set_title(f"posterior log sigma over {self.log_sigma.numel():,} weights")
        figure.tight_layout()
        return {"log_sigma_histogram.png": figure}


@attrs.frozen(kw_only=True)
class WeightStats(Metric):
    """Posterior weight statistics: mean of mu, mean of sigma^2 and KL per parameter, per layer and overall."""

    name: ClassVar[str] = "weight-stats"
    per_attack: ClassVar[bool] = False
    prior_sigma: float = param(0.15, gt=0.0, help="prior std of the KL")

    def create(self) -> MetricState:
        """A fresh reader."""
        return WeightStatsState(self.prior_sigma)
