"""weight-stats: per Bayesian layer and overall, mean mu, mean sigma^2, KL per parameter; log-sigma histogram."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes import EvalBatch, Metric, MetricState, StochasticLayer, param, posterior_statistics


def layer_statistics(model: nn.Module, prior_sigma: float) -> dict[str, dict[str, float]]:
    """name -> {count, mean_mu, mean_sigma2, kl_per_param, r} for every Gaussian layer, plus "overall"."""
    stats = {
        name: posterior_statistics(layer, prior_sigma)
        for name, layer in model.named_modules()
        if isinstance(layer, StochasticLayer)
    }
    if stats:
        stats["overall"] = posterior_statistics(model, prior_sigma)
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
        """weight_mean_mu, _mean_sigma2, _kl_per_param, _r (the HVI regularizer) overall and per layer."""
        out: dict[str, torch.Tensor] = {}
        for name, values in self.stats.items():
            prefix = "weight" if name == "overall" else f"weight/{name}"
            for key in ("mean_mu", "mean_sigma2", "kl_per_param", "r"):
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
