"""advbayes: a registry of adversarial defenses and attacks for stochastic and Bayesian neural networks.

This module is the whole plugin API: a plugin (and the example plugin) imports what it needs from `advbayes`
and from nowhere else in the core, as llm plugins import `llm`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from advbayes.adversarial import adversarial_examples  # noqa: E402
from advbayes.batches import Batches  # noqa: E402
from advbayes.components import (  # noqa: E402
    Attack,
    AttackResult,
    Component,
    Dataset,
    Defense,
    EvalBatch,
    EvalContext,
    LossOutput,
    Metric,
    MetricState,
    Model,
    ModelSources,
    TrainContext,
    eval_mode,
)
from advbayes.engine import RunInfo, run  # noqa: E402
from advbayes.errors import AdvbayesError, EvaluationWarning, PluginError, RegistryError, RunError  # noqa: E402
from advbayes.hookspecs import hookimpl  # noqa: E402
from advbayes.losses import ensemble_accuracy, mean_cross_entropy  # noqa: E402
from advbayes.params import SEED_LIMIT, ParamError, entry_list_param, entry_param, list_param, param  # noqa: E402
from advbayes.results import EvalRecord, RunGroup, RunResult  # noqa: E402
from advbayes.stochastic import (  # noqa: E402
    BayesBatchNorm2d,
    BayesConv2d,
    BayesLinear,
    DeterministicSampled,
    GaussianParameter,
    SampledModel,
    StochasticLayer,
    StochasticModel,
    as_sampled,
    frozen,
    hierarchical_regularizer_terms,
    is_stochastic,
    kl,
    posterior_statistics,
    predict,
    predict_repeated,
    to_bayesian,
)

__all__ = [
    "SEED_LIMIT",
    "AdvbayesError",
    "Attack",
    "AttackResult",
    "Batches",
    "BayesBatchNorm2d",
    "BayesConv2d",
    "BayesLinear",
    "Component",
    "Dataset",
    "Defense",
    "DeterministicSampled",
    "EvalBatch",
    "EvalContext",
    "EvalRecord",
    "EvaluationWarning",
    "GaussianParameter",
    "LossOutput",
    "Metric",
    "MetricState",
    "Model",
    "ModelSources",
    "ParamError",
    "PluginError",
    "RegistryError",
    "RunError",
    "RunGroup",
    "RunInfo",
    "RunResult",
    "SampledModel",
    "StochasticLayer",
    "StochasticModel",
    "TrainContext",
    "__version__",
    "adversarial_examples",
    "as_sampled",
    "ensemble_accuracy",
    "entry_list_param",
    "entry_param",
    "eval_mode",
    "frozen",
    "hierarchical_regularizer_terms",
    "hookimpl",
    "is_stochastic",
    "kl",
    "list_param",
    "mean_cross_entropy",
    "param",
    "posterior_statistics",
    "predict",
    "predict_repeated",
    "run",
    "to_bayesian",
]
