"""The run engine, by composition: a Run holds its RunParts (building.py: the components, read-only), its
Checkpoints (checkpoints.py: resumable states, random states), a Trainer (training.py: the epoch loop, the
convergence verdict) and an Evaluator (evaluation.py: attacks x eps, verdicts, metrics); lifecycle.py prepares runs
(checks, variants of an experiment) and reports them through the hooks."""

from advbayes.engine.building import RunParts
from advbayes.engine.checkpoints import CHECKPOINT_NAME, Checkpoints
from advbayes.engine.evaluation import Evaluator
from advbayes.engine.lifecycle import (
    PreparedRun,
    Run,
    expand_variants,
    plugin_versions,
    prepare_run,
    run,
    seed_everything,
)
from advbayes.engine.training import Trainer, train_epochs
from advbayes.posterior.optimizers import make_optimizer
from advbayes.preflight import resolve_device
from advbayes.results import RunInfo  # its home is beside the other records; imported here as before

__all__ = [
    "CHECKPOINT_NAME",
    "Checkpoints",
    "Evaluator",
    "PreparedRun",
    "Run",
    "RunInfo",
    "RunParts",
    "Trainer",
    "expand_variants",
    "make_optimizer",
    "plugin_versions",
    "prepare_run",
    "resolve_device",
    "run",
    "seed_everything",
    "train_epochs",
]
