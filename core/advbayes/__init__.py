"""advbayes: a registry of adversarial defenses and attacks for stochastic and Bayesian neural networks."""

from __future__ import annotations

__version__ = "0.1.0"

from advbayes.components import (  # noqa: E402
    Attack,
    AttackResult,
    Dataset,
    Defense,
    EvalBatch,
    LossOutput,
    Metric,
    MetricState,
    Model,
    TrainContext,
)
from advbayes.engine import run  # noqa: E402
from advbayes.errors import AdvbayesError, PluginError, RegistryError, RunError  # noqa: E402
from advbayes.hookspecs import hookimpl  # noqa: E402
from advbayes.results import EvalRecord, RunResult  # noqa: E402

__all__ = [
    "AdvbayesError",
    "Attack",
    "AttackResult",
    "Dataset",
    "Defense",
    "EvalBatch",
    "EvalRecord",
    "LossOutput",
    "Metric",
    "MetricState",
    "Model",
    "PluginError",
    "RegistryError",
    "RunError",
    "RunResult",
    "TrainContext",
    "__version__",
    "hookimpl",
    "run",
]
