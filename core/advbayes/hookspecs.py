"""The pluggy hooks of advbayes: component registration and the run lifecycle.

Each hook's docstring says what it is for, then one line per argument (`name: meaning`); docs/plugins.md has a
section per hook with the same argument list and an example, and tests/test_hooks.py checks both and calls every
hook through the real plugin manager.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import click
    from torch import nn

    from advbayes.components import Attack, Dataset, Defense, Metric, Model
    from advbayes.results import EvalRecord, RunInfo, RunResult

hookspec = HookspecMarker("advbayes")
hookimpl = HookimplMarker("advbayes")


@hookspec
def register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """Register each data set the plugin provides.

    register: call it with each Dataset subclass (an attrs class with a `name`)
    """


@hookspec
def register_models(register: Callable[[type[Model]], None]) -> None:
    """Register each network builder the plugin provides.

    register: call it with each Model subclass (an attrs class with a `name`)
    """


@hookspec
def register_defenses(register: Callable[[type[Defense]], None]) -> None:
    """Register each defense the plugin provides.

    register: call it with each Defense subclass (an attrs class with a `name`)
    """


@hookspec
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    """Register each attack the plugin provides.

    register: call it with each Attack subclass (an attrs class with a `name`)
    """


@hookspec
def register_metrics(register: Callable[[type[Metric]], None]) -> None:
    """Register each metric the plugin provides.

    register: call it with each Metric subclass (an attrs class with a `name`)
    """


@hookspec
def registry_files() -> str | Path | Iterable[str | Path] | None:  # type: ignore[empty-body]
    """Return the path (or paths) of registry TOML files with the plugin's named entries."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the `advbayes` command line (as llm plugins do); the tracking plugin adds ui, compare,
    runs and report this way.

    cli: the advbayes click group; decorate functions with @cli.command()
    """


@hookspec
def run_figures(run: RunInfo, result: RunResult) -> Mapping[str, Any] | None:
    """Return run-level figures (matplotlib, by relative path) drawn from a finished run's results; they are added
    to result.figures before run_finished, so the tracking plugin logs them.

    run: the RunInfo of the run
    result: the finished run's RunResult (read it; do not change it)
    """


@hookspec
def run_started(run: RunInfo) -> None:
    """A run begins (or resumes), after every check and before any work.

    run: the RunInfo (experiment, resolved spec, seed, device, plugin versions, tracking settings); the tracking
        plugin sets run.run_id and run.store, other plugins keep their own state in run.tracking
    """


@hookspec
def epoch_finished(run: RunInfo, epoch: int, metrics: Mapping[str, float], checkpoint: Path) -> None:
    """A training epoch ended and its checkpoint was written.

    run: the RunInfo of the run
    epoch: the epoch that ended, counted from 1
    metrics: the epoch means of the loss parts, plus images_per_s and epoch_seconds
    checkpoint: the path of the checkpoint just written (valid until the next epoch)
    """


@hookspec
def checkpoint_saved(run: RunInfo, checkpoint: Path) -> None:
    """A checkpoint was written: after every epoch, and after every attack's evaluation (so a resumed run skips the
    attacks that finished).

    run: the RunInfo of the run
    checkpoint: the path of the checkpoint just written (valid until the next one)
    """


@hookspec(
    warn_on_impl_args={
        "attack": DeprecationWarning("evaluation_finished: the argument 'attack' is now 'attack_label' (CHANGELOG.md)")
    }
)
def evaluation_finished(
    run: RunInfo, attack_label: str, records: Sequence[EvalRecord], figures: Mapping[str, Any], attack: str
) -> None:
    """One attack (at one S_A, S_I) has been evaluated at every eps.

    run: the RunInfo of the run
    attack_label: the attack's label (its entry name, or name:saA:siI in a sample sweep)
    records: one EvalRecord per eps (metrics, S_A, S_I, applied perturbation)
    figures: the metrics' matplotlib figures by relative path
    attack: the same label under its old name, for one release (an implementation that takes it is warned)
    """


@hookspec
def run_finished(run: RunInfo, result: RunResult | None, status: str, error: BaseException | None) -> None:
    """A run ended.

    run: the RunInfo of the run
    result: the RunResult when status is FINISHED, else None
    status: FINISHED, FAILED or KILLED
    error: the exception that ended a FAILED or KILLED run, else None
    """


@hookspec(firstresult=True)
def load_checkpoint(run_id: str, tracking_uri: str | None, destination: Path) -> Path | None:
    """Fetch the last checkpoint of a tracked run for --resume; the first plugin to return a path wins.

    run_id: the tracked run
    tracking_uri: the store given to the run (None: the default)
    destination: a directory to download into
    """


@hookspec(firstresult=True)
def load_model(run_id: str, tracking_uri: str | None) -> nn.Module | None:
    """Load the trained network of a tracked run (a `run:<id>` source); the first plugin to return one wins.

    run_id: the tracked run
    tracking_uri: the store given to the run (None: the default)
    """
