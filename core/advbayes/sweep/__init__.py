"""Sweeps: an experiment x a grid of overrides, planned and checked before anything runs (plan.py), then run as
Ray tasks on a local Ray or a cluster (runner.py, imported only when a sweep runs: Ray is an optional extra)."""

from advbayes.sweep.plan import (
    COMBINATION_TAG,
    SWEEP_ID_TAG,
    SWEEP_KEYS,
    Combination,
    SweepError,
    SweepPlan,
    parse_grid_option,
    plan_sweep,
    split_values,
    sweep_definition,
)

__all__ = [
    "COMBINATION_TAG",
    "Combination",
    "SWEEP_ID_TAG",
    "SWEEP_KEYS",
    "SweepError",
    "SweepPlan",
    "parse_grid_option",
    "plan_sweep",
    "split_values",
    "sweep_definition",
]
