"""advbayes-robustness: robustness-condition metrics, gradient-limit measurements, MC dropout, smoothing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from advbayes import hookimpl

if TYPE_CHECKING:
    from advbayes import RunInfo, RunResult

__version__ = "0.1.0"


@hookimpl
def register_defenses(register: Any) -> None:
    """mc-dropout, smoothing."""
    from advbayes_robustness.defenses import MCDropout, Smoothing

    register(MCDropout)
    register(Smoothing)


@hookimpl
def register_metrics(register: Any) -> None:
    """robustness-condition, prediction-variance, gradient-limit, softmax-robustness, transfer-correlation."""
    from advbayes_robustness.metrics import (
        GradientLimit,
        PredictionVariance,
        RobustnessCondition,
        SoftmaxRobustness,
        TransferCorrelation,
    )

    for metric in (RobustnessCondition, PredictionVariance, GradientLimit, SoftmaxRobustness, TransferCorrelation):
        register(metric)


@hookimpl
def run_figures(run: RunInfo, result: RunResult) -> dict[str, Any]:
    """Figures across the run's cells (accuracy vs S_A / S_I, cos(alpha) per S_A, fractions vs eps)."""
    from advbayes_robustness.summary import sweep_figures

    return sweep_figures(result.records)


@hookimpl
def registry_files() -> Path:
    """Entries and the sampling-fashion-style experiment."""
    return Path(__file__).with_name("registry.toml")
