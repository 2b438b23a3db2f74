"""The stochastic substrate: models with a sample dimension ([B, ...] -> logits [S, B, k])."""

from advbayes.stochastic.sampled import DeterministicSampled, as_sampled, predict, takes_samples

__all__ = ["DeterministicSampled", "as_sampled", "predict", "takes_samples"]
