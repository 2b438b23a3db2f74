"""The run engine, in rooms by responsibility: building.py (a run's parts), training.py (the epoch loop and
checkpoints), evaluation.py (attacks x eps, verdicts, metrics) and lifecycle.py (checks, variants, hooks, resume)."""

from advbayes.engine.lifecycle import (
    PreparedRun,
    Run,
    expand_variants,
    plugin_versions,
    prepare_run,
    run,
    seed_everything,
)
from advbayes.engine.training import CHECKPOINT_NAME, train_epochs
from advbayes.posterior.optimizers import make_optimizer
from advbayes.preflight import resolve_device
from advbayes.results import RunInfo  # its home is beside the other records; imported here as before

__all__ = [
    "CHECKPOINT_NAME",
    "PreparedRun",
    "Run",
    "RunInfo",
    "expand_variants",
    "make_optimizer",
    "plugin_versions",
    "prepare_run",
    "resolve_device",
    "run",
    "seed_everything",
    "train_epochs",
]
