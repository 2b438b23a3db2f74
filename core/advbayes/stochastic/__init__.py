"""The stochastic substrate: models with a sample dimension ([B, ...] -> logits [S, B, k])."""

from advbayes.stochastic.draw_state import SeededDraws
from advbayes.stochastic.ensemble import SampleEnsemble, unflatten_parameters
from advbayes.stochastic.layers import (
    BayesBatchNorm2d,
    BayesConv2d,
    BayesLinear,
    Folded,
    GaussianParameter,
    StochasticLayer,
    regularizer_terms,
)
from advbayes.stochastic.model import (
    StochasticModel,
    frozen,
    hierarchical_regularizer_terms,
    kl,
    posterior_statistics,
    to_bayesian,
)
from advbayes.stochastic.sampled import (
    DeterministicSampled,
    SampledModel,
    SingleOutputView,
    as_sampled,
    is_stochastic,
    mean_loss_gradient,
    predict,
    predict_repeated,
    takes_samples,
)
from advbayes.stochastic.strategy import chosen_strategies, forget_choices

__all__ = [
    "BayesBatchNorm2d",
    "BayesConv2d",
    "BayesLinear",
    "DeterministicSampled",
    "Folded",
    "GaussianParameter",
    "SampleEnsemble",
    "SampledModel",
    "SeededDraws",
    "SingleOutputView",
    "StochasticLayer",
    "StochasticModel",
    "as_sampled",
    "chosen_strategies",
    "forget_choices",
    "frozen",
    "hierarchical_regularizer_terms",
    "is_stochastic",
    "kl",
    "mean_loss_gradient",
    "posterior_statistics",
    "predict",
    "predict_repeated",
    "regularizer_terms",
    "takes_samples",
    "to_bayesian",
    "unflatten_parameters",
]
