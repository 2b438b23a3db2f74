"""The run engine, in rooms by responsibility: building.py (a run's parts), training.py (the epoch loop and
checkpoints), evaluation.py (attacks x eps, verdicts, metrics) and lifecycle.py (checks, variants, hooks, resume)."""

from advbayes.engine.lifecycle import Run, RunInfo, expand_variants, plugin_versions, run, seed_everything
from advbayes.engine.training import CHECKPOINT_NAME, make_optimizer, train_epochs
from advbayes.preflight import resolve_device

__all__ = [
    "CHECKPOINT_NAME",
    "Run",
    "RunInfo",
    "expand_variants",
    "make_optimizer",
    "plugin_versions",
    "resolve_device",
    "run",
    "seed_everything",
    "train_epochs",
]
