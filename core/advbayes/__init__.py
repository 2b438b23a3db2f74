"""advbayes: a registry of adversarial defenses and attacks for stochastic and Bayesian neural networks.

This module is the whole plugin API: a plugin (and the example plugin) imports what it needs from `advbayes`
and from nowhere else in the core, as llm plugins import `llm`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from advbayes.version import __version__

if TYPE_CHECKING:
    from advbayes.adversarial import adversarial_examples
    from advbayes.batches import Batches, first_examples
    from advbayes.components import (
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
    from advbayes.engine import run
    from advbayes.errors import (
        AdvbayesError,
        AttackInputError,
        EvaluationWarning,
        PluginError,
        ProvenanceWarning,
        RegistryError,
        RunError,
    )
    from advbayes.hookspecs import hookimpl
    from advbayes.intervals import with_interval
    from advbayes.losses import elbo_loss, ensemble_accuracy, mean_cross_entropy
    from advbayes.params import SEED_LIMIT, ParamError, entry_list_param, entry_param, list_param, param
    from advbayes.results import EvalRecord, RunGroup, RunInfo, RunResult
    from advbayes.stochastic import (
        BayesBatchNorm2d,
        BayesConv2d,
        BayesLinear,
        DeterministicSampled,
        GaussianParameter,
        SampledModel,
        SampleEnsemble,
        SeededDraws,
        SingleOutputView,
        StochasticLayer,
        StochasticModel,
        as_sampled,
        frozen,
        hierarchical_regularizer_terms,
        is_stochastic,
        kl,
        mean_loss_gradient,
        posterior_statistics,
        predict,
        predict_repeated,
        regularizer_terms,
        to_bayesian,
        unflatten_parameters,
    )

# Each public name and the module that defines it. They are imported on first use, so that `import advbayes` (and
# with it every plugin module, the CLI's --help and shell completion) costs milliseconds instead of the seconds
# torch and mlflow take to import.
_EXPORTS = {
    "AdvbayesError": "advbayes.errors",
    "Attack": "advbayes.components",
    "AttackResult": "advbayes.components",
    "Batches": "advbayes.batches",
    "BayesBatchNorm2d": "advbayes.stochastic",
    "BayesConv2d": "advbayes.stochastic",
    "BayesLinear": "advbayes.stochastic",
    "Component": "advbayes.components",
    "Dataset": "advbayes.components",
    "Defense": "advbayes.components",
    "DeterministicSampled": "advbayes.stochastic",
    "EvalBatch": "advbayes.components",
    "EvalContext": "advbayes.components",
    "EvalRecord": "advbayes.results",
    "EvaluationWarning": "advbayes.errors",
    "ProvenanceWarning": "advbayes.errors",
    "GaussianParameter": "advbayes.stochastic",
    "LossOutput": "advbayes.components",
    "Metric": "advbayes.components",
    "MetricState": "advbayes.components",
    "Model": "advbayes.components",
    "ModelSources": "advbayes.components",
    "ParamError": "advbayes.params",
    "PluginError": "advbayes.errors",
    "RegistryError": "advbayes.errors",
    "RunError": "advbayes.errors",
    "AttackInputError": "advbayes.errors",
    "RunGroup": "advbayes.results",
    "RunInfo": "advbayes.results",
    "RunResult": "advbayes.results",
    "SEED_LIMIT": "advbayes.params",
    "SampledModel": "advbayes.stochastic",
    "SeededDraws": "advbayes.stochastic",
    "SingleOutputView": "advbayes.stochastic",
    "StochasticLayer": "advbayes.stochastic",
    "StochasticModel": "advbayes.stochastic",
    "TrainContext": "advbayes.components",
    "adversarial_examples": "advbayes.adversarial",
    "as_sampled": "advbayes.stochastic",
    "elbo_loss": "advbayes.losses",
    "ensemble_accuracy": "advbayes.losses",
    "entry_list_param": "advbayes.params",
    "entry_param": "advbayes.params",
    "eval_mode": "advbayes.components",
    "first_examples": "advbayes.batches",
    "frozen": "advbayes.stochastic",
    "hierarchical_regularizer_terms": "advbayes.stochastic",
    "hookimpl": "advbayes.hookspecs",
    "is_stochastic": "advbayes.stochastic",
    "kl": "advbayes.stochastic",
    "list_param": "advbayes.params",
    "mean_cross_entropy": "advbayes.losses",
    "mean_loss_gradient": "advbayes.stochastic",
    "param": "advbayes.params",
    "posterior_statistics": "advbayes.stochastic",
    "predict": "advbayes.stochastic",
    "predict_repeated": "advbayes.stochastic",
    "regularizer_terms": "advbayes.stochastic",
    "SampleEnsemble": "advbayes.stochastic",
    "run": "advbayes.engine",
    "to_bayesian": "advbayes.stochastic",
    "unflatten_parameters": "advbayes.stochastic",
    "with_interval": "advbayes.intervals",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'advbayes' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
    "ProvenanceWarning",
    "RegistryError",
    "RunError",
    "AttackInputError",
    "RunGroup",
    "RunInfo",
    "RunResult",
    "SampleEnsemble",
    "SampledModel",
    "SeededDraws",
    "SingleOutputView",
    "StochasticLayer",
    "StochasticModel",
    "TrainContext",
    "__version__",
    "adversarial_examples",
    "as_sampled",
    "elbo_loss",
    "ensemble_accuracy",
    "entry_list_param",
    "entry_param",
    "eval_mode",
    "first_examples",
    "frozen",
    "hierarchical_regularizer_terms",
    "hookimpl",
    "is_stochastic",
    "kl",
    "list_param",
    "mean_cross_entropy",
    "mean_loss_gradient",
    "param",
    "posterior_statistics",
    "predict",
    "predict_repeated",
    "regularizer_terms",
    "run",
    "to_bayesian",
    "unflatten_parameters",
    "with_interval",
]
