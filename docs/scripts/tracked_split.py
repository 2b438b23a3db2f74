"""Set-up shared by the scripts here: an experiment's split as tensors, and the newest tracked model per defense.

Imported by its siblings (`python docs/scripts/NAME.py` puts this folder on the path). The split is the one a run
of the experiment reads: `Dataset.data`, with the experiment's n_train / n_test subset applied.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import pluggy
import torch
from mlflow.entities import Run
from torch import nn

from advbayes import first_examples
from advbayes.engine.building import tracked_model
from advbayes.lab.sources import latest_per_defense
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.tracking import tracked_runs


class Split(NamedTuple):
    """An experiment's split as tensors, with what the scripts need beside it."""

    pm: pluggy.PluginManager
    spec: dict[str, Any]  # the resolved experiment
    x: torch.Tensor
    y: torch.Tensor
    value_range: tuple[float, float]  # the data set's: what an attack on it clamps to


def experiment_split(experiment: str, split: str, limit: int | None = None) -> Split:
    """The plugin manager, the resolved experiment, the first `limit` examples of its split and the data set's value
    range, on one CPU thread."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    torch.set_num_threads(1)
    pm = create_plugin_manager()
    registry = load_registry(pm=pm)
    spec = registry.resolve_experiment(experiment)
    dataset = registry.build("datasets", spec["dataset"])
    data = dataset.data(split)
    x, y = first_examples(data, limit or len(data))  # type: ignore[arg-type]  # map-style data sets are sized
    return Split(pm, spec, x, y, dataset.value_range)


def newest_models(
    pm: pluggy.PluginManager, store: str, experiment: str, seed: int | None = None
) -> Iterator[tuple[Run, nn.Module]]:
    """Each defense's newest run of the experiment in the store, with its model on the CPU; with `seed`, torch's
    random state is reset to it before each model is built (building draws initial weights), so what follows
    draws the same whichever run came before."""
    for run in latest_per_defense(tracked_runs(store, [experiment])):
        if seed is not None:
            torch.manual_seed(seed)
        yield run, tracked_model(pm, run.info.run_id, store, torch.device("cpu"))
