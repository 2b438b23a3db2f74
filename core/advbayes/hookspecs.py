"""The pluggy hooks of advbayes: component registration and the run lifecycle."""

from __future__ import annotations

from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("advbayes")
hookimpl = HookimplMarker("advbayes")


@hookspec
def register_datasets(register: Any) -> None:
    """Call register(DatasetClass) for each data set the plugin provides."""


@hookspec
def register_models(register: Any) -> None:
    """Call register(ModelClass) for each network builder the plugin provides."""


@hookspec
def register_defenses(register: Any) -> None:
    """Call register(DefenseClass) for each defense the plugin provides."""


@hookspec
def register_attacks(register: Any) -> None:
    """Call register(AttackClass) for each attack the plugin provides."""


@hookspec
def register_metrics(register: Any) -> None:
    """Call register(MetricClass) for each metric the plugin provides."""


@hookspec
def registry_files() -> Any:
    """Return paths of registry TOML files with the plugin's named entries."""


@hookspec
def run_started(run: Any) -> None:
    """A run begins (or resumes): `run` is the RunInfo, whose `tracking` dict plugins may fill."""


@hookspec
def epoch_finished(run: Any, epoch: int, metrics: Any, checkpoint: Any) -> None:
    """A training epoch ended: per-epoch metrics and the path of the checkpoint just written."""


@hookspec
def evaluation_finished(run: Any, attack: str, records: Any, figures: Any) -> None:
    """One attack has been evaluated at every eps: its result records and metric figures."""


@hookspec
def run_finished(run: Any, result: Any, status: str, error: Any) -> None:
    """A run ended with status FINISHED, FAILED or KILLED; `result` is None unless it finished."""


@hookspec(firstresult=True)
def load_checkpoint(run_id: str, tracking_uri: Any, destination: Any) -> Any:
    """Fetch the last checkpoint of tracked run `run_id` into `destination`; return its path or None."""


@hookspec(firstresult=True)
def load_model(run_id: str, tracking_uri: Any) -> Any:
    """Load the trained model of tracked run `run_id` (e.g. the source of a transfer attack)."""
